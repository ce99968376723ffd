"""PDFs and videos in an ingested folder (cbir.ingest.media): each page and each sampled frame is
an image named inside its file, planned, read and committed with its file, moved, copied,
touched and replaced with it; bad files are skips with a reason. The fake encoder (no model)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from cbir.errors import UsageError
from cbir.ingest.pdf import NEEDS_MEDIA as PDF_NEEDS_MEDIA
from cbir.store.catalog import PDF
from tests.conftest import media_module, write_image
from tests.test_pdf import text_pdf
from tests.test_video import scene_frames, write_video


@pytest.fixture
def media():
    media_module("pypdfium2")
    return media_module("av")


@pytest.fixture
def folder(tmp_path, media):
    """A photo, a three-page PDF with a text layer, and a 6 s video of three 2 s scenes."""
    root = tmp_path / "things"
    write_image(root / "photo.jpg", seed=1)
    (root / "docs").mkdir()
    (root / "docs" / "report.pdf").write_bytes(text_pdf(["quarterly turbine report", "appendix", "glossary"]))
    write_video(media, root / "clip.mp4", scene_frames([2, 2, 2]))
    return root


def rows(lib) -> dict[str, tuple]:
    """path -> (id, format, width, height, duration, size) of every image of the library."""
    with sqlite3.connect(lib.path / "library.db") as c:
        query = "select path, id, format, width, height, duration, size from images"
        return {path: rest for path, *rest in c.execute(query)}


def test_pages_and_frames_are_images_named_inside_their_files(fake_library, folder):
    lib = fake_library()
    report = lib.ingest(folder)
    stored = rows(lib)
    pages = sorted(p for p in stored if p.startswith("docs/report.pdf#"))
    frames = sorted(p for p in stored if p.startswith("clip.mp4#"))
    assert pages == ["docs/report.pdf#page=1", "docs/report.pdf#page=2", "docs/report.pdf#page=3"]
    assert "clip.mp4#t=0" in frames and 3 <= len(frames) <= 7, frames  # a frame a scene at least
    assert set(stored) == {"photo.jpg", *pages, *frames}
    assert report.scanned == 3 and report.added == len(stored) and report.skipped == 0
    _, fmt, width, height, duration, size = stored["docs/report.pdf#page=1"]
    assert (fmt, width, height, duration) == ("pdf", 612, 792, None)  # points
    assert size == (folder / "docs" / "report.pdf").stat().st_size
    _, fmt, width, height, duration, _ = stored[frames[0]]
    assert (fmt, width, height) == ("mp4", 160, 90) and duration == pytest.approx(6.0, abs=0.1)
    # the scenes start at 0, 2 and 4 s: each has a frame
    times = [float(p.split("#t=")[1]) for p in frames]
    assert all(any(start <= t < start + 2 for t in times) for start in (0, 2, 4)), times
    status = lib.status()
    assert (status.pdf_pages, status.pdfs, status.video_frames, status.videos) == (3, 1, len(frames), 1)


def test_a_pages_text_layer_is_a_library_text_found_by_keyword(fake_library, folder):
    lib = fake_library()
    lib.ingest(folder)
    with sqlite3.connect(lib.path / "library.db") as c:
        texts = dict(
            c.execute(
                "select i.path, t.content from texts t join images i on i.id = t.image_id where t.source = ?", (PDF,)
            )
        )
    assert texts == {
        "docs/report.pdf#page=1": "quarterly turbine report",
        "docs/report.pdf#page=2": "appendix",
        "docs/report.pdf#page=3": "glossary",
    }
    [hit] = lib.search("turbine", mode="keyword", k=5)
    assert str(hit.path).endswith("report.pdf#page=1")
    assert hit.file == folder / "docs" / "report.pdf" and hit.page == 1 and not hit.missing
    data = hit.as_dict()
    assert (data["file"], data["page"]) == (str(folder / "docs" / "report.pdf"), 1)


def test_a_second_run_reads_nothing_and_moves_copies_touches_follow_content(fake_library, folder):
    lib = fake_library()
    lib.ingest(folder)
    before = rows(lib)
    again = lib.ingest(folder)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 3)

    (folder / "archive").mkdir()
    shutil.move(folder / "docs" / "report.pdf", folder / "archive" / "report.pdf")  # moved
    shutil.copy(folder / "clip.mp4", folder / "archive" / "copy.mp4")  # copied
    report = lib.ingest(folder)
    after = rows(lib)
    for n in (1, 2, 3):  # the same rows (ids, so labels and tags stay), under the new path
        assert after[f"archive/report.pdf#page={n}"][0] == before[f"docs/report.pdf#page={n}"][0]
    frames = sorted(p for p in before if p.startswith("clip.mp4#"))
    assert sorted(p for p in after if p.startswith("archive/copy.mp4#")) == [
        "archive/copy.mp4#" + p.split("#")[1] for p in frames
    ]
    assert (report.moved, report.copied, report.added, report.removed) == (3, len(frames), 0, 0)

    shutil.copy(folder / "clip.mp4", folder / "clip.tmp")
    (folder / "clip.tmp").rename(folder / "clip.mp4")  # same bytes, a new mtime
    touched = lib.ingest(folder)
    assert (touched.touched, touched.added, touched.updated) == (len(frames), 0, 0)
    assert {p: r[0] for p, r in rows(lib).items()} == {p: r[0] for p, r in after.items()}


def test_a_changed_pdf_replaces_its_pages_and_drops_the_missing_ones(fake_library, folder):
    lib = fake_library()
    lib.ingest(folder)
    pdf = folder / "docs" / "report.pdf"
    pdf.write_bytes(text_pdf(["quarterly turbine report, revised", "appendix"]))
    report = lib.ingest(folder)
    stored = rows(lib)
    assert sorted(p for p in stored if p.startswith("docs/")) == ["docs/report.pdf#page=1", "docs/report.pdf#page=2"]
    assert (report.updated, report.removed, report.added) == (2, 1, 0)
    assert stored["docs/report.pdf#page=1"][5] == pdf.stat().st_size
    [hit] = lib.search("revised", mode="keyword", k=5)
    assert hit.page == 1


def test_a_pdf_or_video_gone_takes_its_items_with_it(fake_library, folder):
    lib = fake_library()
    lib.ingest(folder)
    (folder / "clip.mp4").unlink()
    (folder / "docs" / "report.pdf").unlink()
    report = lib.ingest(folder)
    assert set(rows(lib)) == {"photo.jpg"} and report.removed > 3


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("broken.pdf", b"%PDF-1.4 not really", "corrupt or unsupported PDF"),
        ("empty.pdf", b"", "corrupt or unsupported PDF"),
        ("broken.mp4", b"\0\0\0\x18ftypmp42" + bytes(range(256)) * 8, "corrupt or truncated video"),
        ("noise.webm", bytes(range(256)) * 4, "video"),
    ],
)
def test_a_bad_pdf_or_video_is_a_skip_with_a_one_line_reason(fake_library, folder, name, data, reason):
    (folder / name).write_bytes(data)
    lib = fake_library()
    report = lib.ingest(folder)
    skipped = dict(lib.status(with_skipped=True).skipped_files)
    why = skipped[folder / name]
    assert reason in why and "\n" not in why
    assert report.skipped == 1 and not any(p.startswith(name) for p in rows(lib))
    assert lib.ingest(folder).unchanged == 4  # a known bad file is not read again


def test_a_pdf_read_in_part_keeps_its_pages_and_says_why(fake_library, folder, monkeypatch):
    from cbir.ingest import media, pdf

    monkeypatch.setattr(media, "read_pdf", lambda path, side: pdf.read_pdf(path, side, max_pages=2))
    lib = fake_library()
    report = lib.ingest(folder)
    assert sorted(p for p in rows(lib) if p.startswith("docs/")) == ["docs/report.pdf#page=1", "docs/report.pdf#page=2"]
    skipped = dict(lib.status(with_skipped=True).skipped_files)
    assert skipped[folder / "docs" / "report.pdf"] == "partly read: only the first 2 of 3 pages read"
    assert report.skipped == 1
    assert lib.ingest(folder).unchanged == 3  # its pages are kept, and it is not read again


def test_a_files_items_are_committed_in_one_transaction(fake_library, folder, monkeypatch):
    """A run stopped between two batches never leaves a PDF or video in part: its items, which
    share its size and mtime, would look unchanged and never be read again."""
    lib = fake_library(batch_size=1)
    applied = []
    apply = lib.catalog.apply

    def spy(changes):
        applied.append([r.path for r, _ in changes.added])
        return apply(changes)

    monkeypatch.setattr(lib.catalog, "apply", spy)
    lib.ingest(folder)
    for paths in applied:
        for name in ("docs/report.pdf#", "clip.mp4#"):
            mine = [p for p in paths if p.startswith(name)]
            everything = [p for p in rows(lib) if p.startswith(name)]
            assert not mine or sorted(mine) == sorted(everything), (name, applied)
    assert len(applied) >= 3  # batches of one image: the photo, the PDF, the video apart


def test_without_the_extra_a_pdf_is_a_skip_naming_it_and_read_once_installed(fake_library, folder, monkeypatch):
    monkeypatch.setattr("cbir.ingest.pdf.pdf_installed", lambda: False)
    lib = fake_library()
    lib.ingest(folder)
    skipped = dict(lib.status(with_skipped=True).skipped_files)
    assert skipped[folder / "docs" / "report.pdf"] == PDF_NEEDS_MEDIA
    assert "pip install 'cbir[media]'" in PDF_NEEDS_MEDIA
    assert lib.ingest(folder).added == 0  # not retried while the extra is missing
    monkeypatch.setattr("cbir.ingest.pdf.pdf_installed", lambda: True)
    assert lib.ingest(folder).added == 3  # retried once it is there


def test_search_shows_a_videos_best_frame_unless_frames_are_asked_for(fake_library, folder):
    lib = fake_library()
    lib.ingest(folder)
    frames = [p for p in rows(lib) if p.startswith("clip.mp4#")]
    grouped = lib.search("anything", k=50)
    every = lib.search("anything", k=50, frames=True)
    assert sum(h.time is not None for h in grouped) == 1
    assert sum(h.time is not None for h in every) == len(frames)
    best = next(h for h in every if h.time is not None)
    assert next(h for h in grouped if h.time is not None).id == best.id  # the best one, in its place
    assert [h.id for h in grouped if h.time is None] == [h.id for h in every if h.time is None]
    assert len(lib.search("anything", k=2)) == 2  # grouping widens the search to fill k


def test_duration_filters_video_frames(fake_library, folder):
    lib = fake_library()
    lib.ingest(folder)
    long = lib.search("anything", k=50, frames=True, filters=_where("duration > 5"))
    assert long and all(h.duration and h.duration > 5 for h in long)
    assert not lib.search("anything", k=50, filters=_where("duration >= 1:00"))
    others = lib.search("anything", k=50, filters=_where("not duration > 0"))
    assert others and all(h.time is None for h in others)
    with pytest.raises(UsageError, match="bad value 'soon' for duration"):
        lib.search("anything", filters=_where("duration > soon"))


def test_frame_sampling_is_a_library_setting(fake_library, folder):
    lib = fake_library()
    lib.ingest(folder, frame_every=0.5, max_frames=4)
    assert len([p for p in rows(lib) if p.startswith("clip.mp4#")]) == 4
    with sqlite3.connect(lib.path / "library.db") as c:
        assert c.execute("select value from meta where key = 'video_frames'").fetchone() == ("0.5 4",)
    write_video(media_module("av"), folder / "second.mp4", scene_frames([6]))
    lib.ingest(folder)  # the setting applies to the new video
    assert len([p for p in rows(lib) if p.startswith("second.mp4#")]) == 4


def _where(text: str):
    from cbir.query.filters import Filters

    return Filters(where=text)


def test_export_names_the_page(fake_library, folder, tmp_path):
    from cbir.export import export

    lib = fake_library()
    lib.ingest(folder)
    export(lib.catalog, tmp_path / "out", "npy")
    records = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    by_path = {r["path"]: r for r in records}
    assert by_path[str(folder / "docs" / "report.pdf") + "#page=2"]["format"] == "pdf"
    frame = next(r for p, r in by_path.items() if "clip.mp4#t=" in p)
    assert frame["duration"] == pytest.approx(6.0, abs=0.1)


def test_ingesting_a_folder_leaves_a_folder_named_like_its_items_alone(fake_library, tmp_path):
    """A scope's items are "scope#..." paths of a PDF or video: a folder "trip#2" beside a
    folder "trip" is no item of it, and ingesting "trip" again must not remove its images."""
    write_image(tmp_path / "trip" / "a.jpg", seed=1)
    write_image(tmp_path / "trip#2" / "b.jpg", seed=2)
    lib = fake_library()
    lib.ingest(tmp_path)
    report = lib.ingest(tmp_path / "trip")
    assert report.removed == 0 and set(rows(lib)) == {"trip/a.jpg", "trip#2/b.jpg"}


def test_a_changed_scanned_pdf_is_read_by_ocr_again(fake_library, tmp_path, monkeypatch, media):
    """With --ocr, a scanned PDF that changes keeps having its pages read: its new OCR text
    replaces the old one, never drops it. (OCR itself is stubbed: what is checked is the plan.)"""
    pytest.importorskip("rapidocr", reason="the ocr extra is not installed: pip install 'cbir[ocr]'")
    from PIL import Image

    read = iter(["first scan words", "second scan words"])
    monkeypatch.setattr("cbir.ocr.read_text", lambda image: next(read))
    scan = tmp_path / "scans" / "scan.pdf"
    scan.parent.mkdir()
    Image.new("RGB", (200, 300), "white").save(scan)
    lib = fake_library()
    lib.ingest(scan.parent, ocr=True)
    Image.new("RGB", (200, 300), "gray").save(scan)  # changed
    lib.ingest(scan.parent)
    with sqlite3.connect(lib.path / "library.db") as c:
        texts = c.execute("select content from texts where source = 'ocr'").fetchall()
    assert texts == [("second scan words",)]

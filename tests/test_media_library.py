"""The whole of issue 21 as a user meets it: a folder of photos, a PDF (and a scanned one), a
video, a RAW photo and a screenshot, ingested with --ocr by the real command (cbir-tiny), where
`cbir search` finds the PDF page, the video moment, and the scan and the screenshot by their
words; and `cbir watch` picks up a new PDF by itself. Needs the media and ocr extras (installed
by .ci/run)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from cbir.synthetic import Scene, render
from tests.conftest import media_module, run_cbir
from tests.test_pdf import text_pdf
from tests.test_raw import jpeg, make_dng, red_mosaic
from tests.test_watch import _Command

pytestmark = pytest.mark.slow

SCENES = [Scene("red", "circle", "gray"), Scene("yellow", "star", "brown"), Scene("blue", "square", "pink")]


@pytest.fixture
def extras():
    media_module("pypdfium2")
    media_module("rawpy")
    pytest.importorskip("rapidocr", reason="the ocr extra is not installed: pip install 'cbir[ocr]'")
    return media_module("av")


def _video(av, path, scenes: list[Scene], seconds: float = 2.0, rate: int = 10) -> None:
    """Each scene held for ``seconds`` (its shape still, new pixel noise in every frame)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 256, 192, "yuv420p"
        for scene in scenes:
            still = np.asarray(render(scene, np.random.default_rng(len(scene.caption)), (256, 192)), np.int16)
            for _ in range(int(seconds * rate)):
                noisy = np.clip(still + rng.integers(-6, 7, still.shape), 0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(noisy, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _screenshot(path, lines: list[str]) -> None:
    """A window-like picture of black words on white, as a screenshot holds them."""
    image = Image.new("RGB", (900, 420), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 900, 40), fill=(60, 60, 70))
    font = ImageFont.load_default(size=44)
    for n, line in enumerate(lines):
        draw.text((40, 90 + n * 90), line, fill="black", font=font)
    image.save(path)


def _search(library, *args: str) -> list[dict]:
    result = run_cbir("search", *args, "--library", str(library), "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_library_of_photos_documents_videos_raws_and_screenshots(extras, tmp_path):
    folder, library = tmp_path / "everything", tmp_path / "lib"
    folder.mkdir()
    for n, scene in enumerate([Scene("green", "triangle", "cyan"), Scene("white", "star", "gray")]):
        render(scene, np.random.default_rng(n), (320, 240)).save(folder / f"photo{n}.jpg")
    (folder / "manual.pdf").write_bytes(text_pdf(["Installation", "Calibrating the zephyr valve", "Index"]))
    _video(extras, folder / "holiday.mp4", SCENES)
    (folder / "camera.dng").write_bytes(make_dng(red_mosaic(), jpeg((600, 400), (200, 30, 30))))
    _screenshot(folder / "screenshot.png", ["INVOICE 4711", "quokka delivery"])
    _screenshot(folder / "scan.png", ["RECEIPT", "wombat hardware"])  # a scanned page: no text layer
    Image.open(folder / "scan.png").save(folder / "scan.pdf", resolution=100.0)
    (folder / "scan.png").unlink()

    ingest = run_cbir("ingest", str(folder), "--library", str(library), "--model", "cbir-tiny", "--ocr", "--json")
    assert ingest.returncode == 0, ingest.stderr
    report = json.loads(ingest.stdout.splitlines()[0])
    assert report["skipped"] == 0 and report["scanned"] == 7, report
    assert report["added"] >= 2 + 3 + 1 + 3 + 1 + 1, report  # photos, pages, a scan, a frame a scene, RAW, screenshot

    [page] = _search(library, "zephyr", "--mode", "keyword", "-k", "3")  # the PDF page, by its text layer
    assert (page["file"], page["page"], page["format"]) == (str((folder / "manual.pdf").resolve()), 2, "pdf")
    assert page["path"].endswith("manual.pdf#page=2")

    # the video moment: the frame of the scene asked for, by what it shows
    for n, scene in enumerate(SCENES):
        [moment] = _search(library, scene.caption, "--where", "format = mp4", "-k", "1")
        assert moment["file"] == str((folder / "holiday.mp4").resolve()) and moment["duration"] == pytest.approx(
            6, abs=0.2
        )
        assert 2 * n <= moment["time"] < 2 * n + 2, (scene, moment)
    frames = _search(library, "a picture", "--frames", "-k", "50", "--where", "format = mp4")
    assert len(frames) >= 3 and len(_search(library, "a picture", "-k", "50", "--where", "format = mp4")) == 1

    [shot] = _search(library, "quokka", "--mode", "keyword", "-k", "3")  # the screenshot, by OCR
    assert shot["path"] == str((folder / "screenshot.png").resolve())
    [scan] = _search(library, "wombat", "--mode", "keyword", "-k", "3")  # a scanned page, by OCR
    assert (scan["file"], scan["page"]) == (str((folder / "scan.pdf").resolve()), 1)
    [raw] = _search(library, "a picture", "--where", "format = dng", "-k", "5")
    assert raw["path"] == str((folder / "camera.dng").resolve())


def test_cbir_watch_picks_up_a_new_pdf_by_itself(extras, tmp_path):
    folder, library = tmp_path / "watched", tmp_path / "lib"
    folder.mkdir()
    render(SCENES[0], np.random.default_rng(0), (200, 200)).save(folder / "photo.jpg")
    watcher = _Command(
        "watch", str(folder), "--library", str(library), "--model", "cbir-tiny", "--debounce", "1", "--json"
    )
    try:
        assert json.loads(watcher.line(120)[1])["kind"] == "catch-up"
        watcher.until('"kind": "watching"')
        (folder / "new.pdf").write_bytes(text_pdf(["a handbook of aurora photography", "exposure tables"]))
        batch = json.loads(watcher.until('"kind": "changes"', 60)[1])
        assert batch["added"] == 2, batch
        [hit] = _search(library, "aurora", "--mode", "keyword", "-k", "3")
        assert hit["file"] == str((folder / "new.pdf").resolve()) and hit["page"] == 1
    finally:
        watcher.kill()


def test_a_kill_in_the_middle_of_a_pdf_stores_all_of_it_or_none(extras, tmp_path):
    """SIGKILL at random moments of an ingest whose PDF takes many batches: after each kill the
    PDF's pages are all stored or none, and the next run completes it, each page once."""
    import random
    import signal
    import sqlite3
    import subprocess
    import time

    from tests.conftest import cbir_env, count_images, tiny_ingest_command

    folder, library = tmp_path / "docs", tmp_path / "lib"
    folder.mkdir()
    for n in range(8):
        render(SCENES[n % 3], np.random.default_rng(n), (96, 96)).save(folder / f"a{n}.jpg")
    pages = 400
    (folder / "b-book.pdf").write_bytes(text_pdf([f"chapter {n}" for n in range(pages)]))

    def stored_pages() -> int:
        with sqlite3.connect(library / "library.db", timeout=30) as c:
            return c.execute("select count(*) from images where path like 'b-book.pdf#page=%'").fetchone()[0]

    rng, kills = random.Random(21), 0
    for _ in range(4):
        proc = subprocess.Popen(tiny_ingest_command(folder, library), env=cbir_env())
        deadline = time.time() + 120  # the photos (first by name) committed: the book is being read
        while proc.poll() is None and count_images(library / "library.db") < 8 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if (library / "library.db").exists():
            assert stored_pages() in (0, pages)
        resumed = subprocess.run(tiny_ingest_command(folder, library), env=cbir_env(), capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        assert stored_pages() == pages
        with sqlite3.connect(library / "library.db") as c:
            paths = [p for (p,) in c.execute("select path from images")]
        assert len(paths) == len(set(paths)) == pages + 8
        # the next round starts over from a changed book
        (folder / "b-book.pdf").write_bytes(text_pdf([f"chapter {n} revised {rng.random()}" for n in range(pages)]))
    print(f"\n{kills} of 4 ingests killed while their PDF was read")
    assert kills >= 3

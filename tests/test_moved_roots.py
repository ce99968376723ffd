"""Renamed and vanished folders: rows follow a renamed folder, vanished ones are listed, forget
removes a folder's images on purpose, and search marks hits whose file is gone."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cbir.cli import cli
from cbir.cli.render import hits_table, ingest_summary, status_text
from cbir.encode.fake import FakeEncoder
from cbir.errors import UsageError
from cbir.store.models import ImageText
from tests.conftest import run_cbir, write_image
from tests.test_ingest import index_matches_db


def by_relative_path(lib, root) -> dict[str, int]:
    """relative path -> image id of every hit under ``root``."""
    return {h.path.relative_to(root).as_posix(): h.id for h in lib.search("x", k=1000)}


def text_ids(lib) -> list[int]:
    with lib.catalog.engine.connect() as c:
        return sorted(c.execute(select(ImageText.id)).scalars())


def test_a_renamed_folder_keeps_its_rows_vectors_texts_and_labels(fake_library, photos, database_url):
    (photos / "a" / "img01.jpg.txt").write_text("a caption beside the image")
    encoder = FakeEncoder()
    lib = fake_library(encoder=encoder, database_url=database_url)
    lib.ingest(photos)
    lib.add_label(photos / "a" / "img03.jpg", "Rex")
    ids = by_relative_path(lib, photos)
    texts = text_ids(lib)
    encoded = encoder.images_encoded

    renamed = photos.with_name("photos-2019")
    photos.rename(renamed)
    report = lib.ingest(renamed)

    assert (report.moved, report.added, report.copied, report.encoded) == (20, 0, 0, 0)
    assert encoder.images_encoded == encoded  # nothing went through the model again
    assert report.followed == {str(photos): 20}
    assert f"followed from {photos}" in ingest_summary(report)
    assert lib.catalog.count_images() == 20  # not doubled
    assert by_relative_path(lib, renamed) == ids  # same ids, same relative paths
    assert text_ids(lib) == texts  # the caption was not read again, nor the label touched
    assert ("label", "Rex") in lib.texts_of(renamed / "a" / "img03.jpg")
    assert list(lib.catalog.roots().values()) == [renamed]  # the old root, emptied, is dropped
    assert lib.status().missing_roots == []
    assert not any(h.missing for h in lib.search("x", k=100))
    index_matches_db(lib)

    # the old name says where its images went, in one line
    with pytest.raises(UsageError, match=f"moved to {renamed}") as e:
        lib.ingest(photos)
    assert "\n" not in str(e.value) and str(e.value).startswith("no such file or folder")
    assert lib.ingest(renamed).unchanged == 20  # settled: the next run finds nothing to do


def test_a_folder_moved_into_another_and_thinned_leaves_the_rest_listed(fake_library, photos, tmp_path):
    lib = fake_library()
    lib.ingest(photos)
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.move(photos, archive / "old-photos")
    for name in ("img01.jpg", "img03.jpg"):  # deleted meanwhile: nothing claims them
        (archive / "old-photos" / "a" / name).unlink()
    report = lib.ingest(archive)
    assert (report.moved, report.encoded) == (18, 0)
    assert lib.catalog.count_images() == 20
    assert lib.status().missing_roots == [(photos, 2)]
    index_matches_db(lib)
    with pytest.raises(UsageError, match="still holds its 2 images: `cbir forget"):
        lib.ingest(photos)


def test_status_lists_a_vanished_folder_and_search_marks_its_files(fake_library, photos, tmp_path):
    lib = fake_library()
    lib.ingest(photos)
    other = tmp_path / "other"
    write_image(other / "kept.png", seed=500, fmt="PNG")
    lib.ingest(other)
    (photos / "a" / "img01.jpg").unlink()

    hits = lib.search("x", k=100)
    gone = [h for h in hits if h.missing]
    assert [h.path for h in gone] == [photos / "a" / "img01.jpg"]
    assert gone[0].as_dict()["missing"] is True
    assert all(h.as_dict()["missing"] is False for h in hits if h not in gone)
    table = hits_table(hits)
    assert sum("(missing" in line for line in table.splitlines()) == 1
    assert "(missing" in next(line for line in table.splitlines() if line.endswith("no longer on disk)"))

    assert lib.status().missing_roots == []
    shutil.rmtree(photos)
    st = lib.status()
    assert st.missing_roots == [(photos, 20)]
    assert st.as_dict()["missing_roots"] == [{"path": str(photos), "images": 20}]
    assert f"missing   {photos}: gone from disk, 20 images" in status_text(st)
    assert sum(h.missing for h in lib.search("x", k=100)) == 20


def test_forget_removes_a_folders_images_and_keeps_the_index_in_step(fake_library, photos, tmp_path):
    lib = fake_library()
    lib.ingest(photos)
    other = tmp_path / "other"
    write_image(other / "kept.png", seed=500, fmt="PNG")
    (other / "kept.png.txt").write_text("the one that stays")
    lib.ingest(other)
    lib.add_label(photos / "b" / "c" / "img00.jpg", "gone soon")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    lib.ingest(photos)
    assert lib.catalog.count_skipped() == 1

    plan = lib.forget(photos, dry_run=True)
    assert (plan.images, plan.texts, plan.gone, plan.dry_run) == (20, None, False, True)
    assert lib.catalog.count_images() == 21  # a dry run changes nothing

    done = lib.forget(photos)  # the folder still exists: forgetting it is still allowed
    assert (done.images, done.texts, done.gone) == (20, 1, False)
    assert [h.path for h in lib.search("x", k=100)] == [other / "kept.png"]
    assert list(lib.catalog.roots().values()) == [other]
    assert lib.catalog.count_skipped() == 0 and lib.catalog.count_texts() == 1
    assert (photos / "a" / "img01.jpg").exists()  # the files are never touched
    index_matches_db(lib)
    assert [t for _, t in lib.texts_of(other / "kept.png")] == ["the one that stays"]
    assert lib.search("the one that stays", target="texts", k=5)[0].path == other / "kept.png"

    with pytest.raises(UsageError, match="not a folder of this library: .*nowhere.*its folders: "):
        lib.forget(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="inside the library folder"):
        lib.forget(other / "sub")


def test_forget_a_vanished_folder(fake_library, photos):
    lib = fake_library()
    lib.ingest(photos)
    shutil.rmtree(photos)
    done = lib.forget(photos)
    assert (done.images, done.gone) == (20, True)
    assert lib.catalog.count_images() == 0 and lib.status().missing_roots == []
    with pytest.raises(UsageError, match=r"no such file or folder$"):  # nothing left to mention
        lib.ingest(photos)


def test_serve_marks_missing_files_and_not_tar_samples(fake_library, photos):
    from fastapi.testclient import TestClient

    from cbir.serve import create_app
    from tests.test_serve_api import _write_tar

    _write_tar(photos / "shards" / "000.tar", seed=7)
    lib = fake_library()
    lib.ingest(photos)
    lib.ingest(photos / "shards" / "000.tar")
    (photos / "a" / "img01.jpg").unlink()
    client = TestClient(create_app(lib, upload_limit=1_000_000), base_url="http://127.0.0.1")
    hits = client.get("/api/search", params={"q": "x", "k": 50}).json()["hits"]
    assert len(hits) == 23 and sum(".tar/" in h["path"] for h in hits) == 3
    assert [h["path"] for h in hits if h["missing"]] == [str(photos / "a" / "img01.jpg")]
    gone = next(h["id"] for h in hits if h["missing"])
    assert client.get(f"/api/images/{gone}").json()["missing"] is True
    present = next(h["id"] for h in hits if not h["missing"])
    assert client.get(f"/api/images/{present}").json()["missing"] is False
    lib.close()


def test_cli_renders_missing_files_and_forgets_with_confirmation(fake_library, photos, tmp_path):
    lib = fake_library()
    lib.ingest(photos)
    (photos / "a" / "img01.jpg").unlink()
    library = ["--library", str(lib.path)]
    lib.close()

    def cbir(*args, input=None):
        return CliRunner().invoke(cli, [*args, *library], input=input)

    table = cbir("search", "--like", str(photos / "a" / "img03.jpg"), "-k", "20").output.splitlines()
    assert [line for line in table if line.endswith("(missing: no longer on disk)")] == [
        line for line in table if str(photos / "a" / "img01.jpg") in line
    ]
    assert not any(line.startswith("missing ") for line in cbir("status").output.splitlines())
    shutil.rmtree(photos)
    assert f"missing   {photos}: gone from disk, 20 images kept" in cbir("status").output

    assert "20 images would be forgotten (gone from disk)" in cbir("forget", str(photos), "--dry-run").output
    unknown = cbir("forget", str(tmp_path / "nowhere"), "--yes")
    assert unknown.exit_code != 0 and "not a folder of this library" in unknown.output
    refused = cbir("forget", str(photos))  # stdin is no terminal: --yes is needed
    assert refused.exit_code != 0 and "confirm with --yes" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    done = cbir("forget", str(photos), "--yes")
    assert done.exit_code == 0 and "20 images and 0 texts forgotten" in done.output
    assert json.loads(cbir("status", "--json").output)["missing_roots"] == []


def test_cli_end_to_end(tmp_path):
    """The real entry point with the bundled model: a missing file in search --json, a vanished
    folder in status --json, and forget refusing without --yes, then forgetting."""
    photos = tmp_path / "photos"
    for i in range(3):
        write_image(photos / f"img{i}.png", seed=i, fmt="PNG")
    library = ["--library", str(tmp_path / "lib")]
    assert run_cbir("ingest", str(photos), *library, "--model", "cbir-tiny", "-q").returncode == 0
    (photos / "img0.png").unlink()
    like = ["--like", str(photos / "img1.png"), "-k", "3", *library]  # stored vectors: no model to load
    rows = [json.loads(line) for line in run_cbir("search", *like, "--json").stdout.splitlines()]
    assert sorted((r["path"].rsplit("/", 1)[1], r["missing"]) for r in rows) == [
        ("img0.png", True),
        ("img1.png", False),
        ("img2.png", False),
    ]

    shutil.rmtree(photos)
    status = json.loads(run_cbir("status", "--json", *library).stdout)
    assert status["missing_roots"] == [{"path": str(photos), "images": 3}]
    refused = run_cbir("forget", str(photos), *library)
    assert refused.returncode != 0 and refused.stderr.startswith("Error: ") and "--yes" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    done = run_cbir("forget", str(photos), "--yes", "--json", *library)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"root": str(photos), "images": 3, "texts": 0, "gone": True, "dry_run": False}
    status = json.loads(run_cbir("status", "--json", *library).stdout)
    assert (status["images"], status["missing_roots"], status["index_current"]) == (0, [], True)

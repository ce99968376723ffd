"""Ingest behaviour on the fake encoder: incremental, moves, deletions, bad files, consistency."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from cbir.encode.fake import FakeEncoder
from cbir.errors import LibraryLocked, UsageError
from cbir.fsutil import writer_lock
from cbir.index import generations
from tests.conftest import write_image


def index_matches_db(lib) -> None:
    """The saved index holds exactly the database's vectors."""
    index, _ = generations.load(lib.index_dir, "images", lib.catalog.dim, lib.catalog.vector_version())
    assert index is not None, "index is missing or stale"
    stored = dict((int(i), v) for ids, vs in lib.catalog.iter_vectors() for i, v in zip(ids, vs))
    assert sorted(index.ids().tolist()) == sorted(stored)
    assert lib.catalog.count_images() == len(stored)


def paths(lib) -> list[str]:
    return sorted(h.path.name for h in lib.search("anything", k=1000))


def test_first_ingest_adds_every_image_and_indexes_it(fake_library, photos):
    lib = fake_library()
    report = lib.ingest(photos)
    assert (report.added, report.encoded, report.skipped) == (20, 20, 0)
    assert lib.catalog.count_images() == 20
    index_matches_db(lib)
    st = lib.status()
    assert st.images == 20 and st.index_current and st.index_bytes > 0


def test_reingest_encodes_nothing(fake_library, photos):
    encoder = FakeEncoder()
    lib = fake_library(encoder=encoder)
    lib.ingest(photos)
    before = encoder.images_encoded
    generation = generations.read_manifest(lib.index_dir).generation
    report = lib.ingest(photos)
    assert encoder.images_encoded == before
    assert (report.unchanged, report.added, report.encoded) == (20, 0, 0)
    assert generations.read_manifest(lib.index_dir).generation == generation  # no index rewritten


def test_modified_moved_deleted_and_copied_files(fake_library, photos):
    encoder = FakeEncoder()
    lib = fake_library(encoder=encoder)
    lib.ingest(photos)
    ids_before = {h.path.name: h.id for h in lib.search("x", k=100)}

    write_image(photos / "a" / "img01.jpg", seed=101)  # modified content
    os.utime(photos / "a" / "img01.jpg", ns=(1, 10**18))
    (photos / "moved").mkdir()
    shutil.move(photos / "a" / "img03.jpg", photos / "moved" / "renamed.jpg")
    (photos / "b" / "c" / "img00.jpg").unlink()
    shutil.copy(photos / "a" / "img05.jpg", photos / "copy-of-05.jpg")
    encoded_before = encoder.images_encoded

    report = lib.ingest(photos)
    assert (report.updated, report.moved, report.removed, report.copied) == (1, 1, 1, 1)
    assert encoder.images_encoded - encoded_before == 1  # only the modified file
    names = paths(lib)
    assert "img00.jpg" not in names and "img03.jpg" not in names
    assert {"renamed.jpg", "copy-of-05.jpg", "img01.jpg"} <= set(names)
    hits = {h.path.name: h for h in lib.search("x", k=100)}
    assert hits["renamed.jpg"].id == ids_before["img03.jpg"]  # the row followed the file
    assert hits["img01.jpg"].id == ids_before["img01.jpg"]
    top = lib.search(image=photos / "a" / "img01.jpg", k=1)[0]
    assert top.path.name == "img01.jpg" and top.score == pytest.approx(1.0, abs=1e-5)
    index_matches_db(lib)


def test_bad_files_are_recorded_and_the_rest_ingested(fake_library, photos):
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "text.png").write_text("not a picture")
    good = (photos / "a" / "img01.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(good[: len(good) // 2])
    lib = fake_library()
    report = lib.ingest(photos)
    skipped = {p.name: reason for p, reason in lib.catalog.skipped()}
    assert set(skipped) == {"empty.jpg", "text.png", "truncated.jpg"}
    assert skipped["empty.jpg"] == "empty file"
    assert "not an image" in skipped["text.png"]
    assert "truncated" in skipped["truncated.jpg"]
    assert report.added == 20 and report.skipped == 3

    # unchanged bad files are not retried; a fixed one is ingested and its record dropped
    assert lib.ingest(photos).skipped == 0
    write_image(photos / "text.png", seed=77, fmt="PNG")
    report = lib.ingest(photos)
    assert report.added == 1
    assert {p.name for p, _ in lib.catalog.skipped()} == {"empty.jpg", "truncated.jpg"}
    (photos / "empty.jpg").unlink()
    lib.ingest(photos)
    assert {p.name for p, _ in lib.catalog.skipped()} == {"truncated.jpg"}


def test_decompression_bomb_refused_before_decoding(fake_library, tmp_path):
    folder = tmp_path / "bombs"
    folder.mkdir()
    Image.new("1", (20_000, 10_000)).save(folder / "bomb.png")  # 200 MP, a few KB on disk
    write_image(folder / "fine.jpg")
    lib = fake_library()
    report = lib.ingest(folder)
    assert report.added == 1
    [(path, reason)] = lib.catalog.skipped()
    assert path.name == "bomb.png" and "decompression bomb" in reason


def test_a_file_that_turns_bad_leaves_the_index(fake_library, photos):
    lib = fake_library()
    lib.ingest(photos)
    (photos / "a" / "img01.jpg").write_bytes(b"garbage")
    report = lib.ingest(photos)
    assert report.skipped == 1
    assert "img01.jpg" not in paths(lib)
    index_matches_db(lib)


def test_exif_metadata_and_orientation(fake_library, tmp_path):
    folder = tmp_path / "exif"
    image = Image.new("RGB", (80, 40), "red")
    exif = Image.Exif()
    exif[271], exif[272], exif[274] = "Google", "Pixel 7", 6  # rotated 90 degrees
    exif.get_ifd(0x8769)[36867] = "2019:06:01 12:30:00"
    folder.mkdir()
    image.save(folder / "p.jpg", exif=exif.tobytes())
    lib = fake_library()
    lib.ingest(folder)
    [hit] = lib.search("x", k=5)
    assert (hit.width, hit.height) == (40, 80)
    assert hit.camera == "Google Pixel 7"
    assert hit.taken_at.isoformat() == "2019-06-01T12:30:00"
    assert hit.format == "jpeg"


def test_stale_index_is_rebuilt_from_stored_vectors(fake_library, photos):
    encoder = FakeEncoder()
    lib = fake_library(encoder=encoder)
    lib.ingest(photos)
    manifest = generations.read_manifest(lib.index_dir)
    (lib.index_dir / manifest.folder / "images.faiss").write_bytes(b"corrupt")
    lib.indexes.forget()  # drop the loaded index
    before = encoder.images_encoded
    assert len(lib.search("x", k=100)) == 20
    assert encoder.images_encoded == before  # nothing re-encoded
    index_matches_db(lib)  # and the rebuilt index was saved


def test_rebuild_index_gives_the_same_results(fake_library, photos):
    lib = fake_library()
    lib.ingest(photos)
    query = photos / "a" / "img07.jpg"
    before = [(h.id, round(h.score, 5)) for h in lib.search(image=query, k=5)]
    images, texts = lib.rebuild_index()
    assert (images.name, images.vectors, texts.name, texts.vectors) == ("images", 20, "texts", 0)
    assert [(h.id, round(h.score, 5)) for h in lib.search(image=query, k=5)] == before


def test_subfolder_ingest_stays_in_scope_and_nested_roots_merge(fake_library, photos):
    lib = fake_library()
    lib.ingest(photos / "a")
    assert lib.catalog.count_images() == 10
    report = lib.ingest(photos)  # the parent absorbs the earlier root: nothing re-encoded
    assert (report.added, report.unchanged) == (10, 10)
    assert len(lib.catalog.roots()) == 1
    (photos / "b" / "c" / "img00.jpg").unlink()
    report = lib.ingest(photos / "a")  # a scoped run never deletes outside its scope
    assert report.removed == 0 and lib.catalog.count_images() == 20
    report = lib.ingest(photos / "a" / "img01.jpg")  # a single file works too
    assert report.scanned == 1 and report.unchanged == 1


def test_hidden_files_symlink_loops_and_odd_names(fake_library, tmp_path):
    root = tmp_path / "odd"
    write_image(root / "UPPER.JPG", seed=1)
    write_image(root / ".hidden.jpg", seed=2)
    write_image(root / ".cache" / "thumb.jpg", seed=3)
    write_image(root / "folder.jpg" / "inside.png", seed=4, fmt="PNG")
    write_image(root / "real" / "x.webp", seed=5, fmt="WEBP")
    (root / "real" / "loop").symlink_to(root)
    (root / "notes.txt").write_text("hi")
    lib = fake_library()
    lib.ingest(root)
    assert paths(lib) == ["UPPER.JPG", "inside.png", "x.webp"]


def test_missing_path_is_a_usage_error(fake_library, tmp_path):
    with pytest.raises(UsageError, match="no such file or folder"):
        fake_library().ingest(tmp_path / "nope")


def test_one_writer_at_a_time(fake_library, photos):
    lib = fake_library()
    with writer_lock(lib.path):
        with pytest.raises(LibraryLocked):
            lib.ingest(photos)


def test_vectors_are_unit_length(fake_library, photos):
    lib = fake_library()
    lib.ingest(photos)
    for _, vectors in lib.catalog.iter_vectors():
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

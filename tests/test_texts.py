"""Library texts on the fake encoder: captions beside images and descriptions inside them are
stored, embedded, indexed (vectors and FTS5) and kept in step with the files; labels; text
search in every mode; filters, --like and query arithmetic through the Library API. Every test
runs on SQLite and on PostgreSQL (tsvector in place of FTS5)."""

from __future__ import annotations

import os
import shutil
import sqlite3

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from cbir.errors import EmptyLibrary, UsageError
from cbir.index import generations
from cbir.index.vector_index import TEXTS
from cbir.query.filters import Filters


@pytest.fixture
def fake_library(fake_library, database_url):
    """conftest's, on the database of this run: SQLite, then PostgreSQL."""
    return lambda name="lib", **options: fake_library(name, database_url=database_url, **options)


def captions(lib) -> dict[str, list[tuple[str, str]]]:
    """image file name -> sorted (source, text) pairs, read straight from the database."""
    out: dict[str, list] = {}
    with lib.catalog.engine.connect() as c:
        rows = c.execute(
            text("select images.path, texts.source, texts.content from texts join images on images.id = texts.image_id")
        ).all()
    for path, source, content in rows:
        out.setdefault(path.rsplit("/", 1)[-1], []).append((source, content))
    return {k: sorted(v) for k, v in out.items()}


def texts_consistent(lib) -> None:
    """The FTS5 index matches the texts table (PostgreSQL's GIN index is kept by the server
    itself), and the saved text index holds every text vector."""
    if lib.catalog.engine.dialect.name == "sqlite":
        with sqlite3.connect(lib.path / "library.db") as c:
            c.execute("insert into texts_fts(texts_fts) values ('integrity-check')")
    index, _ = generations.load(lib.index_dir, TEXTS, lib.catalog.dim, lib.catalog.text_version())
    assert index is not None, "text index missing or stale"
    stored = sorted(int(i) for ids, _ in lib.catalog.iter_text_vectors() for i in ids)
    assert sorted(index.ids().tolist()) == stored


@pytest.fixture
def captioned(photos):
    """The 20 photos; three with a caption file (both naming styles), one with an EXIF description."""
    (photos / "a" / "img01.jpg.txt").write_text("A golden retriever running on the beach\n")
    (photos / "a" / "img03.txt").write_text("two cats asleep on a red sofa")
    (photos / "b" / "c" / "img00.jpg.txt").write_text("snowy mountain at sunset", encoding="utf-8-sig")
    exif = Image.Exif()
    exif[270] = "Birthday party in the garden"
    Image.open(photos / "a" / "img05.jpg").save(photos / "a" / "img05.jpg", exif=exif.tobytes())
    return photos


def test_captions_and_descriptions_become_texts(fake_library, captioned):
    lib = fake_library()
    report = lib.ingest(captioned)
    assert report.texts == 4
    assert captions(lib) == {
        "img01.jpg": [("sidecar", "A golden retriever running on the beach")],
        "img03.jpg": [("sidecar", "two cats asleep on a red sofa")],
        "img00.jpg": [("sidecar", "snowy mountain at sunset")],
        "img05.jpg": [("embedded", "Birthday party in the garden")],
    }
    texts_consistent(lib)
    assert lib.status().texts == 4
    assert lib.ingest(captioned).texts == 0  # nothing changed, nothing re-read


def test_caption_files_are_followed(fake_library, captioned):
    lib = fake_library()
    lib.ingest(captioned)
    (captioned / "a" / "img01.jpg.txt").write_text("a wet dog after a swim")
    os.utime(captioned / "a" / "img01.jpg.txt", ns=(1, 10**18))
    (captioned / "a" / "img03.txt").unlink()
    (captioned / "a" / "img07.txt").write_text("a bicycle against a wall")
    shutil.move(captioned / "b" / "c" / "img00.jpg", captioned / "b" / "moved.jpg")
    shutil.move(captioned / "b" / "c" / "img00.jpg.txt", captioned / "b" / "moved.jpg.txt")
    lib.ingest(captioned)
    got = captions(lib)
    assert got["img01.jpg"] == [("sidecar", "a wet dog after a swim")]
    assert "img03.jpg" not in got
    assert got["img07.jpg"] == [("sidecar", "a bicycle against a wall")]
    assert got["moved.jpg"] == [("sidecar", "snowy mountain at sunset")]
    texts_consistent(lib)
    # deleting an image deletes its texts, and FTS5 forgets them
    (captioned / "a" / "img01.jpg").unlink()
    lib.ingest(captioned)
    assert "img01.jpg" not in captions(lib)
    texts_consistent(lib)
    assert not lib.search("swim", target="texts", mode="keyword")


def test_a_bad_caption_file_is_recorded_and_the_image_kept(fake_library, photos):
    (photos / "a" / "img01.txt").write_bytes(b"caf\xe9 au lait")  # latin-1, not UTF-8
    lib = fake_library()
    report = lib.ingest(photos)
    assert report.added == 20 and report.skipped == 1
    [(path, reason)] = lib.catalog.skipped()
    assert path.name == "img01.txt" and "not UTF-8" in reason
    assert lib.ingest(photos).skipped == 0  # unchanged: not retried
    (photos / "a" / "img01.txt").write_text("café au lait")
    lib.ingest(photos)
    assert lib.catalog.skipped() == []
    assert captions(lib)["img01.jpg"] == [("sidecar", "café au lait")]


def test_text_search_modes(fake_library, captioned):
    lib = fake_library()
    lib.ingest(captioned)
    keyword = lib.search("cats sofa", target="texts", mode="keyword")
    assert [h.text for h in keyword] == ["two cats asleep on a red sofa"]
    assert keyword[0].path.name == "img03.jpg" and keyword.plan.strategy == "fts"
    stemmed = lib.search("running dogs", target="texts", mode="keyword")  # porter stemming
    assert stemmed[0].text.startswith("A golden retriever running")
    # semantic: the fake text encoder gives an identical text the identical vector
    semantic = lib.search("snowy mountain at sunset", target="texts", mode="semantic", k=2)
    assert semantic[0].text == "snowy mountain at sunset" and semantic[0].score == pytest.approx(1, abs=1e-5)
    # hybrid is the default for texts: keyword and vector ranks fused
    hybrid = lib.search("snowy mountain at sunset", target="texts")
    assert hybrid.plan.mode == "hybrid" and hybrid[0].text == "snowy mountain at sunset"
    assert hybrid[0].similarity == pytest.approx(1, abs=1e-5)
    # image -> text, and keyword search of images through their texts
    by_image = lib.search(image=captioned / "a" / "img03.jpg", target="texts", k=4)
    assert by_image.plan.kind == "image → text" and len(by_image) == 4
    images = lib.search("birthday garden", mode="keyword")
    assert [h.path.name for h in images] == ["img05.jpg"]
    fused = lib.search("birthday garden", mode="hybrid", k=20)  # the one keyword match comes first
    assert fused[0].path.name == "img05.jpg" and len(fused) == 20
    with pytest.raises(UsageError, match="needs words"):
        lib.search(image=captioned / "a" / "img03.jpg", target="texts", mode="keyword")


def test_text_search_on_a_library_without_texts(fake_library, photos):
    lib = fake_library()
    lib.ingest(photos)
    with pytest.raises(EmptyLibrary, match="no texts yet"):
        lib.search("anything", target="texts")


def test_labels_are_texts_and_tags(fake_library, photos):
    lib = fake_library()
    lib.ingest(photos)
    rex = photos / "a" / "img01.jpg"
    assert lib.add_label(rex, "Rex") and lib.add_label(rex, "golden  retriever")
    assert not lib.add_label(rex, "Rex")
    assert lib.texts_of(rex) == [("label", "Rex"), ("label", "golden retriever")]
    tagged = lib.search("dog", filters=Filters(tags=("rex",)))
    assert [h.path for h in tagged] == [rex]
    assert [h.path for h in lib.search("x", filters=Filters(where='tag = "Golden Retriever"'))] == [rex]
    assert lib.search("golden", target="texts", mode="keyword")[0].text == "golden retriever"
    texts_consistent(lib)
    assert lib.remove_label(rex, "REX") and not lib.remove_label(rex, "rex")
    assert lib.texts_of(rex) == [("label", "golden retriever")]
    assert lib.remove_label(rex) and lib.texts_of(rex) == []
    texts_consistent(lib)
    lib.ingest(photos)  # labels are the user's: ingest keeps them (none left here) and all else
    with pytest.raises(UsageError, match="not an image of this library"):
        lib.add_label(photos / "nope.jpg", "x")


def test_query_arithmetic_like_and_filters(fake_library, photos):
    lib = fake_library()
    lib.ingest(photos)
    encoder = lib.encoder
    a, b, c = encoder.encode_texts(["dog", "snow", "indoors"])
    expected = 2 * a + b - c
    expected /= np.linalg.norm(expected)
    hits = lib.search('"dog":2 + snow - "indoors"', k=20)
    vectors = {h.id: v for h, v in zip(hits, lib._index("images").vectors(np.array([h.id for h in hits]))[1])}
    assert all(h.score == pytest.approx(float(vectors[h.id] @ expected), abs=1e-5) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # --like: an image of the library, no file decoding; it finds itself first
    me = photos / "a" / "img07.jpg"
    assert lib.search(like=me, k=1)[0].path == me
    mixed = lib.search(' + "in winter"', like=me, k=3)
    assert mixed.plan.kind == "image+text → image"
    # filters
    in_a = lib.search("x", k=100, filters=Filters(folders=("a",)))
    assert len(in_a) == 10 and all(h.path.parent.name == "a" for h in in_a)
    none = lib.search("x", filters=Filters(min_width=5000))
    assert len(none) == 0 and none.plan.strategy == "none"
    with pytest.raises(UsageError, match="column"):
        lib.search("x", filters=Filters(where="width >> 3"))
    with pytest.raises(UsageError, match="cancel out"):
        lib.search("dog - dog")


def test_migrating_a_0001_library_backfills_dates(fake_library, photos):
    from cbir.store.db import downgrade

    lib = fake_library()
    lib.ingest(photos)
    downgrade(lib.catalog.engine, "0001")
    lib.close()
    reopened = fake_library()
    hits = reopened.search("x", k=100, filters=Filters(after=__import__("datetime").datetime(1971, 1, 1)))
    assert len(hits) == 20 and all(h.taken is not None for h in hits)


def test_a_like_query_loads_no_model(fake_library, photos, monkeypatch, database_url):
    from cbir.config import resolve_settings
    from cbir.library import Library

    fake_library().ingest(photos)
    monkeypatch.setattr("cbir.encode.load_encoder", lambda *a: pytest.fail("the model was loaded"))
    lib = Library.open(resolve_settings(library=photos.parent / "lib", database_url=database_url, env={}))
    me = photos / "a" / "img07.jpg"
    assert lib.search(like=me, k=1, filters=Filters(folders=("a",)))[0].path == me

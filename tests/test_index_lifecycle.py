"""The index as a managed artifact: rebuilt as any kind from stored vectors (never re-encoding),
followed by ingest (deletions vanish at once), verified, repaired, switched atomically under
readers."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from cbir.config import resolve_settings
from cbir.encode.fake import FakeEncoder
from cbir.errors import UsageError
from cbir.index import generations
from cbir.library import Library
from cbir.query.filters import Filters
from cbir.store.catalog import ImageRecord
from tests.conftest import stored_vector_library


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def big_library(tmp_path):
    """4,000 clustered 32-d vectors stored straight in the catalog (no images to decode)."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 32))
    records = [ImageRecord(f"f/{i}.jpg", 1, 10**18, f"{i:064x}", 640, 480, "jpeg") for i in range(4000)]
    vectors = [_unit(centres[i % 40] + 0.4 * rng.standard_normal(32)) for i in range(4000)]
    lib, encoder = stored_vector_library(tmp_path, records, vectors)
    yield lib, encoder
    lib.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_rebuild_as_every_kind_reports_measured_recall(big_library, kind):
    lib, encoder = big_library
    images, texts = lib.rebuild_index(kind)
    assert (images.kind, images.vectors, texts.vectors) == (kind, 4000, 0)
    assert images.queries >= 10 and images.bytes > 0 and images.seconds > 0
    assert images.recall_at_10 >= 0.95, images  # IVF-PQ too: re-ranked with the exact vectors
    assert encoder.images_encoded == 0  # nothing re-encoded
    info = lib.index_info()
    assert info["indexes"]["images"]["spec"]["kind"] == kind
    assert info["indexes"]["images"]["build"]["recall_at_10"] == images.recall_at_10
    # a fresh process loads the same kind with its tuned parameters, and finds the neighbours
    # of queries like the library's own vectors (what the tuning measured)
    with Library.open(resolve_settings(library=lib.path, env={}), encoder=encoder) as again:
        index = again._index("images")
        assert index.kind == kind and index.spec.params == images.params
        ids, vectors = map(np.concatenate, zip(*lib.catalog.iter_vectors()))
        queries = _unit(vectors[:300:15] + 0.1 * np.random.default_rng(9).standard_normal((20, 32)))
        exact = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
        found = index.search(queries, 10)[1]
        recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found.tolist(), exact.tolist())])
        assert recall >= 0.9, recall
    assert lib.verify_index() == {"images": [], "texts": []}


def test_per_query_parameters_change_the_search_not_the_index(big_library):
    lib, _ = big_library
    [report, _] = lib.rebuild_index("ivf")
    narrow = lib.search("q", k=10, index_params={"nprobe": 1})
    wide = lib.search("q", k=10, index_params={"nprobe": 4096})
    exact = lib.search("q", k=10, strategy="exact-subset")
    assert [h.id for h in wide] == [h.id for h in exact]
    assert lib._index("images").spec.params == report.params  # defaults untouched
    assert len(narrow) == 10


def test_deleted_images_vanish_at_once_from_every_kind(fake_library, photos):
    for kind in ("hnsw", "ivf", "flat"):
        lib = fake_library(f"lib-{kind}")
        lib.ingest(photos)
        lib.rebuild_index(kind)
        victim = photos / "a" / "img03.jpg"
        data = victim.read_bytes()
        victim.unlink()
        lib.ingest(photos)
        for reopened in (lib, fake_library(f"lib-{kind}")):
            paths = [h.path for h in reopened.search(image=photos / "a" / "img05.jpg", k=50)]
            assert victim not in paths and len(paths) == 19
            assert reopened._index("images").kind == kind
        victim.write_bytes(data)  # and back again: found once
        lib.ingest(photos)
        paths = [h.path for h in lib.search(image=victim, k=50)]
        assert paths[0] == victim and paths.count(victim) == 1 and len(paths) == 20
        assert lib.verify_index()["images"] == []


def test_verify_finds_damage_and_repair_fixes_it(fake_library, photos):
    lib = fake_library()
    lib.ingest(photos)
    root = lib.index_dir

    def current_file():
        manifest = generations.read_manifest(root)
        return root / manifest.folder / "images.faiss"

    assert lib.verify_index() == {"images": [], "texts": []}
    # a truncated index file
    data = current_file().read_bytes()
    current_file().write_bytes(data[: len(data) // 2])
    assert "does not match its checksum" in lib.verify_index()["images"][0]
    assert lib.repair_index()["images"]
    assert lib.verify_index()["images"] == []
    # a wrong checksum in the manifest
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["indexes"]["images"]["files"]["images.faiss"] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert lib.verify_index()["images"]
    lib.repair_index()
    # ids missing from the index (saved as current, so only verify can tell)
    index = lib._index("images")
    index.remove(index.ids()[:3])
    lib.indexes.save({"images": index})
    [problem] = lib.verify_index()["images"]
    assert "3 images in the database are missing from the index" in problem
    assert lib.repair_index() and lib.verify_index()["images"] == []
    assert len(lib.search("x", k=50)) == 20


def test_a_reader_never_fails_while_the_index_is_rebuilt_and_resharded(big_library):
    lib, encoder = big_library
    lib.rebuild_index("flat")
    errors, searches = [], [0]
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                with Library.open(resolve_settings(library=lib.path, env={}), encoder=encoder) as other:
                    assert len(other.search("q", k=5)) == 5
                searches[0] += 1
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(e))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for kind in ("hnsw", "ivf", "flat", "hnsw"):
            lib.rebuild_index(kind)
            lib.shard_index(3, "hash")
    finally:
        stop.set()
        thread.join()
    assert errors == [] and searches[0] > 0
    assert sorted(os.listdir(lib.index_dir)) == [generations.read_manifest(lib.index_dir).folder, "manifest.json"]


@pytest.mark.parametrize("by", ["hash", "folder", "date"])
def test_flat_shards_merge_to_exactly_the_unsharded_results(fake_library, tmp_path, by):
    from cbir.query import Query
    from tests.conftest import write_image

    photos = tmp_path / "photos"
    for i in range(60):  # three top-level folders of different sizes, files with mtimes as dates
        path = write_image(photos / ("2019", "2020", "2021")[i % 3 if i % 5 else 0] / f"{i}.jpg", seed=i)
        os.utime(path, ns=(1, 1_500_000_000 * 10**9 + i * 86_400 * 10**9))
    lib = fake_library()
    lib.ingest(photos)
    queries = [Query(text=f"q{i}") for i in range(8)]
    before = [[(h.id, round(h.score, 5)) for h in r] for r in lib.search_many(queries, k=12)]
    reports = lib.shard_index(3, by)
    assert len(reports) == 3 and sum(r.vectors for r in reports) == 60 and all(r.vectors for r in reports)
    for reopened in (lib, fake_library()):
        index = reopened._index("images")
        assert len(index.shards) == 3 and index.router.by == by
        after = [[(h.id, round(h.score, 5)) for h in r] for r in reopened.search_many(queries, k=12)]
        assert after == before
    # ingest keeps routing: a new photo lands in one shard, a deleted one leaves at once
    write_image(photos / "2020" / "new.jpg", seed=999)
    (photos / "2019" / "0.jpg").unlink()
    lib.ingest(photos)
    index = lib._index("images")
    assert index.ntotal == 60 and sum(s.ntotal for s in index.shards) == 60
    names = [h.path.name for h in lib.search("x", k=100)]
    assert "new.jpg" in names and "0.jpg" not in names
    assert lib.verify_index()["images"] == []
    info = lib.index_info()["indexes"]["images"]
    assert info["sharding"]["router"]["by"] == by and sum(info["sharding"]["counts"]) == 60


def test_a_damaged_shard_is_found_and_repaired(fake_library, photos):
    lib = fake_library()
    lib.ingest(photos)
    lib.shard_index(3, "hash")
    before = [h.id for h in lib.search("x", k=10)]
    manifest = generations.read_manifest(lib.index_dir)
    shard = lib.index_dir / manifest.folder / "images.1.faiss"
    shard.write_bytes(shard.read_bytes()[:64])
    assert "images.1.faiss does not match its checksum" in lib.verify_index()["images"][0]
    lib.repair_index()
    assert lib.verify_index()["images"] == []
    assert len(lib._index("images").shards) == 3
    # only the damaged shard was rebuilt: the others kept their build records
    records = generations.read_manifest(lib.index_dir).indexes["images"].build["shards"]
    old = manifest.indexes["images"].build["shards"]
    assert records[0] == old[0] and records[2] == old[2] and records[1] != old[1]
    lib.indexes.forget()
    assert [h.id for h in lib.search("x", k=10)] == before
    # a missing shard file is rebuilt the same way
    shard = lib.index_dir / generations.read_manifest(lib.index_dir).folder / "images.2.faiss"
    shard.unlink()
    assert lib.verify_index()["images"] == ["images.2.faiss is missing"]
    lib.repair_index()
    assert lib.verify_index()["images"] == [] and len(lib._index("images").shards) == 3


def test_one_shard_is_rebuilt_on_its_own(fake_library, photos):
    lib = fake_library()
    lib.ingest(photos)
    before = [h.id for h in lib.search("x", k=20)]
    lib.shard_index(3, "hash")
    untouched = generations.read_manifest(lib.index_dir).indexes["images"].files
    report = lib.rebuild_shard(1, "hnsw")
    assert report.kind == "hnsw" and report.name == "images shard 1" and report.bytes > 0
    files = generations.read_manifest(lib.index_dir).indexes["images"].files
    assert files["images.0.faiss"] == untouched["images.0.faiss"]
    assert files["images.1.faiss"] != untouched["images.1.faiss"]
    index = lib._index("images")
    assert [s.kind for s in index.shards] == ["flat", "hnsw", "flat"] and index.kind == "flat+hnsw"
    assert not index.exact
    lib.indexes.forget()  # as a new process opens it: each shard read as the kind it is
    index = lib._index("images")
    assert [s.kind for s in index.shards] == ["flat", "hnsw", "flat"]
    assert "efSearch" in index.shards[1].spec.params and index.shards[0].spec.params == {}
    assert sorted(h.id for h in lib.search("x", k=20)) == sorted(before)
    assert lib.verify_index()["images"] == []
    with pytest.raises(UsageError, match="no shard 3"):
        lib.rebuild_shard(3)


def test_post_filter_on_ivf_never_stops_short_of_the_matches(big_library):
    """IVF returns only what its probed lists hold: a selective filter whose matches lie in other
    lists must still get every match, through the exact subset, not a short list."""
    lib, _ = big_library
    lib.rebuild_index("ivf")
    where = Filters(where="path in (" + ", ".join(f'"f/{i}.jpg"' for i in range(0, 4000, 400)) + ")")
    forced = lib.search("q", k=10, filters=where, strategy="ann-post-filter", index_params={"nprobe": 1})
    exact = lib.search("q", k=10, filters=where, strategy="exact-subset")
    assert len(exact) == 10
    assert [h.id for h in forced] == [h.id for h in exact]
    assert "exact subset instead" in forced.plan.reason and forced.plan.strategy == "exact-subset"


def test_an_index_copied_in_from_another_models_library_is_rebuilt(fake_library, photos):
    """Same dimension, same files, same ids, another model: its index must not answer."""
    import shutil

    from cbir.index.generations import read_manifest

    mine, theirs = fake_library("mine", FakeEncoder(seed=0)), fake_library("theirs", FakeEncoder(seed=1))
    mine.ingest(photos)
    theirs.ingest(photos)
    query = photos / "a" / "img01.jpg"
    expected = [(h.id, round(h.score, 5)) for h in mine.search(image=query, k=5)]
    mine.close()
    shutil.rmtree(mine.index_dir)
    shutil.copytree(theirs.index_dir, mine.index_dir)
    reopened = fake_library("mine", FakeEncoder(seed=0))
    assert [(h.id, round(h.score, 5)) for h in reopened.search(image=query, k=5)] == expected
    assert read_manifest(reopened.index_dir).model["weights"] == "seed0"  # rebuilt and saved as its own
    assert not any(reopened.verify_index().values())
    reopened.close()
    theirs.close()


def test_a_generation_left_half_written_by_a_killed_writer_is_started_anew(fake_library, photos):
    """A writer killed after it hard-linked an unchanged index into the next generation's folder,
    but before the switch: the next save writes that folder again (it used to fail with 'the same
    file'), and the current generation's files are untouched."""
    lib = fake_library()
    lib.ingest(photos)
    root = lib.index_dir
    manifest = generations.read_manifest(root)
    current = root / manifest.folder
    texts_before = generations.sha256_of(current / "texts.faiss")
    stale = root / f"{generations.PREFIX}{manifest.generation + 1:06d}"
    stale.mkdir()
    os.link(current / "texts.faiss", stale / "texts.faiss")
    (stale / "images.faiss").write_bytes(b"half a file")

    saved = lib.indexes.save({"images": lib._index("images")})
    assert saved.folder == stale.name
    assert generations.sha256_of(root / saved.folder / "texts.faiss") == texts_before
    assert lib.verify_index() == {"images": [], "texts": []}
    assert sorted(os.listdir(root)) == [saved.folder, "manifest.json"]

"""Sharded search served by Ray actors (cbir.distributed.search): the same ids and scores as the
local sharded search for every sharding rule, actor layout and per-call parameter; the planner,
`cbir serve --engine ray` and `cbir search --engine ray` on top; refresh after an ingest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cbir.config import resolve_settings
from cbir.encode.fake import FakeEncoder
from cbir.errors import UsageError
from cbir.library import Library
from cbir.query import Query
from cbir.query.filters import Filters
from cbir.store.catalog import ImageRecord
from tests.conftest import stored_vector_library

# Ray clusters: the long suite (.ci/run), not the README's fast tier
pytestmark = pytest.mark.slow

# Actors share the session's 2-CPU cluster: a quarter CPU each lets every layout be placed.
CPUS = 0.25


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """3,000 clustered 32-d vectors stored straight in a catalog, in three top-level folders of
    different sizes with dates over three years (no images to decode)."""
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((30, 32))
    records = [
        ImageRecord(
            f"{('2019', '2020', '2021')[i % 3 if i % 4 else 0]}/{i}.jpg",
            1,
            10**18,
            f"{i:064x}",
            640,
            480,
            "jpeg",
            taken_at=datetime(2019, 1, 1) + timedelta(hours=9 * i),
        )
        for i in range(3000)
    ]
    vectors = [_unit(centres[i % 30] + 0.5 * rng.standard_normal(32)) for i in range(3000)]
    lib, encoder = stored_vector_library(tmp_path_factory.mktemp("ray-search"), records, vectors)
    ids, vectors = map(np.concatenate, zip(*lib.catalog.iter_vectors()))
    queries = np.concatenate(
        [_unit(vectors[::250] + 0.2 * rng.standard_normal((12, 32))), _unit(rng.standard_normal((4, 32)))]
    )
    yield lib, encoder, queries
    lib.close()


@pytest.fixture(scope="module")
def engines(ray_local):
    """Two actor layouts reused by every test of the module: one shard per actor, and every
    shard on one actor."""
    from cbir.distributed.search import RayEngine, RayOptions

    made = {
        "one shard per actor": RayEngine(RayOptions(num_cpus=CPUS)),
        "one actor": RayEngine(RayOptions(actors=1, num_cpus=CPUS)),
    }
    yield made
    for engine in made.values():
        engine.close()


def _loaded(lib):
    """The image index as a reader loads it from the saved files, and those files' checksums."""
    lib.indexes.forget()
    return lib.indexes.get("images"), lib.indexes._files["images"]


def _same(local, served, queries, k, params=None):
    expected = local.search(queries, k, params)
    got = served.search(queries, k, params)
    valid = expected[1] >= 0
    np.testing.assert_array_equal(got[1], np.where(valid, expected[1], -1))
    np.testing.assert_array_equal(got[0][valid], expected[0][valid])


@pytest.mark.parametrize("by", ["hash", "folder", "date"])
def test_ray_search_equals_local_sharded_search(stored, engines, by):
    lib, _, queries = stored
    lib.shard_index(3, by, "flat")
    local, files = _loaded(lib)
    for layout, engine in engines.items():
        served = engine.publish(local, files)
        assert served.actor_count == (3 if layout == "one shard per actor" else 1)
        assert (served.ntotal, served.kind, served.exact) == (3000, "flat", True)
        for k in (1, 10, 100):
            _same(local, served, queries, k)
        _same(local, served, queries[0], 10)  # one query, as the planner asks
        found, vectors = served.vectors(np.asarray([2999, 7, 123456, 1]))
        expected = local.vectors(np.asarray([2999, 7, 123456, 1]))
        np.testing.assert_array_equal(found, expected[0])
        np.testing.assert_array_equal(vectors, expected[1])
        assert np.array_equal(np.sort(served.ids()), np.sort(local.ids()))


@pytest.mark.parametrize(
    "kind, knob, values",
    [("ivf", "nprobe", (1, 4, 64)), ("hnsw", "efSearch", (8, 32, 256)), ("ivfpq", "nprobe", (2, 16))],
)
def test_per_call_parameters_reach_the_actors(stored, engines, kind, knob, values):
    lib, _, queries = stored
    lib.shard_index(3, "hash", kind)
    local, files = _loaded(lib)
    engine = engines["one actor"] if kind == "ivfpq" else engines["one shard per actor"]
    served = engine.publish(local, files)
    assert served.kind == kind and not served.exact
    results = set()
    for value in values:
        _same(local, served, queries, 10, {knob: value})
        results.add(served.search(queries, 10, {knob: value})[1].tobytes())
    _same(local, served, queries, 10)  # the build-time defaults
    assert len(results) > 1  # the parameter changed the answer, so it was applied remotely
    with pytest.raises(UsageError, match=f"{knob} must be a whole number"):  # the actor's own error
        served.search(queries, 10, {knob: 0})
    if kind == "hnsw":  # tombstones (removed rows of a graph) travel with the shard
        for shard in local.shards:
            shard.remove(shard.ids()[::7])
        served = engine.publish(local, None)
        _same(local, served, queries, 20, {"efSearch": 64})


def test_the_default_actor_count_fits_the_cluster_and_an_impossible_one_fails_at_once(stored, ray_local):
    from cbir.distributed.search import RayEngine, RayError, RayOptions

    assert RayOptions().actor_count(4, cluster_cpus=2) == 2  # one a shard, as many as fit
    assert RayOptions().actor_count(4, cluster_cpus=16) == 4
    assert RayOptions(num_cpus=0).actor_count(4, cluster_cpus=0) == 4
    assert RayOptions(shards_per_actor=3).actor_count(4, cluster_cpus=1) == 2  # asked for: kept
    assert RayOptions(actors=8).actor_count(4, cluster_cpus=1) == 4
    lib, _, _ = stored
    lib.shard_index(4, "hash", "flat")
    engine = RayEngine(RayOptions(actors=4, num_cpus=1))  # the session's cluster has 2 CPUs
    try:
        with pytest.raises(RayError, match="4 Ray actor.* do not fit this Ray cluster's 2 CPUs"):
            engine.publish(lib._index("images"))
        assert engine.actors == []  # refused before any actor was started
    finally:
        engine.close()


def test_planner_searches_give_the_same_hits_on_ray(stored, engines):
    from cbir.distributed.search import RayOptions, attach

    lib, encoder, _ = stored
    lib.shard_index(3, "folder", "flat")
    with Library.open(resolve_settings(library=lib.path, env={}), encoder=encoder) as on_ray:
        attach(on_ray, RayOptions(shards_per_actor=2, num_cpus=CPUS))
        assert type(on_ray._index("images")).__name__ == "RayShardedIndex"
        queries = [Query(text=f"query {i}") for i in range(6)] + [Query(like=None, text="q")]
        filters = [
            Filters(),
            Filters(folders=("2020",)),
            Filters(after=datetime(2020, 6, 1)),
            Filters(where="taken < 2019-03-01"),
        ]
        for f in filters:
            for strategy in ("auto", "ann", "exact-subset", "ann-post-filter"):
                want = [
                    [(h.id, h.score) for h in r] for r in lib.search_many(queries, k=15, filters=f, strategy=strategy)
                ]
                got = [
                    [(h.id, h.score) for h in r]
                    for r in on_ray.search_many(queries, k=15, filters=f, strategy=strategy)
                ]
                assert got == want, (f, strategy)
        paged = on_ray.search("q", k=5, offset=10, dedup=True)
        assert [h.id for h in paged] == [h.id for h in lib.search("q", k=5, offset=10, dedup=True)]
        with pytest.raises(Exception, match="read-only"):
            on_ray._index("images").add(np.asarray([1]), np.zeros((1, 32), np.float32))
    assert on_ray.indexes.serving is None  # closing the library stopped its actors


def test_an_ingest_beside_a_ray_served_reader_is_seen_after_the_refresh(ray_local, tmp_path, fake_library):
    from cbir.distributed.search import RayOptions, attach
    from tests.conftest import write_image

    photos = tmp_path / "photos"
    for i in range(30):
        write_image(photos / ("a", "b")[i % 2] / f"{i}.jpg", seed=i)
    writer = fake_library()
    writer.ingest(photos)
    writer.shard_index(3, "hash")
    reader = Library.open(resolve_settings(library=writer.path, env={}), encoder=FakeEncoder())
    reader.indexes.follow = True  # as cbir serve opens it
    engine = attach(reader, RayOptions(num_cpus=CPUS))
    try:
        assert len(reader.search("x", k=100)) == 30 and engine.shipped == 3
        write_image(photos / "a" / "new.jpg", seed=999)
        writer.ingest(photos)
        names = [h.path.name for h in reader.search("x", k=100)]
        assert len(names) == 31 and "new.jpg" in names
        assert engine.shipped == 4  # only the shard the new photo went to was sent again
        assert sorted(len(held) for held in engine.held) == [1, 1, 1]  # the old copy was dropped
        assert reader.search(image=photos / "a" / "new.jpg", k=1)[0].path.name == "new.jpg"
        (photos / "b" / "1.jpg").unlink()
        writer.ingest(photos)
        assert "1.jpg" not in [h.path.name for h in reader.search("x", k=100)]
        writer.rebuild_index("hnsw")  # one index again, of another kind: one actor, one shard
        index = reader._index("images")
        assert (index.kind, index.shard_count, index.actor_count) == ("hnsw", 1, 1)
        assert len(reader.search("x", k=100)) == 30
    finally:
        reader.close()
        writer.close()


def _kill(ray, actor) -> None:
    """``actor`` killed, as when its node goes down (no restart by Ray), and known dead: ray.kill
    returns before the actor stops, and a call meanwhile would still be answered."""
    ray.kill(actor)
    for _ in range(300):
        try:
            ray.get(actor.node.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError("the killed actor still answers")


def test_a_lost_actor_is_answered_for_then_replaced(ray_local, tmp_path, fake_library):
    """A search reaching a dead actor is answered at once by the driver's copy of its shards, the
    same results; in the background a new actor takes its place and gets its shard, and searches
    go back to the actors."""
    import shutil

    from cbir.distributed.search import RayOptions, attach
    from cbir.index.generations import read_manifest
    from tests.conftest import write_image

    for i in range(30):
        write_image(tmp_path / "photos" / f"{i}.jpg", seed=i)
    writer = fake_library()
    writer.ingest(tmp_path / "photos")
    writer.shard_index(3, "hash")
    writer.close()
    reader = Library.open(resolve_settings(library=writer.path, env={}), encoder=FakeEncoder())
    engine = attach(reader, RayOptions(num_cpus=CPUS))
    try:
        before = [(h.id, h.score) for h in reader.search("x", k=20)]
        lost = engine.actors[1]
        _kill(ray_local, lost)
        started = time.monotonic()
        assert [(h.id, h.score) for h in reader.search("x", k=20)] == before
        assert time.monotonic() - started < engine.options.deadline
        assert 1 in engine.down or engine.recovered  # answered for, replaced behind the scenes
        for _ in range(600):
            if not engine.down and engine.recovered:
                break
            time.sleep(0.1)
        assert engine.actors[1] is not lost and engine.shipped == 4 and not engine.down  # its one shard sent again
        assert [(h.id, h.score) for h in reader.search("x", k=20)] == before
        # the driver's copy is mapped from the generation's files (memory the OS can take back,
        # not the process's own); with that generation removed, nothing to load again, it answers
        folder = writer.path / "index" / read_manifest(writer.path / "index").folder
        maps = Path("/proc/self/maps").read_text()
        assert all(str(folder / f"images.{n}.faiss") in maps for n in range(3))
        served = reader._index("images")
        served._reload = None
        shutil.rmtree(folder)
        _kill(ray_local, engine.actors[0])
        assert [(h.id, h.score) for h in reader.search("x", k=20)] == before
        assert 0 in engine.down and engine.describe()["actors"][0]["down"]
    finally:
        reader.close()


# -- cbir serve and cbir search ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory):
    """24 generated photos in a/ and b/ on cbir-tiny, sharded in two by folder."""
    from cbir.synthetic import make_gallery

    base = tmp_path_factory.mktemp("ray-serve")
    for folder, seed in (("a", 5), ("b", 6)):
        make_gallery(base / "photos" / folder, 12, seed=seed)
    with Library.open(
        resolve_settings(library=base / "lib", model="cbir-tiny", device="cpu", env={}), create=True
    ) as lib:
        lib.ingest(base / "photos")
        lib.shard_index(2, "folder")
    return base


def test_serve_with_the_ray_engine_answers_like_the_local_server(ray_local, tiny_library):
    from fastapi.testclient import TestClient

    from cbir.distributed.search import RayOptions
    from cbir.serve import create_app, open_for_serving

    settings = resolve_settings(library=tiny_library / "lib", device="cpu", env={})
    local = open_for_serving(settings)
    on_ray = open_for_serving(settings, RayOptions(num_cpus=CPUS))
    try:
        assert on_ray.indexes.loaded("images").actor_count == 2
        clients = [TestClient(create_app(lib), base_url="http://127.0.0.1") for lib in (local, on_ray)]
        engines = [c.get("/api/status").json()["engine"] for c in clients]
        assert engines == [
            {"engine": "local"},
            {
                "engine": "ray",
                "address": "private local cluster (127.0.0.1)",
                "shards": 2,
                "actors": [
                    {"actor": 0, "shards": [0], "node": "127.0.0.1", "down": False},
                    {"actor": 1, "shards": [1], "node": "127.0.0.1", "down": False},
                ],
            },
        ]
        requests = [
            ("/api/search", {"q": "a red circle", "k": 7}),
            ("/api/search", {"q": "a blue square", "k": 30, "folder": "b"}),
            ("/api/search", {"q": "green", "k": 5, "offset": 3, "strategy": "ann-post-filter", "folder": "a"}),
            ("/api/images/3/similar", {"k": 6}),
        ]
        for url, params in requests:
            answers = [c.get(url, params=params) for c in clients]
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
            hits = [[(h["id"], h["score"]) for h in a.json()["hits"]] for a in answers]
            assert hits[0] == hits[1] and hits[0], url
    finally:
        local.close()
        on_ray.close()


def _cli(*args):
    from cbir.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_search_with_the_ray_engine(ray_local, tiny_library, monkeypatch):
    library = str(tiny_library / "lib")
    args = ["search", "a red circle", "-k", "8", "--json", "--library", library, "--device", "cpu"]
    local = _cli(*args)
    on_ray = _cli(*args, "--engine", "ray", "--shards-per-actor", "2", "--actor-cpus", str(CPUS))
    assert local.exit_code == 0 and on_ray.exit_code == 0, on_ray.output
    rows = [[(r["id"], r["score"]) for r in map(json.loads, out.output.splitlines())] for out in (local, on_ray)]
    assert rows[0] == rows[1] and len(rows[0]) == 8
    monkeypatch.setenv("CBIR_ENGINE", "ray")  # the same switch as cbir ingest's
    explained = _cli(
        "search",
        "--like",
        str(tiny_library / "photos" / "a" / "img_00002.jpg"),
        "--explain",
        "--library",
        library,
        "--actor-cpus",
        str(CPUS),
    )
    assert explained.exit_code == 0 and "img_00002" in explained.output
    # who answered: the engine, the cluster, each actor's shards and node
    assert "engine    ray, private local cluster (127.0.0.1): 2 shard actors\n" in explained.output
    assert "actor 0 on 127.0.0.1: shard 0\n          actor 1 on 127.0.0.1: shard 1\n" in explained.output
    one = _cli(*args, "--explain", "--engine", "ray", "--actors", "1", "--actor-cpus", str(CPUS))
    plan = json.loads(one.output.splitlines()[0])["plan"]
    assert plan["engine"]["actors"] == [{"actor": 0, "shards": [0, 1], "node": "127.0.0.1", "down": False}]
    monkeypatch.delenv("CBIR_ENGINE")
    wrong = _cli("search", "x", "--library", library, "--address", "auto")
    assert wrong.exit_code == 2 and "--address go with --engine ray" in wrong.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    missing = _cli("search", "x", "--library", library, "--engine", "ray")
    assert missing.exit_code != 0 and "pip install 'cbir[ray]'" in missing.output
    assert len(missing.output.strip().splitlines()) == 1


def test_importing_cbir_and_its_cli_does_not_import_ray():
    code = "import sys, cbir, cbir.cli, cbir.serve; assert 'ray' not in sys.modules, 'ray imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0, done.stderr

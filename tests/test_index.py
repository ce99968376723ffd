"""The index of a library's vectors: every kind follows the database (adds, removals,
replacements), searches with per-call parameters, and is saved as atomic generations."""

import numpy as np
import pytest

from cbir.index import generations
from cbir.index.choice import choose_spec
from cbir.index.vector_index import VectorIndex


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_index_equals_brute_force_and_survives_save(tmp_path):
    rng = np.random.default_rng(0)
    vectors = _unit(rng.standard_normal((500, 16)))
    ids = np.arange(1000, 1500, dtype=np.int64)
    index = VectorIndex.build(16, [(ids[:200], vectors[:200]), (ids[200:], vectors[200:])], 3)
    index.remove(ids[:10])
    queries = _unit(rng.standard_normal((5, 16)))
    scores, found = index.search(queries, 7)
    exact = queries @ vectors[10:].T
    want = ids[10:][np.argsort(-exact, axis=1)[:, :7]]
    np.testing.assert_array_equal(found, want)
    np.testing.assert_allclose(scores, np.sort(exact, axis=1)[:, ::-1][:, :7], rtol=1e-5)

    generations.save(tmp_path, {"images": index}, {"spec": "m"})
    assert generations.load(tmp_path, "images", 16, vector_version=4)[0] is None  # stale
    assert generations.load(tmp_path, "images", 32, vector_version=3)[0] is None  # other model
    loaded, entry = generations.load(tmp_path, "images", 16, vector_version=3)
    np.testing.assert_array_equal(loaded.search(queries, 7)[1], found)
    assert sorted(loaded.ids().tolist()) == ids[10:].tolist()
    assert entry.count == 490 and entry.spec.kind == "flat"


def test_fewer_vectors_than_k_pads_with_minus_one():
    index = VectorIndex.build(4, [(np.array([7]), _unit(np.ones((1, 4))))], 1)
    _, found = index.search(_unit(np.ones((1, 4))), 3)
    assert found.tolist() == [[7, -1, -1]]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_every_kind_follows_adds_removals_and_replacements(kind, tmp_path):
    rng = np.random.default_rng(1)
    n, dim = 3000, 32
    vectors = _unit(rng.standard_normal((n, dim)))
    ids = np.arange(10, 10 + n, dtype=np.int64) * 3
    spec = choose_spec(n, dim, kind=kind)
    index = VectorIndex.build(dim, [(ids, vectors)], 1, spec=spec, sample=vectors)
    exhaustive = {"nprobe": 10_000, "efSearch": 2048}  # per call: every list, a wide graph walk
    # removal: gone from results at once
    gone = ids[:50]
    index.remove(gone)
    assert index.ntotal == n - 50
    _, found = index.search(vectors[:50], 5, exhaustive)
    assert not set(found.ravel().tolist()) & set(gone.tolist())
    # replacement: the id now stands for the new vector only
    target = ids[100]
    new = _unit(rng.standard_normal((1, dim)))
    index.remove(np.array([target]))
    index.add(np.array([target]), new)
    _, found = index.search(new, 3, exhaustive)
    assert found[0][0] == target and found[0].tolist().count(target) == 1
    if kind != "ivfpq":  # PQ keeps approximate codes only
        got_ids, got = index.vectors(np.array([target, ids[200], 999_999]))
        assert got_ids.tolist() == [target, ids[200]]
        np.testing.assert_allclose(got, np.vstack([new, vectors[200:201]]), atol=1e-5)
    assert sorted(index.ids().tolist()) == sorted(set(ids.tolist()) - set(gone.tolist()))
    # and all of it survives a save (tombstones too)
    index.vector_version = 2
    generations.save(tmp_path, {"images": index}, {})
    loaded, _ = generations.load(tmp_path, "images", dim, 2)
    assert loaded.ntotal == index.ntotal and loaded.kind == kind
    np.testing.assert_array_equal(loaded.search(new, 3, exhaustive)[1], index.search(new, 3, exhaustive)[1])


def test_a_new_generation_replaces_the_old_one_whole(tmp_path):
    rng = np.random.default_rng(2)
    first = VectorIndex.build(8, [(np.arange(5), _unit(rng.standard_normal((5, 8))))], 1)
    texts = VectorIndex.build(8, [(np.arange(3), _unit(rng.standard_normal((3, 8))))], 1, name="texts")
    one = generations.save(tmp_path, {"images": first, "texts": texts}, {})
    second = VectorIndex.build(8, [(np.arange(7), _unit(rng.standard_normal((7, 8))))], 2)
    two = generations.save(tmp_path, {"images": second}, {})  # texts carried over unchanged
    assert two.generation == one.generation + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [two.folder, "manifest.json"]
    assert generations.load(tmp_path, "images", 8, 2)[0].ntotal == 7
    assert generations.load(tmp_path, "texts", 8, 1)[0].ntotal == 3
    assert two.indexes["texts"].files == one.indexes["texts"].files

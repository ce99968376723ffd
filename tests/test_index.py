import numpy as np

from cbir.index.flat import FlatIndex


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_index_equals_brute_force_and_survives_save(tmp_path):
    rng = np.random.default_rng(0)
    vectors = _unit(rng.standard_normal((500, 16)))
    ids = np.arange(1000, 1500, dtype=np.int64)
    index = FlatIndex.build(16, [(ids[:200], vectors[:200]), (ids[200:], vectors[200:])], 3)
    index.remove(ids[:10])
    queries = _unit(rng.standard_normal((5, 16)))
    scores, found = index.search(queries, 7)
    exact = queries @ vectors[10:].T
    want = ids[10:][np.argsort(-exact, axis=1)[:, :7]]
    np.testing.assert_array_equal(found, want)
    np.testing.assert_allclose(scores, np.sort(exact, axis=1)[:, ::-1][:, :7], rtol=1e-5)

    index.save(tmp_path)
    assert FlatIndex.load(tmp_path, 16, vector_version=4) is None  # stale
    assert FlatIndex.load(tmp_path, 32, vector_version=3) is None  # other model
    loaded = FlatIndex.load(tmp_path, 16, vector_version=3)
    np.testing.assert_array_equal(loaded.search(queries, 7)[1], found)
    assert sorted(loaded.ids().tolist()) == ids[10:].tolist()


def test_fewer_vectors_than_k_pads_with_minus_one():
    index = FlatIndex.build(4, [(np.array([7]), _unit(np.ones((1, 4))))], 1)
    _, found = index.search(_unit(np.ones((1, 4))), 3)
    assert found.tolist() == [[7, -1, -1]]

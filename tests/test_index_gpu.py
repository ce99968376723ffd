"""`--gpu` for indexes. Without a GPU: a clear one-line error. The build/search plumbing runs
against a stand-in for the faiss GPU calls (copies that stay on the CPU), so the logic is tested
on every machine; on a machine with faiss GPU the real device is tested too."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from cbir.errors import UsageError
from cbir.index import gpu as faiss_gpu
from cbir.index.build import build
from cbir.index.choice import choose_spec
from cbir.index.topk import exact_top_k, recall_at_k

DIM = 32


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, DIM), dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _build(vectors: np.ndarray, kind: str, gpu):
    ids = np.arange(len(vectors), dtype=np.int64) * 7 + 3  # ids unlike row numbers

    def chunks():
        for s in range(0, len(ids), 1000):
            yield ids[s : s + 1000], vectors[s : s + 1000]

    def sample(size):
        pick = np.random.default_rng(1).choice(len(ids), min(size, len(ids)), replace=False)
        return ids[pick], vectors[pick]

    def exact(wanted):
        rows = (np.asarray(wanted) - 3) // 7
        return np.asarray(wanted), vectors[rows]

    index, report = build("images", DIM, len(ids), chunks, sample, 1, kind=kind, exact_source=exact, gpu=gpu)
    return index, report, ids, chunks


@pytest.fixture
def fake_gpu(monkeypatch):
    """faiss GPU calls replaced by CPU copies, counting the copies made to the 'device'."""
    copies = []

    def to_gpu(index, kind):
        faiss_gpu.check_kind(kind)
        copies.append(kind)
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss_gpu, "unavailable", lambda: None)
    monkeypatch.setattr(faiss_gpu, "to_gpu", to_gpu)
    monkeypatch.setattr(faiss_gpu, "to_cpu", faiss.clone_index)
    return copies


@pytest.mark.skipif(faiss_gpu.available(), reason="a GPU is usable here")
def test_asking_for_the_gpu_without_one_is_a_clear_error(tmp_path):
    assert faiss_gpu.resolve(None) is False  # auto: quietly on the CPU
    assert faiss_gpu.resolve(False) is False
    with pytest.raises(UsageError, match="--gpu: .*(no GPU support|no CUDA device)"):
        faiss_gpu.resolve(True)
    with pytest.raises(UsageError, match="--gpu"):
        _build(_clustered(200), "flat", gpu=True)


def test_gpu_builds_choose_kinds_the_gpu_has(fake_gpu):
    assert choose_spec(200_000, 512).kind == "hnsw"
    on_gpu = choose_spec(200_000, 512, gpu=True)
    assert on_gpu.kind == "ivf" and "GPU" in on_gpu.reason
    with pytest.raises(UsageError, match="no GPU hnsw"):
        choose_spec(200_000, 512, kind="hnsw", gpu=True)
    # the CPU would take the longest code (256 bytes); the GPU's longest is 96 bytes
    assert choose_spec(200_000, 512, kind="ivfpq").shape["m"] == 256
    assert choose_spec(200_000, 512, kind="ivfpq", gpu=True).shape["m"] == 64


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_gpu_build_is_searched_on_the_device_and_saved_from_the_cpu(fake_gpu, kind):
    vectors = _clustered(6000)
    index, report, ids, chunks = _build(vectors, kind, gpu=True)
    assert report.gpu and index.gpu and fake_gpu == [kind]
    assert report.recall_at_10 >= 0.95
    queries = _clustered(50, seed=9)
    truth = exact_top_k(chunks(), queries, 10)
    assert recall_at_k(index.search(queries, 10)[1], truth) >= 0.9
    # the CPU form (what is saved) is whole: ids and reconstruction by id work
    assert sorted(index.ids()) == sorted(ids)
    if index.stores_exact_vectors:
        found, got = index.vectors(ids[[5, 17]])
        np.testing.assert_allclose(got, vectors[[5, 17]], rtol=1e-6)
    assert faiss.serialize_index(index.faiss_index).nbytes > 0
    # wider than the GPU's k-selection: answered by the CPU index, same top results
    wide = index.search(queries[:2], faiss_gpu.MAX_K + 1)[1]
    assert wide.shape == (2, faiss_gpu.MAX_K + 1)
    # a change drops the device copy; the next search copies the index over again
    index.remove(ids[:10])
    index.search(queries[:1], 5)
    assert fake_gpu == [kind, kind]
    assert not np.isin(index.search(queries, 10)[1], ids[:10]).any()


def test_auto_uses_the_gpu_only_past_the_flat_size(fake_gpu):
    _, report, _, _ = _build(_clustered(500), "auto", gpu=None)
    assert report.kind == "flat" and not report.gpu and fake_gpu == []


@pytest.mark.skipif(not faiss_gpu.available(), reason="needs faiss GPU and a CUDA device")
@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_real_gpu_build_reaches_target_recall(kind):
    vectors = _clustered(20_000)
    index, report, _, chunks = _build(vectors, kind, gpu=True)
    assert report.gpu and report.recall_at_10 >= 0.95
    queries = _clustered(100, seed=9)
    assert recall_at_k(index.search(queries, 10)[1], exact_top_k(chunks(), queries, 10)) >= 0.9

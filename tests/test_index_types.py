"""Index types (cbir.index: types, choice, faiss_ops, topk): sizing rules, building with external
ids, per-call search parameters and id selectors, streamed ground truth, and recall tuning on
clustered vectors."""

import json
import time

import faiss
import numpy as np
import pytest

from cbir.errors import UsageError
from cbir.index import choice, faiss_ops, topk, types
from cbir.units import parse_bytes

N, DIM, CLUSTERS, NQ, K = 20_000, 64, 100, 200, 10


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _measure(index, spec, queries, true_ids):
    """What tune measures: recall@K of a search with the parameters it tries."""
    return lambda params: topk.recall_at_k(faiss_ops.search(index, queries, K, spec, params)[1], true_ids, K)


@pytest.fixture(scope="module")
def data():
    """Clustered unit vectors (100 Gaussian clusters) with ids that are not row numbers, and
    held-out queries: perturbed copies of library members (not themselves in the index)."""
    rng = np.random.default_rng(7)
    centers = _unit(rng.standard_normal((CLUSTERS, DIM)))
    members = centers[rng.integers(0, CLUSTERS, N)]
    vectors = _unit(members + 0.5 * rng.standard_normal((N, DIM)) / np.sqrt(DIM))
    ids = 1000 + 3 * np.arange(N, dtype=np.int64)
    queries = _unit(vectors[rng.integers(0, N, NQ)] + 0.25 * rng.standard_normal((NQ, DIM)) / np.sqrt(DIM))
    chunks = [(ids[s : s + 4096], vectors[s : s + 4096]) for s in range(0, N, 4096)]
    true_ids = topk.exact_top_k(chunks, queries, K)
    return vectors, ids, queries, true_ids


@pytest.fixture(scope="module")
def built(data):
    """One index of each kind over the data (spec chosen by choose_spec for that kind), built once."""
    vectors, ids, _, _ = data
    indexes = {}
    for kind in types.KINDS:
        start = time.perf_counter()
        spec = choice.choose_spec(N, DIM, kind=kind)
        index = faiss_ops.new_index(spec, DIM)
        rng = np.random.default_rng(1)
        sample = vectors[rng.choice(N, spec.train_size, replace=False)] if spec.train_size else vectors[:0]
        faiss_ops.train(index, spec, sample)
        for s in range(0, N, 5000):
            index.add_with_ids(vectors[s : s + 5000], ids[s : s + 5000])
        indexes[kind] = (spec, index, time.perf_counter() - start)
    return indexes


# -- building, tuning, recall ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_each_kind_tunes_to_target_recall_with_external_ids(kind, data, built):
    vectors, ids, queries, true_ids = data
    spec, index, build_s = built[kind]
    assert index.ntotal == N
    start = time.perf_counter()
    params, recall = faiss_ops.tune(index, spec, _measure(index, spec, queries, true_ids), target=0.95, k=K)
    tune_s = time.perf_counter() - start
    print(f"\n{spec.factory}: build {build_s:.2f}s, tune {tune_s:.2f}s -> {params} recall@10 {recall:.3f}")
    assert recall >= 0.95
    scores, found = faiss_ops.search(index, queries, K, spec, params)
    assert topk.recall_at_k(found, true_ids, K) == pytest.approx(recall)
    assert set(found.ravel()) <= set(ids)  # external ids, not row numbers
    # The scores are the true inner products of those ids' vectors.
    rows = (found - 1000) // 3
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, vectors[rows]), atol=1e-4)
    if kind == "flat":
        assert spec.exact and params == {} and recall == 1.0
    if kind == "hnsw":
        assert params["efSearch"] >= K


def test_ivfpq_tunes_to_its_best_and_reports_the_shortfall(data, built):
    """PQ codes (here 32 bytes for 256-byte vectors) cap recall below 0.95; tune returns the
    cheapest nprobe with the best recall it measured, for the caller to report."""
    _, ids, queries, true_ids = data
    spec, index, build_s = built["ivfpq"]
    assert spec.factory == "IVF512,PQ32x8"
    params, recall = faiss_ops.tune(index, spec, _measure(index, spec, queries, true_ids), target=0.95, k=K)
    print(f"\n{spec.factory}: build {build_s:.2f}s -> {params} recall@10 {recall:.3f}")
    assert 0.75 <= recall < 0.95
    recalls = {
        p: topk.recall_at_k(faiss_ops.search(index, queries, K, spec, {"nprobe": p})[1], true_ids, K)
        for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    }
    assert recall == max(recalls.values())
    assert params["nprobe"] == min(p for p, r in recalls.items() if r == recall)
    _, found = faiss_ops.search(index, queries, K, spec, params)
    assert set(found.ravel()) <= set(ids)
    # A target it can reach stops early at the cheapest nprobe.
    easy, easy_recall = faiss_ops.tune(index, spec, _measure(index, spec, queries, true_ids), target=0.5, k=K)
    assert easy_recall >= 0.5 and easy["nprobe"] == min(p for p, r in recalls.items() if r >= 0.5)


def test_built_index_structure(built):
    for kind in ("flat", "hnsw"):
        assert isinstance(built[kind][1], faiss.IndexIDMap2)
    for kind in ("ivf", "ivfpq"):
        ivf = faiss.extract_index_ivf(built[kind][1])
        assert ivf.metric_type == faiss.METRIC_INNER_PRODUCT
        assert ivf.direct_map.type == faiss.DirectMap.Hashtable
    assert faiss.downcast_index(built["hnsw"][1].index).metric_type == faiss.METRIC_INNER_PRODUCT


def test_ivf_reconstructs_and_removes_by_external_id(data):
    vectors, ids, _, _ = data
    spec = choice.choose_spec(2000, DIM, kind="ivf")
    index = faiss_ops.new_index(spec, DIM)
    faiss_ops.train(index, spec, vectors[: spec.train_size])
    index.add_with_ids(vectors[:2000], ids[:2000])
    np.testing.assert_allclose(index.reconstruct(int(ids[17])), vectors[17])
    assert index.remove_ids(np.array([ids[17]], dtype=np.int64)) == 1
    _, found = faiss_ops.search(index, vectors[17:18], 1, spec, {"nprobe": spec.shape["nlist"]})
    assert found[0, 0] != ids[17]


def test_train_rejects_too_small_a_sample(data):
    vectors = data[0]
    spec = choice.choose_spec(N, DIM, kind="ivf")
    with pytest.raises(UsageError, match="at least 512"):
        faiss_ops.train(faiss_ops.new_index(spec, DIM), spec, vectors[:100])
    flat = choice.choose_spec(N, DIM, kind="flat")
    faiss_ops.train(faiss_ops.new_index(flat, DIM), flat, vectors[:0])  # no-op


# -- search parameters: selectors and no mutation ----------------------------------------------------
@pytest.mark.parametrize("kind", types.KINDS)
def test_selector_acts_on_external_ids(kind, data, built):
    vectors, ids, queries, _ = data
    spec, index, _ = built[kind]
    wide = {"flat": {}, "hnsw": {"efSearch": 256}, "ivf": {"nprobe": 512}, "ivfpq": {"nprobe": 512}}[kind]
    _, plain = faiss_ops.search(index, queries[:20], K, spec, wide)

    # Exclude each query's unfiltered results: none may come back.
    excluded = np.unique(plain)
    exclude = faiss.IDSelectorNot(faiss.IDSelectorBatch(excluded))
    _, found = faiss_ops.search(index, queries[:20], K, spec, wide, selector=exclude)
    assert not np.isin(found, excluded).any()
    assert (found >= 0).all()

    # Allow only 500 ids: results stay within them (and, for flat, equal exact search on them).
    rng = np.random.default_rng(3)
    allowed = np.sort(rng.choice(ids, 500, replace=False))
    _, found = faiss_ops.search(index, queries[:20], K, spec, wide, selector=faiss.IDSelectorArray(allowed))
    assert np.isin(found[found >= 0], allowed).all()
    assert (found >= 0).sum() > 0
    if kind == "flat":
        rows = (allowed - 1000) // 3
        np.testing.assert_array_equal(found, topk.exact_top_k([(allowed, vectors[rows])], queries[:20], K))


def test_search_parameters_do_not_mutate_the_index(data, built):
    _, _, queries, true_ids = data
    spec, index, _ = built["ivf"]
    ivf = faiss.extract_index_ivf(index)
    before = ivf.nprobe
    low = topk.recall_at_k(faiss_ops.search(index, queries, K, spec, {"nprobe": 1})[1], true_ids)
    high = topk.recall_at_k(faiss_ops.search(index, queries, K, spec, {"nprobe": 512})[1], true_ids)
    assert ivf.nprobe == before == spec.params["nprobe"]
    assert low < 0.8 < 0.99 < high  # the per-call values took effect

    spec, index, _ = built["hnsw"]
    hnsw = faiss.downcast_index(index.index).hnsw
    before = hnsw.efSearch
    faiss_ops.search(index, queries, K, spec, {"efSearch": 512})
    faiss_ops.search(index, queries, K, spec, {"efSearch": 16})
    assert hnsw.efSearch == before == spec.params["efSearch"]


def test_search_parameters_types_and_errors():
    sel = faiss.IDSelectorRange(0, 10)
    assert isinstance(faiss_ops.search_parameters("ivf", {"nprobe": 4}, sel), faiss.SearchParametersIVF)
    assert faiss_ops.search_parameters("ivfpq", {"nprobe": 4}).nprobe == 4
    p = faiss_ops.search_parameters("hnsw", {"efSearch": 40}, sel)
    assert isinstance(p, faiss.SearchParametersHNSW) and p.efSearch == 40 and p.sel is not None
    assert type(faiss_ops.search_parameters("flat", {}, sel)) is faiss.SearchParameters
    # Another kind's knob is ignored, so one set of CLI options suits every index.
    assert faiss_ops.search_parameters("hnsw", {"nprobe": 4, "efSearch": 32}).efSearch == 32
    assert faiss_ops.search_parameters("ivf", {"nprobe": 4, "efSearch": 32}).nprobe == 4
    assert type(faiss_ops.search_parameters("flat", {"nprobe": 4, "efSearch": 32})) is faiss.SearchParameters
    with pytest.raises(UsageError, match="unknown search parameter ef"):
        faiss_ops.search_parameters("hnsw", {"ef": 4})
    with pytest.raises(UsageError, match="nprobe"):
        faiss_ops.search_parameters("ivf", {"nprobe": 0})
    with pytest.raises(UsageError, match="efSearch"):
        faiss_ops.search_parameters("ivf", {"efSearch": 2.5})
    with pytest.raises(UsageError):
        faiss_ops.search_parameters("annoy", {})


# -- choose_spec and estimates --------------------------------------------------------------------
def test_choose_spec_auto_picks_by_size_and_budget():
    small = choice.choose_spec(20_000, 512)
    assert (small.kind, small.factory, small.params, small.train_size) == ("flat", "Flat", {}, 0)
    assert "20,000" in small.reason and "50,000" in small.reason

    mid = choice.choose_spec(300_000, 512, parse_bytes("4GB"))
    assert (mid.kind, mid.factory, mid.params) == ("hnsw", "HNSW32,Flat", {"efSearch": 64})
    assert "300,000" in mid.reason and "budget 4 GB" in mid.reason

    large = choice.choose_spec(5_000_000, 512)
    assert (large.kind, large.factory, large.params) == ("ivf", "IVF8192,Flat", {"nprobe": 16})
    assert large.train_size == 64 * 8192 and "5,000,000" in large.reason and "8192" in large.reason

    budget = parse_bytes("2GB")
    tight = choice.choose_spec(5_000_000, 512, budget)
    assert tight.kind == "ivfpq" and tight.factory == "IVF8192,PQ128x8"
    assert choice.estimate_bytes("ivfpq", 5_000_000, 512, **tight.shape) <= budget
    # ... with the longest code that fits: the next one up would not.
    assert choice.estimate_bytes("ivfpq", 5_000_000, 512, nlist=8192, m=256) > budget
    assert "budget 2 GB" in tight.reason and "PQ128" in tight.reason

    # Over the HNSW limit, IVF-Flat while it fits; a mid-size library whose HNSW does not fit
    # gets IVF-PQ (IVF-Flat takes more memory than HNSW: list spare capacity, id hashtable).
    fitting = choice.choose_spec(2_000_000, 512, choice.estimate_bytes("ivf", 2_000_000, 512))
    assert fitting.kind == "ivf" and "1,000,000 (HNSW limit)" in fitting.reason
    squeezed = choice.choose_spec(300_000, 512, choice.estimate_bytes("hnsw", 300_000, 512) - 1)
    assert squeezed.kind == "ivfpq" and squeezed.factory == "IVF2048,PQ256x8"
    # A small library over budget goes straight to IVF-PQ.
    assert choice.choose_spec(40_000, 512, 10_000_000).kind == "ivfpq"


def test_choose_spec_impossible_budget_says_what_would_fit():
    with pytest.raises(UsageError, match=r"smallest, IVF8192,PQ16x8, needs ~49\d MB \(use --memory 49\dMB") as err:
        choice.choose_spec(5_000_000, 512, parse_bytes("100MB"))
    assert "holds about" in str(err.value)
    minimum = parse_bytes(str(err.value).split("--memory ")[1].split()[0])
    assert choice.choose_spec(5_000_000, 512, minimum).factory == "IVF8192,PQ16x8"
    with pytest.raises(UsageError, match="at least 256 vectors"):
        choice.choose_spec(100, 512, 1000)


def test_choose_spec_named_kind():
    assert choice.choose_spec(5_000_000, 512, kind="hnsw").factory == "HNSW32,Flat"
    assert choice.choose_spec(1000, 512, kind="ivf").factory == "IVF16,Flat"  # >= 39 vectors per list
    assert choice.choose_spec(20_000, 64, kind="ivfpq").factory == "IVF512,PQ32x8"
    with pytest.raises(UsageError, match="over the budget"):
        choice.choose_spec(5_000_000, 512, parse_bytes("1GB"), kind="flat")
    with pytest.raises(UsageError, match="unknown index type"):
        choice.choose_spec(10, 512, kind="annoy")


def test_nlist_rule_and_pq_choices():
    assert [choice.nlist_for(n) for n in (0, 1000, 20_000, 1_000_000, 10_000_000)] == [1, 16, 512, 4096, 16384]
    assert choice.pq_m_choices(512) == [16, 32, 64, 128, 256]
    assert choice.pq_m_choices(768)[0] == 24 and all(768 % m == 0 for m in choice.pq_m_choices(768))
    assert choice.pq_m_choices(37) == [1]


def test_estimate_bytes_tracks_the_real_index(built):
    """The estimate is close to the saved size (memory adds hash tables and spare capacity)."""
    for kind, (spec, index, _) in built.items():
        saved = len(faiss.serialize_index(index))
        estimate = choice.estimate_bytes(kind, N, DIM, **spec.shape)
        assert saved * 0.8 <= estimate <= saved * 2.5, (kind, saved, estimate)
    with pytest.raises(UsageError):
        choice.estimate_bytes("annoy", 1, 1)
    with pytest.raises(TypeError):
        choice.estimate_bytes("flat", 1, 1, nlist=4)


# -- ground truth, recall, memory sizes, spec round trip ----------------------------------------------
def test_exact_top_k_streamed_equals_single_matrix():
    rng = np.random.default_rng(5)
    vectors = _unit(rng.standard_normal((3000, 32)))
    vectors[100:110] = vectors[5]  # exact duplicates: ties resolved by smaller id
    ids = rng.permutation(10**6)[:3000].astype(np.int64)
    queries = np.concatenate([vectors[5:6], _unit(rng.standard_normal((49, 32)))])
    scores = queries @ vectors.T
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)
    want = ids[order[:, :15]]
    chunks = [(ids[s : s + 700], vectors[s : s + 700]) for s in range(0, 3000, 700)]
    np.testing.assert_array_equal(topk.exact_top_k(chunks, queries, 15), want)
    np.testing.assert_array_equal(topk.exact_top_k(iter(chunks), queries, 15), want)  # a generator works
    # Fewer vectors than k: padded with -1.
    got = topk.exact_top_k([(ids[:3], vectors[:3])], queries[:2], 5)
    assert (got[:, 3:] == -1).all() and set(got[0, :3]) == set(ids[:3])


def test_merge_top_k_ties_by_smaller_id_and_pads_with_minus_one():
    floor = np.finfo(np.float32).min  # what faiss scores its own -1 padding by inner product
    first = (np.array([[0.9, 0.5, floor], [0.2, floor, floor]], np.float32), np.array([[7, 3, -1], [4, -1, -1]]))
    second = (np.array([[0.5, 0.9], [0.2, 0.1]], np.float32), np.array([[2, 9], [1, 6]]))
    scores, ids = topk.merge_top_k([first, second], 4)
    np.testing.assert_array_equal(ids, [[7, 9, 2, 3], [1, 4, 6, -1]])
    np.testing.assert_array_equal(scores, np.array([[0.9, 0.9, 0.5, 0.5], [0.2, 0.2, 0.1, -np.inf]], np.float32))
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    # Fewer results than k: padded to k; no parts: no rows.
    np.testing.assert_array_equal(topk.merge_top_k([second], 3)[1], [[9, 2, -1], [1, 6, -1]])
    assert topk.merge_top_k([], 5)[1].shape == (0, 5)
    # Rows far wider than k (a block of exact scores) keep exactly the k best, ties at the k-th
    # score by smaller id, as a full sort would.
    rng = np.random.default_rng(11)
    wide = rng.integers(0, 4, (30, 500)).astype(np.float32)  # many ties
    wide_ids = np.stack([rng.permutation(10_000)[:500] for _ in range(30)])
    order = np.lexsort((wide_ids, -wide), axis=1)[:, :7]
    scores, ids = topk.merge_top_k([(wide[:, :200], wide_ids[:, :200]), (wide[:, 200:], wide_ids[:, 200:])], 7)
    np.testing.assert_array_equal(ids, np.take_along_axis(wide_ids, order, axis=1))
    np.testing.assert_array_equal(scores, np.take_along_axis(wide, order, axis=1))


def test_recall_at_k():
    true = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert topk.recall_at_k(true, true, 4) == 1.0
    assert topk.recall_at_k(np.array([[4, 3, 9, -1], [5, 9, 9, 9]]), true, 4) == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert topk.recall_at_k(np.array([[1, 2]]), np.array([[2, -1]]), 2) == 1.0  # one true neighbour


def test_spec_round_trips():
    specs = (choice.choose_spec(10, 8), choice.choose_spec(100_000, 512), choice.choose_spec(5_000_000, 512, 2 * 10**9))
    for spec in specs:
        assert types.IndexSpec.from_dict(json.loads(json.dumps(spec.as_dict()))) == spec
    spec = choice.choose_spec(5_000_000, 512)
    assert spec.shape == {"nlist": 8192} and not spec.exact and choice.choose_spec(10, 8).exact
    with pytest.raises(ValueError):
        types.IndexSpec.from_dict({"kind": "flat"})
    with pytest.raises(UsageError):
        types.IndexSpec.from_dict({**spec.as_dict(), "kind": "annoy"})


def test_importing_cbir_does_not_import_faiss():
    import subprocess
    import sys

    code = "import sys, cbir, cbir.index; assert 'faiss' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_falls_back_to_ivf_when_hnsw_misses_the_target(monkeypatch):
    from cbir.index import build as B

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(3000, dtype=np.int64)
    monkeypatch.setattr(choice, "FLAT_MAX", 100)  # auto picks HNSW for 3,000 vectors
    monkeypatch.setattr(B, "TARGET_RECALL", 1.01)  # a target HNSW cannot reach

    def chunks():
        yield ids, vectors

    _, report = B.build("images", 16, 3000, chunks, lambda n: (ids[:n], vectors[:n]), 1)
    assert report.kind == "ivf" and "HNSW reached only recall@10" in report.reason
    _, named = B.build("images", 16, 3000, chunks, lambda n: (ids[:n], vectors[:n]), 1, kind="hnsw")
    assert named.kind == "hnsw"  # a kind asked for by name is kept

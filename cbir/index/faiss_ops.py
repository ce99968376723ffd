"""faiss calls on the index of an ``IndexSpec``: making an empty one that keeps the database's
ids, training it, searching it with per-call parameters (and an id filter), and tuning those
parameters for a recall measured against exact ground truth (``cbir.index.topk``).

Imported lazily (only by index commands and a loaded index), so importing faiss at module level
keeps ``import cbir`` light.
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

from cbir.errors import UsageError
from cbir.index.types import KINDS, NOT_FAISS, PARAM_NAMES, PQ_CENTROIDS, IndexSpec


# -- building ----------------------------------------------------------------------------------------
def new_index(spec: IndexSpec, dim: int, for_gpu: bool = False):
    """An empty inner-product index for ``spec`` that takes add_with_ids (to be copied to the GPU
    and built there when ``for_gpu``).

    IVF indexes store ids in their lists; a hashtable direct map makes reconstruct/remove_ids by
    id O(1). Flat and HNSW number vectors 0..n-1, so they are wrapped in IndexIDMap2 (which also
    reconstructs by id). Search defaults are set on the index only for callers that search it
    directly; `search` passes per-call parameters instead."""
    if spec.kind in ("flat", "hnsw"):
        index = faiss.index_factory(dim, "IDMap2," + spec.factory, faiss.METRIC_INNER_PRODUCT)
        if spec.kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = spec.params.get("efSearch", 64)
        return index
    index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if spec.kind == "ivfpq":
        # The factory turns on polysemous training (re-ordering codes for Hamming pre-filtering,
        # which we never use); it is ~80% of the training time.
        ivf.do_polysemous_training = False
    ivf.nprobe = spec.params.get("nprobe", ivf.nprobe)
    return index if for_gpu else with_id_lookup(index, spec)


def with_id_lookup(index, spec: IndexSpec):
    """``index`` with the id hashtable IVF kinds need on the CPU (reconstruct and remove by id),
    which a copy back from the GPU does not bring."""
    if spec.kind in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Hashtable)
    return index


def train(index, spec: IndexSpec, sample: np.ndarray) -> None:
    """Train ``index`` (CPU or GPU) on ``sample`` (spec.train_size vectors); nothing to do for
    flat and HNSW."""
    if index.is_trained:
        return
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    needed = max(spec.shape.get("nlist", 1), PQ_CENTROIDS if spec.kind == "ivfpq" else 0)
    if len(sample) < needed:
        raise UsageError(f"training this index needs at least {needed:,} vectors, got {len(sample):,}")
    index.train(sample)


# -- searching ---------------------------------------------------------------------------------------
def search_parameters(spec_or_kind, params: dict, selector=None):
    """faiss SearchParameters for one search call (the index itself is never changed).

    ``selector`` (e.g. faiss.IDSelectorBatch) acts on the external ids in every kind: IVF lists
    hold them directly, and IndexIDMap(2).search wraps the selector in an IDSelectorTranslated
    that maps the sub-index's row numbers to ids (faiss/IndexIDMap.cpp). That wrapping swaps
    ``sel`` on the params object during the call, so build one object per call, never share one
    between threads. Parameters of other kinds are ignored (one set of CLI knobs fits every
    index); unknown names and values below 1 are errors."""
    kind = spec_or_kind.kind if isinstance(spec_or_kind, IndexSpec) else spec_or_kind
    if kind not in KINDS:
        raise UsageError(f"unknown index type {kind!r}: use one of {', '.join(KINDS)}")
    known = {name for names in PARAM_NAMES.values() for name in names}
    if unknown := set(params) - known:
        raise UsageError(f"unknown search parameter {', '.join(sorted(unknown))}: use {', '.join(sorted(known))}")
    values = {}
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UsageError(f"{name} must be a whole number >= 1, got {value!r}")
        if name in PARAM_NAMES[kind] and name not in NOT_FAISS:  # other kinds' knobs are ignored
            values[name] = int(value)
    if selector is not None:
        values["sel"] = selector
    cls = {
        "flat": faiss.SearchParameters,
        "hnsw": faiss.SearchParametersHNSW,
        "ivf": faiss.SearchParametersIVF,
        "ivfpq": faiss.SearchParametersIVF,
    }[kind]
    return cls(**values)


def search(index, queries: np.ndarray, k: int, spec: IndexSpec, params: dict | None = None, selector=None):
    """Top-k (scores, ids) per query with spec.params overridden by ``params``, for this call only;
    rows are padded with id -1 when fewer than k vectors pass."""
    merged = {**spec.params, **(params or {})}
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    return index.search(queries, k, params=search_parameters(spec, merged, selector))


# -- tuning ------------------------------------------------------------------------------------------
def candidate_params(index, spec: IndexSpec, k: int = 10) -> list[dict]:
    """Search settings from cheapest to widest: nprobe 1, 2, 4 ... nlist for IVF, efSearch
    16 ... 1024 (>= k) for HNSW, nothing to set for flat."""
    if spec.kind == "flat":
        return [{}]
    if spec.kind == "hnsw":
        return [{"efSearch": ef} for ef in sorted({max(16 << i, k) for i in range(7)})]
    nlist = faiss.extract_index_ivf(index).nlist
    probes = [1 << i for i in range(nlist.bit_length()) if 1 << i < nlist] + [nlist]
    extra = {"rerank": spec.params["rerank"]} if "rerank" in spec.params else {}
    return [{"nprobe": p, **extra} for p in probes]


def tune(
    index, spec: IndexSpec, measure: Callable[[dict], float], target: float = 0.95, k: int = 10, margin: bool = False
) -> tuple[dict, float]:
    """The cheapest search parameters whose ``measure(params)`` (a recall@k) reaches ``target``,
    or with ``margin`` the next wider ones; if the target is never reached, the best seen (the
    caller reports the shortfall: IVF-PQ codes often cap recall below 0.95). Returns (params,
    measured recall)."""
    candidates = candidate_params(index, spec, k)
    best: tuple[dict, float] | None = None
    for position, params in enumerate(candidates):
        recall = measure(params)
        if best is None or recall > best[1]:
            best = (params, recall)
        if recall >= target:
            if margin and position + 1 < len(candidates):
                wider = candidates[position + 1]
                best = (wider, measure(wider))
            break
    assert best is not None  # candidate_params gives at least one
    return best

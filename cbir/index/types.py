"""Index types for `cbir index rebuild --type auto|flat|hnsw|ivf|ivfpq [--memory SIZE]`: which faiss
index suits a library of n vectors within a memory budget, how to build one that keeps the
database's ids, how to search it with per-call parameters (and an id filter), and how to tune
those parameters against exact ground truth.

Vectors are L2-normalised float32, searched by inner product (cosine). This module is imported
lazily (only by index commands), so importing faiss at module level keeps ``import cbir`` light.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import faiss
import numpy as np

from cbir.errors import UsageError

KINDS = ("flat", "hnsw", "ivf", "ivfpq")

# -- auto thresholds ------------------------------------------------------------------------------
# Up to ~50k vectors an exact scan is fast (50k x 512-d: ~7 ms for one query, ~3 ms each in a
# batch, on 2 cores) and exact, which the filtered-search planner relies on; no approximate
# index is worth its recall loss there.
FLAT_MAX = 50_000
# HNSW has the best recall per query cost, but its build is the slowest (every insertion is a
# graph search: ~23 s per 100k 512-d vectors on 2 cores, growing as n log n) and faiss cannot
# remove vectors from it; past a million vectors IVF (k-means on a sample, then a cheap add;
# O(1) removal by id) is preferred.
HNSW_MAX = 1_000_000
HNSW_M = 32  # graph degree: faiss's usual default, ~0.99 recall@10 at modest efSearch

# IVF: k-means wants >= 39 training points per centroid (faiss warns below that); 64 per list
# gives steadier centroids while keeping the sample (train_size x dim x 4 bytes) modest.
MIN_TRAIN_PER_LIST = 39
TRAIN_PER_LIST = 64
PQ_BITS = 8
PQ_CENTROIDS = 1 << PQ_BITS  # codewords per sub-quantizer, each trained by its own k-means
# PQ sub-vectors of 2..32 dims: 1-dim sub-vectors are scalar quantisation (SQ8 does that
# better), and one byte per >32 dims keeps too little of the neighbourhood to be worth building.
PQ_MIN_DSUB, PQ_MAX_DSUB = 2, 32

# IVF-PQ re-ranks RERANK x k candidates by their exact vectors (kept in the library's database):
# PQ codes alone cap recall well below 0.95; the exact second look restores it.
RERANK = 10
DEFAULT_PARAMS = {
    "flat": {}, "hnsw": {"efSearch": 64}, "ivf": {"nprobe": 16}, "ivfpq": {"nprobe": 16, "rerank": RERANK},
}
PARAM_NAMES = {"flat": (), "hnsw": ("efSearch",), "ivf": ("nprobe",), "ivfpq": ("nprobe", "rerank")}
NOT_FAISS = ("rerank",)  # cbir's own parameters, applied around the faiss search

# -- memory model (bytes), calibrated on faiss 1.15 by the RSS growth of adding 200k vectors ------
# (d=128 and 512): within ~25% for IVF-PQ, a few % for the others. The saved file is smaller
# (no hash tables, no spare vector capacity).
ID_BYTES = 8  # an int64 id
HASH_ENTRY_BYTES = 48  # one std::unordered_map<int64, int64> entry: node + bucket + malloc overhead
IDMAP2_BYTES = ID_BYTES + HASH_ENTRY_BYTES  # IndexIDMap2: id array + reverse map
DIRECT_MAP_BYTES = 64  # IVF hashtable direct map: an entry, rehash and fragmentation slack
INVLIST_SLACK = 1.3  # inverted lists are std::vectors grown by doubling: spare capacity
HNSW_NODE_BYTES = 12  # per node: offset (8) + level (4); upper levels add ~M/(M-1) slots

SCORE_BLOCK = 1 << 24  # floats scored at a time by exact_top_k (64 MB), whatever nq and chunk


@dataclass(frozen=True)
class IndexSpec:
    """What to build: kind, faiss factory string, search defaults, training sample size, why."""

    kind: str
    factory: str
    params: dict = field(hash=False)
    train_size: int
    reason: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UsageError(f"unknown index type {self.kind!r}: use one of auto, {', '.join(KINDS)}")
        object.__setattr__(self, "params", dict(self.params))  # no aliasing of the caller's dict

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "factory": self.factory,
            "params": dict(self.params),
            "train_size": self.train_size,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d) -> "IndexSpec":
        try:
            return cls(
                kind=str(d["kind"]),
                factory=str(d["factory"]),
                params={str(k): int(v) for k, v in dict(d["params"]).items()},
                train_size=int(d["train_size"]),
                reason=str(d.get("reason", "")),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not an index spec: {d!r}") from err

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    @property
    def shape(self) -> dict:
        """The structural parameters in ``factory``: {"M"} for hnsw, {"nlist"[, "m"]} for IVF."""
        found = {}
        if m := re.search(r"HNSW(\d+)", self.factory):
            found["M"] = int(m.group(1))
        if m := re.search(r"IVF(\d+)", self.factory):
            found["nlist"] = int(m.group(1))
        if m := re.search(r"PQ(\d+)", self.factory):
            found["m"] = int(m.group(1))
        return found


# -- sizing -----------------------------------------------------------------------------------------
def nlist_for(n: int) -> int:
    """Inverted lists for n vectors: ~4*sqrt(n), a power of two, at most n/39.

    A query costs nlist centroid products plus nprobe*n/nlist list entries; nlist ~ sqrt(n)
    balances the two, and faiss's guidance of 4..16*sqrt(n) keeps lists short enough that a
    small nprobe reaches high recall. Powers of two keep the choice stable as a library grows.
    Small libraries are clamped so each list's centroid gets >= 39 training vectors.
    """
    nlist = 2 ** round(math.log2(4 * math.sqrt(max(n, 1))))
    while nlist > 1 and nlist * MIN_TRAIN_PER_LIST > n:
        nlist //= 2
    return nlist


def pq_m_choices(dim: int) -> list[int]:
    """Allowed PQ code sizes m (bytes per vector), ascending: m divides dim into sub-vectors of
    2..32 dims (an awkward dim, e.g. a prime, falls back to its finest split)."""
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    choices = [m for m in divisors if PQ_MIN_DSUB <= dim // m <= PQ_MAX_DSUB]
    return choices or [divisors[-2] if len(divisors) > 1 else 1]


def estimate_bytes(kind: str, n: int, dim: int, **shape) -> int:
    """In-memory footprint of an index of n dim-d vectors (the saved file is somewhat smaller).

    ``shape``: M for hnsw (default 32); nlist for ivf/ivfpq (default nlist_for(n)); m for ivfpq
    (default the largest allowed)."""
    allowed = {"flat": set(), "hnsw": {"M"}, "ivf": {"nlist"}, "ivfpq": {"nlist", "m"}}
    if kind not in allowed:
        raise UsageError(f"unknown index type {kind!r}: use one of {', '.join(KINDS)}")
    if extra := set(shape) - allowed[kind]:
        raise TypeError(f"{kind} has no shape parameter {sorted(extra)}")
    vector = 4 * dim
    if kind == "flat":
        return n * (vector + IDMAP2_BYTES)
    if kind == "hnsw":
        M = shape.get("M", HNSW_M)
        return n * (vector + 2 * M * 4 + HNSW_NODE_BYTES + IDMAP2_BYTES)
    nlist = shape.get("nlist") or nlist_for(n)
    centroids = nlist * vector
    if kind == "ivf":
        return math.ceil(n * ((vector + ID_BYTES) * INVLIST_SLACK + DIRECT_MAP_BYTES)) + centroids
    m = shape.get("m") or pq_m_choices(dim)[-1]
    codebooks = PQ_CENTROIDS * vector  # m sub-quantizers x 256 codewords x dim/m floats
    return math.ceil(n * ((m + ID_BYTES) * INVLIST_SLACK + DIRECT_MAP_BYTES)) + centroids + codebooks


def format_bytes(size: float, up: bool = False) -> str:
    """Like "1.5 GB": decimal units, as parse_memory reads them; ``up`` rounds up (for a minimum)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            break
        size /= 1000
    if unit == "B":
        return f"{math.ceil(size) if up else round(size)} B"
    return f"{(math.ceil(size * 10) / 10 if up else size):.1f} {unit}"


_MEMORY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)(b?)\s*", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """Bytes in a size like "4GB", "512MB", "2GiB", "1.5G", "800000".

    K/M/G/T and KB/MB/GB/TB are decimal (powers of 1000, as disks and `--memory 4GB` readers
    expect); KiB/MiB/GiB/TiB are binary. A bare number is bytes."""
    match = _MEMORY.fullmatch(str(text))
    if not match or (match.group(3) and not (match.group(2) and match.group(4))):
        raise UsageError(f"invalid memory size {text!r}: use e.g. 4GB, 512MB, 2GiB or 1.5G")
    number, prefix, binary, _ = match.groups()
    power = "kmgt".find(prefix.lower()) + 1 if prefix else 0
    size = int(float(number) * (1024 if binary else 1000) ** power)
    if size <= 0:
        raise UsageError(f"memory size must be positive, got {text!r}")
    return size


def choose_spec(n: int, dim: int, memory_bytes: int | None = None, kind: str = "auto",
                gpu: bool = False) -> IndexSpec:
    """The index for n dim-d vectors within ``memory_bytes`` (None: no limit), to be built on the
    GPU when ``gpu``.

    auto: flat up to FLAT_MAX vectors, HNSW32 up to HNSW_MAX (not on a GPU, which has no HNSW),
    IVF-Flat beyond; each only if it fits the budget, else the next (smaller or equal) one, down
    to IVF-PQ with the largest code that fits (and that the GPU supports). A named kind gets that
    kind's parameters chosen the same way; it is an error if it does not fit, as it is when not
    even the smallest IVF-PQ does.
    """
    if kind != "auto" and kind not in KINDS:
        raise UsageError(f"unknown index type {kind!r}: use one of auto, {', '.join(KINDS)}")
    if gpu and kind != "auto":
        from cbir.index.gpu import check_kind

        check_kind(kind)
    if n < 0 or dim < 1:
        raise UsageError(f"cannot size an index of {n} vectors of dimension {dim}")
    budget = math.inf if memory_bytes is None else memory_bytes
    within = "no memory limit" if memory_bytes is None else f"budget {format_bytes(memory_bytes)}"
    size = f"{n:,} x {dim}-d vectors"

    def fits(which: str) -> bool:
        return estimate_bytes(which, n, dim) <= budget

    def need(which: str) -> str:
        return f"~{format_bytes(estimate_bytes(which, n, dim))}"

    if kind == "auto":
        # Per vector, flat < HNSW (+8M bytes of graph) < IVF-Flat (list spare capacity and the id
        # hashtable), so a kind that does not fit means the next full-vector one does not either.
        if n <= FLAT_MAX and fits("flat"):
            return _flat(n, dim, f"{size} <= {FLAT_MAX:,}, exact search is fast enough; "
                                 f"needs {need('flat')} ({within})")
        if n <= HNSW_MAX and fits("hnsw") and not gpu:
            return _hnsw(n, dim, f"{size} > {FLAT_MAX:,} (flat limit), <= {HNSW_MAX:,} (HNSW limit); "
                                 f"graph + vectors need {need('hnsw')} ({within})")
        if fits("ivf"):
            why = (f"> {HNSW_MAX:,} (HNSW limit)" if n > HNSW_MAX
                   else "building on the GPU, which has no HNSW" if gpu
                   else f"HNSW would need {need('hnsw')}, over the {within}")
            return _ivf(n, dim, f"{size}, {why}; IVF-Flat with {nlist_for(n)} lists needs "
                                f"{need('ivf')} ({within})")
        return _ivfpq(n, dim, budget, f"{size} as full vectors need {need('ivf')} (IVF-Flat), "
                                      f"over the {within}", gpu)

    if kind == "ivfpq":
        return _ivfpq(n, dim, budget, f"{size}, IVF-PQ requested", gpu)
    if not fits(kind):
        raise UsageError(
            f"a {kind} index of {size} needs {need(kind)}, over the {within}: "
            f"raise --memory or use --type auto (which falls back to IVF-PQ)")
    reason = f"{size}, {kind} requested; needs {need(kind)} ({within})"
    return {"flat": _flat, "hnsw": _hnsw, "ivf": _ivf}[kind](n, dim, reason)


def _flat(n: int, dim: int, reason: str) -> IndexSpec:
    return IndexSpec("flat", "Flat", DEFAULT_PARAMS["flat"], 0, "flat: " + reason)


def _hnsw(n: int, dim: int, reason: str) -> IndexSpec:
    return IndexSpec("hnsw", f"HNSW{HNSW_M},Flat", DEFAULT_PARAMS["hnsw"], 0, "hnsw: " + reason)


def _ivf_params(nlist: int) -> dict:
    return {"nprobe": min(DEFAULT_PARAMS["ivf"]["nprobe"], nlist)}


def _ivf(n: int, dim: int, reason: str) -> IndexSpec:
    nlist = nlist_for(n)
    train_size = min(n, TRAIN_PER_LIST * nlist)
    return IndexSpec("ivf", f"IVF{nlist},Flat", _ivf_params(nlist), train_size, "ivf: " + reason)


def _ivfpq(n: int, dim: int, budget: float, reason: str, gpu: bool = False) -> IndexSpec:
    if n < PQ_CENTROIDS:
        raise UsageError(f"IVF-PQ needs at least {PQ_CENTROIDS} vectors to train its codebooks, "
                         f"this library has {n:,}; a flat index of them needs "
                         f"~{format_bytes(estimate_bytes('flat', n, dim))}")
    nlist, choices = nlist_for(n), pq_m_choices(dim)
    if gpu:
        from cbir.index.gpu import PQ_CODE_BYTES

        choices = [m for m in choices if m in PQ_CODE_BYTES]
        if not choices:
            raise UsageError(f"no IVF-PQ code for {dim}-d vectors runs on the GPU; build it without --gpu")
    fitting = [m for m in choices if estimate_bytes("ivfpq", n, dim, nlist=nlist, m=m) <= budget]
    if not fitting:
        m = choices[0]
        smallest = estimate_bytes("ivfpq", n, dim, nlist=nlist, m=m)
        # The most vectors the smallest code fits (nlist shrinks with n, so search on n).
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if estimate_bytes("ivfpq", mid, dim, m=m) <= budget else (lo, mid - 1)
        raise UsageError(
            f"no index of {n:,} x {dim}-d vectors fits in {format_bytes(budget)}: the smallest, "
            f"IVF{nlist},PQ{m}x{PQ_BITS}, needs ~{format_bytes(smallest)} "
            f"(use --memory {format_bytes(smallest, up=True).replace(' ', '')} or more); "
            f"{format_bytes(budget)} holds about {lo:,} vectors")
    m = fitting[-1]  # the longest code that fits: PQ recall grows with m
    train_size = min(n, TRAIN_PER_LIST * max(nlist, PQ_CENTROIDS))
    est = estimate_bytes("ivfpq", n, dim, nlist=nlist, m=m)
    within = "no memory limit" if budget == math.inf else f"budget {format_bytes(budget)}"
    reason += (f"; IVF{nlist},PQ{m}x{PQ_BITS} ({m}-byte codes) needs ~{format_bytes(est)} ({within}); "
               f"the lossy codes cap recall")
    params = {**_ivf_params(nlist), "rerank": RERANK}
    return IndexSpec("ivfpq", f"IVF{nlist},PQ{m}x{PQ_BITS}", params, train_size, "ivfpq: " + reason)


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
    cls = {"flat": faiss.SearchParameters, "hnsw": faiss.SearchParametersHNSW,
           "ivf": faiss.SearchParametersIVF, "ivfpq": faiss.SearchParametersIVF}[kind]
    return cls(**values)


_OPTIONS = {"nprobe": "nprobe (--nprobe)", "efSearch": "efSearch (--ef)"}


def check_params_apply(kind: str, params: dict, name: str) -> None:
    """A search parameter that no kind of the searched index uses would silently change nothing
    (--nprobe on an HNSW index): an error naming what the index is. ``kind`` is an index's
    kind, or a sharded index's kinds joined by "+"."""
    kinds = kind.split("+")
    for param in params:
        users = [k for k in KINDS if param in PARAM_NAMES[k]]
        if users and not any(param in PARAM_NAMES.get(k, ()) for k in kinds):
            own = sorted({_OPTIONS.get(p, p) for k in kinds for p in PARAM_NAMES.get(k, ()) if p not in NOT_FAISS})
            fits = f"its search parameter is {' or '.join(own)}" if own else "it is exact and takes no search parameter"
            raise UsageError(
                f"{_OPTIONS.get(param, param)} tunes {' and '.join(users)} indexes, but the {name} index is "
                f"{kind}: {fits}"
            )


def search(index, queries: np.ndarray, k: int, spec: IndexSpec, params: dict | None = None, selector=None):
    """Top-k (scores, ids) per query with spec.params overridden by ``params``, for this call only;
    rows are padded with id -1 when fewer than k vectors pass."""
    merged = {**spec.params, **(params or {})}
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    return index.search(queries, k, params=search_parameters(spec, merged, selector))


# -- ground truth and tuning -------------------------------------------------------------------------
def exact_top_k(chunks: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids [nq, k] by inner product over (ids, vectors) chunks, best first, ties by
    smaller id, padded with -1. Only a running [nq, k] best list and one block of scores are held,
    so a million-vector library can be streamed from the database."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    nq = len(queries)
    best_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    best_ids = np.full((nq, k), -1, dtype=np.int64)
    block = max(1, SCORE_BLOCK // max(nq, 1))
    for ids, vectors in chunks:
        ids = np.asarray(ids, dtype=np.int64)
        for start in range(0, len(ids), block):
            scores = queries @ np.asarray(vectors[start : start + block], dtype=np.float32).T
            block_ids = np.broadcast_to(ids[start : start + block], scores.shape)
            best_scores, best_ids = _merge_top_k(
                np.concatenate([best_scores, scores], axis=1),
                np.concatenate([best_ids, block_ids], axis=1), k)
    order = np.lexsort((best_ids, -best_scores), axis=1)
    return np.take_along_axis(best_ids, order, axis=1)


def _merge_top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score desc, then id asc) of each row, unordered, without sorting whole rows."""
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # each row's k-th best score
    # Rank key: everything strictly better than the k-th score first (INT64_MIN), then the tied
    # ones by id, the rest last; a partition on it keeps exactly the top k, ties by smaller id.
    key = np.where(scores > kth, np.iinfo(np.int64).min,
                   np.where(scores == kth, ids, np.iinfo(np.int64).max))
    keep = np.argpartition(key, k - 1, axis=1)[:, :k]
    return np.take_along_axis(scores, keep, axis=1), np.take_along_axis(ids, keep, axis=1)


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |found ∩ true| / k among the first k of each (-1 padding ignored;
    a query with fewer than k true neighbours is scored over those it has)."""
    found, true = np.asarray(found_ids)[:, :k], np.asarray(true_ids)[:, :k]
    hits = ((found[:, :, None] == true[:, None, :]) & (true[:, None, :] >= 0)).any(axis=1).sum(axis=1)
    wanted = np.maximum((true >= 0).sum(axis=1), 1)
    return float(np.mean(hits / wanted)) if len(true) else 1.0


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


def tune(index, spec: IndexSpec, measure: Callable[[dict], float], target: float = 0.95,
         k: int = 10, margin: bool = False) -> tuple[dict, float]:
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
    return best

"""Which index suits a library of n vectors within a memory budget (`cbir index rebuild --type
auto --memory SIZE`): the memory each kind needs, and the choice of kind and shape.

Vectors are L2-normalised float32, searched by inner product (cosine).
"""

from __future__ import annotations

import math

from cbir.errors import UsageError
from cbir.index.types import DEFAULT_PARAMS, KINDS, PQ_BITS, PQ_CENTROIDS, RERANK, IndexSpec
from cbir.units import format_bytes

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
# PQ sub-vectors of 2..32 dims: 1-dim sub-vectors are scalar quantisation (SQ8 does that
# better), and one byte per >32 dims keeps too little of the neighbourhood to be worth building.
PQ_MIN_DSUB, PQ_MAX_DSUB = 2, 32

# -- memory model (bytes), calibrated on faiss 1.15 by the RSS growth of adding 200k vectors ------
# (d=128 and 512): within ~25% for IVF-PQ, a few % for the others. The saved file is smaller
# (no hash tables, no spare vector capacity).
ID_BYTES = 8  # an int64 id
HASH_ENTRY_BYTES = 48  # one std::unordered_map<int64, int64> entry: node + bucket + malloc overhead
IDMAP2_BYTES = ID_BYTES + HASH_ENTRY_BYTES  # IndexIDMap2: id array + reverse map
DIRECT_MAP_BYTES = 64  # IVF hashtable direct map: an entry, rehash and fragmentation slack
INVLIST_SLACK = 1.3  # inverted lists are std::vectors grown by doubling: spare capacity
HNSW_NODE_BYTES = 12  # per node: offset (8) + level (4); upper levels add ~M/(M-1) slots


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


def choose_spec(n: int, dim: int, memory_bytes: int | None = None, kind: str = "auto", gpu: bool = False) -> IndexSpec:
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
            return _flat(
                n, dim, f"{size} <= {FLAT_MAX:,}, exact search is fast enough; needs {need('flat')} ({within})"
            )
        if n <= HNSW_MAX and fits("hnsw") and not gpu:
            return _hnsw(
                n,
                dim,
                f"{size} > {FLAT_MAX:,} (flat limit), <= {HNSW_MAX:,} (HNSW limit); "
                f"graph + vectors need {need('hnsw')} ({within})",
            )
        if fits("ivf"):
            why = (
                f"> {HNSW_MAX:,} (HNSW limit)"
                if n > HNSW_MAX
                else "building on the GPU, which has no HNSW"
                if gpu
                else f"HNSW would need {need('hnsw')}, over the {within}"
            )
            return _ivf(n, dim, f"{size}, {why}; IVF-Flat with {nlist_for(n)} lists needs {need('ivf')} ({within})")
        return _ivfpq(n, dim, budget, f"{size} as full vectors need {need('ivf')} (IVF-Flat), over the {within}", gpu)

    if kind == "ivfpq":
        return _ivfpq(n, dim, budget, f"{size}, IVF-PQ requested", gpu)
    if not fits(kind):
        raise UsageError(
            f"a {kind} index of {size} needs {need(kind)}, over the {within}: "
            f"raise --memory or use --type auto (which falls back to IVF-PQ)"
        )
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
        raise UsageError(
            f"IVF-PQ needs at least {PQ_CENTROIDS} vectors to train its codebooks, "
            f"this library has {n:,}; a flat index of them needs "
            f"~{format_bytes(estimate_bytes('flat', n, dim))}"
        )
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
            f"{format_bytes(budget)} holds about {lo:,} vectors"
        )
    m = fitting[-1]  # the longest code that fits: PQ recall grows with m
    train_size = min(n, TRAIN_PER_LIST * max(nlist, PQ_CENTROIDS))
    est = estimate_bytes("ivfpq", n, dim, nlist=nlist, m=m)
    within = "no memory limit" if budget == math.inf else f"budget {format_bytes(budget)}"
    reason += (
        f"; IVF{nlist},PQ{m}x{PQ_BITS} ({m}-byte codes) needs ~{format_bytes(est)} ({within}); "
        f"the lossy codes cap recall"
    )
    params = {**_ivf_params(nlist), "rerank": RERANK}
    return IndexSpec("ivfpq", f"IVF{nlist},PQ{m}x{PQ_BITS}", params, train_size, "ivfpq: " + reason)

"""Filtered-search benchmark: the planner against always exact-subset, always ANN + post-filter and
a naive post-filter, across filter selectivities, on one real library, for `cbir bench` and
benchmarks/filtered_search.py.

The issue's goal: the planner is never more than 20% slower than the better of the two strategies
it chooses between, at recall@10 >= 0.95. Each row says whether it was met.

The library is a real one (SQLite file and FAISS index in a temporary folder, FakeEncoder vectors
around 256 centres). Its index kind is explicit: flat by default (exact, as the planner's cost
model was calibrated against; `auto` would pick HNSW past 50,000 vectors), or any kind cbir
builds. The filter is ``width <= W`` on a column holding 1..1000 evenly, so the selectivity is
exact. Recall is against exact filtered search computed here from the stored vectors, not by the
code under test. "naive" fetches NAIVE_OVERFETCH x k neighbours once, filters them in SQLite and
never widens: the floor of post-filtering's cost (no count, no embedding, no widening), and what
it costs in recall once the filter is selective.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from cbir.bench.search import Progress, latency_ms, markdown_table, quiet, timed

NAIVE_OVERFETCH = 10
WIDTHS = 1000  # the filtered column holds 1..WIDTHS evenly
CENTRES = 256
SPREAD = 0.5
BATCH = 10_000  # images committed per transaction while building
GOAL_RATIO = 1.2  # the planner at most 20% slower than the better of exact-subset and post-filter
GOAL_RECALL = 0.95
# (row key, --strategy); measured with the naive post-filter, in turn, query by query
STRATEGIES = (("planner", "auto"), ("exact_subset", "exact-subset"), ("post_filter", "ann-post-filter"))
NAIVE = "naive_post_filter"


def filtered_benchmark(
    vectors: int = 100_000,
    dim: int = 512,
    queries: int = 50,
    selectivities: Sequence[float] = (0.001, 0.01, 0.1, 0.5, 1.0),
    k: int = 10,
    progress: Progress | None = None,
    index: str = "flat",
) -> list[dict]:
    """One row per selectivity: see ``selectivity_row`` for its keys. ``index``: the image
    index's kind (flat, hnsw, ivf, ivfpq or auto), reported in each row as the kind built."""
    say = progress or quiet
    if queries < 1 or k < 1:
        raise ValueError(f"queries and k must be >= 1, got {queries} and {k}")
    if bad := [s for s in selectivities if not 0 < s <= 1]:
        raise ValueError(f"selectivities are fractions in (0, 1], got {bad}")
    with tempfile.TemporaryDirectory() as tmp:
        seconds, (lib, encoder) = timed(lambda: build_library(Path(tmp) / "lib", vectors, dim, index))
        try:
            built = lib.indexes.get("images").kind
            say(f"built a {vectors:,} x {dim}-d library ({built} index) in {seconds:.1f} s")
            texts = [f"query {i}" for i in range(queries)]
            qvecs = encoder.encode_texts(texts)  # what the library's own searches embed them to
            rows = []
            for selectivity in selectivities:
                row = selectivity_row(lib, texts, qvecs, selectivity, k)
                say(
                    f"{selectivity:.1%}: planner chose {row['planner_chose']}, "
                    f"{row['planner_vs_best']:.2f}x the better strategy, recall {row['planner']['recall']:.3f}"
                )
                rows.append(row)
            return rows
        finally:
            lib.close()


def build_library(folder: Path, n: int, dim: int, index: str | None = "flat", seed: int = 0):
    """(Library, FakeEncoder): a new library of ``n`` clustered vectors whose image i has width
    1 + i % WIDTHS, with its image index rebuilt as ``index`` (on the CPU, whatever is installed;
    None: not rebuilt)."""
    from cbir.config import resolve_settings
    from cbir.encode.fake import FakeEncoder
    from cbir.library import Library
    from cbir.store.catalog import MODEL, Changes, ImageRecord

    encoder = FakeEncoder(dim=dim)
    lib = Library.open(resolve_settings(library=folder, env={}), create=True, encoder=encoder)
    lib.catalog.set_meta(MODEL, json.dumps(encoder.fingerprint()))
    lib.catalog.dim = dim
    root_id, _ = lib.catalog.root_for(folder / "photos")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, dim)).astype(np.float32)
    for start in range(0, n, BATCH):
        count = min(BATCH, n - start)
        batch = centres[rng.integers(0, CENTRES, count)] + SPREAD * rng.standard_normal((count, dim), dtype=np.float32)
        batch /= np.linalg.norm(batch, axis=1, keepdims=True)
        changes = Changes(root_id)
        for j, vector in enumerate(batch):
            i = start + j
            record = ImageRecord(f"f{i % 100}/img{i:07d}.jpg", 1000, 10**18, f"{i:064x}", 1 + i % WIDTHS, 480, "jpeg")
            changes.added.append((record, vector))
        lib.catalog.apply(changes)
    if index:
        lib.rebuild_index(kind=index, gpu=False)
    return lib, encoder


def selectivity_row(lib, texts: list[str], qvecs: np.ndarray, selectivity: float, k: int) -> dict:
    """Every strategy on every query under the filter ``width <= selectivity x WIDTHS``.

    Keys: selectivity, matching, vectors, index (the kind searched), k, queries, planner_chose
    (the strategies the planner used, comma-separated), planner / exact_subset / post_filter /
    naive_post_filter (each {p50_ms, p99_ms, mean_ms, recall}), planner_vs_best (the planner's
    median latency over the lower of exact-subset's and post-filter's) and goal_met (that ratio
    <= GOAL_RATIO at planner recall >= GOAL_RECALL)."""
    from cbir.index.topk import recall_at_k
    from cbir.query.filters import Filters

    limit = max(1, round(selectivity * WIDTHS))
    filters = Filters(where=f"width <= {limit}")
    truth = filtered_truth(lib, limit, qvecs, k)
    latencies, found, chosen = measure_interleaved(lib, filters, texts, qvecs, k)
    row = {
        "selectivity": selectivity,
        "matching": checked_count(lib, filters, limit),
        "vectors": lib.indexes.get("images").ntotal,
        "index": lib.indexes.get("images").kind,
        "k": k,
        "queries": len(texts),
        "planner_chose": ",".join(sorted(chosen)),
    }
    for name in latencies:
        row[name] = {**latency_ms(latencies[name]), "recall": recall_at_k(_padded(found[name], k), truth, k)}
    best = min(row["exact_subset"]["p50_ms"], row["post_filter"]["p50_ms"])
    row["planner_vs_best"] = row["planner"]["p50_ms"] / best
    row["goal_met"] = bool(row["planner_vs_best"] <= GOAL_RATIO and row["planner"]["recall"] >= GOAL_RECALL)
    return row


def passes(ids: np.ndarray, limit: int) -> np.ndarray:
    """Which image ids pass ``width <= limit``, worked out from how the library was written (ids
    start at 1 in insertion order, so image id i has width 1 + (i - 1) % WIDTHS) rather than by
    the filter code being measured."""
    return 1 + (np.asarray(ids) - 1) % WIDTHS <= limit


def filtered_truth(lib, limit: int, qvecs: np.ndarray, k: int) -> np.ndarray:
    """Exact filtered top-k ids [queries, k] (ties by smaller id, padded with -1), by brute force
    over the vectors SQLite stores."""
    from cbir.index.topk import exact_top_k

    def passing():
        for ids, vectors in lib.catalog.iter_vectors():
            keep = passes(ids, limit)
            yield ids[keep], vectors[keep]

    return exact_top_k(passing(), qvecs, k)


def checked_count(lib, filters, limit: int) -> int:
    """How many images pass ``filters`` (``width <= limit``) by SQLite's count, checked against
    ``passes``: a mismatch means the ids are not the ones ``filtered_truth`` assumes, and every
    recall would be wrong."""
    from cbir.query.filter_sql import image_condition
    from cbir.store.collections import Images

    counted = Images(lib.catalog.engine).count(image_condition(filters, lib.catalog.roots()))
    expected = int(np.count_nonzero(passes(lib.catalog.vector_ids("images"), limit)))
    if counted != expected:
        raise RuntimeError(f"{counted} images pass {filters.where}, the benchmark wrote {expected}")
    return counted


def measure_interleaved(lib, filters, texts: list[str], qvecs: np.ndarray, k: int):
    """({name: latencies}, {name: found ids per query}, strategies the planner chose).

    Round-robin: each query runs under every strategy before the next query, so a burst of
    machine noise (another process, a cache flush) falls on all of them alike rather than on
    whichever ran during it. The order changes from query to query (``balanced_orders``): a run
    right after another strategy on the same query finds its SQLite pages and vectors in cache,
    and a fixed or merely rotated order would hand that advantage to the same strategy every time
    (exact-subset always after the planner, which had just done the same work). One untimed round
    first warms SQLite's page cache and faiss's threads."""
    runners = strategy_runners(lib, filters, k)
    names = list(runners)
    for name in names:
        runners[name](texts[0], qvecs[0])
    orders = balanced_orders(len(names))
    latencies = {name: [] for name in names}
    found = {name: [] for name in names}
    chosen: set[str] = set()
    for i, (text, vector) in enumerate(zip(texts, qvecs)):
        for name in (names[j] for j in orders[i % len(orders)]):
            seconds, (ids, strategy) = timed(lambda: runners[name](text, vector))  # noqa: B023 (called here)
            latencies[name].append(seconds)
            found[name].append(ids)
            if name == "planner":
                chosen.add(strategy)
    return latencies, found, chosen


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of n items in which each item comes first equally often and directly after each
    other item equally often (a Williams design: n orders for even n, 2n for odd n)."""
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    orders = [[(item + shift) % n for item in first] for shift in range(n)]
    return orders + [order[::-1] for order in orders] if n % 2 else orders


def strategy_runners(lib, filters, k: int) -> dict:
    """name -> fn(query text, its vector) -> (ids found, best first; the strategy that ran).

    The library's strategies run a whole search as a user's does (embed, count, plan, search,
    fetch the hits); the naive post-filter is the bare index search and one SQLite filter."""
    from cbir.query import Query
    from cbir.query.filter_sql import image_condition
    from cbir.store.collections import Images

    def library(strategy):
        def run(text, vector):
            [hits] = lib.search_many([Query(text=text)], k=k, filters=filters, strategy=strategy)
            return [h.id for h in hits], hits.plan.strategy

        return run

    index = lib.indexes.get("images")
    images = Images(lib.catalog.engine)
    condition = image_condition(filters, lib.catalog.roots())

    def naive(text, vector):
        _, ids = index.search(vector, k * NAIVE_OVERFETCH)
        candidates = [int(i) for i in ids[0] if i >= 0]
        passing = images.passing(candidates, condition)
        return [i for i in candidates if i in passing][:k], "naive"

    return {**{name: library(strategy) for name, strategy in STRATEGIES}, NAIVE: naive}


def _padded(found: list[list[int]], k: int) -> np.ndarray:
    """Ids per query as a [queries, k] array padded with -1 (what recall_at_k reads)."""
    out = np.full((len(found), k), -1, dtype=np.int64)
    for row, ids in zip(out, found):
        row[: min(k, len(ids))] = ids[:k]
    return out


# -- the table --------------------------------------------------------------------------------------
FILTERED_COLUMNS = (
    ("selectivity", ">"),
    ("matching", ">"),
    ("index", "<"),
    ("planner chose", "<"),
    ("planner p50", ">"),
    ("exact-subset", ">"),
    ("post-filter", ">"),
    ("naive", ">"),
    ("recall planner / exact / post / naive", "<"),
    ("planner ÷ best", ">"),
    ("goal", "<"),
)


def filtered_table(rows: Iterable[dict]) -> str:
    """The rows of ``filtered_benchmark`` as a Markdown table: the planner's median latency, the
    others' as ratios to it (above 1: slower than the planner), recall@k of each, the planner's
    latency over the better strategy's and whether the goal was met."""
    return markdown_table(FILTERED_COLUMNS, (_filtered_cells(row) for row in rows))


def _filtered_cells(row: dict) -> list[str]:
    p = row["planner"]["p50_ms"]
    ratios = [f"{row[name]['p50_ms'] / p:.2f}×" for name in ("exact_subset", "post_filter", NAIVE)]
    recalls = " / ".join(f"{row[name]['recall']:.3f}" for name in ("planner", "exact_subset", "post_filter", NAIVE))
    goal = "met" if row["goal_met"] else "missed"
    return [
        f"{row['selectivity']:.1%}",
        f"{row['matching']:,}",
        row["index"],
        row["planner_chose"],
        f"{p:.1f} ms",
        *ratios,
        recalls,
        f"{row['planner_vs_best']:.2f}×",
        goal,
    ]

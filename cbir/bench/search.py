"""Search benchmark: every index kind (flat, HNSW, IVF-Flat, IVF-PQ) side by side on the same
synthetic library, for `cbir bench` and benchmarks/index_types.py.

Each kind is built by cbir's own rebuild code (cbir.index.build.build, so it is tuned exactly as
`cbir index rebuild` tunes it) in a spawned process of its own, so the peak RSS reported is that
build's alone, not the parent's or an earlier kind's. Measured per kind: build time, peak RSS,
serialised size, recall@10 against exact search, single-query latency (p50, p99, QPS) and the
throughput of one batch of every query.

The library is generated, not stored: 512-d L2-normalised vectors around 1,000 random centres with
noise as large as the centres (overlapping clusters, harder than well-separated ones and more like
real embeddings), produced in chunks from a seed so that a million never sit in memory at once and
every process regenerates the same ones. Queries are held-out vectors drawn the same way (not in
the index). IVF-PQ re-ranks its candidates with the exact vectors, read here from a memory-mapped
file (in a library they come from SQLite).

Also the small helpers the other benchmarks share: timing, latency summaries, Markdown tables.
"""

from __future__ import annotations

import multiprocessing
import queue
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence

import numpy as np

K = 10  # recall@K and the k of every search
CHUNK = 50_000  # vectors generated at a time
CENTRES = 1000
SPREAD = 1.0  # noise as large as the centres: overlapping clusters, as real embeddings are
QUERY_STREAM = 10**9  # the generator stream of the queries, apart from every chunk's

Progress = Callable[[str], None]


# -- shared helpers ------------------------------------------------------------------------------
def quiet(line: str) -> None:
    """The default progress sink: library code never prints, the caller decides where lines go."""


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(wall seconds, result) of ``fn()``."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def latency_ms(seconds: Sequence[float]) -> dict:
    """Median, 99th percentile and mean of per-query latencies, in milliseconds: the median is
    the typical query, p99 its tail, the mean what sets sustained throughput (1000 / mean_ms)."""
    return {
        "p50_ms": 1000 * statistics.median(seconds),
        "p99_ms": 1000 * float(np.percentile(seconds, 99)),
        "mean_ms": 1000 * statistics.fmean(seconds),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. Linux: VmHWM, the high-water mark of this
    program's own memory (getrusage's ru_maxrss survives exec, so a spawned child would report
    at least its parent's size at the fork); elsewhere ru_maxrss (bytes on macOS)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def markdown_table(columns: Sequence[tuple[str, str]], cells: Iterable[Sequence[str]]) -> str:
    """A Markdown table (readable in a terminal too); ``columns`` are (title, "<" or ">")."""
    lines = [
        "| " + " | ".join(title for title, _ in columns) + " |",
        "| " + " | ".join("---:" if align == ">" else "---" for _, align in columns) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


# -- the synthetic library -----------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _centres(dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((CENTRES, dim)).astype(np.float32)


def _around(centres: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` unit vectors, each a random centre plus noise (centre indices drawn first, as
    the benchmark always has, so the same seed gives the same library as before)."""
    which = rng.integers(0, CENTRES, count)
    return _unit(centres[which] + SPREAD * rng.standard_normal((count, centres.shape[1]), dtype=np.float32))


def chunks(n: int, dim: int, seed: int = 0):
    """(ids, vectors) chunks of the synthetic library; the same for the same n, dim and seed
    (and a smaller n gives a prefix of a larger one)."""
    centres = _centres(dim, seed)
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        rng = np.random.default_rng([seed, start])
        yield np.arange(start, start + count, dtype=np.int64), _around(centres, rng, count)


def query_vectors(dim: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` held-out queries drawn like the library's vectors (none of them in it)."""
    return _around(_centres(dim, seed), np.random.default_rng([seed, QUERY_STREAM]), count)


def sample(n: int, dim: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A random sample of the library's vectors (what the catalog hands the builder)."""
    keep = np.sort(np.random.default_rng(1).choice(n, min(size, n), replace=False))
    ids, vectors = [], []
    for chunk_ids, chunk_vectors in chunks(n, dim):
        mask = np.isin(chunk_ids, keep)
        ids.append(chunk_ids[mask])
        vectors.append(chunk_vectors[mask])
    order = np.random.default_rng(2).permutation(len(keep))
    return np.concatenate(ids)[order], np.concatenate(vectors)[order]


def on_disk(n: int, dim: int, folder: str) -> np.memmap:
    """The vectors in a memory-mapped file: what SQLite is to a library, the exact vectors that
    IVF-PQ re-ranks with, read by id without holding them all in memory."""
    vectors = np.lib.format.open_memmap(f"{folder}/vectors.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    for ids, chunk in chunks(n, dim):
        vectors[ids] = chunk
    vectors.flush()
    return vectors


# -- measuring ------------------------------------------------------------------------------------
def search_benchmark(
    sizes: Sequence[int] = (10_000, 100_000),
    kinds: Sequence[str] = ("flat", "hnsw", "ivf", "ivfpq"),
    dim: int = 512,
    queries: int = 200,
    progress: Progress | None = None,
    gpu: bool = False,
) -> list[dict]:
    """One row per (size, kind), sizes in the outer loop: see ``measure_kind`` for its keys.
    ``gpu``: build and search with faiss on the GPU (flat, IVF and IVF-PQ only).

    The exact top-K of the queries is computed once per size, here, and handed to each kind's
    process, which rebuilds the library from the seed rather than receiving it."""
    from cbir.index.topk import exact_top_k
    from cbir.index.types import KINDS

    say = progress or quiet
    if unknown := [kind for kind in kinds if kind not in KINDS]:
        raise ValueError(f"unknown index kind {', '.join(unknown)}: use {', '.join(KINDS)}")
    if queries < 1:
        raise ValueError(f"queries must be >= 1, got {queries}")
    rows = []
    for n in sizes:
        q = query_vectors(dim, queries)
        seconds, truth = timed(lambda: exact_top_k(chunks(n, dim), q, K))  # noqa: B023 (called here)
        say(f"{n:,} x {dim}-d: exact top-{K} of {queries} queries in {seconds:.1f} s")
        for kind in kinds:
            say(f"{n:,} x {dim}-d: building and measuring {kind} in a process of its own")
            row = in_child(measure_kind, kind, n, dim, queries, truth, gpu)
            say(
                f"{n:,} x {dim}-d: {kind} built in {row['build_s']:.1f} s, recall@{K} "
                f"{row['recall_at_10']:.3f}, p50 {row['p50_ms']:.2f} ms, {row['batched_qps']:.0f} q/s batched"
            )
            rows.append(row)
    return rows


def measure_kind(kind: str, n: int, dim: int, queries: int, truth: np.ndarray, gpu: bool = False) -> dict:
    """Build one kind over the first ``n`` vectors and measure it (meant to run in a process of
    its own: ``peak_rss_mb`` is this process's peak). Keys: vectors, dim, queries, kind, factory,
    params (as tuned), build_s, peak_rss_mb, size_mb (serialised), tuned_recall (what the build
    measured on its own held-out sample; None when too few vectors), recall_at_10 (against
    ``truth``), p50_ms and p99_ms (single queries), single_qps (1 / mean single latency) and
    batched_qps (every query in one call)."""
    import faiss

    from cbir.index.build import build
    from cbir.index.topk import recall_at_k

    with tempfile.TemporaryDirectory() as folder:
        exact_source = None
        if kind == "ivfpq":
            stored = on_disk(n, dim, folder)
            exact_source = lambda ids: (np.asarray(ids), np.asarray(stored[np.asarray(ids)]))  # noqa: E731
        index, report = build(
            "images",
            dim,
            n,
            lambda: chunks(n, dim),
            lambda size: sample(n, dim, size),
            1,
            kind=kind,
            exact_source=exact_source,
            gpu=gpu,
        )
        q = query_vectors(dim, queries)
        _, found = index.search(q, K)  # also warms up the index before anything is timed
        single = [timed(lambda row=row: index.search(row, K))[0] for row in q]
        batched, _ = timed(lambda: index.search(q, K))
        latency = latency_ms(single)
        return {
            "vectors": n,
            "dim": dim,
            "queries": queries,
            "kind": kind,
            "factory": report.factory,
            "params": report.params,
            "build_s": report.seconds,
            "peak_rss_mb": peak_rss_mb(),
            "size_mb": faiss.serialize_index(index.faiss_index).nbytes / 1e6,
            "tuned_recall": report.recall_at_10,
            "recall_at_10": recall_at_k(found, truth, K),
            "p50_ms": latency["p50_ms"],
            "p99_ms": latency["p99_ms"],
            "single_qps": 1000 / latency["mean_ms"],
            "batched_qps": queries / batched,
        }


def in_child(fn: Callable, *args):
    """``fn(*args)`` in a freshly spawned process (its own memory, nothing inherited from this
    one); its exception, or its death, is raised here as a RuntimeError."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    child = context.Process(target=_report_to, args=(out, fn, args))
    child.start()
    try:
        status, value = _result(out, child)
    finally:
        child.join()
    if status == "error":
        raise RuntimeError(f"{fn.__name__}{args[:3]!r} failed in its process:\n{value}")
    return value


def _report_to(out, fn: Callable, args: tuple) -> None:
    try:
        out.put(("ok", fn(*args)))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent, which raises it
        out.put(("error", traceback.format_exc()))


def _result(out, child) -> tuple[str, object]:
    """The child's (status, value), waiting as long as it lives (builds can take minutes)."""
    while True:
        try:
            return out.get(timeout=1.0)
        except queue.Empty:
            if not child.is_alive():
                try:  # it may have put its result just before exiting
                    return out.get(timeout=1.0)
                except queue.Empty:
                    code = child.exitcode
                    raise RuntimeError(f"benchmark process died without a result (exit code {code})") from None


# -- the table --------------------------------------------------------------------------------------
SEARCH_COLUMNS = (
    ("vectors", ">"),
    ("kind", "<"),
    ("index", "<"),
    ("params", "<"),
    ("build", ">"),
    ("peak RSS", ">"),
    ("size", ">"),
    ("recall@10 (tuned on held-out)", "<"),
    ("p50", ">"),
    ("p99", ">"),
    ("single", ">"),
    ("batched", ">"),
)


def search_table(rows: Iterable[dict]) -> str:
    """The rows of ``search_benchmark`` as a Markdown table, one line per (size, kind)."""
    return markdown_table(SEARCH_COLUMNS, (_search_cells(row) for row in rows))


def _search_cells(row: dict) -> list[str]:
    params = ", ".join(f"{k}={v}" for k, v in row["params"].items()) or "-"
    tuned = f"{row['tuned_recall']:.3f}" if row["tuned_recall"] is not None else "-"
    return [
        f"{row['vectors']:,}",
        row["kind"],
        row["factory"],
        params,
        f"{row['build_s']:.1f} s",
        _mb(row["peak_rss_mb"]),
        _mb(row["size_mb"]),
        f"{row['recall_at_10']:.3f} ({tuned})",
        f"{row['p50_ms']:.2f} ms",
        f"{row['p99_ms']:.2f} ms",
        f"{row['single_qps']:.0f} q/s",
        f"{row['batched_qps']:.0f} q/s",
    ]


def _mb(size: float) -> str:
    """Whole megabytes, with a decimal for small ones (a test-sized index is well under 1 MB)."""
    return f"{size:.0f} MB" if size >= 10 else f"{size:.1f} MB"

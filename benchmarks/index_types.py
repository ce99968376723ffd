"""Index kinds side by side on the same synthetic library: build time, peak memory, size,
recall@10 against exact search and query latency (single p50/p99, batched QPS), each kind built
by cbir's own rebuild code (cbir.index.build) in a process of its own so its memory is its own.

    python benchmarks/index_types.py                       # 100,000 x 512-d (a few minutes)
    python benchmarks/index_types.py --vectors 1000000     # 1M: tens of minutes on 2 cores

IVF-PQ re-ranks its candidates with the exact vectors, read from a memory-mapped file here (from
SQLite in a library). Vectors are 512-d, L2-normalised, around 1,000 random centres with noise as large as the centres
(overlapping clusters, harder than well-separated ones and more like real embeddings),
generated in chunks from a seed, so a million never sit in memory at once. Queries are 200
held-out vectors drawn the same way (not in the index).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbir.index.build import build  # noqa: E402
from cbir.index.types import exact_top_k, recall_at_k  # noqa: E402

CHUNK = 50_000
CENTRES = 1000
QUERIES = 200
SPREAD = 1.0  # noise as large as the centres: overlapping clusters, as real embeddings are


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def chunks(n: int, dim: int, seed: int = 0):
    """(ids, vectors) chunks of the synthetic library; the same for the same n, dim and seed."""
    centres = np.random.default_rng(seed).standard_normal((CENTRES, dim)).astype(np.float32)
    for start in range(0, n, CHUNK):
        rng = np.random.default_rng([seed, start])
        count = min(CHUNK, n - start)
        vectors = centres[rng.integers(0, CENTRES, count)] + SPREAD * rng.standard_normal((count, dim), dtype=np.float32)
        yield np.arange(start, start + count, dtype=np.int64), _unit(vectors)


def queries(dim: int, seed: int = 0) -> np.ndarray:
    centres = np.random.default_rng(seed).standard_normal((CENTRES, dim)).astype(np.float32)
    rng = np.random.default_rng([seed, 10**9])
    return _unit(centres[rng.integers(0, CENTRES, QUERIES)] + SPREAD * rng.standard_normal((QUERIES, dim), dtype=np.float32))


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


def run_kind(kind: str, n: int, dim: int, truth: np.ndarray, out) -> None:
    """Build one kind and measure it; runs in a child process (peak RSS is this build's)."""
    import tempfile

    folder = tempfile.mkdtemp()
    stored = on_disk(n, dim, folder) if kind == "ivfpq" else None
    exact = (lambda ids: (np.asarray(ids), np.asarray(stored[np.asarray(ids)]))) if stored is not None else None
    index, report = build(
        "images", dim, n, lambda: chunks(n, dim), lambda size: sample(n, dim, size), 1,
        kind=kind, exact_source=exact,
    )
    import faiss

    q = queries(dim)
    _, found = index.search(q, 10)
    single = []
    for row in q[:100]:
        start = time.perf_counter()
        index.search(row, 10)
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    index.search(q, 10)
    batched = time.perf_counter() - start
    out.put({
        "kind": kind,
        "factory": report.factory,
        "params": report.params,
        "build_s": report.seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "size_mb": faiss.serialize_index(index.faiss_index).nbytes / 1e6,
        "tuned_recall": report.recall_at_10,
        "recall_at_10": recall_at_k(found, truth, 10),
        "p50_ms": 1000 * statistics.median(single),
        "p99_ms": 1000 * float(np.percentile(single, 99)),
        "batched_qps": len(q) / batched,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kinds", default="flat,hnsw,ivf,ivfpq")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    n, dim = args.vectors, args.dim
    start = time.perf_counter()
    truth = exact_top_k(chunks(n, dim), queries(dim), 10)
    print(f"{n} x {dim}-d, exact top-10 of {QUERIES} queries in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print("| kind | index | params | build | peak RSS | size | recall@10 (tuned on held-out) | p50 | p99 | batched |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    rows = []
    context = multiprocessing.get_context("spawn")
    for kind in args.kinds.split(","):
        out = context.Queue()
        child = context.Process(target=run_kind, args=(kind, n, dim, truth, out))
        child.start()
        row = out.get()
        child.join()
        rows.append(row)
        params = ", ".join(f"{k}={v}" for k, v in row["params"].items()) or "-"
        tuned = f"{row['tuned_recall']:.3f}" if row["tuned_recall"] is not None else "-"
        print(
            f"| {kind} | {row['factory']} | {params} | {row['build_s']:.1f} s | {row['peak_rss_mb']:.0f} MB "
            f"| {row['size_mb']:.0f} MB | {row['recall_at_10']:.3f} ({tuned}) | {row['p50_ms']:.2f} ms "
            f"| {row['p99_ms']:.2f} ms | {row['batched_qps']:.0f} q/s |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Index kinds side by side on the same synthetic library: build time, peak memory, size,
recall@10 against exact search and query latency (single p50/p99 and QPS, batched QPS), each kind
built by cbir's own rebuild code (cbir.index.build) in a process of its own so its memory is its own.

    python benchmarks/index_types.py                       # 100,000 x 512-d (a few minutes)
    python benchmarks/index_types.py --vectors 1000000     # 1M: tens of minutes on 2 cores
    python benchmarks/index_types.py --sizes 10000,100000 --kinds flat,ivf --json rows.json

IVF-PQ re-ranks its candidates with the exact vectors, read from a memory-mapped file here (from
SQLite in a library). Vectors are 512-d, L2-normalised, around 1,000 random centres with noise as large as the centres
(overlapping clusters, harder than well-separated ones and more like real embeddings),
generated in chunks from a seed, so a million never sit in memory at once. Queries are 200
held-out vectors drawn the same way (not in the index). The work is cbir.bench.search's (what
`cbir bench` runs); this prints its Markdown table, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbir.bench.search import search_benchmark, search_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000, help="library size (default 100,000)")
    parser.add_argument("--sizes", help="several library sizes, comma-separated (instead of --vectors)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kinds", default="flat,hnsw,ivf,ivfpq")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")] if args.sizes else [args.vectors]
    rows = search_benchmark(
        sizes=sizes, kinds=args.kinds.split(","), dim=args.dim, queries=args.queries,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(search_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

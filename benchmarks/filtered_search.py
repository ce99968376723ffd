"""Filtered search: the planner against always-exact-subset, always-post-filter and a naive
post-filter (one fixed over-fetch, no widening), across filter selectivities, on one synthetic
library measured in one run, the strategies taking turns query by query. Prints a Markdown table:
the planner's median latency, the others' latency as a ratio to it, recall@k of each against
exact filtered search (numpy over the same vectors), and the planner's latency over the better of
exact-subset and post-filter (the goal: at most 1.2x, at recall >= 0.95).

    python benchmarks/filtered_search.py                 # 100k 512-d vectors (a few minutes)
    python benchmarks/filtered_search.py --vectors 20000 --queries 20
    python benchmarks/filtered_search.py --index hnsw    # the same against an HNSW index

The library is a real one (SQLite file, FAISS flat index unless --index) in a temporary folder;
the filter is `width <= W` on a column holding 1..1000 evenly, so selectivity is exact. The work
is cbir.bench.filtered's (what `cbir bench` runs); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbir.bench.filtered import filtered_benchmark, filtered_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--selectivities", default="0.001,0.01,0.1,0.5,1.0", help="fractions, comma-separated")
    parser.add_argument("--index", default="flat", choices=("flat", "hnsw", "ivf", "ivfpq", "auto"),
                        help="the image index's kind (default flat)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = filtered_benchmark(
        vectors=args.vectors, dim=args.dim, queries=args.queries, k=args.k,
        selectivities=[float(s) for s in args.selectivities.split(",")], index=args.index,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(filtered_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

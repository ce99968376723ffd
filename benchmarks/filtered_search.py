"""Filtered search: the planner against always-exact-subset, always-post-filter and a naive
post-filter (one fixed over-fetch, no widening), across filter selectivities, on one synthetic
library measured in one run. Prints a Markdown table: the planner's median latency, the others' latency as a ratio to it, and
recall@k of each against exact filtered search (numpy over the same vectors).

    python benchmarks/filtered_search.py                 # 100k 512-d vectors (about 2 minutes)
    python benchmarks/filtered_search.py --vectors 20000 --queries 20

The library is a real one (SQLite file, FAISS flat index) in a temporary folder; the filter is
`width <= W` on a column holding 1..1000 evenly, so selectivity is exact.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbir.config import resolve_settings  # noqa: E402
from cbir.encode.fake import FakeEncoder  # noqa: E402
from cbir.engine import Library  # noqa: E402
from cbir.query import Query  # noqa: E402
from cbir.query.filters import Filters, image_condition  # noqa: E402
from cbir.store.catalog import MODEL, Changes, ImageRecord  # noqa: E402
from cbir.store.collections import Images  # noqa: E402

SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)
NAIVE_OVERFETCH = 10


def build(folder: Path, n: int, dim: int, seed: int = 0) -> tuple[Library, FakeEncoder]:
    encoder = FakeEncoder(dim=dim)
    lib = Library.open(resolve_settings(library=folder, env={}), create=True, encoder=encoder)
    lib.catalog.set_meta(MODEL, json.dumps(encoder.fingerprint()))
    lib.catalog.dim = dim
    root_id, _ = lib.catalog.root_for(folder / "photos")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dim)).astype(np.float32)
    for start in range(0, n, 10_000):
        changes = Changes(root_id)
        count = min(10_000, n - start)
        vectors = centres[rng.integers(0, 256, count)] + 0.5 * rng.standard_normal((count, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for j in range(count):
            i = start + j
            record = ImageRecord(f"f{i % 100}/img{i:07d}.jpg", 1000, 10**18, f"{i:064x}", 1 + i % 1000, 480, "jpeg")
            changes.added.append((record, vectors[j]))
        lib.catalog.apply(changes)
    lib.rebuild_index()
    return lib, encoder


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    k = args.k
    with tempfile.TemporaryDirectory() as tmp:
        t, (lib, encoder) = timed(lambda: build(Path(tmp) / "lib", args.vectors, args.dim))
        print(f"built {args.vectors} x {args.dim}-d library in {t:.1f} s", file=sys.stderr)
        index = lib._index("images")
        ids_all = index.ids()
        matrix = index._matrix()
        widths = 1 + (ids_all - 1) % 1000  # ids start at 1, in insertion order
        texts = [f"query {i}" for i in range(args.queries)]
        qvecs = encoder.encode_texts(texts)
        images = Images(lib.catalog.engine)
        rows = []
        for selectivity in SELECTIVITIES:
            limit = max(1, round(selectivity * 1000))
            filters = Filters(where=f"width <= {limit}")
            condition = image_condition(filters, lib.catalog.roots())
            mask = widths <= limit
            truth = []
            for q in qvecs:
                scores = matrix[mask] @ q
                top = np.lexsort((ids_all[mask], -scores))[:k]
                truth.append(set(ids_all[mask][top].tolist()))
            row = {"selectivity": selectivity, "matching": int(mask.sum())}
            for name, strategy in (("planner", "auto"), ("exact_subset", "exact-subset"), ("post_filter", "ann-post-filter")):
                latencies, recalls, chosen = [], [], set()
                for text, expected in zip(texts, truth):
                    t, [hits] = timed(lambda: lib.search_many([Query(text=text)], k=k, filters=filters, strategy=strategy))
                    latencies.append(t)
                    recalls.append(len({h.id for h in hits} & expected) / len(expected))
                    chosen.add(hits.plan.strategy)
                row[name] = {"p50_ms": 1000 * statistics.median(latencies), "recall": float(np.mean(recalls))}
                if name == "planner":
                    row["planner_chose"] = ",".join(sorted(chosen))
            latencies, recalls = [], []
            for q, expected in zip(qvecs, truth):  # naive: one over-fetch, filter, no widening

                def naive(q=q):
                    scores, ids = index.search(q, k * NAIVE_OVERFETCH)
                    passing = images.passing([int(i) for i in ids[0] if i >= 0], condition)
                    return [int(i) for i in ids[0] if int(i) in passing][:k]

                t, found = timed(naive)
                latencies.append(t)
                recalls.append(len(set(found) & expected) / len(expected))
            row["naive_post_filter"] = {"p50_ms": 1000 * statistics.median(latencies), "recall": float(np.mean(recalls))}
            rows.append(row)
            print_row(row)
        lib.close()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def print_row(row: dict) -> None:
    """One row of a Markdown table (readable in a terminal too): the planner's median latency,
    the others' as ratios to it (above 1: slower than the planner), and recall@k of each."""
    if row["selectivity"] == SELECTIVITIES[0]:
        print(
            "| selectivity | matching | planner chose | planner p50 | exact-subset | post-filter "
            "| naive | recall planner / exact / post / naive |"
        )
        print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    p = row["planner"]["p50_ms"]
    recalls = " / ".join(
        f"{row[name]['recall']:.3f}" for name in ("planner", "exact_subset", "post_filter", "naive_post_filter")
    )
    print(
        f"| {row['selectivity']:.1%} | {row['matching']} | {row['planner_chose']} | {p:.1f} ms "
        f"| {row['exact_subset']['p50_ms'] / p:.2f}× | {row['post_filter']['p50_ms'] / p:.2f}× "
        f"| {row['naive_post_filter']['p50_ms'] / p:.2f}× | {recalls} |",
        flush=True,
    )


if __name__ == "__main__":
    main()

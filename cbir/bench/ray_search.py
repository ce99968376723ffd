"""`cbir bench --only ray`: latency of the same sharded index searched here (ShardedIndex, a
thread per shard) and by Ray actors on this machine (cbir.distributed.search), interleaved query
by query so both see the same machine load. The results are checked equal, not only timed."""

from __future__ import annotations

import time

import numpy as np


def ray_search_benchmark(
    *,
    vectors: int = 100_000,
    dim: int = 512,
    shards: int = 4,
    actors: int = 2,
    queries: int = 200,
    batch: int = 64,
    k: int = 10,
    kinds=("flat", "ivf"),
    progress=None,
) -> dict:
    """Per index kind: p50/p99 of single-query latency and batched queries/s, local vs Ray."""
    say = progress or (lambda _: None)
    try:
        from cbir.distributed.search import RayEngine, RayOptions
        from cbir.errors import CbirError

        engine = RayEngine(RayOptions(actors=actors, num_cpus=1))
    except CbirError as e:
        return {"skipped": str(e)}
    from cbir.bench.search import _unit
    from cbir.index.choice import choose_spec
    from cbir.index.sharded import Router, ShardedIndex
    from cbir.index.vector_index import VectorIndex

    rng = np.random.default_rng(0)
    data = _unit(rng.standard_normal((vectors, dim)))
    ids = np.arange(vectors, dtype=np.int64)
    where = Router("hash", shards).assign(ids)
    asked = _unit(data[rng.choice(vectors, queries)] + 0.3 * rng.standard_normal((queries, dim)))
    report = {"vectors": vectors, "dim": dim, "shards": shards, "actors": actors, "k": k, "batch": batch, "rows": []}
    try:
        for kind in kinds:
            say(f"ray: {kind} index of {vectors:,} x {dim} in {shards} shards")
            parts = []
            for n in range(shards):
                mine = where == n
                spec = choose_spec(int(mine.sum()), dim, kind=kind)
                sample = data[mine][: max(spec.train_size, 1)] if spec.train_size else None
                parts.append(VectorIndex.build(dim, [(ids[mine], data[mine])], 1, spec=spec, sample=sample))
            local = ShardedIndex(parts, Router("hash", shards))
            local.vector_version = 1
            started = time.perf_counter()
            served = engine.publish(local)
            publish = time.perf_counter() - started
            equal = all(np.array_equal(a, b) for a, b in zip(local.search(asked, k), served.search(asked, k)))
            times = {"local": [], "ray": []}
            for query in asked:  # interleaved, one query per call, as the planner searches
                for name, index in (("local", local), ("ray", served)):
                    t = time.perf_counter()
                    index.search(query, k)
                    times[name].append(time.perf_counter() - t)
            rates = {}
            for name, index in (("local", local), ("ray", served)):
                t = time.perf_counter()
                for start in range(0, queries, batch):
                    index.search(asked[start : start + batch], k)
                rates[name] = queries / (time.perf_counter() - t)
            for name in ("local", "ray"):
                ms = np.asarray(times[name]) * 1000
                report["rows"].append(
                    {
                        "kind": kind,
                        "engine": name,
                        "p50_ms": float(np.percentile(ms, 50)),
                        "p99_ms": float(np.percentile(ms, 99)),
                        "batch_qps": rates[name],
                        "equal": equal,
                        "publish_s": publish if name == "ray" else None,
                    }
                )
    finally:
        engine.close()
    return report


def ray_search_table(report: dict) -> str:
    from cbir.bench.search import markdown_table

    columns = [
        ("index", "<"),
        ("engine", "<"),
        ("p50 ms", ">"),
        ("p99 ms", ">"),
        (f"queries/s in batches of {report['batch']}", ">"),
        ("results equal", "<"),
        ("shipping to actors", ">"),
    ]
    return markdown_table(
        columns,
        (
            [
                r["kind"],
                r["engine"],
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['batch_qps']:.0f}",
                "yes" if r["equal"] else "NO",
                f"{r['publish_s']:.1f} s" if r["publish_s"] is not None else "-",
            ]
            for r in report["rows"]
        ),
    )

"""`cbir bench --only ray-ingest`: the same ingest on the local engine and on a Ray cluster of
two worker nodes on this machine (cbir.bench.ray_cluster: ``ray start``, each node its own
raylet and object store), in one run: images/s of each and their ratio, what Ray's scheduling,
serialisation and object transfers cost. Ray pays off only with more machines or GPUs than one
process can use.

Each engine ingests two generated folders of web-size JPEGs, a small one and the full one, into
libraries of their own, ``rounds`` times alternately (fresh libraries each round); the fastest
time of each counts. The two sizes split an ingest's time into a fixed start (for Ray: starting
the encode actor, loading the model there) and a steady rate, by the line
through both points. The cluster's own start is reported apart, since a real cluster is started
once for many ingests."""

from __future__ import annotations

import time
from pathlib import Path

from cbir.bench.ingest import SETS, make_photos


def ray_ingest_benchmark(
    work: Path,
    *,
    images: int = 256,
    model: str = "cbir-tiny",
    cpus: int = 2,
    batch: int = 32,
    rounds: int = 2,
    say=lambda _: None,
) -> dict:
    """``cpus``: the local engine's decode processes, and the cluster's CPUs (two nodes of
    half as many each)."""
    try:
        from cbir.bench.ray_cluster import joined, started_ray_cluster
        from cbir.distributed.cluster import import_ray
        from cbir.errors import CbirError

        import_ray()
    except CbirError as e:
        return {"skipped": str(e)}
    from cbir.config import resolve_settings
    from cbir.library import Library

    small = max(8, images // 8)
    say(f"ray-ingest: generating {images} + {small} photos")
    folders = {images: work / "photos", small: work / "photos-small"}
    for n, folder in folders.items():
        make_photos(folder, n, SETS["web"])

    def ingest(name: str, engine: str, n: int) -> float:
        settings = resolve_settings(library=work / name, model=model, batch_size=batch, workers=cpus, env={})
        with Library.open(settings, create=True) as lib:
            report = lib.ingest(folders[n], engine=engine)
        assert report.encoded == n, report
        return report.seconds

    per_node = max(1, cpus // 2)
    say("ray-ingest: starting a head and 2 worker nodes")
    started = time.perf_counter()
    (work / "nodes").mkdir(parents=True)
    seconds: dict[tuple[str, int], list[float]] = {}
    with started_ray_cluster(work / "nodes", nodes=2, cpus_per_node=per_node) as cluster, joined(cluster):
        cluster_start = time.perf_counter() - started
        for i in range(rounds):
            for engine in ("local", "ray"):
                say(f"ray-ingest: round {i + 1}/{rounds}, {engine} engine")
                for n in (small, images):
                    seconds.setdefault((engine, n), []).append(ingest(f"{engine}-{n}-{i}", engine, n))
    row = {
        "images": images,
        "small": small,
        "model": model,
        "cpus": cpus,
        "nodes": 2,
        "cpus_per_node": per_node,
        "batch": batch,
        "rounds": rounds,
        "cluster_start_s": round(cluster_start, 2),
        "all_rounds_s": {f"{e} {n}": [round(t, 2) for t in ts] for (e, n), ts in seconds.items()},
    }
    for engine in ("local", "ray"):
        full, part = min(seconds[engine, images]), min(seconds[engine, small])
        per_image = (full - part) / (images - small)
        row[engine] = {
            "images_per_s": round(images / full, 2),
            "start_s": round(part - per_image * small, 2) if per_image > 0 else None,
            "steady_images_per_s": round(1 / per_image, 2) if per_image > 0 else None,  # None: too noisy to tell
        }
    row["ray_over_local"] = round(row["ray"]["images_per_s"] / row["local"]["images_per_s"], 3)
    return row


def ray_ingest_table(row: dict) -> str:
    from cbir.bench.search import markdown_table

    def cells(name: str, engine: str) -> list[str]:
        r = row[engine]
        return [
            name,
            f"{r['images_per_s']:.1f}",
            "-" if r["start_s"] is None else f"{r['start_s']:.1f} s",
            "-" if r["steady_images_per_s"] is None else f"{r['steady_images_per_s']:.1f}",
        ]

    table = markdown_table(
        [("engine", "<"), (f"images/s, {row['images']} photos", ">"), ("start", ">"), ("steady images/s", ">")],
        [
            cells(f"local ({row['cpus']} decode processes, encoding in this process)", "local"),
            cells(
                f"Ray, {row['nodes']} worker nodes of {row['cpus_per_node']} CPU (decode tasks, 1 encode actor)", "ray"
            ),
        ],
    )
    return (
        f"{table}\n\nRay / local: {row['ray_over_local']}x end to end. Start and steady rate: the line through the "
        f"{row['small']}- and {row['images']}-photo ingests; the cluster's own start, {row['cluster_start_s']} s, not counted."
    )

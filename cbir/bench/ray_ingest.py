"""The same ingest on the local engine and on a private 2-CPU local Ray cluster, in one run:
images/s of each and their ratio (what Ray's scheduling, serialisation and object store cost
on one machine; Ray pays off only with more machines or GPUs than one process can use).

Each engine ingests the same generated folder of web-size JPEGs into a library of its own,
``rounds`` times alternately (a fresh library each round), and the best round counts. The Ray
figures include starting its encode actor (loading the model) for each ingest; the cluster's
own start is reported apart, since a real cluster is started once for many ingests."""

from __future__ import annotations

import time
from pathlib import Path

from cbir.bench.ingest import SETS, make_photos


def ray_ingest_benchmark(work: Path, *, images: int = 256, model: str = "cbir-tiny", cpus: int = 2,
                         batch: int = 32, rounds: int = 2, say=lambda _: None) -> dict:
    from cbir.config import resolve_settings
    from cbir.distributed.cluster import connected
    from cbir.engine import Library

    say(f"ray: generating {images} photos")
    photos = work / "photos"
    make_photos(photos, images, SETS["web"])

    def ingest(name: str, engine: str) -> float:
        settings = resolve_settings(library=work / name, model=model, batch_size=batch, workers=cpus, env={})
        with Library.open(settings, create=True) as lib:
            report = lib.ingest(photos, engine=engine)
        assert report.encoded == images, report
        return images / report.seconds

    started = time.perf_counter()
    with connected(None, num_cpus=cpus):
        cluster_start = time.perf_counter() - started
        rates: dict[str, list[float]] = {"local": [], "ray": []}
        for i in range(rounds):
            for engine in ("local", "ray"):
                say(f"ray: round {i + 1}/{rounds}, {engine} engine")
                rates[engine].append(ingest(f"{engine}-{i}", engine))
    local, ray = max(rates["local"]), max(rates["ray"])
    return {
        "images": images, "model": model, "cpus": cpus, "batch": batch, "rounds": rounds,
        "local_images_per_s": round(local, 2), "ray_images_per_s": round(ray, 2),
        "ray_over_local": round(ray / local, 3), "overhead_s_per_100_images": round(100 / ray - 100 / local, 2),
        "cluster_start_s": round(cluster_start, 2),
        "all_rounds": {k: [round(v, 2) for v in vs] for k, vs in rates.items()},
    }


def ray_table(row: dict) -> str:
    return "\n".join([
        f"{row['images']} web-size JPEGs, {row['model']}, batch {row['batch']}, {row['cpus']} CPUs, best of {row['rounds']} rounds",
        "",
        "| engine | images/s |",
        "|---|---:|",
        f"| local (2 decode processes, encode in-process) | {row['local_images_per_s']} |",
        f"| Ray, 2-CPU local cluster (1 decode task slot, 1 encode actor) | {row['ray_images_per_s']} |",
        "",
        f"Ray / local: {row['ray_over_local']}x ({row['overhead_s_per_100_images']} s more per 100 images); "
        f"cluster start {row['cluster_start_s']} s (not included).",
    ])

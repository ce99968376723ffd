"""Peak memory (RSS) of an ingest and of an index rebuild, each in a process of its own so its
peak is its own: the ingest of web-size photos with the benchmark's model on the default backend
(what `cbir ingest` uses), and the rebuild of a
library of N synthetic vectors (streamed from SQLite, never whole in memory)."""

from __future__ import annotations

from pathlib import Path

from cbir.bench.search import in_child


def _ingest_peak(model: str, folder: str, batch: int, workers) -> dict:
    from cbir.bench.ingest import ingest_once
    from cbir.bench.search import peak_rss_mb
    from cbir.encode import load_encoder

    encoder = load_encoder(model, "cpu")  # the default backend: ONNX Runtime where the model exports
    report = ingest_once(Path(folder), encoder, batch, workers)
    backend = "ONNX Runtime" if type(encoder).__name__ == "OnnxEncoder" else "torch"
    return {
        "what": f"ingest of {report.encoded} web-size photos ({model} on {backend}, batch {batch})",
        "peak_rss_mb": peak_rss_mb(),
    }


def _rebuild_peak(folder: str, kind: str) -> dict:
    from cbir.bench.search import peak_rss_mb
    from cbir.config import resolve_settings
    from cbir.encode.fake import FakeEncoder
    from cbir.library import Library

    with Library.open(resolve_settings(library=folder, env={}), encoder=FakeEncoder(dim=512)) as lib:
        report = lib.rebuild_index(kind, gpu=False)[0]
    return {
        "what": f"index rebuild of {report.vectors:,} x 512-d vectors as {report.factory} ({report.seconds:.0f} s)",
        "peak_rss_mb": peak_rss_mb(),
    }


def memory_benchmark(
    model: str, work: Path, photos: int, vectors: int, batch: int, workers, progress=None
) -> list[dict]:
    """Rows of {"what", "peak_rss_mb"}: an ingest of ``photos`` web-size photos and, with
    ``vectors`` > 0, a rebuild of that many vectors as IVF-Flat (what auto picks past a million,
    and what it falls back to when HNSW misses the recall target)."""
    from cbir.bench.filtered import build_library
    from cbir.bench.ingest import SETS, make_photos

    say = progress or (lambda _: None)
    folder = work / "memory-photos"
    make_photos(folder, photos, SETS["web"], seed=7)
    say(f"memory: ingest of {photos} photos in a process of its own")
    rows = [in_child(_ingest_peak, model, str(folder), batch, workers)]
    if vectors:
        say(f"memory: a library of {vectors:,} vectors, then its rebuild in a process of its own")
        build_library(work / "memory-library", vectors, 512, index=None)[0].close()
        rows.append(in_child(_rebuild_peak, str(work / "memory-library"), "ivf"))
    return rows

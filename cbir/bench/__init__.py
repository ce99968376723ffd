"""`cbir bench`: ingest and search speed measured side by side in one run on this machine, so
the ratios hold on noisy shared hardware. Each section returns plain rows; ``run`` collects
them into one JSON-able report and ``report_text`` prints it as Markdown tables.

Sections: backends (torch fp32, ONNX Runtime fp32 and int8 side by side: model-only GFLOP/s
against the CPU's measured GEMM peak, ingest, text encoding, cold `cbir search`), ingest (end to
end on torch vs model-forward ceiling vs naive, per photo size), decode (full
vs draft JPEG decoding), stages (where the ingest's time goes), text (query encoding latency),
search (index kinds at several sizes), filtered (planner vs fixed strategies by selectivity),
memory (peak RSS of an ingest and of an index rebuild), gpu (the same on CUDA, when present),
serve (concurrent clients against `cbir serve` on 127.0.0.1), ray (sharded search by Ray
actors vs the same shards searched here), ray-ingest (the same ingest locally and on a Ray
cluster of two worker nodes on this machine).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

SECTIONS = ("backends", "ingest", "decode", "text", "search", "filtered", "memory", "gpu", "serve", "ray", "ray-ingest")

# (quick, full) sizes: quick finishes in a few minutes on 2 cores, full in about an hour
SIZES = {
    "backends": ({"images": 32, "cold_runs": 1}, {"images": 256, "cold_runs": 3}),
    "ingest": ({"web": 32, "camera": 4}, {"web": 256, "camera": 96}),
    "decode": (4, 16),
    "search": ((10_000,), (10_000, 100_000, 1_000_000)),
    "filtered": (10_000, 100_000),
    "memory": (0, 1_000_000),  # vectors of the rebuild measured (0: the rebuild is skipped)
    "ray": ({"vectors": 20_000, "queries": 50}, {"vectors": 100_000, "queries": 300}),
    "ray-ingest": ({"images": 32, "rounds": 1}, {"images": 1024, "rounds": 2}),
    "serve": (
        {"images": 64, "clients": (1, 4), "seconds": 3.0},
        {"images": 512, "clients": (1, 4, 16), "seconds": 15.0},
    ),
}


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        pass
    return info


def run(
    *,
    quick: bool = False,
    model: str = "ViT-B-32:none",
    device: str = "cpu",
    sections=SECTIONS,
    batch: int | None = None,
    workers: int | None = None,
    progress=None,
) -> dict:
    """Run ``sections`` and return {"machine", "settings", section: rows...}."""
    from cbir.bench import ingest as ingest_bench
    from cbir.encode.clip import OpenClipEncoder
    from cbir.encode.spec import parse_model_spec

    unknown = set(sections) - set(SECTIONS)
    if unknown:
        from cbir.errors import UsageError

        raise UsageError(f"unknown bench section {', '.join(sorted(unknown))}: use {', '.join(SECTIONS)}")
    say = progress or (lambda _: None)
    size = 0 if quick else 1
    started = time.perf_counter()
    report: dict = {"machine": machine(), "settings": {"quick": quick, "model": model, "device": device}}
    # torch, whatever the default backend: the naive baseline is open_clip's own code, and the
    # backends section puts the others beside it
    encoder = (
        OpenClipEncoder(parse_model_spec(model), device)
        if set(sections) & {"ingest", "decode", "text", "memory"}
        else None
    )
    batch = batch or (256 if encoder is not None and encoder.device.startswith("cuda") else 32)
    report["settings"]["batch"] = batch
    with tempfile.TemporaryDirectory(prefix="cbir-bench-") as tmp:
        work = Path(tmp)
        if "backends" in sections:
            from cbir.bench.backends import backends_benchmark

            report["backends"] = backends_benchmark(
                model, work, **SIZES["backends"][size], batch=batch, workers=workers, progress=say
            )
        if "ingest" in sections:
            report["ingest"] = ingest_bench.ingest_benchmark(encoder, work, SIZES["ingest"][size], batch, workers, say)
        if "decode" in sections:
            report["decode"] = ingest_bench.decode_benchmark(encoder, work, SIZES["decode"][size], say)
        if "text" in sections:
            say("text: query encoding latency")
            report["text"] = ingest_bench.text_latency(encoder)
        if "search" in sections:
            from cbir.bench.search import search_benchmark

            report["search"] = search_benchmark(sizes=SIZES["search"][size], progress=say)
        if "filtered" in sections:
            from cbir.bench.filtered import filtered_benchmark

            report["filtered"] = filtered_benchmark(
                vectors=SIZES["filtered"][size], queries=10 if quick else 50, progress=say
            )
        if "memory" in sections:
            from cbir.bench.memory import memory_benchmark

            report["memory"] = memory_benchmark(
                model, work, SIZES["ingest"][size]["web"], SIZES["memory"][size], batch, workers, say
            )
        if "gpu" in sections:
            report["gpu"] = _gpu(work, quick, batch, workers, say)
        if "serve" in sections:
            from cbir.bench.serve import serve_benchmark

            report["serve"] = serve_benchmark(model, device, work, **SIZES["serve"][size], say=say)
        if "ray" in sections:
            from cbir.bench.ray_search import ray_search_benchmark

            report["ray"] = ray_search_benchmark(**SIZES["ray"][size], progress=say)
        if "ray-ingest" in sections:
            from cbir.bench.ray_ingest import ray_ingest_benchmark

            report["ray-ingest"] = ray_ingest_benchmark(
                work / "ray-ingest",
                model=model,
                batch=batch,
                cpus=workers or os.cpu_count() or 2,
                say=say,
                **SIZES["ray-ingest"][size],
            )
    report["seconds"] = time.perf_counter() - started
    return report


def _gpu(work: Path, quick: bool, batch: int | None, workers: int | None, say) -> dict:
    """The ingest comparison on CUDA with fp16, and model utilisation; a note without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine"}
    from cbir.bench.ingest import ingest_benchmark
    from cbir.encode import load_encoder

    encoder = load_encoder("ViT-B-32:none", "cuda")
    rows = ingest_benchmark(encoder, work / "gpu", {"web": 512 if quick else 4096}, max(batch or 0, 256), workers, say)
    peak = _peak_fp16_tflops(torch.cuda.get_device_name(0))
    for row in rows:
        row["gflop_per_image"] = VIT_B_32_GFLOP
        if peak:
            row["model_utilisation"] = row["end_to_end"] * VIT_B_32_GFLOP / (peak * 1000)
    report = {"device": torch.cuda.get_device_name(0), "peak_fp16_tflops": peak, "rows": rows}
    from cbir.index import gpu as faiss_gpu

    if faiss_gpu.available():
        from cbir.bench.search import search_benchmark

        sizes = (100_000,) if quick else (100_000, 1_000_000)
        report["search"] = search_benchmark(sizes=sizes, kinds=("flat", "ivf", "ivfpq"), progress=say, gpu=True)
    else:
        report["search"] = {"skipped": faiss_gpu.unavailable()}
    return report


VIT_B_32_GFLOP = 8.8  # per 224x224 image, forward (the figure; open_clip's profile: 4.4 GMACs)
# Dense fp16 tensor-core peaks (no sparsity), from NVIDIA's data sheets
_PEAK_FP16 = {
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "T4": 65.0,
    "V100": 125.0,
}


def _peak_fp16_tflops(name: str) -> float | None:
    for key, tflops in _PEAK_FP16.items():
        if key in name:
            return tflops
    return None


def report_text(report: dict) -> str:
    """The report as Markdown tables, one per section that ran."""
    from cbir.bench.render import render

    return render(report)

"""Inference backends side by side on this CPU, in one run (issue 20): torch fp32, ONNX Runtime fp32
and ONNX Runtime int8, each measured against the hardware rather than against itself.

- model only: images/s of the image tower on the same preprocessed pixels and batch, and the
  GFLOP/s that makes (the model's FLOPs per image counted on one torch forward) as a fraction of
  the CPU's peak, measured here by a float32 GEMM (numpy's and torch's, the faster counts);
- ingest: a real ``Library.ingest`` of the same generated web-size photos per backend, as a
  fraction of that backend's own model-only rate;
- text: warm query encoding p50/p99 per backend, the model set up as cbir serve sets it up;
- cold search: ``cbir search`` in a fresh process per run (CBIR_BACKEND / CBIR_PRECISION set, the
  ONNX cache filled beforehand, one untimed run first so the files are in the page cache): wall
  time, peak RSS, and whether the process imported torch, so a row says which backend really ran.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cbir.bench.ingest import SETS, forward_rate, ingest_once, make_photos, text_latency

BACKENDS = (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"))
QUERY = "two dogs in a frosty field"

# Runs `cbir` as `python -m cbir` does and, at exit, writes the process's own peak RSS (VmHWM:
# ru_maxrss would include the parent's size at the fork) and which inference libraries it loaded.
_PROBE = """
import atexit, json, runpy, sys

def _report(path=sys.argv[1]):
    try:
        with open('/proc/self/status') as status:
            peak = next(int(line.split()[1]) / 1024 for line in status if line.startswith('VmHWM:'))
    except (OSError, StopIteration):
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == 'darwin' else 1024)
    loaded = {name: name in sys.modules for name in ('torch', 'onnxruntime')}
    with open(path, 'w') as out:
        json.dump({'peak_rss_mb': peak, **loaded}, out)

atexit.register(_report)
sys.argv = ['cbir', *sys.argv[2:]]
runpy.run_module('cbir', run_name='__main__', alter_sys=True)
"""


def backends_benchmark(
    model: str, work: Path, images: int, cold_runs: int, batch: int, workers: int | None, progress=None
) -> dict:
    """{"gflop_per_image", "peak_gflops", "gemm", "rows": one per backend, "skipped": backend ->
    why}; every ratio is between numbers of this run."""
    say = progress or (lambda _: None)
    say("backends: float32 GEMM peak of this CPU")
    load_before = _load_average()
    gemm = gemm_peak()
    peak = max(gemm.values())
    encoders, skipped = _encoders(model, say)
    gflop = image_gflop(encoders["torch fp32"])
    size = encoders["torch fp32"].preprocess.size
    pixels = np.random.default_rng(0).integers(0, 256, (2 * batch, size, size, 3), dtype=np.uint8)
    say(f"backends: generating {images} web-size photos")
    photos = work / "backends-photos"
    make_photos(photos, images, SETS["web"], seed=11)
    rows = []
    for name, encoder in encoders.items():
        say(f"backends/{name}: model only, ingest, text, cold search")
        rate = forward_rate(encoder, pixels, batch)
        library = work / f"backends-library-{name.replace(' ', '-')}"
        ingest = ingest_once(photos, encoder, batch, workers, library=library).images_per_second
        backend, precision = name.split()
        rows.append(
            {
                "backend": name,
                "model_per_s": rate,
                "gflops": rate * gflop,
                "of_peak": rate * gflop / peak,
                "ingest_per_s": ingest,
                "ingest_vs_model": ingest / rate,
                "text": _warm_text(encoder),
                "cold": cold_search(library, backend, precision, cold_runs),
            }
        )
    torch_row = rows[0]
    for row in rows:
        row["model_vs_torch"] = row["model_per_s"] / torch_row["model_per_s"]
        row["ingest_vs_torch"] = row["ingest_per_s"] / torch_row["ingest_per_s"]
        row["cold_vs_torch"] = row["cold"]["wall_s"] / torch_row["cold"]["wall_s"]
    return {
        "model": model,
        "batch": batch,
        "images": images,
        "gflop_per_image": gflop,
        "gemm": gemm,
        "peak_gflops": peak,
        "threads": {"torch": _torch_threads(), "onnxruntime": _onnx_threads()},
        # other programs' load makes every number smaller, the ratios less so
        "load_average": [load_before, _load_average()],
        "rows": rows,
        "skipped": skipped,
    }


def _warm_text(encoder) -> dict:
    """Query latency in a long-lived process, set up as cbir serve sets up its model (ONNX
    Runtime: the text tower's weights prepacked)."""
    if hasattr(encoder, "for_many_queries"):
        encoder.for_many_queries()
    return text_latency(encoder)


def _encoders(model: str, say) -> tuple[dict, dict]:
    """Backend name -> encoder, torch first (built directly, whatever the default backend is);
    an ONNX variant the model cannot run on goes to the second dict with the reason."""
    from cbir.encode.clip import OpenClipEncoder
    from cbir.encode.onnx_runtime import onnx_encoder
    from cbir.encode.spec import parse_model_spec
    from cbir.errors import OnnxUnavailable

    spec = parse_model_spec(model)
    encoders: dict = {"torch fp32": OpenClipEncoder(spec, "cpu")}
    skipped = {}
    for backend, precision in BACKENDS[1:]:
        name = f"{backend} {precision}"
        say(f"backends/{name}: the model's ONNX graphs (exported into the cache on first use)")
        try:
            encoders[name] = onnx_encoder(spec, precision)
        except OnnxUnavailable as e:
            skipped[name] = str(e)
    return encoders, skipped


def gemm_peak(n: int = 2048, seconds: float = 1.0) -> dict:
    """Best GFLOP/s of an n x n float32 matrix product, by numpy and by torch (their BLAS and
    threads differ; the faster is this CPU's practical peak)."""
    import torch

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return {"numpy": _best_gflops(lambda: a @ b, n, seconds), "torch": _best_gflops(lambda: ta @ tb, n, seconds)}


def _best_gflops(product, n: int, seconds: float) -> float:
    product()  # warm-up: thread pools, page faults
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def image_gflop(torch_encoder) -> float:
    """GFLOP of one image through the image tower, counted by torch on one forward (a multiply and
    an add count two; ViT-B-32 at 224: 8.7). With gradients on: without them attention takes a
    fused fast path whose projections the counter does not see (a third of a ViT's FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    size = torch_encoder.preprocess.size
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        torch_encoder.model.encode_image(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def cold_search(library: Path, backend: str, precision: str, runs: int) -> dict:
    """``cbir search QUERY`` on ``library`` in fresh processes: median wall seconds and the largest
    peak RSS of ``runs`` runs after an untimed one, and what the process imported."""
    env = {**os.environ, "CBIR_BACKEND": backend, "CBIR_PRECISION": precision}
    # As after an install: the untimed first run leaves bytecode that the timed runs read (with
    # PYTHONDONTWRITEBYTECODE set, each run would compile cbir's modules again: 0.1 s).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    _probe(library, env)
    timed = [_probe(library, env) for _ in range(runs)]
    return {
        "runs": runs,
        "wall_s": statistics.median(run["wall_s"] for run in timed),
        "peak_rss_mb": max(run["peak_rss_mb"] for run in timed),
        "imported_torch": any(run["torch"] for run in timed),
        "imported_onnxruntime": any(run["onnxruntime"] for run in timed),
    }


def _probe(library: Path, env: dict) -> dict:
    out = library.parent / f"{library.name}-probe.json"
    command = [sys.executable, "-c", _PROBE, str(out), "search", QUERY, "--library", str(library)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"cbir search failed ({env['CBIR_BACKEND']}): {done.stderr.strip()[-2000:]}")
    return {"wall_s": wall, **json.loads(out.read_text())}


def _load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _onnx_threads() -> int:
    from cbir.encode.onnx_runtime import default_threads

    return default_threads()


def _table(header: list[str], rows: list[list[str]]) -> str:
    from cbir.bench.search import markdown_table

    return markdown_table([(title, "<" if i == 0 else ">") for i, title in enumerate(header)], rows)


def _loads(pair: list) -> str:
    return " then ".join("unknown" if load is None else f"{load:.1f}" for load in pair) + " (before, after)"


def backends_tables(section: dict) -> str:
    """Two Markdown tables: throughput against the hardware, then queries."""
    rows = section["rows"]
    throughput = _table(
        [
            "backend",
            "model only img/s",
            "GFLOP/s",
            "of fp32 peak",
            "vs torch",
            "ingest img/s",
            "ingest / model only",
            "ingest vs torch",
        ],
        [
            [
                r["backend"],
                f"{r['model_per_s']:.1f}",
                f"{r['gflops']:.0f}",
                f"{100 * r['of_peak']:.0f}%",
                f"{r['model_vs_torch']:.2f}x",
                f"{r['ingest_per_s']:.1f}",
                f"{r['ingest_vs_model']:.2f}",
                f"{r['ingest_vs_torch']:.2f}x",
            ]
            for r in rows
        ],
    )
    queries = _table(
        [
            "backend",
            "text p50 ms",
            "text p99 ms",
            "cold search s",
            "cold peak RSS",
            "cold vs torch",
            "cold imports torch",
        ],
        [
            [
                r["backend"],
                f"{r['text']['p50_ms']:.1f}",
                f"{r['text']['p99_ms']:.1f}",
                f"{r['cold']['wall_s']:.2f}",
                f"{r['cold']['peak_rss_mb']:.0f} MB",
                f"{r['cold_vs_torch']:.2f}",
                "yes" if r["cold"]["imported_torch"] else "no",
            ]
            for r in rows
        ],
    )
    gemm = ", ".join(f"{k} {v:.0f}" for k, v in section["gemm"].items())
    notes = [f"{name}: skipped ({why})" for name, why in section["skipped"].items()]
    return "\n\n".join(
        [
            f"{section['model']}, batch {section['batch']}, {section['gflop_per_image']:.2f} GFLOP per image; "
            f"CPU peak {section['peak_gflops']:.0f} GFLOP/s (float32 GEMM: {gemm}); threads: torch "
            f"{section['threads']['torch']}, ONNX Runtime {section['threads']['onnxruntime']}; ingest of "
            f"{section['images']} web-size photos per backend; load average {_loads(section['load_average'])}",
            throughput,
            f'`cbir search "{QUERY}"` in a fresh process, median of {rows[0]["cold"]["runs"]} after a '
            "warm-up run; text: one query encoded in this process, warm",
            queries,
            *notes,
        ]
    )

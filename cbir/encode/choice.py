"""Which model a library uses: the one requested, else the one it was built with, else the default
for a new library; a requested model that is not the library's is refused before anything loads.
And what runs it: torch or ONNX Runtime, at the library's precision."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cbir.config import Settings
from cbir.encode.spec import ModelSpec, parse_model_spec
from cbir.errors import ModelMismatch, UsageError


def model_to_load(settings: Settings, stored: dict | None) -> ModelSpec:
    """The model to load for a library whose model fingerprint is ``stored`` (None: a new one)."""
    if settings.model:
        return parse_model_spec(settings.model)
    if stored:
        return parse_model_spec(stored["spec"])
    return parse_model_spec(settings.model_for_new_library)


def check_requested_model(requested: str | None, stored: dict, library: Path) -> None:
    """Refuse before loading anything when the requested model is not the library's."""
    if not requested:
        return
    spec = parse_model_spec(requested)
    weights = spec.weights_id()
    if (spec.arch, weights) != (stored["model"], stored["weights"]):
        raise mismatch(library, stored, spec.name, weights)


def mismatch(library: Path, stored: dict, requested: str, weights: str) -> ModelMismatch:
    """The one-line refusal. ``weights``: the requested model's weights id, named when only the
    weights differ (a checkpoint file rewritten, or the bundled cbir-tiny of another cbir release)."""
    if requested == stored["spec"] and weights != stored["weights"]:
        return ModelMismatch(
            f"the library at {library} was built with other weights of {requested} ({stored['weights']}) "
            f"than the ones it loads now ({weights}): the checkpoint file, or the bundled model, changed since. "
            f"Index your photos into a new library: cbir ingest PHOTOS --library NEW_LIBRARY --model {requested}"
        )
    return ModelMismatch(
        f"the library at {library} was built with {stored['spec']} "
        f"({stored['weights']}, {stored['dim']}-d), not {requested}; use --model "
        f"{stored['spec']} (or leave --model out), or index your photos into a new library "
        f"for {requested}: cbir ingest PHOTOS --library NEW_LIBRARY --model {requested}"
    )


def precision_to_use(requested: str | None, stored: dict | None, library: Path) -> str:
    """The library's recorded precision (fp32 when it records none, or for a new library unless
    one is requested); a requested precision that is not the library's is refused."""
    if stored is None:
        return requested or "fp32"
    recorded = stored.get("precision", "fp32")
    if requested and requested != recorded:
        raise ModelMismatch(
            f"the library at {library} was built at {recorded} precision, not {requested}; use "
            f"--precision {recorded} (or leave --precision out)"
        )
    return recorded


def backend_to_use(backend: str, device: str, precision: str = "fp32") -> str:
    """torch or onnx. auto: ONNX Runtime on the CPU, torch on CUDA (fp16 and nvJPEG stay there).
    int8 runs on ONNX Runtime only, so it rules out torch and CUDA."""
    cuda = device.startswith("cuda")
    if backend == "torch" or (backend == "auto" and precision == "fp32" and cuda):
        if precision != "fp32":
            raise UsageError(f"{precision} precision runs on ONNX Runtime only: use --backend onnx or auto")
        return "torch"
    if cuda:
        reason = "--backend onnx" if backend == "onnx" else f"{precision} precision"
        raise UsageError(f"{reason} runs on the CPU only: use --device cpu or auto")
    if backend == "onnx" or precision != "fp32" or device == "cpu":
        return "onnx"
    return "torch" if cuda_present() else "onnx"


def cuda_present() -> bool:
    """Whether torch sees a CUDA GPU, asked only where an NVIDIA driver is installed: without one
    the answer is no, and a CPU-only command never imports torch for it."""
    if sys.platform == "darwin":
        return False  # no CUDA on macOS
    if sys.platform == "win32":
        system = os.environ.get("SystemRoot", r"C:\Windows")
        driver = Path(system) / "System32" / "nvcuda.dll"
    else:
        driver = Path("/proc/driver/nvidia/version")
    if not driver.exists():
        return False
    import torch

    return torch.cuda.is_available()

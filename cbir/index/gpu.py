"""faiss on a CUDA GPU (`--gpu`): whether it can be used here, and moving indexes there and back.

GPU support comes from the faiss-gpu-cu12 wheel (``pip install 'cbir[gpu]'``, in place of
faiss-cpu); it provides the same ``faiss`` module plus ``StandardGpuResources``. faiss runs flat,
IVF-Flat and IVF-PQ indexes on the GPU (k-means training, adding and searching); HNSW exists only
on the CPU, so a GPU build picks IVF where the CPU would pick HNSW. Indexes are always saved from
their CPU form, so a library built on a GPU machine opens anywhere.
"""

from __future__ import annotations

import threading

import faiss

from cbir.errors import UsageError

KINDS = ("flat", "ivf", "ivfpq")  # what faiss can put on a GPU
# faiss's GPU k-selection handles k and nprobe up to 2048 (GPU_MAX_SELECTION_K); wider searches
# run on the CPU copy.
MAX_K = 2048
# The code sizes (bytes per vector) GpuIndexIVFPQ supports (faiss/gpu/impl/IVFPQ.cu); over 48
# bytes it needs float16 lookup tables to fit a block's shared memory.
PQ_CODE_BYTES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)

# One StandardGpuResources (cuBLAS handles, streams, temporary memory) per process. faiss does
# not allow one resources object to be used from several threads at once, so GPU calls hold LOCK.
LOCK = threading.RLock()
_resources = None


def unavailable() -> str | None:
    """Why faiss cannot use a GPU here, or None when it can."""
    if not hasattr(faiss, "StandardGpuResources"):
        return (
            f"this faiss ({faiss.__version__}) has no GPU support; install it with "
            f"`pip install 'cbir[gpu]' && pip uninstall -y faiss-cpu`"
        )
    if faiss.get_num_gpus() < 1:
        return "faiss has GPU support but sees no CUDA device (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
    return None


def available() -> bool:
    return unavailable() is None


def resolve(requested: bool | None) -> bool:
    """Whether to use the GPU: ``requested`` True insists (a clear error without one), False
    declines, None (auto) uses it when present."""
    if requested is None:
        return available()
    if requested and (why := unavailable()):
        raise UsageError(f"--gpu: {why}")
    return bool(requested)


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UsageError(
            f"faiss has no GPU {kind} index; use --type {' or '.join(KINDS)} with --gpu, or build {kind} without --gpu"
        )


def to_gpu(index, kind: str):
    """A GPU copy of a CPU index of ``kind`` (flat in an IndexIDMap2, IVF-Flat, IVF-PQ), ids
    included."""
    global _resources
    check_kind(kind)
    with LOCK:
        if _resources is None:
            _resources = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        # IVF-PQ: float16 lookup tables, needed for codes over 48 bytes (the others keep float32)
        options.useFloat16 = kind == "ivfpq"
        return faiss.index_cpu_to_gpu(_resources, 0, index, options)


def to_cpu(index):
    """The CPU form of a GPU index (what is saved, and what tombstoned or wide searches use)."""
    with LOCK:
        return faiss.index_gpu_to_cpu(index)

"""Building an index from the stored vectors (never re-encoding images): choose its kind, train
it on a sample, add every vector in streamed chunks, then set its search parameters from the
cheapest that reach recall@10 >= 0.95 on a held-out sample of the library's own vectors."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from cbir.errors import UsageError
from cbir.index import gpu as faiss_gpu
from cbir.index.choice import FLAT_MAX, choose_spec
from cbir.index.faiss_ops import tune
from cbir.index.topk import exact_top_k
from cbir.index.types import IndexSpec
from cbir.index.vector_index import VectorIndex

TARGET_RECALL = 0.95
K = 10
TUNING_QUERIES = 200

Chunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # a fresh pass over (ids, vectors)


@dataclass
class BuildReport:
    """What a rebuild made, for the CLI and the manifest."""

    name: str
    kind: str
    factory: str
    reason: str
    vectors: int
    params: dict = field(default_factory=dict)
    seconds: float = 0.0
    bytes: int = 0  # on disk, filled in once saved
    recall_at_10: float | None = None  # measured on held-out queries; None: too few vectors
    queries: int = 0
    gpu: bool = False  # built (and tuned) on the GPU

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def for_manifest(self) -> dict:
        """How the index was built, as the manifest keeps it (its size is the files')."""
        return {k: v for k, v in self.__dict__.items() if k != "bytes"}


def build(
    name: str,
    dim: int,
    count: int,
    chunks: Chunks,
    sample: Callable[[int], tuple[np.ndarray, np.ndarray]],
    vector_version: int,
    *,
    kind: str = "auto",
    memory_bytes: int | None = None,
    exact_source: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    gpu: bool | None = False,
) -> tuple[VectorIndex, BuildReport]:
    """Build index ``name`` of ``count`` vectors. ``chunks()`` streams them; ``sample(n)`` gives
    n random stored (ids, vectors) for training and for measuring recall; ``exact_source(ids)``
    gives stored vectors by id (IVF-PQ re-ranks with them). ``gpu``: True builds on the GPU (an
    error without one), None does when one is usable and the index is past the flat size."""
    started = time.perf_counter()
    on_gpu = faiss_gpu.resolve(gpu) and (gpu is True or count > FLAT_MAX)
    spec = choose_spec(count, dim, memory_bytes, kind, gpu=on_gpu)
    index, report = _build_tuned(name, dim, count, chunks, sample, vector_version, spec, exact_source, on_gpu)
    if (
        kind == "auto"
        and spec.kind == "hnsw"
        and report.recall_at_10 is not None
        and report.recall_at_10 < TARGET_RECALL
    ):
        # Some libraries' vectors (many overlapping clusters) keep HNSW below the target even at
        # its widest search; IVF-Flat reaches it by probing more lists, when it fits.
        try:
            ivf = choose_spec(count, dim, memory_bytes, "ivf")
        except UsageError:
            pass
        else:
            shortfall = (
                f"; HNSW reached only recall@10 {report.recall_at_10:.3f} at "
                f"{_params_text(report.params)}, so IVF-Flat instead"
            )
            spec = IndexSpec(ivf.kind, ivf.factory, ivf.params, ivf.train_size, ivf.reason + shortfall)
            index, report = _build_tuned(name, dim, count, chunks, sample, vector_version, spec, exact_source, on_gpu)
    report.seconds = time.perf_counter() - started
    return index, report


def _build_tuned(name, dim, count, chunks, sample, vector_version, spec, exact_source, on_gpu):
    """(index, report) of ``spec`` over the stored vectors, its search parameters tuned."""
    if count:
        training = sample(max(spec.train_size, TUNING_QUERIES))
    else:
        training = (np.zeros(0, np.int64), np.zeros((0, dim), np.float32))
    train_on = training[1][: spec.train_size] if spec.train_size else None
    index = VectorIndex.build(dim, chunks(), vector_version, name, spec, train_on, gpu=on_gpu)
    index.exact_source = exact_source
    report = BuildReport(name, spec.kind, spec.factory, spec.reason, index.ntotal, dict(spec.params), gpu=on_gpu)
    queries = min(TUNING_QUERIES, count // 10)
    if queries >= 10:
        query_ids, query_vectors = training[0][:queries], training[1][:queries]
        truth = _held_out_truth(chunks, query_ids, query_vectors)
        # One doubling past the cheapest setting that reaches the target, as a margin: real
        # queries (texts, new photos) lie further from the library's vectors than this sample.
        params, recall = tune(
            index.faiss_index,
            spec,
            lambda p: held_out_recall(index, query_ids, query_vectors, truth, p),
            TARGET_RECALL,
            K,
            margin=True,
        )
        index.spec = IndexSpec(spec.kind, spec.factory, params, spec.train_size, spec.reason)
        report.params, report.recall_at_10, report.queries = params, recall, queries
    return index, report


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "its only setting"


def _held_out_truth(chunks: Chunks, query_ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact top-K of each query among the other vectors (the query's own id left out)."""
    found = exact_top_k(chunks(), queries, K + 1)
    return np.stack([row[row != qid][:K] for row, qid in zip(found, query_ids)])


def held_out_recall(index: VectorIndex, query_ids, queries, truth, params: dict) -> float:
    """recall@K of ``index`` searched with ``params``, each query's own id left out."""
    _, found = index.search(queries, K + 1, params)
    hits = sum(
        len(set(row[row != qid][:K].tolist()) & set(true.tolist())) for row, qid, true in zip(found, query_ids, truth)
    )
    return hits / truth.size

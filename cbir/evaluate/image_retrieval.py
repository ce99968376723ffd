"""Image->image retrieval metrics from embedding vectors: near-duplicate recovery and mAP@K by label.

- **near duplicates**: each copy (a degraded version of an original) ranks all originals by
  cosine similarity; the rank of its own original counts (1 + the number of originals scoring
  strictly higher, optimistic on ties as in ``cbir.evaluate.retrieval``). ``top1`` is the
  fraction ranked first; ``map`` the mean average precision, which with one relevant item per
  query is the mean of 1/rank.
- **mAP@K by label**: each image is a query against all the *other* images; relevant = same
  label. AP@K = (1/min(K, R)) * sum over the ranks r <= K holding a relevant image of
  precision@r, with R the number of other images sharing the query's label (the usual
  definition, whose best value is 1). Queries whose label no other image has are left out. Ties
  are broken by image order (a stable sort), so the result is deterministic.

Pure numpy; scores go through in blocks of rows so that no [N, N] matrix is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cbir.errors import UsageError
from cbir.evaluate.retrieval import SCORE_BLOCK_BYTES

__all__ = ["NearDuplicates", "LabelRetrieval", "near_duplicate_metrics", "map_at_k_by_label"]


@dataclass
class NearDuplicates:
    queries: int
    top1: float
    map: float
    mean_rank: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LabelRetrieval:
    k: int
    queries: int  # images whose label at least one other image has
    labels: int
    map_at_k: float
    precision_at_1: float

    def as_dict(self) -> dict:
        return asdict(self)


def _matrix(vectors, name: str) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise UsageError(f"{name} must be a non-empty [N, d] matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise UsageError(f"{name} hold NaN or infinite values")
    return x


def _block(rows: int, columns: int) -> int:
    return max(1, min(rows, SCORE_BLOCK_BYTES // (4 * max(1, columns))))


def near_duplicate_metrics(originals, copies) -> NearDuplicates:
    """Copy ``i`` (row i of ``copies``) is a near-duplicate of original ``i``; both L2-normalised."""
    a, b = _matrix(originals, "original vectors"), _matrix(copies, "copy vectors")
    if a.shape != b.shape:
        raise UsageError(f"need one copy per original: {a.shape} originals, {b.shape} copies")
    ranks = np.empty(len(b), dtype=np.int64)
    step = _block(len(b), len(a))
    for start in range(0, len(b), step):
        stop = min(start + step, len(b))
        scores = b[start:stop] @ a.T
        own = scores[np.arange(stop - start), np.arange(start, stop)]
        ranks[start:stop] = 1 + (scores > own[:, None]).sum(axis=1)
    return NearDuplicates(
        queries=len(b),
        top1=float(np.mean(ranks == 1)),
        map=float(np.mean(1.0 / ranks)),
        mean_rank=float(np.mean(ranks)),
    )


def map_at_k_by_label(vectors, labels, k: int = 10) -> LabelRetrieval:
    """mAP@k (and precision@1) of each image against the others, relevant = same label."""
    x = _matrix(vectors, "image vectors")
    labels = np.asarray(labels)
    if labels.shape != (len(x),):
        raise UsageError(f"need one label per image ({len(x)}), got shape {labels.shape}")
    if k < 1:
        raise UsageError(f"k must be positive, got {k}")
    _, codes = np.unique(labels, return_inverse=True)
    counts = np.bincount(codes)
    others = counts[codes] - 1  # R: relevant images per query
    queries = np.flatnonzero(others > 0)
    if not len(queries):
        raise UsageError("mAP by label needs at least two images sharing a label")
    kk = min(k, len(x) - 1)
    aps, p1 = np.empty(len(queries)), np.empty(len(queries))
    step = _block(len(queries), len(x))
    for start in range(0, len(queries), step):
        rows = queries[start : start + step]
        scores = x[rows] @ x.T
        scores[np.arange(len(rows)), rows] = -np.inf  # not its own result
        top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        hits = (codes[top] == codes[rows][:, None]).astype(np.float64)
        precision = np.cumsum(hits, axis=1) / np.arange(1, kk + 1)
        aps[start : start + len(rows)] = (precision * hits).sum(axis=1) / np.minimum(kk, others[rows])
        p1[start : start + len(rows)] = hits[:, 0]
    return LabelRetrieval(
        k=kk,
        queries=len(queries),
        labels=int((counts > 0).sum()),
        map_at_k=float(aps.mean()),
        precision_at_1=float(p1.mean()),
    )

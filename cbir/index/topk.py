"""Top-k lists of (scores, ids), one row per query, and the one tie rule every merge of them
follows: a higher score first, equal scores by smaller id. Missing results are id -1 (as faiss
pads its rows) with score -inf, and come last.

Also the exact top-k by brute force, the ground truth that index tuning and benchmarks measure
recall against. numpy only: no faiss.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

SCORE_BLOCK = 1 << 24  # floats scored at a time by exact_top_k (64 MB), whatever nq and chunk


def merge_top_k(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k of each row over several (scores, ids) parts of the same rows (per-shard results,
    or a running best list and a new block), best first; rows with fewer than k results are padded
    with (-inf, -1). Ids below 0 are padding whatever their score (faiss scores its own padding
    -FLT_MAX for inner product). The parts need not be sorted, nor of the same width."""
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    ids = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts], axis=1)
    scores = np.concatenate([np.asarray(p[0], dtype=np.float32) for p in parts], axis=1)
    padding = ids < 0  # in place: both arrays are fresh copies, and a block of scores is big
    if padding.any():
        scores[padding], ids[padding] = -np.inf, -1
    if ids.shape[1] > k > 0:
        scores, ids = _best_k(scores, ids, k)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
    if (missing := k - ids.shape[1]) > 0:
        scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, missing)), constant_values=-1)
    return scores, ids


def _best_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row by the tie rule, unordered, without sorting whole rows (a block of
    exact scores can be millions wide)."""
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # each row's k-th best score
    # Rank key: everything strictly better than the k-th score first (INT64_MIN), then the tied
    # ones by id, the rest last; a partition on it keeps exactly the top k, ties by smaller id.
    key = np.where(scores > kth, np.iinfo(np.int64).min, np.where(scores == kth, ids, np.iinfo(np.int64).max))
    keep = np.argpartition(key, k - 1, axis=1)[:, :k]
    return np.take_along_axis(scores, keep, axis=1), np.take_along_axis(ids, keep, axis=1)


def exact_top_k(chunks: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids [nq, k] by inner product over (ids, vectors) chunks, best first, ties by
    smaller id, padded with -1. Only a running [nq, k] best list and one block of scores are held,
    so a million-vector library can be streamed from the database."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    nq = len(queries)
    best = merge_top_k([(np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64))], k)
    block = max(1, SCORE_BLOCK // max(nq, 1))
    for ids, vectors in chunks:
        ids = np.asarray(ids, dtype=np.int64)
        for start in range(0, len(ids), block):
            scores = queries @ np.asarray(vectors[start : start + block], dtype=np.float32).T
            best = merge_top_k([best, (scores, np.broadcast_to(ids[start : start + block], scores.shape))], k)
    return best[1]


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |found ∩ true| / k among the first k of each (-1 padding ignored;
    a query with fewer than k true neighbours is scored over those it has)."""
    found, true = np.asarray(found_ids)[:, :k], np.asarray(true_ids)[:, :k]
    hits = ((found[:, :, None] == true[:, None, :]) & (true[:, None, :] >= 0)).any(axis=1).sum(axis=1)
    wanted = np.maximum((true >= 0).sum(axis=1), 1)
    return float(np.mean(hits / wanted)) if len(true) else 1.0

"""Image-caption retrieval metrics from embedding vectors, CLIP-paper style.

The evaluation of the CLIP paper (Radford et al. 2021, zero-shot Flickr30k/MSCOCO retrieval),
open_clip's ``get_clip_metrics`` and the CLIP benchmark (``clip_benchmark``):

- **text→image**: each text ranks all N images by cosine similarity (dot product of
  L2-normalised vectors); the rank of its own image counts. Images without any text are still
  candidates.
- **image→text**: each image that has at least one text ranks all M texts; the rank of the
  best-ranked of its own texts counts, i.e. a hit at K when *any* of its captions (COCO has 5) is
  in the top K. Images without texts are not queries.
- **R@K**: the fraction of queries whose rank is ≤ K (0..1 here; the table shows percent).
- **median_rank**: ``floor(median(rank - 1)) + 1``, open_clip's definition (an integer);
  **mean_rank**: the mean of the ranks.

Ranks are 1-based and optimistic on ties: ``rank = 1 + number of candidates with a strictly
higher score`` (a target tied with others counts as ranked first among them). The target's score
is read from the same score block as the competitors', so float rounding cannot break a tie.

Memory: the full [M, N] score matrix is never built. Queries go through in blocks of
``block_rows`` rows (default: as many as fit ``SCORE_BLOCK_BYTES`` of float32 scores), each one a
numpy float32 matmul against all candidates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from cbir.errors import UsageError

#: Upper bound on one block of float32 query-by-candidate scores.
SCORE_BLOCK_BYTES = 64 * 2**20
DEFAULT_KS = (1, 5, 10)

__all__ = ["RetrievalResult", "retrieval_metrics", "retrieval_table", "SCORE_BLOCK_BYTES"]


@dataclass
class RetrievalResult:
    images: int  # candidate images (N)
    texts: int  # texts (M), the text→image queries
    text_to_image: dict[str, float]  # R@K..., median_rank, mean_rank
    image_to_text: dict[str, float]
    captioned: int = 0  # images with at least one text: the image→text queries

    def as_dict(self) -> dict:
        return asdict(self)


def retrieval_metrics(
    image_vectors: np.ndarray,
    text_vectors: np.ndarray,
    text_image: np.ndarray,
    ks=DEFAULT_KS,
    *,
    block_rows: int | None = None,
) -> RetrievalResult:
    """Recall@K, median and mean rank in both directions.

    ``image_vectors`` [N, d] and ``text_vectors`` [M, d] are L2-normalised; ``text_image[j]`` is
    the row in ``image_vectors`` of text ``j``'s image. ``block_rows`` overrides the number of
    queries scored at once.
    """
    images, texts, text_image, ks = _validate(image_vectors, text_vectors, text_image, ks)
    t2i = _text_to_image_ranks(texts, images, text_image, block_rows)
    i2t = _image_to_text_ranks(images, texts, text_image, block_rows)
    return RetrievalResult(
        images=len(images),
        texts=len(texts),
        text_to_image=_summary(t2i, ks),
        image_to_text=_summary(i2t, ks),
        captioned=len(i2t),
    )


def _validate(image_vectors, text_vectors, text_image, ks):
    images = np.asarray(image_vectors, dtype=np.float32)
    texts = np.asarray(text_vectors, dtype=np.float32)
    if images.ndim != 2 or images.shape[0] == 0:
        raise UsageError(f"image vectors must be a non-empty [N, d] matrix, got shape {images.shape}")
    if texts.ndim != 2 or texts.shape[0] == 0:
        raise UsageError("no texts to evaluate retrieval with: give at least one image caption")
    if texts.shape[1] != images.shape[1]:
        raise UsageError(f"text vectors have {texts.shape[1]} dimensions but image vectors {images.shape[1]}")
    text_image = np.asarray(text_image)
    if text_image.shape != (texts.shape[0],):
        raise UsageError(
            f"text_image must give one image row per text ({texts.shape[0]}), got shape {text_image.shape}"
        )
    if text_image.dtype.kind not in "iu":
        raise UsageError(f"text_image must hold integer image rows, got {text_image.dtype}")
    text_image = text_image.astype(np.int64)
    if text_image.min() < 0 or text_image.max() >= images.shape[0]:
        bad = int(text_image[(text_image < 0) | (text_image >= images.shape[0])][0])
        raise UsageError(f"text_image refers to image row {bad}, but there are {images.shape[0]} images")
    if not (np.isfinite(images).all() and np.isfinite(texts).all()):
        raise UsageError("the vectors hold NaN or infinite values")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise UsageError(f"recall cut-offs must be positive integers, got {ks}")
    return images, texts, text_image, ks


def _rows_per_block(candidates: int, block_rows: int | None) -> int:
    if block_rows is not None:
        if block_rows < 1:
            raise UsageError(f"block_rows must be positive, got {block_rows}")
        return int(block_rows)
    return max(1, SCORE_BLOCK_BYTES // (4 * candidates))


def _text_to_image_ranks(texts, images, text_image, block_rows) -> np.ndarray:
    ranks = np.empty(len(texts), dtype=np.int64)
    step = _rows_per_block(len(images), block_rows)
    for start in range(0, len(texts), step):
        stop = min(start + step, len(texts))
        scores = texts[start:stop] @ images.T  # [b, N]
        own = scores[np.arange(stop - start), text_image[start:stop]]
        ranks[start:stop] = 1 + (scores > own[:, None]).sum(axis=1)
    return ranks


def _image_to_text_ranks(images, texts, text_image, block_rows) -> np.ndarray:
    """Rank of each captioned image's best-ranked own text, in image row order."""
    order = np.argsort(text_image, kind="stable")  # texts grouped by image
    sorted_image = text_image[order]
    queries = np.unique(sorted_image)  # captioned images, ascending
    ranks = np.empty(len(queries), dtype=np.int64)
    step = _rows_per_block(len(texts), block_rows)
    for start in range(0, len(queries), step):
        stop = min(start + step, len(queries))
        block = queries[start:stop]
        scores = images[block] @ texts.T  # [b, M]
        # the block's own texts are a contiguous run of `order`, one non-empty group per image
        starts = np.searchsorted(sorted_image, block, side="left")
        stop_text = np.searchsorted(sorted_image, block[-1], side="right")
        own_rows = np.searchsorted(block, sorted_image[starts[0] : stop_text])
        own_scores = scores[own_rows, order[starts[0] : stop_text]]
        best = np.maximum.reduceat(own_scores, starts - starts[0])
        ranks[start:stop] = 1 + (scores > best[:, None]).sum(axis=1)
    return ranks


def _summary(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    out = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    out["median_rank"] = float(math.floor(np.median(ranks - 1)) + 1)
    out["mean_rank"] = float(np.mean(ranks))
    return out


def retrieval_table(result: RetrievalResult) -> str:
    """Both directions as a small plain-text table, recalls in percent with one decimal."""
    recall_keys = [k for k in result.text_to_image if k.startswith("R@")]
    header = ["", *recall_keys, "median rank", "mean rank", "queries"]
    rows = [header]
    for label, metrics, queries in (
        ("text→image", result.text_to_image, result.texts),
        ("image→text", result.image_to_text, result.captioned),
    ):
        rows.append(
            [
                label,
                *(f"{100 * metrics[k]:.1f}" for k in recall_keys),
                f"{metrics['median_rank']:g}",
                f"{metrics['mean_rank']:.1f}",
                str(queries),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    caption = (
        f"retrieval over {result.images} images and {result.texts} texts "
        f"({result.captioned} images have texts); R@K in percent"
    )
    return "\n".join([caption, *lines])

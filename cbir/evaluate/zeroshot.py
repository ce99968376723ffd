"""Zero-shot classification from embedding vectors, as in the CLIP paper and open_clip.

Classifier (open_clip's ``build_zero_shot_classifier``; CLIP paper, section 3.1.4): for each
class name, every prompt template is filled with it, the prompts are encoded and L2-normalised,
averaged over the templates and the mean is L2-normalised again: one class embedding per class.
Logits are ``image_vectors @ class_vectors.T`` (cosine similarities; the logit scale does not
change a ranking, so it is left out).

Accuracy: an image is correct at K when its true class is among the K highest logits, with the
same optimistic tie rule as retrieval: ``rank = 1 + number of classes with a strictly higher
logit``. ``top5`` uses K = min(5, number of classes). For a wrong image the "predicted" class
(confusions) is the argmax, which then always differs from the true class.

Per-class accuracy is top-1 over the images of that class; classes with no images are left out
of ``per_class``. ``confusion`` lists, for the ``worst`` classes by accuracy (ties in class
order), ``(true class, predicted class, count)`` for every wrong prediction, most frequent first.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from cbir.errors import UsageError
from cbir.evaluate.retrieval import SCORE_BLOCK_BYTES
from cbir.evaluate.templates import Template, fill

__all__ = [
    "ZeroShotResult",
    "class_embeddings",
    "classname_from_folder",
    "zero_shot_metrics",
    "zeroshot_table",
]

TOP_K = 5
SHOWN_CONFUSIONS = 3  # most frequent wrong predictions shown per class in the table


def classname_from_folder(name: str) -> str:
    """A folder name as a human-readable class name: ``golden_retriever``,
    ``golden-retriever`` -> ``golden retriever`` (open_clip's class names are plain words)."""
    return " ".join(re.sub(r"[_\-]+", " ", name).split())


def class_embeddings(
    encode_texts: Callable[[list[str]], np.ndarray],
    classnames: Sequence[str],
    templates: Sequence[Template],
    batch: int = 256,
) -> np.ndarray:
    """One L2-normalised embedding per class [C, d] (float32): the normalised mean over
    ``templates`` of the normalised prompt embeddings. ``encode_texts`` is called with at most
    ``batch`` prompts at a time."""
    classnames, templates = list(classnames), list(templates)
    if not classnames:
        raise UsageError("no classes to classify into")
    if not templates:
        raise UsageError("no prompt templates")
    if batch < 1:
        raise UsageError(f"batch must be positive, got {batch}")
    prompts = [fill(t, c) for c in classnames for t in templates]
    parts = [np.asarray(encode_texts(prompts[i : i + batch]), dtype=np.float32) for i in range(0, len(prompts), batch)]
    prompt_vectors = _normalise(np.concatenate(parts))
    per_class = prompt_vectors.reshape(len(classnames), len(templates), -1).mean(axis=1)
    return _normalise(per_class)


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32, copy=False)


@dataclass
class ZeroShotResult:
    classes: list[str]
    images: int
    top1: float  # fractions, 0..1
    top5: float  # top-min(5, C)
    per_class: dict[str, float]  # top-1 accuracy per class that has images
    confusion: list[tuple[str, str, int]]  # (true, predicted, count) for the worst classes
    counts: dict[str, int] = field(default_factory=dict)  # images per class that has images
    worst: list[str] = field(default_factory=list)  # the worst classes, worst first

    @property
    def k(self) -> int:
        return min(TOP_K, len(self.classes))

    @property
    def chance(self) -> float:
        return 1.0 / len(self.classes)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["confusion"] = [list(row) for row in self.confusion]
        data["top_k"] = self.k
        data["chance"] = self.chance
        return data


def zero_shot_metrics(
    image_vectors: np.ndarray,
    labels: np.ndarray,
    class_vectors: np.ndarray,
    classnames: Sequence[str],
    worst: int = 5,
) -> ZeroShotResult:
    """Top-1/top-5 accuracy, per-class accuracy and the worst classes' confusions.
    ``labels[i]`` is the row in ``class_vectors`` (and index in ``classnames``) of image i's
    true class."""
    images, labels, classes, classnames = _validate(image_vectors, labels, class_vectors, classnames)
    ranks, predicted = _ranks_and_predictions(images, labels, classes)
    correct = ranks == 1
    k = min(TOP_K, len(classnames))
    per_class, counts = {}, {}
    for c, name in enumerate(classnames):
        mask = labels == c
        if mask.any():
            per_class[name] = float(correct[mask].mean())
            counts[name] = int(mask.sum())
    order = {name: i for i, name in enumerate(classnames)}
    worst_classes = sorted(per_class, key=lambda n: (per_class[n], order[n]))[: max(0, worst)]
    wrong = Counter((classnames[t], classnames[p]) for t, p in zip(labels[~correct], predicted[~correct]))
    confusion = [
        (true, pred, n)
        for name in worst_classes
        for (true, pred), n in sorted(wrong.items(), key=lambda kv: (-kv[1], order[kv[0][1]]))
        if true == name
    ]
    return ZeroShotResult(
        classes=list(classnames),
        images=len(images),
        top1=float(correct.mean()),
        top5=float((ranks <= k).mean()),
        per_class=per_class,
        confusion=confusion,
        counts=counts,
        worst=worst_classes,
    )


def _validate(image_vectors, labels, class_vectors, classnames):
    images = np.asarray(image_vectors, dtype=np.float32)
    classes = np.asarray(class_vectors, dtype=np.float32)
    classnames = [str(c) for c in classnames]
    if images.ndim != 2 or images.shape[0] == 0:
        raise UsageError(f"image vectors must be a non-empty [N, d] matrix, got shape {images.shape}")
    if classes.ndim != 2 or classes.shape[0] == 0:
        raise UsageError(f"class vectors must be a non-empty [C, d] matrix, got shape {classes.shape}")
    if classes.shape[1] != images.shape[1]:
        raise UsageError(f"class vectors have {classes.shape[1]} dimensions but image vectors {images.shape[1]}")
    if len(classnames) != classes.shape[0]:
        raise UsageError(f"{len(classnames)} class names for {classes.shape[0]} class vectors")
    duplicates = sorted({c for c in classnames if classnames.count(c) > 1})
    if duplicates:
        raise UsageError(f"duplicate class name(s): {', '.join(duplicates)}")
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],):
        raise UsageError(f"need one label per image ({images.shape[0]}), got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise UsageError(f"labels must be integer class indices, got {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= len(classnames):
        bad = int(labels[(labels < 0) | (labels >= len(classnames))][0])
        raise UsageError(f"label {bad} is not a class index (there are {len(classnames)} classes)")
    if not (np.isfinite(images).all() and np.isfinite(classes).all()):
        raise UsageError("the vectors hold NaN or infinite values")
    return images, labels, classes, classnames


def _ranks_and_predictions(images, labels, classes):
    ranks = np.empty(len(images), dtype=np.int64)
    predicted = np.empty(len(images), dtype=np.int64)
    step = max(1, SCORE_BLOCK_BYTES // (4 * len(classes)))
    for start in range(0, len(images), step):
        stop = min(start + step, len(images))
        logits = images[start:stop] @ classes.T  # [b, C]
        own = logits[np.arange(stop - start), labels[start:stop]]
        ranks[start:stop] = 1 + (logits > own[:, None]).sum(axis=1)
        predicted[start:stop] = logits.argmax(axis=1)
    return ranks, predicted


def zeroshot_table(result: ZeroShotResult) -> str:
    """Overall accuracy against chance, then the worst classes and what they were taken for."""
    lines = [
        f"zero-shot classification: {result.images} images, {len(result.classes)} classes",
        f"  top-1  {100 * result.top1:5.1f}%",
        f"  top-{result.k}  {100 * result.top5:5.1f}%",
        f"  chance {100 * result.chance:5.1f}% (top-1)",
    ]
    if result.worst:
        lines.append(f"worst {len(result.worst)} classes (top-1 accuracy, images, most often taken for):")
        width = max(len(name) for name in result.worst)
        for name in result.worst:
            taken_for = [(pred, n) for true, pred, n in result.confusion if true == name]
            shown = ", ".join(f"{pred} ({n})" for pred, n in taken_for[:SHOWN_CONFUSIONS])
            line = f"  {name.ljust(width)}  {100 * result.per_class[name]:5.1f}%  of {result.counts[name]}"
            lines.append(line + (f"  -> {shown}" if shown else ""))
    return "\n".join(lines)

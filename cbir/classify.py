"""Zero-shot classification of image files (`cbir classify`) and zero-shot tagging of a whole
library from its stored vectors (`cbir tag`).

Both score images against class embeddings built as in the CLIP paper (section 3.1.4) and
open_clip's ``build_zero_shot_classifier`` (:func:`cbir.evaluate.zeroshot.class_embeddings`):
every label is filled into the prompt templates, the prompts are encoded, normalised, averaged
and normalised again. An image's probabilities are the softmax over the labels of its cosine
similarities times the model's logit scale (CLIP's learned temperature, ``exp(logit_scale)``,
clamped to 100 as in training; 100 for an encoder without one, e.g. the FakeEncoder).

A tag's score is that probability over the vocabulary: ``--threshold 0.2`` keeps the words the
model gives at least a 20% share of the image (at most ``--top`` of them), so at most 1/threshold
tags pass. A vocabulary where no word fits still hands out its probability mass, so
``min_similarity`` (a cosine floor) can also be asked for.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbir.errors import UsageError
from cbir.names import TEXTS

DEFAULT_SCALE = 100.0  # CLIP's logit scale at the end of training (it is clamped to 100)
MAX_SCALE = 100.0
IMAGE_BATCH = 32  # image files encoded per model call
SCORE_BLOCK = 1 << 24  # scores held at once while tagging (floats): 64 MB


# -- labels and vocabularies ---------------------------------------------------------------------
def clean_labels(labels: Sequence[str], where: str) -> list[str]:
    """Labels with whitespace collapsed, blanks dropped and repeats (any case) left out, in
    order; an empty list is an error naming ``where`` they came from."""
    seen, out = set(), []
    for label in labels:
        label = " ".join(str(label).split())
        if label and label.lower() not in seen:
            seen.add(label.lower())
            out.append(label)
    if not out:
        raise UsageError(f"{where}: no labels given")
    return out


def parse_labels(text: str) -> list[str]:
    """``"dog, cat,car"`` -> ["dog", "cat", "car"]."""
    return clean_labels(text.split(","), "--labels")


def read_labels_file(path: str | Path, option: str = "--labels-file") -> list[str]:
    """One label per line; blank lines and lines starting with ``#`` are ignored."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{option} {path}: is a folder, not a file") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise UsageError(f"{option} {path}: cannot read it ({reason})") from None
    lines = [line.strip() for line in text.splitlines()]
    return clean_labels([line for line in lines if line and not line.startswith("#")], f"{option} {path}")


def logit_scale(encoder) -> float:
    """The model's learned logit scale (``exp(logit_scale)`` of an open_clip model, at most
    100), or 100 when the encoder has none."""
    value = getattr(encoder, "logit_scale", None)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return DEFAULT_SCALE
    return min(value, MAX_SCALE) if math.isfinite(value) and value > 0 else DEFAULT_SCALE


def label_embeddings(encoder, labels: Sequence[str], templates) -> np.ndarray:
    """[C, d] unit class embeddings of ``labels`` (``templates``: a name or a templates file)."""
    from cbir.encode.spec import encode_texts_batched
    from cbir.evaluate.templates import resolve_templates
    from cbir.evaluate.zeroshot import class_embeddings

    prompts = resolve_templates(templates) if isinstance(templates, str) else templates
    return class_embeddings(lambda texts: encode_texts_batched(encoder, list(texts)), labels, prompts)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, in float64 for the sums."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# -- classify ------------------------------------------------------------------------------------
def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be an image file, as far as it can be told without reading it (no
    model needed: `cbir classify` checks its files before loading one); None if it may be."""
    if "\x00" in str(path):
        return "a path cannot contain a NUL byte"
    path = Path(path).expanduser()
    if path.is_dir():
        return "is a folder, not an image file"
    if not path.exists():
        return "no such file"
    return None


@dataclass
class Classification:
    """One image file's labels, best first (the ``top`` shown), or why it could not be read."""

    path: str
    labels: list[tuple[str, float, float]] = field(default_factory=list)  # label, probability, cosine
    error: str | None = None

    @property
    def best(self) -> str | None:
        return self.labels[0][0] if self.labels else None

    def as_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {
            "path": self.path,
            "best": self.best,
            "labels": [
                {"label": label, "probability": round(p, 6), "similarity": round(s, 6)} for label, p, s in self.labels
            ],
        }


def classify_files(
    encoder, paths: Sequence[str | Path], labels: Sequence[str], templates="ensemble", top: int = 5
) -> list[Classification]:
    """Zero-shot labels of image files, in the order given. A file that cannot be read gets a
    Classification with ``error`` set; the others are still classified."""
    from cbir.ingest.decode import BadImage
    from cbir.ingest.query_image import read_query_image

    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")
    labels = clean_labels(labels, "--labels")
    if len(labels) < 2:
        raise UsageError(f"give at least two labels to choose between (got only {labels[0]!r})")
    classes = label_embeddings(encoder, labels, templates)
    scale = logit_scale(encoder)
    results: list[Classification] = [Classification(str(p)) for p in paths]
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        if not pending:
            return
        vectors = encoder.encode_images(np.stack([pixels for _, pixels in pending]))
        cosines = np.asarray(vectors, dtype=np.float32) @ classes.T
        probabilities = softmax(scale * cosines)
        for (i, _), cos, prob in zip(pending, cosines, probabilities):
            order = np.argsort(-prob, kind="stable")[:top]
            results[i].labels = [(labels[j], float(prob[j]), float(cos[j])) for j in order]
        pending.clear()

    for i, path in enumerate(paths):
        results[i].error = file_problem(path)
        if results[i].error is not None:
            continue
        try:
            pending.append((i, read_query_image(Path(path).expanduser(), encoder.preprocess)))
        except FileNotFoundError:
            results[i].error = "no such file"
        except IsADirectoryError:
            results[i].error = "is a folder, not an image file"
        except (OSError, BadImage) as e:
            results[i].error = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if len(pending) >= IMAGE_BATCH:
            flush()
    flush()
    return results


# -- tag -----------------------------------------------------------------------------------------
@dataclass
class TagReport:
    """What `cbir tag` did."""

    vocabulary: int  # words scored
    images: int  # images scored
    tagged: int  # images given at least one tag
    tags: int  # tags stored
    replaced: int  # tags of the previous run removed
    threshold: float
    top: int
    min_similarity: float | None
    counts: Counter = field(default_factory=Counter)  # tag -> images
    seconds: float = 0.0

    @property
    def per_image(self) -> float:
        """Mean tags per tagged image."""
        return self.tags / self.tagged if self.tagged else 0.0

    def common(self, n: int = 10) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def as_dict(self) -> dict:
        return {
            "vocabulary": self.vocabulary,
            "images": self.images,
            "tagged": self.tagged,
            "tags": self.tags,
            "tags_per_image": round(self.per_image, 4),
            "replaced": self.replaced,
            "threshold": self.threshold,
            "top": self.top,
            "min_similarity": self.min_similarity,
            "most_common": [{"tag": t, "images": n} for t, n in self.common()],
            "seconds": round(self.seconds, 3),
        }


def check_tag_options(threshold: float, top: int, min_similarity: float | None) -> None:
    if not (0.0 <= threshold <= 1.0) or math.isnan(threshold):
        raise UsageError(f"--threshold is a probability between 0 and 1, got {threshold}")
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")
    if min_similarity is not None and not (-1.0 <= min_similarity <= 1.0):
        raise UsageError(f"--min-similarity is a cosine between -1 and 1, got {min_similarity}")


def choose_tags(
    probabilities: np.ndarray, cosines: np.ndarray, threshold: float, top: int, min_similarity: float | None
) -> list[list[int]]:
    """Per row, the columns kept: probability >= threshold (and cosine >= min_similarity),
    the ``top`` most probable of them, best first."""
    keep = probabilities >= threshold
    if min_similarity is not None:
        keep &= cosines >= min_similarity
    k = min(top, probabilities.shape[1])
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[int(j) for j in row if keep[r, j]] for r, row in enumerate(best)]


def tag_library(
    lib,
    vocabulary: Sequence[str],
    templates="ensemble",
    threshold: float = 0.2,
    top: int = 5,
    min_similarity: float | None = None,
) -> TagReport:
    """Tag every image of ``lib`` from its stored vector (nothing is re-encoded) with the words
    of ``vocabulary``, replacing the tags of a previous run in one transaction, and bring the
    text index up to date (tags are library texts, found by --target text)."""
    from cbir.encode.spec import encode_texts_batched
    from cbir.fsutil import writer_lock

    started = time.perf_counter()
    check_tag_options(threshold, top, min_similarity)
    vocabulary = clean_labels(vocabulary, "--vocabulary")
    lib.require_images()
    encoder = lib.encoder
    classes = label_embeddings(encoder, vocabulary, templates)
    vectors = dict(zip(vocabulary, encode_texts_batched(encoder, vocabulary)))  # each tag once
    scale = logit_scale(encoder)
    chunk = max(256, min(65_536, SCORE_BLOCK // len(vocabulary)))
    chosen: list[tuple[int, str, float]] = []
    images = 0
    with writer_lock(lib.path):  # no ingest changes the images while they are scored and tagged
        for ids, matrix in lib.catalog.iter_vectors(chunk):
            cosines = matrix @ classes.T
            probabilities = softmax(scale * cosines)
            for image_id, row, kept in zip(
                ids, probabilities, choose_tags(probabilities, cosines, threshold, top, min_similarity)
            ):
                chosen.extend((int(image_id), vocabulary[j], float(row[j])) for j in kept)
            images += len(ids)
        index = lib.indexes.load(TEXTS, writer=True)
        changes = lib.catalog.replace_tags(chosen, vectors)
        if changes is not None:
            index.apply(changes)
            lib.indexes.save({TEXTS: index})
    return TagReport(
        vocabulary=len(vocabulary),
        images=images,
        tagged=len({i for i, _, _ in chosen}),
        tags=len(chosen),
        replaced=0 if changes is None else len(changes.remove_ids),
        threshold=threshold,
        top=top,
        min_similarity=min_similarity,
        counts=Counter(t for _, t, _ in chosen),
        seconds=time.perf_counter() - started,
    )


def clear_tags(lib) -> int:
    """Remove every tag of the library (labels, captions untouched); how many were removed."""
    from cbir.fsutil import writer_lock

    with writer_lock(lib.path):
        index = lib.indexes.load(TEXTS, writer=True)
        changes = lib.catalog.replace_tags([], {})
        if changes is None:
            return 0
        index.apply(changes)
        lib.indexes.save({TEXTS: index})
        return len(changes.remove_ids)

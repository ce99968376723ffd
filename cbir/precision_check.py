"""`cbir models check`: whether a reduced precision (int8) gives a library's own images the vectors
fp32 gives them, measured on a random sample of them, and the switch that measurement gates.

The sample is read and decoded as ingest decodes it, then encoded by the fp32 image tower (the
reference) and by the reduced one. Reported: the cosine between each image's two vectors, and how
far searches change: each sampled image's fp32 vector as a query against the other sampled images
encoded each way, and the library's stored text vectors (the text tower is fp32 at every
precision) as queries against the sample encoded each way, compared by the overlap of their top
10. A library passing the thresholds can switch: its stored vectors are kept (they are
interchangeable with the new ones within the thresholds) and new images are encoded at the new
precision, recorded in the library's model fingerprint.

Thresholds (THRESHOLDS, justified in docs/performance.md): min cosine >= 0.995 and mean top-10
overlap >= 0.9, image and text queries each. int8 reaches a min cosine of 0.9998 on cbir-tiny and
on a random-weights ViT-B-32, 25 times less drift than the threshold allows; the overlap of the
random ViT-B-32's text queries, whose scores crowd within hundredths, is the closest (0.92)."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cbir.errors import CbirError, EmptyLibrary, UsageError
from cbir.names import IMAGES, TEXTS

REFERENCE = "fp32"
DEFAULT_SAMPLE = 200
MAX_SAMPLE = 10_000  # the overlap compares every pair of sampled images
TEXT_QUERIES = 100  # stored texts used as queries, when the library has any
SEED = 0  # the same sample at every run, so that runs compare
K = 10
BATCH = 32  # images per encoder call
QUERY_BLOCK = 1024  # query rows scored at once


@dataclass(frozen=True)
class Thresholds:
    min_cosine: float = 0.995
    mean_overlap: float = 0.9


THRESHOLDS = Thresholds()


class BelowThresholds(CbirError):
    """A reduced precision changes this library's vectors more than the thresholds allow."""


@dataclass(frozen=True)
class Overlap:
    """Top-k overlap (shared results / k) of searches made against the two encodings."""

    queries: int
    k: int
    mean: float
    worst: float


@dataclass(frozen=True)
class PrecisionCheck:
    precision: str
    sampled: int  # images read, decoded and encoded both ways
    unreadable: int  # sampled images whose file is gone or no longer decodes: left out
    min_cosine: float
    mean_cosine: float
    image_queries: Overlap
    text_queries: Overlap | None  # None: the library has no texts
    thresholds: Thresholds

    def failures(self) -> list[str]:
        """What falls below the thresholds, in words (empty: passed)."""
        t = self.thresholds
        found = []
        if self.min_cosine < t.min_cosine:
            found.append(f"min cosine {self.min_cosine:.4f} < {t.min_cosine}")
        for name, overlap in (("image", self.image_queries), ("text", self.text_queries)):
            if overlap is not None and overlap.mean < t.mean_overlap:
                found.append(f"mean top-{overlap.k} overlap of {name} queries {overlap.mean:.3f} < {t.mean_overlap}")
        return found

    @property
    def passed(self) -> bool:
        return not self.failures()

    def as_dict(self) -> dict:
        return {**asdict(self), "reference": REFERENCE, "passed": self.passed}


def check_precision(
    lib, precision: str = "int8", sample: int = DEFAULT_SAMPLE, thresholds: Thresholds = THRESHOLDS
) -> PrecisionCheck:
    """Measure ``precision`` against fp32 on up to ``sample`` images of ``lib`` (a
    :class:`cbir.library.Library`), picked at random with a fixed seed."""
    from cbir.encode import load_encoder
    from cbir.encode.choice import mismatch
    from cbir.fingerprint import same_model

    if precision == REFERENCE:
        raise UsageError(f"{REFERENCE} is the reference the check compares against: choose another precision")
    if not 2 <= sample <= MAX_SAMPLE:
        raise UsageError(f"sample: between 2 and {MAX_SAMPLE} images, not {sample}")
    lib.require_images()
    stored = lib.fingerprint
    settings = lib.settings
    # The reference on the CPU: CUDA would run the model in fp16.
    reference = load_encoder(stored["spec"], "cpu", settings.backend, REFERENCE)
    candidate = load_encoder(stored["spec"], settings.device, settings.backend, precision)
    if not same_model(stored, reference.fingerprint()):
        raise mismatch(lib.path, stored, stored["spec"], reference.fingerprint()["weights"])
    ours, theirs, unreadable = [], [], 0
    for batch, failed in _sampled_pixels(lib.catalog, sample, reference.preprocess):
        unreadable += failed
        if len(batch):
            ours.append(reference.encode_images(batch))
            theirs.append(candidate.encode_images(batch))
    readable = sum(map(len, ours))
    if readable < 2:
        raise EmptyLibrary(f"the check needs at least 2 readable images of the library; {readable} could be read")
    a, b = np.concatenate(ours), np.concatenate(theirs)
    cosines = np.einsum("ij,ij->i", a, b)
    _, texts = lib.catalog.sample_vectors(TEXTS, TEXT_QUERIES, SEED)
    return PrecisionCheck(
        precision=precision,
        sampled=len(a),
        unreadable=unreadable,
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
        image_queries=overlap(a, a, b, leave_out_self=True),
        text_queries=overlap(texts, a, b) if len(texts) else None,
        thresholds=thresholds,
    )


def switch_precision(lib, precision: str, check: PrecisionCheck | None = None) -> bool:
    """Record ``precision`` as the one ``lib`` encodes new images at, its stored vectors kept.
    Anything but fp32 needs a passed ``check`` of that precision (else BelowThresholds, nothing
    changed). False when the library already was at ``precision``."""
    from cbir.fsutil import writer_lock
    from cbir.store.db import catalogue_writer_lock

    if precision != REFERENCE:
        if check is None or check.precision != precision:
            raise UsageError(f"switching to {precision} needs a check of {precision} first")
        if not check.passed:
            raise refusal(check)
    lib.require_images()
    with writer_lock(lib.path), catalogue_writer_lock(lib.catalog.engine):
        return lib.catalog.set_model_precision(precision)


def refusal(check: PrecisionCheck) -> BelowThresholds:
    return BelowThresholds(
        f"{check.precision} is below the thresholds on this library ({'; '.join(check.failures())}); "
        "the library stays at its precision"
    )


def overlap(queries: np.ndarray, a: np.ndarray, b: np.ndarray, leave_out_self: bool = False) -> Overlap:
    """The top-k overlap of each query searched against ``a`` and against ``b`` (rows in the
    same order); with ``leave_out_self``, query i is a's row i and is not its own result."""
    k = min(K, len(a) - leave_out_self)
    shares = []
    for start in range(0, len(queries), QUERY_BLOCK):
        block = queries[start : start + QUERY_BLOCK]
        tops = []
        for vectors in (a, b):
            scores = block @ vectors.T
            if leave_out_self:
                rows = np.arange(len(block))
                scores[rows, rows + start] = -np.inf
            tops.append(np.argpartition(-scores, k - 1, axis=1)[:, :k])
        shares.extend(len(np.intersect1d(x, y)) / k for x, y in zip(*tops))
    return Overlap(queries=len(queries), k=k, mean=float(np.mean(shares)), worst=float(np.min(shares)))


def _sampled_pixels(catalog, sample: int, preprocess) -> Iterator[tuple[np.ndarray, int]]:
    """Up to ``sample`` of the library's images, decoded as ingest decodes them, in batches of
    (model pixels, how many images were left out as unreadable)."""
    from cbir.ingest.decode import BadImage, open_image

    ids = catalog.vector_ids(IMAGES)
    ids = np.random.default_rng(SEED).permutation(ids)[:sample]
    tars: dict[Path, dict[str, tuple[int, int]]] = {}
    for start in range(0, len(ids), BATCH):
        pixels, failed = [], 0
        for image_id in ids[start : start + BATCH]:
            stored = catalog.image_file(int(image_id))
            try:
                if stored is None:  # removed since the ids were read
                    raise KeyError(int(image_id))
                pixels.append(open_image(_read(stored, tars), preprocess)[0])
            except (OSError, KeyError, tarfile.TarError, BadImage):
                failed += 1
        yield (np.stack(pixels) if pixels else np.zeros((0,), np.uint8)), failed


def _read(stored, tars: dict) -> bytes:
    """An image's bytes, read as ingest reads them: its file, or its member of a WebDataset tar
    (``tars`` remembers each tar's members, read in one pass over its headers)."""
    from cbir.ingest.limits import read_image_file

    if not (stored.dataset or "").startswith("tar:"):
        return read_image_file(stored.path)
    tar = next((p for p in stored.path.parents if p.is_file()), None)
    if tar is None:
        raise FileNotFoundError(stored.path)
    if tar not in tars:
        with tarfile.open(tar, "r:") as archive:
            tars[tar] = {m.name: (m.offset_data, m.size) for m in archive if m.isfile()}
    offset, size = tars[tar][stored.path.relative_to(tar).as_posix()]
    return read_image_file(tar, offset, size)

"""The images ``cbir finetune --images-only`` trains on: a library's (optionally those passing a
``--where`` filter), with each image's folder (or a dataset column) as its label and its captions
(a dataset's, or caption files'); or a manifest's, its captions optional and a column as the label.

A library's images are read where ingest found them (files, WebDataset tar members, PDF pages,
video frames) and decoded with the library's Preprocess, the one its vectors were made with,
its masks (cbir ingest --mask) included.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from cbir.encode.spec import Preprocess
from cbir.errors import UsageError
from cbir.training.images import ImageRef


@dataclass
class ImageSet:
    """Images to train on: ``refs[i]``, its label (None: none) and captions (maybe none)."""

    source: str  # in words, for the run's summary
    refs: list[ImageRef] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    captions: list[tuple[str, ...]] = field(default_factory=list)
    model: str | None = None  # the library's model, the default starting point
    preprocess: Preprocess | None = None  # the library's; None: the model's own
    skipped: int = 0  # rows or images that cannot be used (bad rows, missing files)

    def add(self, ref: ImageRef, label: str | None, captions) -> None:
        self.refs.append(ref)
        self.labels.append(label)
        self.captions.append(tuple(c for c in captions if c.strip()))


def library_preprocess(fingerprint: dict) -> Preprocess:
    """The model's Preprocess a library's vectors were made with, as its model fingerprint
    records it (JSON lists back to tuples, so it stays a hashable value); the library's masks
    are a setting of their own (cbir.ingest.mask_setting), added by the caller."""

    def frozen(value):
        return tuple(frozen(v) for v in value) if isinstance(value, list) else value

    stored = fingerprint.get("preprocess") or {}
    known = {f.name for f in fields(Preprocess)}
    return Preprocess(**{k: frozen(v) for k, v in stored.items() if k in known})


def library_images(lib, where: str | None = None, label_column: str | None = None) -> ImageSet:
    """The images of ``lib`` (a cbir.library.Library) passing ``where``, with their labels
    (``folder``, the default, or ``extra.COLUMN``) and captions."""
    from cbir.ingest import mask_setting
    from cbir.query.filter_sql import image_condition
    from cbir.query.filters import Filters
    from cbir.store.collections import Images

    fingerprint = lib.fingerprint
    if fingerprint is None:
        raise UsageError(f"the library {lib.path} has no images yet; ingest some first")
    label = label_column or "folder"
    if label != "folder" and not (label.startswith("extra.") and len(label) > 6):
        raise UsageError(f"--label-column {label!r}: for a library use folder or extra.COLUMN")
    condition = image_condition(Filters(where=where), lib.catalog.roots()) if where else None
    ids = sorted(Images(lib.catalog.engine).matching_ids(condition))
    if not ids:
        if where:
            raise UsageError(f"--where {where!r}: no image of the library passes it")
        raise UsageError(f"the library {lib.path} has no images; ingest some first")
    label_ids, label_values = lib.catalog.image_labels(label, condition)
    labels = dict(zip(label_ids.tolist(), label_values))
    caption_images, text_ids = lib.catalog.captions(condition)
    texts = lib.catalog.texts(text_ids)
    captions: dict[int, list[str]] = {}
    for image_id, text_id in zip(caption_images.tolist(), text_ids.tolist()):
        captions.setdefault(image_id, []).append(texts[text_id][0])
    described = f"library {lib.path}" + (f" where {where}" if where else "")
    preprocess = replace(library_preprocess(fingerprint), masks=mask_setting.stored(lib.catalog))
    out = ImageSet(described, model=fingerprint["spec"], preprocess=preprocess)
    tars: dict[Path, dict[str, tuple[int, int]]] = {}
    for image_id in ids:
        stored = lib.catalog.image_file(image_id)
        ref = _ref(stored, tars) if stored is not None else None
        if ref is None:
            out.skipped += 1
            continue
        out.add(ref, labels.get(image_id), captions.get(image_id, ()))
    return out


def _ref(stored, tars: dict) -> ImageRef | None:
    """Where a stored image's bytes are (a tar's members are read once, from its headers); None
    when its tar is gone or no longer holds it."""
    if stored.item:
        return ImageRef(str(stored.file), item=stored.item)
    if not (stored.dataset or "").startswith("tar:"):
        return ImageRef(str(stored.path))
    tar = next((p for p in stored.path.parents if p.is_file()), None)
    if tar is None:
        return None
    if tar not in tars:
        try:
            with tarfile.open(tar, "r:") as archive:
                tars[tar] = {m.name: (m.offset_data, m.size) for m in archive if m.isfile()}
        except (OSError, tarfile.TarError):
            tars[tar] = {}
    member = tars[tar].get(stored.path.relative_to(tar).as_posix())
    if member is None:
        return None
    return ImageRef(str(tar), offset=member[0], size=member[1])


def manifest_images(
    dataset: str, image_column: str | None = None, caption_column: str | None = None, label_column: str | None = None
) -> ImageSet:
    """A manifest's images (each once), with their captions when it has a caption column and
    their label when ``label_column`` names one of its columns."""
    from cbir.ingest.datasets import MANIFEST_FORMATS, BadRow, detect_format
    from cbir.ingest.manifests import read_manifest

    fmt = detect_format(str(dataset))
    if fmt not in MANIFEST_FORMATS:
        raise UsageError(f"--dataset {dataset}: give a manifest (.csv, .tsv, .jsonl or .parquet) with an image column")
    out = ImageSet(f"manifest {dataset}")
    rows: dict[str, int] = {}
    label_seen = False
    for item in read_manifest(Path(dataset), fmt, image_column=image_column, caption_column=caption_column):
        if isinstance(item, BadRow) or not item.image.is_file():
            out.skipped += 1
            continue
        label = None
        if label_column is not None:
            value = item.extra.get(label_column)
            label = None if value in (None, "") else str(value)
            label_seen = label_seen or label is not None
        key = str(item.image)
        if key in rows:  # a second row of an image: more captions
            row = rows[key]
            out.captions[row] += tuple(c for c in item.captions if c.strip())
            continue
        rows[key] = len(out.refs)
        out.add(ImageRef(key), label, item.captions)
    if not out.refs:
        raise UsageError(f"no usable images in {dataset} ({out.skipped} bad rows or missing files)")
    if label_column is not None and not label_seen:
        raise UsageError(f"--label-column {label_column!r}: no row of {dataset} has a value in it")
    return out

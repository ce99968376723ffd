"""The parts of every image a library ignores (cbir ingest --mask x,y,w,h): rectangles relative to
the image as displayed, covered in the image's median colour before the model sees it
(cbir.ingest.pixels.cover), at ingest and for query images alike, so that a block every image
shares (a drawing's title block, a watermark, a camera's date stamp) does not decide similarity.

A library setting (meta ``masks``: JSON), given when the library's first images are ingested. The
stored vectors were encoded with it, so it changes only on an empty library: a new mask on a
library that holds images is a one-line error saying so."""

from __future__ import annotations

import json
import math
from dataclasses import replace

from cbir.encode.spec import Encoder
from cbir.errors import UsageError
from cbir.store.catalog import Catalog

MASKS_SETTING = "masks"
Mask = tuple[float, float, float, float]


def parse_mask(text: str) -> Mask:
    """``x,y,w,h`` (fractions of the width and height: 0.7,0.8,0.3,0.2 is the bottom-right
    corner, 30% wide and 20% high) as a mask; UsageError for anything else."""
    parts = text.replace(" ", "").split(",")
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--mask {text!r}: give x,y,w,h as fractions of the image, e.g. 0.7,0.8,0.3,0.2") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or not (0 <= x < 1 and 0 <= y < 1 and w > 0 and h > 0):
        raise UsageError(f"--mask {text!r}: x and y in [0, 1), w and h above 0")
    if x + w > 1.0001 or y + h > 1.0001:
        raise UsageError(f"--mask {text!r}: the rectangle leaves the image (x + w and y + h at most 1)")
    if w * h > 0.9:
        raise UsageError(f"--mask {text!r}: covers {w * h:.0%} of every image, leaving too little to compare")
    return x, y, (w if x + w <= 1 else 1 - x), (h if y + h <= 1 else 1 - y)  # a rounding over 1 clipped


def parse_masks(masks) -> tuple[Mask, ...]:
    """Masks given as "x,y,w,h" texts or as 4 numbers each, checked."""
    return tuple(parse_mask(m if isinstance(m, str) else ",".join(str(v) for v in m)) for m in masks)


def describe(masks: tuple[Mask, ...]) -> str:
    return " ".join(",".join(f"{v:g}" for v in m) for m in masks)


def stored(catalog: Catalog) -> tuple[Mask, ...]:
    raw = catalog.get_meta(MASKS_SETTING)
    return tuple(tuple(m) for m in json.loads(raw)) if raw else ()  # type: ignore[misc]


def settle(catalog: Catalog, masks: tuple[Mask, ...] | None) -> tuple[Mask, ...]:
    """The masks of this ingest: ``masks`` as given (None: the library's), recorded when the
    library holds no image yet; a change on a library with images is refused."""
    current = stored(catalog)
    if masks is None or tuple(masks) == current:
        return current
    count = catalog.count_images()
    if count:
        was = describe(current) if current else "no mask"
        now = describe(tuple(masks)) if masks else "no mask"
        raise UsageError(
            f"this library's {count} images were encoded with {was}; a mask applies to every image and "
            f"query, so {now} needs a new library (--library NEW) ingested with it"
        )
    catalog.set_meta(MASKS_SETTING, json.dumps([list(m) for m in masks]))
    return tuple(masks)


def apply(encoder: Encoder, masks: tuple[Mask, ...]) -> Encoder:
    """``encoder`` with ``masks`` in its preprocessing (decode workers and query images use it)."""
    if encoder.preprocess.masks != masks:
        encoder.preprocess = replace(encoder.preprocess, masks=masks)
    return encoder

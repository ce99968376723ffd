"""From a decoded Pillow image to the model's input: RGB a strip of rows at a time (transparency
over white, 16-bit greyscale scaled, never a whole-image copy per step), the EXIF orientation's
transposition, and open_clip's eval resize and crop. Used by the decode workers, RAW previews and
serve's thumbnails."""

from __future__ import annotations

from typing import cast

import numpy as np
from PIL import Image

from cbir.encode.spec import Preprocess

_STRIP_BYTES = 4 * 2**20  # rows converted at a time: what one conversion's temporaries take


def to_model_pixels(image: Image.Image, pp: Preprocess) -> np.ndarray:
    """Resize and crop an RGB image exactly as open_clip's eval transform does (torchvision
    Resize + CenterCrop on PIL), returning uint8 [S, S, 3] for the device to normalise; the
    library's masks (``pp.masks``) covered first."""
    if pp.masks:
        image = cover(image, pp.masks)
    size = pp.size
    resample = Image.Resampling.BILINEAR if pp.interpolation == "bilinear" else Image.Resampling.BICUBIC
    w, h = image.size
    if pp.resize_mode == "squash":
        return np.asarray(image.resize((size, size), resample))
    if pp.resize_mode == "longest":
        ratio = max(h / size, w / size)
        nw, nh = round(w / ratio), round(h / ratio)
        image = image.resize((nw, nh), resample)
        canvas = Image.new("RGB", (size, size), (pp.fill_color,) * 3)
        canvas.paste(image, ((size - nw) // 2, (size - nh) // 2))  # as open_clip pads
        return np.asarray(canvas)
    # shortest side to `size` (torchvision truncates the long side), then a centre crop
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), resample)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)))


def cover(image: Image.Image, masks) -> Image.Image:
    """A copy of an RGB image with each mask (x, y, w, h, relative to its size) painted over in
    the image's median colour: the page's white on a drawing, a neutral tone on a photo, so a
    masked corner looks like no content rather than like a new shape."""
    w, h = image.size
    small = image.copy()
    small.thumbnail((64, 64))
    median = tuple(int(v) for v in np.median(np.asarray(small).reshape(-1, 3), axis=0))
    out = image.copy()
    for x, y, mw, mh in masks:
        box = (round(x * w), round(y * h), round((x + mw) * w), round((y + mh) * h))
        out.paste(median, box)
    return out


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")


def _rgb_strip(image: Image.Image, top: float) -> Image.Image:
    """A (small) image as RGB: transparency over white, 16-bit greyscale scaled by ``top``."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    if image.mode in _SIXTEEN_BIT:  # scale, don't clip
        array = np.asarray(image.convert("I"), dtype=np.float64)
        return Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def to_rgb(image: Image.Image, factor: int = 1) -> Image.Image:
    """The image as RGB, box-reduced ``factor`` times. Converted a strip of rows at a time:
    compositing and 16-bit scaling make several copies, each only a strip's size."""
    if image.mode == "RGB" and factor == 1:
        return image
    top = 255.0
    if image.mode in _SIXTEEN_BIT:  # one scale for the whole image, as if converted at once
        low_high = cast(tuple[int, int], image.getextrema())  # one band: (lowest, highest)
        top = 65535.0 if low_high[1] > 255 else 255.0
    w, h = image.size
    rows = max(1, _STRIP_BYTES // (4 * w) // factor) * factor
    if rows >= h:
        strip = _rgb_strip(image, top)
        return strip.reduce(factor) if factor > 1 else strip
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    for y in range(0, h, rows):  # strips of whole reduction boxes: the same as reducing at once
        strip = _rgb_strip(image.crop((0, y, w, min(h, y + rows))), top)
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, y // factor))
    return out


# Orientation tag -> the transposition that shows the picture upright (as ImageOps.exif_transpose).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

"""Two augmented views of an image for image-only contrastive training (SimCLR, Chen et al. 2020),
and the fixed degradation that makes the held-out near-duplicates.

Views are made from the *working image*: the image as the model sees it (the library's
Preprocess: its resize mode, centre crop and masks) at :data:`WORKING_SCALE` times the model's
input side, so a crop of half its area still has about the model's resolution. Each view is, in
order, a random resized crop (area 0.5-1 of the working image, aspect 3/4-4/3, squashed back to a
square as torchvision's RandomResizedCrop does), a horizontal flip (half the time, unless flips
are off: a mirrored drawing is another part, a mirrored text is no text), colour jitter
(brightness, contrast, saturation), Gaussian blur, JPEG re-encoding at a random quality, and random
erasing (a rectangle of random grey). The caller then brings the view to model pixels
(cbir.ingest.pixels.to_model_pixels with :func:`view_preprocess`). The library's masks are
covered on the working image, where they are defined (fractions of the whole image), so every
view, and every held-out copy, has them covered wherever the crop moved them.

Everything random comes from the numpy generator passed in, so a view depends only on its seed.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from cbir.encode.spec import Preprocess

#: The working image's side, in model input sides.
WORKING_SCALE = 2


@dataclass(frozen=True)
class Augment:
    """The augmentation's settings (SimCLR's, less hue and greyscale, plus JPEG and erasing)."""

    flip: bool = True
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_p: float = 0.8
    jitter: float = 0.4  # brightness, contrast and saturation factors within 1 +- jitter
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in pixels of a 224-pixel image
    jpeg_p: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 95)
    erase_p: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.2)


def working_preprocess(pp: Preprocess) -> Preprocess:
    """The library's Preprocess at WORKING_SCALE times its side: the same field of view, the
    same masks covered (they are fractions of the image as displayed), at more pixels."""
    return replace(pp, size=pp.size * WORKING_SCALE)


def view_preprocess(pp: Preprocess) -> Preprocess:
    """What brings a view (or a near-duplicate) of the working image to model pixels: the
    library's Preprocess less its masks, which the working image already has covered where
    they belong (covering them again would hide the corner of each crop instead)."""
    return replace(pp, masks=())


def augment(image: Image.Image, rng: np.random.Generator, settings: Augment = Augment()) -> Image.Image:
    """One random view of ``image`` (RGB), the same size as it."""
    size = image.size
    view = _resized_crop(image, rng, settings)
    if settings.flip and rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < settings.jitter_p:
        low, high = 1 - settings.jitter, 1 + settings.jitter
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            view = enhancer(view).enhance(float(rng.uniform(low, high)))
    if rng.random() < settings.blur_p:
        sigma = float(rng.uniform(*settings.blur_sigma)) * size[0] / 224
        view = view.filter(ImageFilter.GaussianBlur(sigma))
    if rng.random() < settings.jpeg_p:
        view = jpeg(view, int(rng.integers(settings.jpeg_quality[0], settings.jpeg_quality[1] + 1)))
    if rng.random() < settings.erase_p:
        view = _erase(view, rng, settings)
    return view


def degrade(image: Image.Image) -> Image.Image:
    """The held-out near-duplicate of an image, by a FIXED degradation: 5% cropped from each
    side, then half the size, then re-encoded as JPEG at quality 50."""
    w, h = image.size
    dx, dy = round(0.05 * w), round(0.05 * h)
    cropped = image.crop((dx, dy, w - dx, h - dy))
    half = cropped.resize((max(1, cropped.width // 2), max(1, cropped.height // 2)), Image.Resampling.BICUBIC)
    return jpeg(half, 50)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """``image`` encoded as a JPEG at ``quality`` and decoded again."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _resized_crop(image: Image.Image, rng: np.random.Generator, s: Augment) -> Image.Image:
    """torchvision's RandomResizedCrop: 10 tries at a crop of the drawn area and aspect that
    fits, else the whole image; resized to the image's own size."""
    w, h = image.size
    log_ratio = (math.log(s.crop_ratio[0]), math.log(s.crop_ratio[1]))
    for _ in range(10):
        area = w * h * float(rng.uniform(*s.crop_scale))
        ratio = math.exp(float(rng.uniform(*log_ratio)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return image.resize((w, h), Image.Resampling.BICUBIC, box=(x, y, x + cw, y + ch))
    return image.copy()


def _erase(image: Image.Image, rng: np.random.Generator, s: Augment) -> Image.Image:
    """Random erasing (Zhong et al. 2020): a rectangle of the drawn area filled with one random grey."""
    w, h = image.size
    area = w * h * float(rng.uniform(*s.erase_area))
    ratio = math.exp(float(rng.uniform(math.log(0.3), math.log(1 / 0.3))))
    ew, eh = min(w, round(math.sqrt(area * ratio))), min(h, round(math.sqrt(area / ratio)))
    x, y = int(rng.integers(0, w - ew + 1)), int(rng.integers(0, h - eh + 1))
    out = image.copy()
    out.paste((int(rng.integers(0, 256)),) * 3, (x, y, x + ew, y + eh))
    return out

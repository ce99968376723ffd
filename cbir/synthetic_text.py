"""Deterministic synthetic photos with text on them, and their ground truth, for measuring OCR.

Each image is a busy generated background (a colour gradient, overlapping shapes and lines,
pixel noise) with, on most images, a few words, numbers or short sentences drawn in fonts that
need no download: the scalable font that ships with Pillow (``ImageFont.load_default(size=...)``,
Pillow >= 10.1) and, where the system has them, Debian's DejaVu fonts. Each text is rotated a
little (up to ``MAX_ROTATION`` degrees either way), as text in a photo rarely sits level. The
rest of the images carry no text at all, so an OCR's cost and false readings on text-free
photos can be measured too. Pure PIL + numpy; the same ``seed`` gives the same images on
machines with the same fonts (with DejaVu installed or without).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "MAX_ROTATION",
    "VOCABULARY",
    "TextImage",
    "available_fonts",
    "iter_text_images",
    "make_text_images",
    "words_of",
]

#: The largest tilt of a drawn text, in degrees either way.
MAX_ROTATION = 5.0
#: Range of each image side (inclusive), in pixels.
MIN_SIDE, MAX_SIDE = 320, 640
#: Range of the font size, in pixels (the cap height is about 0.7 of it).
_FONT_SIZES = (14, 44)
#: Distinct, common English words: the keywords a search would look for.
VOCABULARY: tuple[str, ...] = (
    "apple", "river", "garden", "window", "market", "coffee", "station", "bridge", "summer",
    "winter", "harbor", "forest", "candle", "silver", "orange", "pencil", "rocket", "ticket",
    "castle", "island", "museum", "bakery", "pocket", "violin", "meadow", "planet", "letter",
    "basket", "dragon", "jacket", "mirror", "anchor", "butter", "cotton", "desert", "engine",
    "falcon", "ginger", "helmet", "jungle", "kitten", "lemon", "magnet", "needle", "oyster",
    "parrot", "quartz", "ribbon", "saddle", "tunnel", "valley", "walnut", "yellow", "zipper",
    "open", "closed", "sale", "exit", "hotel", "pizza", "taxi", "police", "school", "library",
    "fresh", "bread", "north", "south", "street", "avenue", "parking", "welcome", "theatre",
    "cinema", "garage", "office", "danger", "caution", "private", "bicycle", "airport", "platform",
)  # fmt: skip
#: Shapes a background is made of.
_SHAPES = ("ellipse", "rectangle", "polygon", "line")
_WORD = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class TextImage:
    """One generated photo: the image and the texts drawn on it, top to bottom (none for a
    photo without text)."""

    image: Image.Image
    texts: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        """The drawn words and numbers, lower case, each once, in reading order."""
        return words_of(" ".join(self.texts))


def words_of(text: str) -> tuple[str, ...]:
    """The words and numbers of ``text`` (runs of ASCII letters and digits), lower case, each
    once, in order: "Open 07:45" -> ("open", "07", "45"), as a keyword index splits them."""
    return tuple(dict.fromkeys(w.lower() for w in _WORD.findall(text)))


@cache
def available_fonts() -> tuple[str, ...]:
    """The fonts texts are drawn in: "default" (Pillow's own) and the paths of Debian's DejaVu
    Sans faces where they are installed. Found once per process."""
    fonts = ["default"]
    dejavu = Path("/usr/share/fonts/truetype/dejavu")
    for name in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"):
        if (dejavu / name).is_file():
            fonts.append(str(dejavu / name))
    return tuple(fonts)


def _font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if name == "default":
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(name, size=size)


def _random_text(rnd: random.Random) -> str:
    """A word (in one of three cases), a number (integer, price, time or date) or a short
    sentence of 3-5 words."""
    kind = rnd.random()
    if kind < 0.4:
        word = rnd.choice(VOCABULARY)
        return rnd.choice((word, word.capitalize(), word.upper()))
    if kind < 0.7:
        form = rnd.randrange(4)
        if form == 0:
            return str(rnd.randint(10, 999999))
        if form == 1:
            return f"{rnd.randint(1, 999)}.{rnd.randint(0, 99):02d}"
        if form == 2:
            return f"{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}"
        return f"{rnd.randint(2000, 2029)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"
    words = rnd.sample(VOCABULARY, rnd.randint(3, 5))
    sentence = " ".join(words)
    return sentence.capitalize() if rnd.random() < 0.5 else sentence


def _background(rnd: random.Random, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A gradient between two random colours at a random angle, 8-24 random shapes and lines
    over it, a light blur on some, and Gaussian pixel noise."""
    c0, c1 = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
    angle = rnd.uniform(0.0, 2 * math.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    pixels = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(rnd.randint(8, 24)):
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        shape = rnd.choice(_SHAPES)
        x0, y0 = rnd.uniform(-0.2, 1.0) * w, rnd.uniform(-0.2, 1.0) * h
        x1, y1 = x0 + rnd.uniform(0.05, 0.6) * w, y0 + rnd.uniform(0.05, 0.6) * h
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == "polygon":
            points = [(rnd.uniform(0, w), rnd.uniform(0, h)) for _ in range(rnd.randint(3, 6))]
            draw.polygon(points, fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=rnd.randint(1, 6))
    if rnd.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rnd.uniform(0.5, 2.0)))
    return _noisy(img, rng, rnd.uniform(3.0, 12.0))


def _noisy(img: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0.0, sigma, size=(img.height, img.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _text_layer(
    text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, fill, stroke: int, stroke_fill, angle: float
) -> Image.Image:
    """``text`` drawn on a transparent layer just large enough for it, rotated by ``angle``."""
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox(
        (0, 0), text, font=font, stroke_width=stroke
    )
    pad = 4 + stroke
    layer = Image.new("RGBA", (int(right - left) + 2 * pad, int(bottom - top) + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(
        (pad - left, pad - top), text, font=font, fill=fill, stroke_width=stroke, stroke_fill=stroke_fill
    )
    return layer.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)


def _contrasting(region: Image.Image, rnd: random.Random) -> tuple[tuple[int, int, int, int], tuple[int, int, int]]:
    """A text colour readable on ``region`` (dark on light, light on dark, tinted) and the
    opposite colour for an outline."""
    luminance = float(np.asarray(region.convert("L"), dtype=np.float32).mean())
    dark = luminance > 128
    low, high = (0, 50) if dark else (205, 255)
    fill = (rnd.randint(low, high), rnd.randint(low, high), rnd.randint(low, high), 255)
    outline = (255, 255, 255) if dark else (0, 0, 0)
    return fill, outline


def _draw_texts(img: Image.Image, rnd: random.Random) -> tuple[str, ...]:
    """Draw 1-3 texts at free places of ``img`` (in place); returns them, top to bottom."""
    w, h = img.size
    fonts = available_fonts()
    placed: list[tuple[int, int, int, int, str]] = []
    for _ in range(rnd.randint(1, 3)):
        for _attempt in range(30):
            text = _random_text(rnd)
            size = rnd.randint(*_FONT_SIZES)
            font = _font(rnd.choice(fonts), size)
            angle = rnd.uniform(-MAX_ROTATION, MAX_ROTATION)
            stroke = rnd.choice((0, 0, 1, 2))
            layer = _text_layer(text, font, (0, 0, 0, 255), stroke, (0, 0, 0), angle)
            lw, lh = layer.size
            if lw > w - 8 or lh > h - 8:
                continue
            x, y = rnd.randint(4, w - lw - 4), rnd.randint(4, h - lh - 4)
            if any(x < px1 and px0 < x + lw and y < py1 and py0 < y + lh for px0, py0, px1, py1, _ in placed):
                continue
            fill, outline = _contrasting(img.crop((x, y, x + lw, y + lh)), rnd)
            layer = _text_layer(text, font, fill, stroke, outline, angle)
            img.paste(layer, (x, y), layer)
            placed.append((x, y, x + lw, y + lh, text))
            break
    return tuple(text for *_, text in sorted(placed, key=lambda p: (p[1], p[0])))


def iter_text_images(n: int, seed: int = 0, text_fraction: float = 0.75) -> Iterator[TextImage]:
    """``n`` generated photos (each side ``MIN_SIDE``-``MAX_SIDE`` px); about ``text_fraction``
    of them carry text (at least one does when ``n`` > 0 and ``text_fraction`` > 0), the rest
    none. Deterministic in ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if not 0.0 <= text_fraction <= 1.0:
        raise ValueError(f"text_fraction must be in [0, 1], not {text_fraction}")
    with_text = max(1, round(n * text_fraction)) if n and text_fraction else 0
    order = random.Random(seed).sample(range(n), n)
    texted = set(order[:with_text])
    for i in range(n):
        rnd = random.Random(f"{seed}:{i}")
        rng = np.random.default_rng([seed, i])
        w, h = rnd.randint(MIN_SIDE, MAX_SIDE), rnd.randint(MIN_SIDE, MAX_SIDE)
        img = _background(rnd, rng, w, h)
        texts = _draw_texts(img, rnd) if i in texted else ()
        if texts:
            img = _noisy(img, rng, rnd.uniform(0.0, 4.0))  # the text is part of the photo too
        yield TextImage(img, texts)


def make_text_images(n: int, seed: int = 0, text_fraction: float = 0.75) -> list[TextImage]:
    """:func:`iter_text_images` as a list."""
    return list(iter_text_images(n, seed, text_fraction))

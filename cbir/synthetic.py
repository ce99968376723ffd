"""Deterministic synthetic images: one coloured shape on a plain background.

Used to train the bundled ``cbir-tiny`` CLIP model and by the demo and tests to
make photo galleries without any downloads. Pure PIL + numpy (no torch).

Every image shows a :class:`Scene` (shape colour, shape, background colour),
described by its :attr:`Scene.caption`, e.g. ``"a red star on a cyan background"``.
The same ``seed`` always produces the same images.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "SHAPES",
    "BACKGROUNDS",
    "Scene",
    "all_scenes",
    "random_scene",
    "render",
    "render_located",
    "iter_gallery",
    "make_gallery",
]

#: Shape colours (CSS colour names and values).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 128, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (128, 0, 128),
    "orange": (255, 165, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

#: Background colours (CSS colour names and values).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "pink": (255, 192, 203),
    "cyan": (0, 255, 255),
    "brown": (165, 42, 42),
}

#: Range of the random image side (inclusive) when ``render(size=None)``.
MIN_SIDE, MAX_SIDE = 48, 256
#: Shape radius (centre to vertex) relative to the image's shorter side.
_RADIUS_RANGE = (0.18, 0.42)
#: Maximum per-channel colour jitter (keeps the CSS colours recognisable).
_COLOUR_JITTER = 14
#: Maximum standard deviation of the additive Gaussian pixel noise.
_MAX_NOISE = 10.0
#: Star inner/outer radius ratio.
_STAR_INNER = 0.45

_FORMAT_ALIASES = {
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "bmp": "BMP",
    "gif": "GIF",
    "tif": "TIFF",
    "tiff": "TIFF",
}


@dataclass(frozen=True)
class Scene:
    """What a synthetic image shows."""

    colour: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def all_scenes() -> list[Scene]:
    """All 128 scenes, ordered by colour, then shape, then background."""
    return [Scene(c, s, b) for c, s, b in itertools.product(COLOURS, SHAPES, BACKGROUNDS)]


def random_scene(rng: np.random.Generator) -> Scene:
    """A uniformly random scene."""
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    return Scene(
        colours[int(rng.integers(len(colours)))],
        SHAPES[int(rng.integers(len(SHAPES)))],
        backgrounds[int(rng.integers(len(backgrounds)))],
    )


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    noise = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + noise, 0, 255))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        radii, n = [r], 4
    elif shape == "triangle":
        radii, n = [r], 3
    elif shape == "star":
        radii, n = [r, r * _STAR_INNER], 10
    else:
        raise ValueError(f"not a polygon shape: {shape!r}")
    return [
        (
            cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / n),
            cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / n),
        )
        for i in range(n)
    ]


def render(scene: Scene, rng: np.random.Generator, size: tuple[int, int] | None = None) -> Image.Image:
    """Render ``scene`` as an RGB image.

    ``size`` is ``(width, height)``; when ``None`` a random size with each side in
    ``[MIN_SIDE, MAX_SIDE]`` is drawn from ``rng``. The shape's size, position,
    rotation, the colour jitter and the pixel noise are drawn from ``rng``. The
    shape always lies inside the centred square of the image, so it survives a
    CLIP-style "resize shortest side + centre crop" preprocessing.
    """
    if scene.colour not in COLOURS or scene.shape not in SHAPES or scene.background not in BACKGROUNDS:
        raise ValueError(f"unknown scene: {scene!r}")
    if size is None:
        w, h = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    else:
        w, h = (int(v) for v in size)
        if w < 1 or h < 1:
            raise ValueError(f"invalid size: {size!r}")

    side = min(w, h)
    r = float(rng.uniform(*_RADIUS_RANGE)) * side
    x0, y0 = (w - side) / 2, (h - side) / 2
    cx = x0 + float(rng.uniform(r, side - r))
    cy = y0 + float(rng.uniform(r, side - r))
    return _paint(scene, rng, (w, h), cx, cy, r)[0]


def render_located(
    scene: Scene,
    rng: np.random.Generator,
    size: tuple[int, int] = (256, 256),
    radius: tuple[float, float] = (20.0, 48.0),
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Render ``scene`` with a small shape (radius in pixels drawn from ``radius``) anywhere in
    a ``size`` image; returns ``(image, box)``, ``box`` = ``(x0, y0, x1, y1)`` the shape's
    bounding box in pixels (x1, y1 exclusive). For testing localisation (``cbir locate``)."""
    if scene.colour not in COLOURS or scene.shape not in SHAPES or scene.background not in BACKGROUNDS:
        raise ValueError(f"unknown scene: {scene!r}")
    w, h = (int(v) for v in size)
    r = float(rng.uniform(*radius))
    if 2 * r >= min(w, h):
        raise ValueError(f"radius {r:.1f} does not fit in {size!r}")
    cx = float(rng.uniform(r, w - r))
    cy = float(rng.uniform(r, h - r))
    return _paint(scene, rng, (w, h), cx, cy, r)


def _paint(
    scene: Scene, rng: np.random.Generator, size: tuple[int, int], cx: float, cy: float, r: float
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Draw the shape at (cx, cy) with radius r (rotation, colours and noise from ``rng``);
    returns the image and the shape's bounding box (x0, y0, x1, y1), x1/y1 exclusive."""
    w, h = size
    angle = float(rng.uniform(0.0, 2 * math.pi))
    fg = _jitter(COLOURS[scene.colour], rng)
    bg = _jitter(BACKGROUNDS[scene.background], rng)
    sigma = float(rng.uniform(0.0, _MAX_NOISE))

    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
        points = [(cx - r, cy - r), (cx + r, cy + r)]
    else:
        points = _polygon(scene.shape, cx, cy, r, angle)
        draw.polygon(points, fill=fg)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    box = (
        max(0, math.floor(min(xs))),
        max(0, math.floor(min(ys))),
        min(w, math.ceil(max(xs)) + 1),
        min(h, math.ceil(max(ys)) + 1),
    )

    if sigma > 0:
        arr = np.asarray(img, dtype=np.float32)
        arr += rng.standard_normal(arr.shape, dtype=np.float32) * sigma
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    return img, box


def iter_gallery(n: int, seed: int, size: tuple[int, int] | None = None) -> Iterator[tuple[Image.Image, Scene]]:
    """Yield ``n`` random ``(image, scene)`` pairs, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        scene = random_scene(rng)
        yield render(scene, rng, size), scene


def make_gallery(
    folder: str | Path, n: int, seed: int, size: tuple[int, int] | None = None, formats: Sequence[str] = ("jpg",)
) -> list[tuple[Path, Scene]]:
    """Write ``n`` rendered images into ``folder`` (created if needed).

    Files are named ``img_00000.<ext>``, ``img_00001.<ext>``, ...; image ``i`` uses
    ``formats[i % len(formats)]`` as its extension. Deterministic for ``seed``
    (same images as ``iter_gallery(n, seed, size)``). Returns ``(path, scene)``
    pairs in order.
    """
    if not formats:
        raise ValueError("formats must not be empty")
    for ext in formats:
        if ext.lower().lstrip(".") not in _FORMAT_ALIASES:
            raise ValueError(f"unsupported image format: {ext!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[tuple[Path, Scene]] = []
    for i, (img, scene) in enumerate(iter_gallery(n, seed, size)):
        ext = formats[i % len(formats)].lower().lstrip(".")
        path = folder / f"img_{i:05d}.{ext}"
        fmt = _FORMAT_ALIASES[ext]
        if fmt == "JPEG":
            img.save(path, fmt, quality=90)
        else:
            img.save(path, fmt)
        out.append((path, scene))
    return out

"""Deterministic generated "technical drawings": black line art of a part on a white page, and a
title block in the bottom-right corner of every page.

They stand in for a drawing archive, where every sheet carries a near-identical title block and a
network that is shown them anchors on that block instead of on the part. The part comes from one
of :data:`FAMILIES`, each a parametric generator (random dimensions, hole counts, rotation, line
width), with dimension lines and arrows; the title block covers :data:`TITLE_BLOCK` of the page
(about 28% of its width and 18% of its height). Its rulings, the company's logo and name are the
same on every page; its drawing number (in bold, as the block's largest text), date and filled
revision rows differ from page to page, drawn from a generator of their own so that they never
depend on the family. The number and the revisions are heavy enough to tell pages apart at a
model's 64-pixel input, where a page's small print is a grey smear, as real title blocks carry
per-page content that a model sees. Pages are square by default, so a model's centre crop keeps
the whole page, title block included.

Pure PIL + numpy (no torch). The same ``seed`` always produces the same pages. The text is drawn
with the scalable font that ships with Pillow, so nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "FAMILIES",
    "TITLE_BLOCK",
    "COMPANY",
    "title_block_box",
    "drawing_area",
    "render_drawing",
    "iter_drawings",
    "make_drawing_gallery",
]

FAMILIES: tuple[str, ...] = ("flange", "bracket", "shaft", "gear", "plate", "spring")
#: The title block as fractions of the page: (left, top, right, bottom).
TITLE_BLOCK = (0.69, 0.79, 0.97, 0.97)
#: The company name every title block carries.
COMPANY = "ACME ENGINEERING"
_MARGIN = 0.03  # the page border, as a fraction of the page's side
_AREA = (0.08, 0.08, 0.92, 0.74)  # where the part and its dimensions go (above the title block)
Point = tuple[float, float]


def title_block_box(size: tuple[int, int] = (256, 256)) -> tuple[int, int, int, int]:
    """The title block's outline in pixels ``(x0, y0, x1, y1)`` (inclusive) on a page of ``size``."""
    w, h = size
    left, top, right, bottom = TITLE_BLOCK
    return round(left * w), round(top * h), round(right * w), round(bottom * h)


def drawing_area(size: tuple[int, int] = (256, 256)) -> tuple[int, int, int, int]:
    """Where the part and its dimension lines are drawn ``(x0, y0, x1, y1)``: clear of the title block."""
    w, h = size
    return round(_AREA[0] * w), round(_AREA[1] * h), round(_AREA[2] * w), round(_AREA[3] * h)


def render_drawing(family: str, rng: np.random.Generator, size: tuple[int, int] = (256, 256)) -> Image.Image:
    """A page of ``size`` (width, height) showing a random part of ``family``, its dimensions,
    the page border and the title block (drawing number, date and revisions from ``rng``, the
    same whatever the family)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
    w, h = (int(v) for v in size)
    if min(w, h) < 64:
        raise ValueError(f"a drawing needs at least 64 pixels a side, not {size!r}")
    # the title block's own generator, drawn first: what it writes depends on the page, never on the family
    block = np.random.default_rng(int(rng.integers(0, 2**63)))
    page = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    unit = min(w, h) / 256  # line widths and text sizes scale with the page
    lw = max(1, round(int(rng.integers(1, 4)) * unit))
    x0, y0, x1, y1 = drawing_area((w, h))
    # room for the dimension lines below and left of the part
    r = 0.5 * min(x1 - x0, y1 - y0) * float(rng.uniform(0.55, 0.8))
    cx = (x0 + x1) / 2 + float(rng.uniform(-0.1, 0.1)) * (x1 - x0)
    cy = (y0 + y1) / 2 - 0.06 * (y1 - y0) + float(rng.uniform(-0.05, 0.05)) * (y1 - y0)
    outline = _PARTS[family](draw, rng, cx, cy, r, lw)
    _dimensions(draw, rng, outline, unit)
    border = round(_MARGIN * w), round(_MARGIN * h), w - 1 - round(_MARGIN * w), h - 1 - round(_MARGIN * h)
    draw.rectangle(border, outline=(0, 0, 0), width=max(1, round(unit)))
    _title_block(draw, block, (w, h), unit)
    return page


def iter_drawings(
    per_family: int, seed: int, size: tuple[int, int] = (256, 256)
) -> Iterator[tuple[Image.Image, str, int]]:
    """``per_family`` pages of each family, families interleaved: ``(page, family, index)``
    where ``index`` counts the family's pages. Deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    for i in range(per_family):
        for family in FAMILIES:
            yield render_drawing(family, rng, size), family, i


def make_drawing_gallery(
    folder: str | Path, per_family: int, seed: int, size: tuple[int, int] = (256, 256), fmt: str = "png"
) -> list[tuple[Path, str]]:
    """Write ``per_family`` pages of each family into ``folder/<family>/dwg_00000.<fmt>``, ...
    (the folder is each page's label); returns ``(path, family)`` in the order written."""
    if fmt.lower() not in ("png", "jpg", "jpeg"):
        raise ValueError(f"unsupported format {fmt!r}: png or jpg")
    folder = Path(folder)
    out = []
    for page, family, i in iter_drawings(per_family, seed, size):
        path = folder / family / f"dwg_{i:05d}.{fmt.lower()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt.lower() == "png":
            page.save(path, "PNG")
        else:
            page.save(path, "JPEG", quality=92)
        out.append((path, family))
    return out


# -- the title block ---------------------------------------------------------------------------------
def _font(size: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(6, round(size)))


def _title_block(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: tuple[int, int], unit: float) -> None:
    """The ruled box. Across its top row, the company's logo and name: the same on every page.
    Below, on the left, the drawing number in bold type, the largest text of the block, over the
    date; on the right, the revision table: four rows, of which the page's first 0-4 are filled
    (letter and month/year of each revision). The number, the date and the revisions vary from
    page to page, and the number and the filled rows are heavy enough to show at a model's 64 px."""
    x0, y0, x1, y1 = title_block_box(size)
    black, thin, pad = (0, 0, 0), max(1, round(unit)), 2 * unit
    draw.rectangle((x0, y0, x1, y1), outline=black, width=max(1, round(2 * unit)))
    top, split = y0 + 0.3 * (y1 - y0), x0 + 0.6 * (x1 - x0)
    middle, row = y0 + 0.7 * (y1 - y0), (y1 - top) / 4
    draw.line((x0, top, x1, top), fill=black, width=thin)
    draw.line((split, top, split, y1), fill=black, width=thin)
    draw.line((x0, middle, split, middle), fill=black, width=thin)
    for k in range(1, 4):
        draw.line((split, top + k * row, x1, top + k * row), fill=black, width=thin)
    side = top - y0 - 2 * pad
    draw.polygon([(x0 + pad, top - pad), (x0 + pad + side, top - pad), (x0 + pad + side / 2, y0 + pad)], fill=black)
    small = _font(6 * unit)
    draw.text((x0 + 2 * pad + side, y0 + pad), COMPANY, fill=black, font=small)
    number = f"{int(rng.integers(10, 100))}-{int(rng.integers(1000, 10000))}"
    date = f"{int(rng.integers(1995, 2025))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
    draw.text((x0 + pad, top + pad), number, fill=black, font=_font(11 * unit), stroke_width=thin, stroke_fill=black)
    draw.text((x0 + pad, middle + pad), date, fill=black, font=small)
    for k in range(int(rng.integers(0, 5))):
        revision = f"{'ABCD'[k]} {int(rng.integers(1, 13)):02d}/{int(rng.integers(0, 25)):02d}"
        xy = (split + pad, top + k * row + 0.5 * unit)
        draw.text(xy, revision, fill=black, font=small, stroke_width=thin, stroke_fill=black)


# -- dimension lines ---------------------------------------------------------------------------------
def _arrow(draw: ImageDraw.ImageDraw, tip: Point, towards: Point, length: float) -> None:
    angle = math.atan2(towards[1] - tip[1], towards[0] - tip[0])
    left = (tip[0] + length * math.cos(angle + 0.35), tip[1] + length * math.sin(angle + 0.35))
    right = (tip[0] + length * math.cos(angle - 0.35), tip[1] + length * math.sin(angle - 0.35))
    draw.polygon([tip, left, right], fill=(0, 0, 0))


def _dimensions(draw: ImageDraw.ImageDraw, rng: np.random.Generator, outline: list[Point], unit: float) -> None:
    """A horizontal dimension under the part and, on some pages, a vertical one left of it:
    extension lines, a line with an arrow at each end, and the measure written beside it."""
    xs, ys = [p[0] for p in outline], [p[1] for p in outline]
    left, right, top, bottom = min(xs), max(xs), min(ys), max(ys)
    black, gap, arrow = (0, 0, 0), 9 * unit, 5 * unit
    font = _font(7 * unit)
    y = bottom + gap
    draw.line((left, bottom + 2 * unit, left, y + 3 * unit), fill=black, width=1)
    draw.line((right, bottom + 2 * unit, right, y + 3 * unit), fill=black, width=1)
    draw.line((left, y, right, y), fill=black, width=1)
    _arrow(draw, (left, y), (right, y), arrow)
    _arrow(draw, (right, y), (left, y), arrow)
    draw.text(
        ((left + right) / 2 - 8 * unit, y + 1.5 * unit), f"{float(rng.uniform(20, 400)):.1f}", fill=black, font=font
    )
    if rng.random() < 0.6:
        x = left - gap
        draw.line((left - 2 * unit, top, x - 3 * unit, top), fill=black, width=1)
        draw.line((left - 2 * unit, bottom, x - 3 * unit, bottom), fill=black, width=1)
        draw.line((x, top, x, bottom), fill=black, width=1)
        _arrow(draw, (x, top), (x, bottom), arrow)
        _arrow(draw, (x, bottom), (x, top), arrow)


# -- the parts: each draws itself and returns points bounding it ------------------------------------
def _rotated(points: list[Point], angle: float, cx: float, cy: float) -> list[Point]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _circle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, lw: int) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(0, 0, 0), width=lw)


def _centre_lines(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    """Dash-dot centre lines through a round part, as drawings mark its axis."""
    for a, b in (((cx - r, cy), (cx + r, cy)), ((cx, cy - r), (cx, cy + r))):
        steps = 9
        for i in range(0, steps, 2):
            t0, t1 = i / steps, (i + 0.7) / steps
            draw.line(
                (
                    a[0] + (b[0] - a[0]) * t0,
                    a[1] + (b[1] - a[1]) * t0,
                    a[0] + (b[0] - a[0]) * t1,
                    a[1] + (b[1] - a[1]) * t1,
                ),
                fill=(0, 0, 0),
                width=1,
            )


def _flange(draw, rng, cx, cy, r, lw) -> list[Point]:
    """A round flange: outer rim, a bore, and 4-8 bolt holes on a pitch circle."""
    _circle(draw, cx, cy, r, lw)
    _circle(draw, cx, cy, r * float(rng.uniform(0.25, 0.45)), lw)
    holes = int(rng.choice([4, 5, 6, 8]))
    pitch, hole, phase = (
        r * float(rng.uniform(0.65, 0.78)),
        r * float(rng.uniform(0.07, 0.12)),
        float(rng.uniform(0, 2 * math.pi)),
    )
    for k in range(holes):
        a = phase + 2 * math.pi * k / holes
        _circle(draw, cx + pitch * math.cos(a), cy + pitch * math.sin(a), hole, max(1, lw - 1))
    _centre_lines(draw, cx, cy, r * 1.1)
    return [(cx - r, cy - r), (cx + r, cy + r)]


def _gear(draw, rng, cx, cy, r, lw) -> list[Point]:
    """A spur gear: 10-24 trapezoid teeth round a root circle, a bore with a keyway."""
    teeth = int(rng.integers(10, 25))
    root, phase = r * float(rng.uniform(0.78, 0.88)), float(rng.uniform(0, 2 * math.pi))
    points = []
    for k in range(teeth):
        a = phase + 2 * math.pi * k / teeth
        step = 2 * math.pi / teeth
        for da, radius in ((0.0, root), (0.2 * step, r), (0.5 * step, r), (0.7 * step, root)):
            points.append((cx + radius * math.cos(a + da), cy + radius * math.sin(a + da)))
    draw.polygon(points, outline=(0, 0, 0), width=lw)
    bore = r * float(rng.uniform(0.18, 0.3))
    _circle(draw, cx, cy, bore, lw)
    key = bore * 0.35
    draw.rectangle(
        (cx - key, cy - bore - key, cx + key, cy - bore + key * 0.6), outline=(0, 0, 0), width=max(1, lw - 1)
    )
    return [(cx - r, cy - r), (cx + r, cy + r)]


def _shaft(draw, rng, cx, cy, r, lw) -> list[Point]:
    """A stepped shaft seen from the side: 3-5 cylinders of different diameters on one axis."""
    steps = int(rng.integers(3, 6))
    lengths = rng.uniform(0.5, 1.5, steps)
    lengths = lengths / lengths.sum() * 2 * r
    radii = rng.uniform(0.12, 0.4, steps) * r
    angle = float(rng.choice([0.0, math.pi / 2])) + float(rng.uniform(-0.15, 0.15))
    x, outline = cx - r, []
    for length, radius in zip(lengths, radii):
        box = [(x, cy - radius), (x + length, cy - radius), (x + length, cy + radius), (x, cy + radius)]
        box = _rotated(box, angle, cx, cy)
        draw.polygon(box, outline=(0, 0, 0), width=lw)
        outline.extend(box)
        x += length
    axis = _rotated([(cx - 1.1 * r, cy), (cx + 1.1 * r, cy)], angle, cx, cy)
    for i in range(0, 11, 2):
        t0, t1 = i / 11, (i + 0.7) / 11
        (ax, ay), (bx, by) = axis
        draw.line(
            (ax + (bx - ax) * t0, ay + (by - ay) * t0, ax + (bx - ax) * t1, ay + (by - ay) * t1),
            fill=(0, 0, 0),
            width=1,
        )
    return outline


def _bracket(draw, rng, cx, cy, r, lw) -> list[Point]:
    """An L-shaped bracket with 1-3 holes in each leg, turned by a quarter turn or none."""
    t = r * float(rng.uniform(0.22, 0.38))
    a, b = r * float(rng.uniform(0.8, 1.0)), r * float(rng.uniform(0.8, 1.0))
    shape = [
        (cx - a, cy - b),
        (cx - a + t, cy - b),
        (cx - a + t, cy + b - t),
        (cx + a, cy + b - t),
        (cx + a, cy + b),
        (cx - a, cy + b),
    ]
    angle = float(rng.integers(0, 4)) * math.pi / 2 + float(rng.uniform(-0.2, 0.2))
    shape = _rotated(shape, angle, cx, cy)
    draw.polygon(shape, outline=(0, 0, 0), width=lw)
    hole = t * 0.25
    for leg in range(2):
        for k in range(int(rng.integers(1, 4))):
            f = (k + 1) / 4
            if leg == 0:
                p = (cx - a + t / 2, cy - b + f * (2 * b - t))
            else:
                p = (cx - a + t + f * (2 * a - t), cy + b - t / 2)
            (hx, hy) = _rotated([p], angle, cx, cy)[0]
            _circle(draw, hx, hy, hole, max(1, lw - 1))
    return shape


def _plate(draw, rng, cx, cy, r, lw) -> list[Point]:
    """A rectangular plate with chamfered corners and a grid of 2-4 x 2-4 holes."""
    a, b = r, r * float(rng.uniform(0.5, 0.9))
    c = min(a, b) * float(rng.uniform(0.0, 0.2))
    shape = [
        (cx - a + c, cy - b),
        (cx + a - c, cy - b),
        (cx + a, cy - b + c),
        (cx + a, cy + b - c),
        (cx + a - c, cy + b),
        (cx - a + c, cy + b),
        (cx - a, cy + b - c),
        (cx - a, cy - b + c),
    ]
    angle = float(rng.uniform(-0.25, 0.25))
    shape = _rotated(shape, angle, cx, cy)
    draw.polygon(shape, outline=(0, 0, 0), width=lw)
    cols, rows = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    hole = min(a / cols, b / rows) * float(rng.uniform(0.2, 0.35))
    for i in range(cols):
        for j in range(rows):
            p = (cx - a + (i + 0.5) * 2 * a / cols, cy - b + (j + 0.5) * 2 * b / rows)
            (hx, hy) = _rotated([p], angle, cx, cy)[0]
            _circle(draw, hx, hy, hole, max(1, lw - 1))
    return shape


def _spring(draw, rng, cx, cy, r, lw) -> list[Point]:
    """A coil spring from the side: a zigzag of 5-12 coils between two end plates."""
    coils = int(rng.integers(5, 13))
    amp = r * float(rng.uniform(0.25, 0.45))
    angle = float(rng.choice([0.0, math.pi / 2])) + float(rng.uniform(-0.2, 0.2))
    points = [(cx - r, cy)]
    for k in range(2 * coils):
        points.append((cx - r + (k + 0.5) * 2 * r / (2 * coils), cy + (amp if k % 2 == 0 else -amp)))
    points.append((cx + r, cy))
    points = _rotated(points, angle, cx, cy)
    draw.line(points, fill=(0, 0, 0), width=lw, joint="curve")
    plates = []
    for end in (cx - r, cx + r):
        plate = _rotated([(end, cy - amp * 1.3), (end, cy + amp * 1.3)], angle, cx, cy)
        draw.line(plate, fill=(0, 0, 0), width=lw + 1)
        plates.extend(plate)
    return points + plates


_PARTS = {
    "flange": _flange,
    "bracket": _bracket,
    "shaft": _shaft,
    "gear": _gear,
    "plate": _plate,
    "spring": _spring,
}

"""Generated drawings: deterministic by seed, families differ, the title block is where it is said to be."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cbir.synthetic_drawings import (
    FAMILIES,
    TITLE_BLOCK,
    drawing_area,
    iter_drawings,
    make_drawing_gallery,
    render_drawing,
    title_block_box,
)


def _ink(page) -> np.ndarray:
    return np.asarray(page.convert("L")) < 128


def test_same_seed_same_pages_other_seed_other_pages():
    a = [np.asarray(p) for p, _, _ in iter_drawings(2, seed=3)]
    b = [np.asarray(p) for p, _, _ in iter_drawings(2, seed=3)]
    c = [np.asarray(p) for p, _, _ in iter_drawings(2, seed=4)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))


def test_families_differ_where_the_part_is():
    x0, y0, x1, y1 = drawing_area()
    parts = {f: _ink(p)[y0:y1, x0:x1] for p, f, _ in iter_drawings(1, seed=0)}
    assert set(parts) == set(FAMILIES)
    for f in FAMILIES:
        assert parts[f].sum() > 300, f  # a part was drawn
    # the families' ink differs: no two pages share more than half of their part's pixels
    for i, f in enumerate(FAMILIES):
        for g in FAMILIES[i + 1 :]:
            shared = (parts[f] & parts[g]).sum() / min(parts[f].sum(), parts[g].sum())
            assert shared < 0.5, (f, g, shared)


def test_title_block_is_in_the_bottom_right_corner_and_alike_on_every_page():
    size = (256, 256)
    x0, y0, x1, y1 = title_block_box(size)
    assert 0.25 <= (x1 - x0) / size[0] <= 0.30 and 0.15 <= (y1 - y0) / size[1] <= 0.20
    assert x1 > 0.95 * size[0] and y1 > 0.95 * size[1]
    pages = [_ink(p) for p, _, _ in iter_drawings(2, seed=9)]
    for ink in pages:
        assert ink[y0, x0:x1].mean() > 0.95 and ink[y1, x0:x1].mean() > 0.95  # the ruled outline
        assert ink[y0:y1, x0].mean() > 0.95 and ink[y0:y1, x1].mean() > 0.95
        assert ink[y0 + 2 : y1 - 1, x0 + 2 : x1 - 1].mean() > 0.05  # text and rulings inside
    # the block's top row (logo and company name) is the same on every page; the rest varies
    top = round(y0 + 0.3 * (y1 - y0)) - 1
    blocks = [ink[y0:top, x0 : x1 + 1] for ink in pages]
    assert all(np.array_equal(blocks[0], b) for b in blocks[1:])
    numbers = [ink[top + 2 : y1 - 1, x0 + 2 : x1 - 1] for ink in pages]
    assert not all(np.array_equal(numbers[0], n) for n in numbers[1:])
    # the part never reaches into the title block: nothing but the block right of its left edge
    ax0, ay0, ax1, ay1 = drawing_area(size)
    assert ay1 < y0 and TITLE_BLOCK[1] * size[1] >= ay1


def _at_64(page) -> np.ndarray:
    """The page as cbir-tiny sees it: 64 px, grey levels in [0, 1]."""
    return np.asarray(page.resize((64, 64), Image.Resampling.BICUBIC).convert("L"), dtype=np.float32) / 255


def test_title_block_varies_visibly_at_64_pixels():
    # what tells pages apart in the block (the bold drawing number, the filled revision rows)
    # survives the resize to a 64-pixel model input: two pages' blocks differ there by several
    # grey levels per pixel on average, not by the rounding noise of small print
    x0, y0, x1, y1 = title_block_box((64, 64))
    blocks = [_at_64(p)[y0 : y1 + 1, x0 : x1 + 1] for p, _, _ in iter_drawings(4, seed=2)]
    diffs = [np.abs(a - b).mean() for i, a in enumerate(blocks) for b in blocks[i + 1 :]]
    assert np.mean(diffs) > 0.03, np.mean(diffs)
    assert min(diffs) > 0.005  # no two pages' blocks look alike at 64 px


def test_title_block_carries_no_family():
    # a page's title block comes from its own generator, drawn before the part: the same seed
    # gives the same block whatever the family, pixel for pixel
    x0, y0, x1, y1 = title_block_box((256, 256))
    blocks = [np.asarray(render_drawing(f, np.random.default_rng(11)))[y0 : y1 + 1, x0 : x1 + 1] for f in FAMILIES]
    assert all(np.array_equal(blocks[0], b) for b in blocks[1:])
    other = np.asarray(render_drawing(FAMILIES[0], np.random.default_rng(12)))[y0 : y1 + 1, x0 : x1 + 1]
    assert not np.array_equal(blocks[0], other)


def test_gallery_has_a_folder_per_family(tmp_path):
    written = make_drawing_gallery(tmp_path, 2, seed=1, size=(96, 96), fmt="jpg")
    assert len(written) == 2 * len(FAMILIES)
    assert {p.parent.name for p, _ in written} == set(FAMILIES)
    assert all(p.parent.name == f and p.is_file() for p, f in written)
    with pytest.raises(ValueError, match="unknown family"):
        render_drawing("teapot", np.random.default_rng(0))

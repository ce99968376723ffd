"""Where a text is inside an image, from the relevance of image patches (any CLIP-like model).

Square windows of several sizes (a fraction of the image's shorter side: 1/3, 1/4, 1/6 and 1/8
by default) slide over the image with a stride of a quarter window. Each crop is preprocessed as
the model's own inference transform does (``to_model_pixels``), encoded in bounded batches
(``WINDOW_BATCH`` crops at a time) and scored against the text embedding (cosine).

Relevance map: the image is cut into cells of the smallest stride. Each window's gain (its score
minus the median of all window scores: what a crop of background scores) is spread over the
cells it covers; a cell's value is the mean gain of the windows covering it, normalised to 0..1.

Box: the largest 4-connected region of cells at or above ``THRESHOLD`` of the map's maximum
(preferring the region that holds the maximum), as a pixel rectangle.

Why this one: on cbir-tiny with generated scenes (tests/test_locate.py) it gave the best mean
IoU of the variants tried: the single best window (its windows are larger than the object:
mean IoU ~0.3), softmax-sharpened maps, top-k window votes and intersections, gains spread over
window centres only, and other window sets (1/2..1/4 alone is worse: the windows that contain
the whole object are much larger than it, while 1/6 and 1/8 windows outline its edges).

Numpy + PIL here (an image file is decoded as ingest decodes it, by cbir.ingest.decode); the
model comes in as an :class:`cbir.encode.Encoder`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cbir.errors import UsageError

#: Window sizes as divisors of the image's shorter side.
DEFAULT_WINDOWS = (3, 4, 6, 8)
#: Stride as a fraction of the window size.
STRIDE = 0.25
#: Crops encoded per model call (bounds memory whatever the image size).
WINDOW_BATCH = 64
#: The image is analysed with its longest side at most this many pixels (crops are resized to
#: the model's input, a few hundred pixels at most, anyway).
ANALYSIS_SIDE = 768
#: Cells at or above this fraction of the map's maximum make the box's region.
THRESHOLD = 0.7
#: Smallest window side in pixels (of the analysed image).
MIN_WINDOW = 8


@dataclass
class LocateResult:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the input image's pixels (x1, y1 exclusive)
    score: float  # cosine of the best window with the text
    whole_score: float  # cosine of the whole image (the model's own preprocessing) with the text
    windows: int
    image_size: tuple[int, int]  # width, height of the input image
    heatmap: np.ndarray = field(repr=False)  # float32 [H, W] over the input image, 0..1
    best_window: tuple[int, int, int, int] = (0, 0, 0, 0)

    def as_dict(self) -> dict:
        return {
            "box": list(self.box),
            "score": round(self.score, 6),
            "whole_image_score": round(self.whole_score, 6),
            "best_window": list(self.best_window),
            "windows": self.windows,
            "image_size": list(self.image_size),
        }


def parse_windows(text: str | None) -> tuple[int, ...]:
    """``"2,3,4"``: window sides as divisors of the shorter side (1 = the whole shorter side)."""
    if text is None or not str(text).strip():
        return DEFAULT_WINDOWS
    values = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise UsageError(
                f"--windows {text!r}: give divisors of the shorter side, e.g. 2,3,4 (windows of 1/2, 1/3 and 1/4 of it)"
            ) from None
        if not 1 <= value <= 32:
            raise UsageError(f"--windows: each divisor must be between 1 and 32, got {value}")
        values.append(value)
    return tuple(sorted(set(values)))


def window_boxes(
    width: int, height: int, divisors=DEFAULT_WINDOWS, stride: float = STRIDE
) -> list[tuple[int, int, int, int]]:
    """Every window (x0, y0, x1, y1): for each size, positions every ``stride`` window sides,
    the last one flush with the right/bottom edge."""
    shorter = min(width, height)
    boxes = []
    for d in divisors:
        side = max(min(MIN_WINDOW, shorter), int(round(shorter / d)))
        step = max(1, int(round(side * stride)))
        for y in _positions(height, side, step):
            for x in _positions(width, side, step):
                boxes.append((x, y, x + side, y + side))
    return list(dict.fromkeys(boxes))


def _positions(length: int, side: int, step: int) -> list[int]:
    last = length - side
    positions = list(range(0, last + 1, step))
    if positions[-1] != last:
        positions.append(last)
    return positions


def locate(
    encoder,
    image: Image.Image,
    text: str,
    divisors=DEFAULT_WINDOWS,
    *,
    stride: float = STRIDE,
    batch: int = WINDOW_BATCH,
    threshold: float = THRESHOLD,
) -> LocateResult:
    """Score windows of ``image`` (RGB PIL) against ``text`` with ``encoder``; see the module
    docstring for the map and the box."""
    from cbir.ingest.pixels import to_model_pixels

    if not text or not text.strip():
        raise UsageError('give a text to locate, e.g. "a butterfly"')
    image = image.convert("RGB")
    width, height = image.size
    work = image
    scale = 1.0
    if max(width, height) > ANALYSIS_SIDE:
        scale = ANALYSIS_SIDE / max(width, height)
        work = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC)
    ww, wh = work.size
    boxes = window_boxes(ww, wh, divisors, stride)

    text_vector = encoder.encode_texts([text.strip()])[0]
    whole = float(encoder.encode_images(to_model_pixels(image, encoder.preprocess)[None])[0] @ text_vector)
    scores = np.empty(len(boxes), dtype=np.float32)
    for start in range(0, len(boxes), batch):
        chunk = boxes[start : start + batch]
        pixels = np.stack([to_model_pixels(work.crop(b), encoder.preprocess) for b in chunk])
        scores[start : start + len(chunk)] = encoder.encode_images(pixels) @ text_vector

    heat_small, cell = relevance_map(boxes, scores, ww, wh)
    x0, y0, x1, y1 = box_from_map(heat_small, threshold)
    # cells -> analysed pixels -> input pixels
    to_input = 1.0 / scale
    box = (
        max(0, int(math.floor(x0 * cell * to_input))),
        max(0, int(math.floor(y0 * cell * to_input))),
        min(width, int(math.ceil(min(ww, x1 * cell) * to_input))),
        min(height, int(math.ceil(min(wh, y1 * cell) * to_input))),
    )
    best = int(np.argmax(scores))
    bx = boxes[best]
    best_window = tuple(int(round(v * to_input)) for v in bx)
    heat = np.asarray(
        Image.fromarray(heat_small.astype(np.float32), "F")
        .resize((math.ceil(ww / cell) * cell, math.ceil(wh / cell) * cell), Image.NEAREST)
        .crop((0, 0, ww, wh))
        .resize((width, height), Image.BILINEAR),
        dtype=np.float32,
    )
    return LocateResult(box, float(scores[best]), whole, len(boxes), (width, height), np.clip(heat, 0, 1), best_window)


def relevance_map(boxes, scores: np.ndarray, width: int, height: int) -> tuple[np.ndarray, int]:
    """(map [rows, cols] in 0..1, cell side in pixels): the mean, over the windows covering each
    cell, of the window's score above the median window score."""
    steps = [max(1, int(round((b[2] - b[0]) * STRIDE))) for b in boxes]
    cell = max(1, min(steps))
    rows, cols = math.ceil(height / cell), math.ceil(width / cell)
    scores = np.asarray(scores, dtype=np.float64)
    gain = np.maximum(scores - np.median(scores), 0.0)
    total = np.zeros((rows + 1, cols + 1))
    count = np.zeros((rows + 1, cols + 1))
    for (x0, y0, x1, y1), g in zip(boxes, gain):
        c0, r0 = x0 // cell, y0 // cell
        c1, r1 = max(c0 + 1, math.ceil(x1 / cell)), max(r0 + 1, math.ceil(y1 / cell))
        # 2-D difference arrays: O(1) per window, one cumulative sum at the end
        for array, value in ((total, g), (count, 1.0)):
            array[r0, c0] += value
            array[r0, c1] -= value
            array[r1, c0] -= value
            array[r1, c1] += value
    total = total.cumsum(0).cumsum(1)[:rows, :cols]
    count = count.cumsum(0).cumsum(1)[:rows, :cols]
    heat = np.where(count > 0.5, total / np.maximum(count, 1.0), 0.0)
    top = heat.max()
    heat = heat / top if top > 0 else np.zeros_like(heat)
    return heat.astype(np.float32), cell


def box_from_map(heat: np.ndarray, threshold: float = THRESHOLD) -> tuple[int, int, int, int]:
    """Cell rectangle (c0, r0, c1, r1; exclusive ends) of the largest 4-connected region at or
    above ``threshold`` x max; the whole map when it is flat."""
    rows, cols = heat.shape
    if heat.max() <= 0:
        return 0, 0, cols, rows
    mask = heat >= threshold * heat.max()
    labels = np.zeros(heat.shape, dtype=np.int32)
    best, best_key = None, None
    current = 0
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    for r in range(rows):
        for c in range(cols):
            if not mask[r, c] or labels[r, c]:
                continue
            current += 1
            stack = [(r, c)]
            labels[r, c] = current
            cells = []
            while stack:
                y, x = stack.pop()
                cells.append((y, x))
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < rows and 0 <= nx < cols and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = current
                        stack.append((ny, nx))
            key = (len(cells), labels[peak] == current)
            if best_key is None or key > best_key:
                best_key = key
                ys = [p[0] for p in cells]
                xs = [p[1] for p in cells]
                best = (min(xs), min(ys), max(xs) + 1, max(ys) + 1)
    return best


def overlay(image: Image.Image, result: LocateResult, max_side: int = 1024, alpha: float = 0.5) -> Image.Image:
    """The image with the heat map blended over it (a blue-to-red colour map) and the box drawn."""
    base = image.convert("RGB")
    scale = min(1.0, max_side / max(base.size))
    if scale < 1.0:
        base = base.resize((max(1, round(base.width * scale)), max(1, round(base.height * scale))), Image.BICUBIC)
    heat = np.asarray(Image.fromarray(result.heatmap, "F").resize(base.size, Image.BILINEAR))
    colours = _colormap(np.clip(heat, 0, 1))
    blend = np.asarray(base, dtype=np.float32) * (1 - alpha) + colours * alpha
    out = Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(out)
    x0, y0, x1, y1 = (v * scale for v in result.box)
    width = max(2, round(max(out.size) / 200))
    draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=(0, 255, 0), width=width)
    return out


def _colormap(values: np.ndarray) -> np.ndarray:
    """A jet-like map: 0 blue, 0.5 green-yellow, 1 red; float [H, W, 3] in 0..255."""
    anchors = np.array([0.0, 0.35, 0.65, 1.0])
    colours = np.array([[0, 0, 160], [0, 200, 255], [255, 230, 0], [230, 0, 0]], dtype=np.float32)
    out = np.empty(values.shape + (3,), dtype=np.float32)
    for channel in range(3):
        out[..., channel] = np.interp(values, anchors, colours[:, channel])
    return out


def read_picture(path: Path) -> Image.Image:
    """The image file at ``path`` upright in RGB at full size; one that is missing, cannot be
    read or decoded is a UsageError."""
    from cbir.ingest.decode import MAX_PIXELS, BadImage, display_image

    if not path.is_file():
        raise UsageError(f"image not found: {path}")
    try:
        # fmt by the extension, as ingest records it: a RAW photo is read from its preview
        return display_image(path.read_bytes(), 1 << 30, MAX_PIXELS, fmt=path.suffix.lstrip(".").lower() or None)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except BadImage as e:
        raise UsageError(f"{path}: {e}") from None


def default_out(image_path: Path) -> Path:
    """``<stem>.locate.png`` in the current directory; never the input itself."""
    out = Path.cwd() / f"{image_path.stem}.locate.png"
    if out.resolve() == image_path.resolve():
        out = Path.cwd() / f"{image_path.stem}.locate.out.png"
    return out


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0

"""Text inside images (OCR), offline on the CPU, from the ``ocr`` extra (``pip install 'cbir[ocr]'``).

The engine is RapidOCR (the ``rapidocr`` package): PaddleOCR's PP-OCRv6 "small" text detection
and recognition networks as ONNX graphs that ship inside its wheel, run on ONNX Runtime, which
cbir depends on anyway. Every model is given by its path inside the installed package, so
nothing is ever downloaded: a fresh, offline machine reads text as soon as the extra is
installed. (The older ``rapidocr-onnxruntime`` ships its models too, but pulls the full
``opencv-python``, which needs the system's OpenGL library; ``rapidocr`` takes the headless
build.)

Reading an image runs detection (where is text?) first and recognition (what does it say?) only
on the boxes detection found, so a photo without text costs one detection pass and nothing
more. The text-line orientation classifier (which turns upside-down lines) is not run: text in
photos is rarely upside down, and it would cost a third network on every box.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from importlib import metadata, resources
from typing import Any

import numpy as np
from PIL import Image

from cbir.errors import ModelLoadError

__all__ = [
    "MAX_SIDE",
    "MIN_CONFIDENCE",
    "MISSING_EXTRA",
    "OcrEngine",
    "OcrLine",
    "text_of",
]

#: The one-line message when the ``ocr`` extra is not installed.
MISSING_EXTRA = "OCR needs the ocr extra: pip install 'cbir[ocr]'"

#: Images are downscaled so that their longer side is at most this many pixels before detection,
#: which runs at that size. Detection's cost grows with the pixels: 7.6 s for a 4000 x 3000 photo
#: against 0.3 s at 1280 x 960 and 0.06 s at 640 x 480 (2 threads on a shared 2-core machine),
#: while the recogniser reads each line at 48 px high anyway. At 1280, text drawn in a 10 px font
#: (about 1/125 of the longer side: a shop sign, a poster, a caption, a licence plate at a few
#: metres) was still read; only fine print is lost.
MAX_SIDE = 1280

#: Recognised lines whose confidence (the recogniser's mean character probability) is below
#: this are dropped. On 160 generated photos (cbir.ocr_eval, seeds 2-5) every true line scored
#: 0.92 or more (1st percentile 0.96) and the one stray read from a text-free photo 0.39; the
#: threshold sits between, low enough to keep a line with one wrong letter in a harder photo,
#: whose other words still serve keyword search.
MIN_CONFIDENCE = 0.6

#: The share of an image's width and height a box must span to be taken for the whole image.
_WHOLE = 0.9

#: The networks inside the rapidocr wheel. The orientation classifier is not run, but is named
#: too, so that no setting can send the package looking for it online.
_MODELS = {
    "Det": "PP-OCRv6_det_small.onnx",
    "Rec": "PP-OCRv6_rec_small.onnx",
    "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
}


@dataclass(frozen=True)
class OcrLine:
    """One line of text read from an image.

    ``box`` is the line's quadrilateral in the image's own pixels (not the downscaled copy):
    four ``(x, y)`` corners, clockwise from the top left of the text."""

    text: str
    confidence: float
    box: tuple[tuple[float, float], ...]

    @property
    def top(self) -> float:
        return min(y for _, y in self.box)

    @property
    def bottom(self) -> float:
        return max(y for _, y in self.box)

    @property
    def left(self) -> float:
        return min(x for x, _ in self.box)


def text_of(lines: list[OcrLine]) -> str:
    """The lines' texts in reading order: rows top to bottom (lines whose vertical extents
    overlap by more than half the smaller height share a row), each row left to right, words of
    a row joined by a space and rows by a newline."""
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda ln: (ln.top, ln.left)):
        row = rows[-1] if rows else None
        if row is not None:
            top, bottom = max(ln.top for ln in row), min(ln.bottom for ln in row)
            overlap = min(bottom, line.bottom) - max(top, line.top)
            height = min(bottom - top, line.bottom - line.top)
            if height > 0 and overlap > height / 2:
                row.append(line)
                continue
        rows.append([line])
    return "\n".join(" ".join(ln.text for ln in sorted(row, key=lambda ln: ln.left)) for row in rows)


class OcrEngine:
    """Reads the text in images. Loads its networks on the first :meth:`read`, not when made.

    ``threads``: ONNX Runtime's threads per network (default: one per physical core, as the
    CLIP encoder on ONNX Runtime uses); on a machine whose cores are busy decoding, pass fewer.
    Calls are serialised by a lock (the underlying pipeline keeps per-call state), so share one
    engine between threads only where OCR is not the bottleneck.
    """

    def __init__(
        self, threads: int | None = None, min_confidence: float = MIN_CONFIDENCE, max_side: int = MAX_SIDE
    ) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, not {threads}")
        if max_side < 32:
            raise ValueError(f"max_side must be >= 32, not {max_side}")
        self.threads = threads
        self.min_confidence = min_confidence
        self.max_side = max_side
        self._ocr: Any = None
        self._lock = threading.Lock()
        #: How many times recognition ran (once per image that had a text box): the fast path
        #: for text-free images is observable.
        self.recognitions = 0

    def _load(self) -> Any:
        """The RapidOCR pipeline over the models inside the installed package."""
        if self._ocr is not None:
            return self._ocr
        try:
            import rapidocr
            from rapidocr import RapidOCR
        except ImportError as err:
            raise ModelLoadError(MISSING_EXTRA) from err
        models = resources.files(rapidocr) / "models"
        params: dict[str, Any] = {f"{task}.model_path": str(models / name) for task, name in _MODELS.items()}
        missing = [name for name in _MODELS.values() if not (models / name).is_file()]
        if missing:  # another rapidocr than the extra's (which ships these), or a damaged install
            raise ModelLoadError(
                f"rapidocr {metadata.version('rapidocr')} does not ship the model {missing[0]}; "
                "install the ocr extra's version: pip install 'cbir[ocr]'"
            )
        threads = self.threads or _default_threads()
        params.update(
            {
                "Global.log_level": "error",  # it logs every model path, and "no text" as a warning
                "Global.use_cls": False,
                "Global.max_side_len": self.max_side,
                # Detection at the bounded size itself. Its default (the shorter side brought up to
                # 736 px) upscales small photos and pays for the invented pixels: on the generated
                # set 0.33 s a photo with text against 0.13 s, and read no better.
                "Det.limit_type": "max",
                "Det.limit_side_len": self.max_side,
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )
        self._ocr = RapidOCR(params=params)
        return self._ocr

    def load(self) -> None:
        """Check the extra is installed and make the pipeline now (a cheap check before a long
        run); the networks themselves load on first use."""
        with self._lock:
            self._load()

    def read(self, image: Image.Image) -> list[OcrLine]:
        """The lines of text in ``image`` whose confidence is at least ``min_confidence``, in
        the pipeline's order (top to bottom, then left to right; :func:`text_of` joins them).
        An image whose longer side exceeds ``max_side`` is read from a downscaled copy; the boxes
        are in the image's own pixels all the same. Any mode is read (converted to RGB)."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        scale = min(1.0, self.max_side / max(rgb.size))
        if scale < 1.0:
            size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
            rgb = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        with self._lock:
            boxes = self._detect(rgb)
            if not boxes:
                return []
            self.recognitions += 1
            read = self._recognise(rgb, boxes)
        lines = []
        for box, (text, confidence) in zip(boxes, read):
            text = " ".join(text.split())
            if text and confidence >= self.min_confidence:
                corners = tuple((x / scale, y / scale) for x, y in box)
                lines.append(OcrLine(text, confidence, corners))
        return lines

    def _detect(self, rgb: Image.Image) -> list[np.ndarray]:
        """The text boxes (4 x 2 corners, in ``rgb``'s pixels) detection finds."""
        out = self._load()(_bgr(rgb), use_det=True, use_cls=False, use_rec=False)
        boxes = getattr(out, "boxes", None)
        found = [] if boxes is None else [np.asarray(b, dtype=np.float32) for b in boxes]
        return [b for b in found if not _whole_image(b, rgb.size)]

    def _recognise(self, rgb: Image.Image, boxes: list[np.ndarray]) -> list[tuple[str, float]]:
        """(text, confidence) of each box, in order; the line is cut out of ``rgb`` straightened."""
        ocr = self._load()
        read = []
        for box in boxes:
            out = ocr(_bgr(_crop(rgb, box)), use_det=False, use_cls=False, use_rec=True)
            texts, scores = getattr(out, "txts", None), getattr(out, "scores", None)
            read.append((str(texts[0]), float(scores[0])) if texts and scores else ("", 0.0))
        return read


def _whole_image(box: np.ndarray, size: tuple[int, int]) -> bool:
    """Whether ``box`` spans nearly all of an image of ``size`` (at least ``_WHOLE`` of its width
    and of its height). The PP-OCRv6 small detector answers a photo without text with one such box
    (on all 10 text-free photos of the generated set, and on plain colours), and a line of text is
    never that tall; without this, every text-free photo would pay for recognition and yield
    stray letters. A photo cropped tight around one word keeps its box: the word's box leaves
    a margin (e.g. 184 x 39 px of a 300 x 60 crop)."""
    w, h = size
    spans = box.max(axis=0) - box.min(axis=0)
    return bool(spans[0] >= _WHOLE * w and spans[1] >= _WHOLE * h)


def _bgr(rgb: Image.Image) -> np.ndarray:
    """The pixels in the channel order the networks were trained on (OpenCV's BGR)."""
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


def _crop(rgb: Image.Image, box: np.ndarray) -> Image.Image:
    """The quadrilateral ``box`` (clockwise from top left) cut out as an upright rectangle;
    a box much taller than wide (vertical text) is turned to read left to right."""
    tl, tr, br, bl = (box[i] for i in range(4))
    width = max(1, round(float(max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl)))))
    height = max(1, round(float(max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr)))))
    # PIL's QUAD takes the source corners upper left, lower left, lower right, upper right.
    quad = (*tl, *bl, *br, *tr)
    line = rgb.transform((width, height), Image.Transform.QUAD, tuple(float(v) for v in quad), Image.Resampling.BICUBIC)
    if height >= 1.5 * width:
        line = line.transpose(Image.Transpose.ROTATE_90)
    return line


def _default_threads() -> int:
    from cbir.encode.onnx_runtime import default_threads

    return default_threads()


_engines: dict[int, OcrEngine] = {}  # pid -> the engine of that process (a forked worker makes its own)


def read_text(image: Image.Image) -> str:
    """The text inside ``image`` ("" for none), by this process's engine: one thread, since
    every ingest decode worker runs one."""
    engine = _engines.get(os.getpid())
    if engine is None:
        _engines.clear()  # an engine inherited from the parent process is not used
        engine = _engines[os.getpid()] = OcrEngine(threads=1)
    return text_of(engine.read(image))

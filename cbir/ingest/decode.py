"""Reading one image file: hash, metadata, decode and resize to model input. Runs in worker
processes, so it imports no torch; the arithmetic matches open_clip's eval transform."""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from cbir.encode.spec import Preprocess
from cbir.ingest.exif import exif_fields, exif_metadata
from cbir.ingest.limits import (
    MAX_DECODE_BYTES,
    BadImage,
    check_decode_memory,
    read_image_file,
    reduce_factor,
    without_oversized_png_text,
)
from cbir.ingest.media import decode_container, extra_installed, is_container_name
from cbir.ingest.pixels import UPRIGHT, to_model_pixels, to_rgb
from cbir.ingest.raw import RAW_EXTENSIONS, is_raw_name, raw_image
from cbir.ingest.texts import embedded_texts
from cbir.ingest.video import EVERY, MAX_FRAMES

if TYPE_CHECKING:
    import torch

SUPPORTED_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
    | RAW_EXTENSIONS  # through LibRaw (cbir.ingest.raw), chosen by name: most are TIFFs to Pillow
)


def _register_heif() -> bool:
    """HEIC/HEIF (iPhone photos) decode through the pillow-heif plugin when it is installed."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


HEIF = _register_heif()
# Only the formats photos come in are tried: Pillow's other decoders (EPS, FITS, PSD, ...) are a
# larger attack surface than cbir needs, and a file in them is "not an image" here.
Image.init()
FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF") if f in Image.OPEN)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1")
# Refuse images above this many pixels before decoding them (decompression bombs). 2x Pillow's
# default warning limit: ~179 MP, above any camera sold today.
MAX_PIXELS = 2 * 89_478_485


# Reasons a file could not even be read. Unlike a bad image they say nothing about the content
# (permissions fixed, a disk remounted): such a file is tried again on every run.
VANISHED = "vanished before it could be read"
UNREADABLE = "unreadable"


def read_failed(reason: str) -> bool:
    """Whether a skip says nothing about the file, which is tried again: a read that failed, or
    a RAW photo skipped for want of the media extra, once the extra is installed."""
    return reason == VANISHED or reason.startswith(UNREADABLE + ":") or extra_installed(reason)


# The OCR engine whose reading images.ocr_engine records (cbir.ocr: RapidOCR's PP-OCRv6 small
# networks, read at up to cbir.ocr.MAX_SIDE pixels).
OCR_ENGINE = "rapidocr PP-OCRv6 small"


@dataclass(frozen=True)
class FileTask:
    path: str  # relative to the root (what is stored)
    abspath: str
    size: int
    mtime_ns: int
    offset: int | None = None  # the image is `size` bytes at this offset of `abspath` (a tar member)
    ocr: bool = False  # read the text inside the image when its content is new to the library
    # ... and even when its content is known: the library's image at this path was never read by OCR
    ocr_stored: bool = False
    # a video's frames: at least one every this many seconds, at most this many (cbir.ingest.video)
    frame_every: float = EVERY
    max_frames: int = MAX_FRAMES


@dataclass
class Decoded:
    task: FileTask
    content_hash: str = ""
    # uint8 [S, S, 3] (a tensor on the model's device once decoded there); None when skipped or not needed
    pixels: np.ndarray | torch.Tensor | None = None
    width: int = 0
    height: int = 0
    format: str = ""
    taken_at: datetime | None = None
    camera: str | None = None
    texts: tuple[str, ...] = ()  # descriptions embedded in the file (EXIF, XMP, PNG text)
    jpeg: bytes | None = None  # a JPEG left for the model's device to decode (pixels is None)
    error: str | None = None
    read_seconds: float = 0.0
    decode_seconds: float = 0.0
    ocr_text: str | None = None  # the text OCR read inside the image ("" for none); None: not read
    ocr_error: str | None = None  # why OCR failed on it (the image itself is still used)
    ocr_seconds: float = 0.0
    # PDFs and videos (cbir.ingest.media): True for the file itself, delivered after its pages or
    # frames; the file's SHA-256 on it and on each of them; a video's length; a page's text layer
    container: bool = False
    items: int = 0  # on the file itself: how many pages or frames it delivered
    container_hash: str | None = None
    duration: float | None = None
    document_text: str = ""


def why(e: BaseException) -> str:
    """An exception's message as one line (Pillow's are, mostly), never empty."""
    return " ".join(str(e).split()) or type(e).__name__


def _header_error(data: bytes) -> str | None:
    """Why Pillow refused a file that one of FORMATS claims by its signature (a corrupt or
    unsupported variant, not "not an image"); None when none claims it."""
    prefix = data[:16]  # what Image.open shows each plugin's accept()
    for fmt in FORMATS:
        factory, accept = Image.OPEN[fmt]
        claimed = accept(prefix) if accept else False
        if not claimed or isinstance(claimed, str):
            continue
        try:  # again, to learn why: Image.open drops the plugin's exception
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                factory(io.BytesIO(data), "").close()  # as Image.open calls it
        except Exception as e:
            return f"corrupt or unsupported {fmt} image: {why(e)}"
        return f"corrupt or unsupported {fmt} image"
    return None


JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open (not decode) an image of an allowed format, refusing one over ``max_pixels`` by its
    header alone. Call it inside ``warnings.catch_warnings()``: Pillow's own bomb warning is
    silenced, since the check here is the stricter one."""
    if not data:
        raise BadImage("empty file")
    data = without_oversized_png_text(data)
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    # Broken EXIF/TIFF tags ("Corrupt EXIF data"): Pillow skips them; only their metadata is lost.
    warnings.filterwarnings("ignore", module="PIL.TiffImagePlugin")
    image = Image.open(io.BytesIO(data), formats=FORMATS)
    w, h = image.size
    if w * h > max_pixels:
        raise BadImage(
            f"refused: {w}x{h} is {w * h:,} pixels, over the {max_pixels:,} limit (possible decompression bomb)"
        )
    return image


def open_image(
    data: bytes,
    pp: Preprocess,
    max_pixels: int = MAX_PIXELS,
    draft: bool = True,
    pixels: bool = True,
    max_bytes: int = MAX_DECODE_BYTES,
):
    """Decode bytes to (model pixels, width, height, format, taken_at, camera, embedded texts) or
    raise BadImage. ``draft=False`` decodes JPEGs at full size (for comparing, in cbir bench);
    ``pixels=False`` reads only a JPEG's header and metadata (pixels None: decoded elsewhere).
    An image needing more than ``max_bytes`` of memory to decode is refused before decoding."""
    return _decode(data, pp, max_pixels, draft, pixels, max_bytes)[:7]


def upright_picture(
    data: bytes, side: int, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_DECODE_BYTES
) -> Image.Image:
    """The picture as displayed (EXIF orientation applied), RGB, decoded (JPEG draft, box
    reduction) only as large as a longer side of ``side`` needs, with ingest's format, bomb and
    memory checks (a query's --crop cuts a box of it; thumbnails are made from it)."""
    return _decode(data, _NO_MODEL, max_pixels, max_bytes=max_bytes, ocr_side=side, model=False)[7]


_NO_MODEL = Preprocess(size=1)  # upright_picture's: no model pixels are made


def _ocr_target(size: tuple[int, int], side: int) -> tuple[int, int]:
    """The size an image of ``size`` is read by OCR at: its longer side at most ``side``."""
    w, h = size
    longest = max(w, h)
    if longest <= side:
        return w, h
    return max(1, -(-w * side // longest)), max(1, -(-h * side // longest))


def _decode(
    data: bytes,
    pp: Preprocess,
    max_pixels: int = MAX_PIXELS,
    draft: bool = True,
    pixels: bool = True,
    max_bytes: int = MAX_DECODE_BYTES,
    ocr_side: int | None = None,
    model: bool = True,
):
    """open_image's tuple, then the upright RGB image for OCR: with ``ocr_side``, the image is
    decoded (drafted and reduced) only down to what both the model and OCR (longer side up to
    ``ocr_side``) need, and that image is returned too; else None. ``model=False``: OCR only,
    no model pixels (None)."""
    compression = None  # a TIFF's, for the reason when libtiff cannot decode it
    try:
        with warnings.catch_warnings():
            image = _open_checked(data, max_pixels)
            w, h = image.size
            fmt = (image.format or "unknown").lower()
            if fmt == "tiff":
                compression = image.info.get("compression")
            if pixels or fmt != "jpeg":
                if ocr_side is not None:
                    factor = _draft_for_ocr(image, pp, ocr_side, draft, model)
                else:
                    if draft and fmt in ("jpeg", "mpo"):
                        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the model
                        # input: far less work for camera-size photos, and the result is downscaled anyway.
                        image.draft("RGB", (pp.size, pp.size))
                    factor = reduce_factor(image, pp.size)
                # before anything loads the pixels (a PNG's EXIF may follow them)
                check_decode_memory(image, factor, (w, h), max_bytes)
            taken, camera, orientation = exif_metadata(image)
            if not pixels and fmt == "jpeg":  # JPEG metadata sits in markers before the pixels
                sideways = orientation in (5, 6, 7, 8)
                texts = tuple(embedded_texts(image, camera))
                return None, *((h, w) if sideways else (w, h)), fmt, taken, camera, texts, None
            image.load()  # first frame of animations
            texts = tuple(embedded_texts(image, camera))  # PNG text may follow the pixel data
            image = to_rgb(image, factor)  # reduced first, so that turning it copies little
            if orientation in UPRIGHT:
                image = image.transpose(UPRIGHT[orientation])
    except BadImage:
        raise
    except UnidentifiedImageError:
        if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS and "HEIF" not in FORMATS:
            raise BadImage(
                "HEIC/HEIF photo: unsupported without the pillow-heif plugin (pip install pillow-heif)"
            ) from None
        raise BadImage(_header_error(data) or "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"refused: {why(e)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if compression not in (None, "raw") and str(e).startswith("decoder error"):  # libtiff's
            raise BadImage(
                f"corrupt or unsupported TIFF image: libtiff {e} on its {compression} compression "
                "(corrupt data, or a codec this Pillow build lacks)"
            ) from None
        raise BadImage(f"corrupt or truncated image: {why(e)}") from None
    except MemoryError:
        raise BadImage("image too large to decode in memory") from None
    if image.size[0] < 1 or image.size[1] < 1:
        raise BadImage("image has no pixels")
    if orientation in (5, 6, 7, 8):  # stored sideways: record the size as displayed
        w, h = h, w
    model_pixels = to_model_pixels(image, pp) if model else None
    return model_pixels, w, h, fmt, taken, camera, texts, image if ocr_side is not None else None


def _draft_for_ocr(image: Image.Image, pp: Preprocess, side: int, draft: bool, model: bool) -> int:
    """Draft a JPEG to, and return the reduce factor for, the largest of what the model needs
    (with ``model``: the shorter side at least ``pp.size``) and what OCR reads (the longer side
    up to ``side``)."""
    tw, th = _ocr_target(image.size, side)
    if model:
        tw, th = max(tw, pp.size), max(th, pp.size)
    if draft and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (tw, th))
    factor = reduce_factor(image, side, longest=True)
    return min(factor, reduce_factor(image, pp.size)) if model else factor


def decode_file(
    task: FileTask, pp: Preprocess, known_hashes=frozenset(), max_pixels=MAX_PIXELS, jpeg_elsewhere: bool = False
):
    """Read, hash and (unless the content is already in the library) decode one file; with
    ``jpeg_elsewhere`` a JPEG's pixels are left to the model's device (``Decoded.jpeg``)."""
    result = Decoded(task)
    start = time.perf_counter()
    try:
        data = read_image_file(task.abspath, task.offset, task.size if task.offset is not None else None)
    except FileNotFoundError:
        result.error = VANISHED
        return result
    except OSError as e:
        result.error = f"{UNREADABLE}: {e.strerror or e}"
        return result
    except BadImage as e:
        result.error = str(e)
        return result
    result.content_hash = hashlib.sha256(data).hexdigest()
    result.read_seconds = time.perf_counter() - start
    known = result.content_hash in known_hashes
    if known and not (task.ocr and task.ocr_stored):
        return result  # moved, renamed, copied or touched: the stored vector is reused
    if is_raw_name(task.path):
        return _decode_raw(result, data, pp, task.ocr, model=not known)
    if task.ocr:
        return _decode_with_ocr(result, data, pp, max_pixels, model=not known)
    start = time.perf_counter()
    try:
        (
            result.pixels,
            result.width,
            result.height,
            result.format,
            result.taken_at,
            result.camera,
            result.texts,
        ) = open_image(data, pp, max_pixels, pixels=not (jpeg_elsewhere and is_jpeg(data)))
        if result.pixels is None:
            result.jpeg = data
    except BadImage as e:
        result.error = str(e)
    result.decode_seconds = time.perf_counter() - start
    return result


def _decode_raw(result: Decoded, data: bytes, pp: Preprocess, ocr: bool, model: bool) -> Decoded:
    """decode_file's decoding of a RAW photo (cbir.ingest.raw: its preview, else its sensor data
    at half size), recorded under its extension as format; with ``ocr`` at the size OCR reads."""
    start = time.perf_counter()
    try:
        if ocr:
            from cbir.ocr import MAX_SIDE, read_text

            raw = raw_image(data, MAX_SIDE, longest=True)
        else:
            raw = raw_image(data, pp.size)
    except BadImage as e:
        result.error = str(e)
        result.decode_seconds = time.perf_counter() - start
        return result
    result.pixels = to_model_pixels(raw.image, pp) if model else None
    result.width, result.height = raw.width, raw.height
    result.format = os.path.splitext(result.task.path)[1][1:].lower()
    result.taken_at, result.camera, _ = exif_fields(raw.exif)
    result.decode_seconds = time.perf_counter() - start
    if ocr:
        start = time.perf_counter()
        try:
            result.ocr_text = read_text(raw.image)
        except Exception as e:  # noqa: BLE001  (as in _decode_with_ocr: it costs only the text)
            result.ocr_error = why(e)
        result.ocr_seconds = time.perf_counter() - start
    return result


def _decode_with_ocr(result: Decoded, data: bytes, pp: Preprocess, max_pixels: int, model: bool) -> Decoded:
    """decode_file's decoding when the image's text is to be read: decoded once, at the size OCR
    needs (always here, never left to the model's device), read, then brought to the model's
    pixels (unless ``model`` is False: content the library holds, whose vector is reused). An
    OCR failure leaves the image without text (``ocr_error``), never without its vector."""
    from cbir.ocr import MAX_SIDE, read_text

    start = time.perf_counter()
    try:
        decoded = _decode(data, pp, max_pixels, ocr_side=MAX_SIDE, model=model)
    except BadImage as e:
        result.error = str(e)
        result.decode_seconds = time.perf_counter() - start
        return result
    (result.pixels, result.width, result.height, result.format, result.taken_at, result.camera, result.texts) = decoded[
        :7
    ]
    result.decode_seconds = time.perf_counter() - start
    start = time.perf_counter()
    try:
        result.ocr_text = read_text(decoded[7])
    except Exception as e:  # noqa: BLE001  (whatever the OCR pipeline raises costs only the text)
        result.ocr_error = why(e)
    result.ocr_seconds = time.perf_counter() - start
    return result


# -- worker-process entry points ---------------------------------------------------------------
_worker: dict = {}


def init_worker(pp: Preprocess, known_hashes: frozenset, max_pixels: int, jpeg_elsewhere: bool = False) -> None:
    # Decoders are single-threaded per process; keep BLAS/OpenMP from oversubscribing cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _worker.update(pp=pp, known=known_hashes, max_pixels=max_pixels, jpeg_elsewhere=jpeg_elsewhere)


def decode_task(
    task: FileTask, pp: Preprocess, known=frozenset(), max_pixels=MAX_PIXELS, jpeg_elsewhere: bool = False
) -> list[Decoded]:
    """What reading one file delivers: the file decoded (decode_file), or a PDF's pages or a
    video's frames followed by the file itself (cbir.ingest.media)."""
    if is_container_name(task.path):
        return decode_container(task, pp, known)
    return [decode_file(task, pp, known, max_pixels, jpeg_elsewhere)]


def decode_chunk(tasks: list[FileTask]) -> list[Decoded]:
    w = _worker
    return [d for t in tasks for d in decode_task(t, w["pp"], w["known"], w["max_pixels"], w["jpeg_elsewhere"])]


def display_image(
    data: bytes,
    longest_side: int,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_DECODE_BYTES,
    fmt: str | None = None,
) -> Image.Image:
    """An image to show people (cbir serve's thumbnails): upright, RGB, at most ``longest_side``
    pixels on its longest side, decoded as ingest decodes (format, decompression-bomb and memory
    checks; JPEG draft and box reduction down to that side). ``fmt``: the format ingest
    recorded: a RAW photo's (its extension) shows its preview."""
    if fmt is not None and f".{fmt}" in RAW_EXTENSIONS:
        image = raw_image(data, longest_side, max_bytes, longest=True, max_pixels=max_pixels).image
    else:
        image = upright_picture(data, longest_side, max_pixels, max_bytes)
    image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    return image

"""RAW camera photos (DNG, CR2, NEF, ARW, ...) through LibRaw (rawpy, the media extra).

The preview the camera embedded is used when it covers the size asked for: a JPEG decoded like
any other (drafted, with the same decode-memory check), as fast as an ordinary photo. Only a
RAW without a usable preview has its sensor data demosaiced, at half size, and only once the
memory that takes, worked out from the sizes LibRaw reads from the header, is under the decode
limit. Pillow, numpy and cbir.ingest.limits only; rawpy is imported when a RAW is read, so a
plain install records such files as skipped, naming the extra to install."""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import io
import os
import warnings
from dataclasses import dataclass

from PIL import Image

from cbir.ingest.limits import MAX_DECODE_BYTES, BadImage, check_decode_memory, reduce_factor
from cbir.units import format_bytes

# The RAW formats LibRaw reads (its list of cameras is per format; these are their extensions).
RAW_EXTENSIONS = frozenset(
    {
        ".dng", ".arw", ".srf", ".sr2", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".orf", ".rw2", ".raf",
        ".pef", ".srw", ".rwl", ".3fr", ".fff", ".iiq", ".erf", ".kdc", ".dcr", ".mrw", ".mos", ".x3f",
    }
)  # fmt: skip
# The skip reason of a RAW file on an install without rawpy (retried once it is installed).
NEEDS_MEDIA = "RAW photo: reading it needs the media extra: pip install 'cbir[media]'"
# Pixels a preview may declare before it is not even opened (a bomb), as for other images.
_MAX_PREVIEW_PIXELS = 2 * 89_478_485

# LibRaw's flip (dcraw's: 1 mirror, 2 upside down, 4 transposed) -> the transposition that
# shows the picture upright. A demosaiced image comes out upright already; a preview does not.
_UPRIGHT = {
    1: Image.Transpose.FLIP_LEFT_RIGHT,
    2: Image.Transpose.FLIP_TOP_BOTTOM,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.TRANSPOSE,
    5: Image.Transpose.ROTATE_90,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
}
# What decoding the sensor data at half size holds at once, per pixel: the raw mosaic (2 bytes a
# sensor pixel) and, per half-size pixel, LibRaw's 4 x 16-bit working image (8), its 8-bit
# output (3) and rawpy's copy of it (3). Measured: 111 MB for 24 MP, against 132 MB estimated.
_RAW_BYTES, _HALF_BYTES = 2, 14


def is_raw_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in RAW_EXTENSIONS


def media_installed() -> bool:
    return importlib.util.find_spec("rawpy") is not None


@dataclass(frozen=True)
class RawImage:
    image: Image.Image  # RGB, upright: the preview, or the sensor data at half size
    width: int  # the photo's size as displayed (the sensor's visible area, turned upright)
    height: int
    exif: Image.Exif  # the preview's EXIF, else the RAW container's (TIFF-based RAWs); may be empty
    source: str  # "preview" or "raw"


def raw_image(
    data: bytes,
    side: int,
    max_bytes: int = MAX_DECODE_BYTES,
    longest: bool = False,
    max_pixels: int = _MAX_PREVIEW_PIXELS,
) -> RawImage:
    """The picture of a RAW file, with at least ``side`` pixels on its shortest side (on its
    longest with ``longest``) where the file has them: its embedded preview when that is big
    enough, else its sensor data demosaiced at half size. Raises BadImage with a one-line reason
    (the media extra missing, LibRaw refusing the file, the decoding over ``max_bytes``)."""
    try:
        import rawpy
    except ImportError:
        raise BadImage(NEEDS_MEDIA) from None
    _one_openmp_thread(rawpy)
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            sizes = raw.sizes
            flip = sizes.flip if sizes.flip in _UPRIGHT else 0
            w, h = (sizes.height, sizes.width) if flip & 4 else (sizes.width, sizes.height)
            preview = _preview(raw, rawpy, side, longest, max_bytes, max_pixels)
            if preview is not None:
                image, exif = preview
                if flip:
                    image = image.transpose(_UPRIGHT[flip])
                source = "preview"
            else:
                half = -(-sizes.width // 2) * -(-sizes.height // 2)
                needed = sizes.raw_width * sizes.raw_height * _RAW_BYTES + half * _HALF_BYTES
                if needed > max_bytes:
                    raise BadImage(
                        f"refused: a {w}x{h} RAW photo without a usable preview needs {format_bytes(needed)} "
                        f"to decode, over the {format_bytes(max_bytes)} limit"
                    )
                array = raw.postprocess(half_size=True, use_camera_wb=True, no_auto_bright=False, output_bps=8)
                image, exif, source = Image.fromarray(array), Image.Exif(), "raw"
                del array
            if not any(exif.get(tag) for tag in (271, 272, 306)):  # no make, model, date: the container's
                exif = _container_exif(data)
    except rawpy.LibRawError as e:
        raise BadImage(f"corrupt or unsupported RAW photo: LibRaw: {_libraw_why(e)}") from None
    except MemoryError:
        raise BadImage("RAW photo too large to decode in memory") from None
    if image.mode != "RGB":
        image = image.convert("RGB")
    return RawImage(image, w, h, exif, source)


def _preview(raw, rawpy, side: int, longest: bool, max_bytes: int, max_pixels: int):
    """(RGB image as stored, its EXIF) of the embedded preview when it covers ``side``, else None
    (none, too small, or broken: the sensor data is decoded instead)."""
    try:
        thumb = raw.extract_thumb()
    except rawpy.LibRawError:  # none, an unsupported kind, or unreadable
        return None
    if thumb.format == rawpy.ThumbFormat.BITMAP:
        image = Image.fromarray(thumb.data)
        return (image, Image.Exif()) if _covers(image.size, side, longest) else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", module="PIL.TiffImagePlugin")  # broken EXIF tags
            image = Image.open(io.BytesIO(thumb.data), formats=("JPEG",))
            full = image.size
            if full[0] * full[1] > max_pixels or not _covers(full, side, longest):
                return None
            image.draft("RGB", (side, side))  # libjpeg at 1/2..1/8 scale when that still covers side
            factor = reduce_factor(image, side, longest)
            check_decode_memory(image, factor, full, max_bytes)
            exif = image.getexif()
            image.load()
            image = image.convert("RGB")
            return (image.reduce(factor) if factor > 1 else image), exif
    except (BadImage, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None


def _covers(size: tuple[int, int], side: int, longest: bool) -> bool:
    return (max(size) if longest else min(size)) >= side


def _container_exif(data: bytes) -> Image.Exif:
    """The EXIF of a TIFF-based RAW's first directory (DNG, NEF, CR2, ARW, PEF, ...): camera and
    date when the preview has none; empty for the others (CR3, RAF, ORF, RW2, ...)."""
    exif = Image.Exif()
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", module="PIL.TiffImagePlugin")
                exif.load(data)
        except Exception:  # broken tags cost the metadata, never the image
            return Image.Exif()
    return exif


def _libraw_why(e: Exception) -> str:
    """LibRaw's message (rawpy passes it as bytes) as one line."""
    message = e.args[0] if e.args else ""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return " ".join(str(message).split()) or type(e).__name__


_openmp: dict = {}  # the OpenMP runtime rawpy's wheel bundles ("lib": its CDLL, or None)


def _one_openmp_thread(rawpy) -> None:
    """LibRaw in rawpy's wheels runs parts of its processing on OpenMP threads, and GNU OpenMP's
    pool is not fork-safe: decode workers are forked (cbir.ingest.workers), possibly from a
    process that decoded RAWs itself (cbir watch), where a child can hang in it (not reproduced
    here; a guard). Each decoding thread asks for one
    OpenMP thread (decoding runs in parallel in worker processes anyway)."""
    if "lib" not in _openmp:
        folder = os.path.join(os.path.dirname(os.path.dirname(rawpy.__file__)), "rawpy.libs")
        found = sorted(glob.glob(os.path.join(folder, "libgomp*.so*")))
        try:
            _openmp["lib"] = ctypes.CDLL(found[0]) if found else None
        except OSError:
            _openmp["lib"] = None
    if _openmp["lib"] is not None:
        _openmp["lib"].omp_set_num_threads(1)  # per thread: its own setting

"""What one image may cost before it is decoded: its file (a regular file, a size cap), the
memory its decoding needs (worked out from the header), and the PNG text chunks Pillow would
refuse the whole image for. Pillow, the standard library and the cbir.units and cbir.fsutil
leaves only: runs in decode workers."""

from __future__ import annotations

import errno
import io
import os
import struct
import zlib
from collections.abc import Callable

from PIL import Image, JpegImagePlugin, PngImagePlugin

from cbir.fsutil import special_file
from cbir.units import format_bytes

# Pixels are not memory: a 300 KB PNG can declare 169 MP of 16-bit greyscale. Together these bound
# what one image costs, measured against a `cbir search --image` that already holds ~0.9 GB
# (torch, faiss, the model) and must stay under 1.5 GB:
# - a file over MAX_FILE_BYTES is refused before it is read (it is read whole, to be hashed);
#   the largest camera JPEGs (~150 MP) are well under 100 MB.
# - an image whose decoding needs more than MAX_DECODE_BYTES, as worked out from its header
#   (mode, size, progressive JPEG coefficients), is refused before it is decoded. JPEGs are
#   decoded at reduced size (draft), so a 179 MP camera photo needs ~12 MB; a PNG or TIFF is
#   decoded whole: up to ~75 MP of RGB (Pillow keeps 4 bytes a pixel), 150 MP of 16-bit grey.
MAX_FILE_BYTES = 200_000_000
MAX_DECODE_BYTES = 300_000_000
# A decoded image over this size is box-reduced (in strips) to twice the model's input before
# it is converted and resized, so that conversions never copy it whole. Smaller ones get the
# exact open_clip transform.
REDUCE_ABOVE_BYTES = 64 * 2**20


class BadImage(Exception):
    """The file cannot be used; the message is the reason recorded for it."""


# Bytes a pixel takes in Pillow's memory, by mode (RGB is stored in 4); unlisted modes take 4.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_MODE_NAMES = {
    "1": "1-bit",
    "L": "greyscale",
    "P": "palette",
    "LA": "greyscale+alpha",
    "I": "32-bit greyscale",
    "F": "32-bit float",
    "I;16": "16-bit greyscale",
    "I;16B": "16-bit greyscale",
    "I;16L": "16-bit greyscale",
}


def reduce_factor(image: Image.Image, side: int, longest: bool = False) -> int:
    """How many times a big decoded image can be box-reduced and keep its shortest (or longest)
    side at least twice ``side``, the size it is going to; 1 for an image not worth reducing."""
    w, h = image.size
    if w * h * _PIXEL_BYTES.get(image.mode, 4) <= REDUCE_ABOVE_BYTES:
        return 1
    return max(1, (max(w, h) if longest else min(w, h)) // (2 * max(1, side)))


def check_decode_memory(image: Image.Image, factor: int, full_size: tuple[int, int], max_bytes: int) -> None:
    """Refuse, from its header, an image whose decoding would need more than ``max_bytes``: the
    pixels as Pillow holds them (after any draft), the codec's own buffers, and the RGB copy at
    the reduced size."""
    w, h = image.size
    needed = w * h * _PIXEL_BYTES.get(image.mode, 4)
    if image.format in ("AVIF", "HEIF"):
        needed *= 2  # decoded by their own library into a buffer that Pillow then copies
    if isinstance(image, JpegImagePlugin.JpegImageFile) and image.info.get("progressive") and image.layer:
        # JPEG and MPO: libjpeg holds a progressive JPEG's DCT coefficients (2 bytes each) at full
        # size, even when the draft decodes it at 1/8 of that
        fw, fh = full_size
        hmax = max(c[1] for c in image.layer) or 1
        vmax = max(c[2] for c in image.layer) or 1
        needed += sum(fw * fh * c[1] * c[2] * 2 // (hmax * vmax) for c in image.layer)
    needed += -(-w // factor) * -(-h // factor) * 4
    if needed > max_bytes:
        fw, fh = full_size
        kind = " ".join(filter(None, (_MODE_NAMES.get(image.mode, image.mode), image.format)))
        raise BadImage(
            f"refused: a {fw}x{fh} {kind} image needs {format_bytes(needed)} to decode, over the "
            f"{format_bytes(max_bytes)} limit (possible decompression bomb)"
        )


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def _png_text_size(kind: bytes, data: bytes, start: int, end: int) -> int | None:
    """How long the text of the PNG text chunk at data[start:end] is once decompressed, or None
    when it is over Pillow's MAX_TEXT_CHUNK (decompressed no further than that)."""
    limit = PngImagePlugin.MAX_TEXT_CHUNK
    key_end = data.find(b"\0", start, end)  # keyword, NUL, then the text (zTXt: method, text)
    compressed = None
    if kind == b"zTXt" and key_end >= 0:
        compressed = memoryview(data)[key_end + 2 : end]
    elif kind == b"iTXt" and key_end >= 0 and data[key_end + 1 : key_end + 2] == b"\1":
        # compressed flag, method, language NUL translated keyword NUL, then the text
        language_end = data.find(b"\0", key_end + 3, end)
        keyword_end = data.find(b"\0", language_end + 1, end) if language_end >= 0 else -1
        if keyword_end >= 0:
            compressed = memoryview(data)[keyword_end + 1 : end]
    if compressed is None:
        return end - start if end - start <= limit else None
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(compressed, limit)
    except zlib.error:
        return 0  # Pillow reads a corrupt one as empty
    return None if inflater.unconsumed_tail else len(text)


def without_oversized_png_text(data: bytes) -> bytes:
    """A PNG without the text chunks Pillow would refuse the whole image for (one decompressing
    past MAX_TEXT_CHUNK, or all together past MAX_TEXT_MEMORY): the image and its other texts
    are kept. Other data is returned as it is."""
    if not data.startswith(PNG_MAGIC):
        return data
    view = memoryview(data)
    kept, start, pos, total = [], 0, len(PNG_MAGIC), 0
    budget = PngImagePlugin.MAX_TEXT_MEMORY // 2
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if kind in _PNG_TEXT_CHUNKS and end <= len(data):
            size = _png_text_size(kind, data, pos + 8, pos + 8 + length)
            if size is None or total + size > budget:
                kept.append(view[start:pos])
                start = end
            else:
                total += size
        if kind == b"IEND":
            break
        pos = end
    if start == 0:
        return data
    return b"".join([*kept, view[start:]])


def _open_nonblocking(path, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def open_regular(path: str | os.PathLike, check: Callable[[os.stat_result], None] | None = None) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file (and passes ``check``), else BadImage
    (a folder: IsADirectoryError), without ever blocking on a FIFO."""

    def regular(st: os.stat_result) -> None:
        kind = special_file(st.st_mode)
        if kind == "a folder":
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if kind:
            raise BadImage(f"not a regular file: {kind}")
        if check is not None:
            check(st)

    regular(os.stat(path))  # first by name: opening a socket fails, a FIFO blocks
    # Non-blocking, and checked again once open: the path may have been swapped in between.
    f = open(path, "rb", opener=_open_nonblocking)
    try:
        regular(os.fstat(f.fileno()))
    except BaseException:
        f.close()
        raise
    return f


def read_image_file(
    path: str | os.PathLike, offset: int | None = None, size: int | None = None, max_bytes: int = MAX_FILE_BYTES
) -> bytes:
    """The bytes of an image file, or the ``size`` bytes at ``offset`` in it (a tar member).
    Anything but a regular file (a FIFO would block the reader, /dev/zero never ends) and a file
    over ``max_bytes`` are refused with BadImage before a byte is read; a folder raises
    IsADirectoryError, a file that cannot be read OSError."""
    if (offset is None) != (size is None):
        raise ValueError("read_image_file: give offset and size together, or neither")

    def check(st: os.stat_result) -> None:
        length = st.st_size if size is None else size
        if length > max_bytes:
            raise BadImage(
                f"refused: the file is {length:,} bytes, over the {format_bytes(max_bytes)} limit for an image"
            )

    with open_regular(path, check) as f:
        if offset is None:
            data = f.read(max_bytes + 1)
            if len(data) > max_bytes:  # it grew since
                raise BadImage(f"refused: the file is over the {format_bytes(max_bytes)} limit for an image")
            return data
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{path} ends before the image does (truncated?)")
    return data

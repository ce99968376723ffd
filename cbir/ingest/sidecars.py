"""Caption files beside images ("IMG_1.jpg.txt" or "IMG_1.txt"): which file belongs to which
image, and reading one (a whole file is one caption, as in image-caption datasets)."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from cbir.ingest.texts import plain_text
from cbir.units import format_bytes

SIDECAR_SUFFIX = ".txt"


class SidecarError(Exception):
    """A caption file cannot be used; the message is the reason recorded for the user."""


def sidecar_candidates(image_rel_path: str) -> tuple[str, str]:
    """Caption files that may belong to an image, preferred first: "dir/IMG_1.jpg.txt" (names
    the exact image) and "dir/IMG_1.txt" (the usual layout of image-caption datasets)."""
    stem = posixpath.splitext(image_rel_path)[0]
    return image_rel_path + SIDECAR_SUFFIX, stem + SIDECAR_SUFFIX


def find_sidecar(root: str | os.PathLike, image_rel_path: str) -> str | None:
    """The relative path of the first caption file that exists for an image, or None."""
    for candidate in sidecar_candidates(image_rel_path):
        if (Path(root) / candidate).is_file():
            return candidate
    return None


def read_sidecar(path: str | os.PathLike, max_bytes: int = 64 * 1024) -> str:
    """The caption in a sidecar file, whitespace (newlines included) collapsed: the whole file
    is ONE caption, as in caption datasets. "" for an empty or blank file.

    Accepts UTF-8 (with or without a BOM), UTF-16 and UTF-32 with a BOM. Raises SidecarError
    with a one-line reason for anything else, a file over ``max_bytes`` or an unreadable file."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise SidecarError("caption file vanished before it could be read") from None
    except OSError as e:
        raise SidecarError(f"caption file unreadable: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise SidecarError(f"caption file is over {format_bytes(max_bytes)}")
    for bom, charset in (
        (b"\xff\xfe\x00\x00", "utf-32"),  # before UTF-16: its BOM starts the same way
        (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"),
    ):
        if data.startswith(bom):
            try:
                text = data.decode(charset)
            except UnicodeDecodeError as e:
                raise SidecarError(
                    f"caption file is not valid {charset.upper()} text ({e.reason} at offset {e.start})"
                ) from None
            return _clean_caption(text)
    offset = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = data[offset:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise SidecarError(
            f"caption file is not UTF-8 text (byte 0x{data[offset + e.start]:02x} at offset {offset + e.start})"
        ) from None
    if "\x00" in text:  # valid UTF-8, but a text file has no NULs: UTF-16 without a BOM, or binary
        raise SidecarError(
            f"caption file is not UTF-8 text (byte 0x00 at offset {offset + data.index(0, offset)}"
            "; UTF-16 needs a byte-order mark)"
        )
    return _clean_caption(text)


def _clean_caption(text: str) -> str:
    # No length cap beyond max_bytes and no placeholder filter: a user or dataset wrote it.
    return plain_text(text)

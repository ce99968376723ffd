"""Date taken, camera and orientation from an image's EXIF: what search filters, results and the
upright display read. Broken EXIF never costs the image, only its metadata."""

from __future__ import annotations

from datetime import datetime

from PIL import Image

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 36867
_DATETIME = 306
_MAKE, _MODEL, _ORIENTATION = 271, 272, 274


def exif_metadata(image: Image.Image) -> tuple[datetime | None, str | None, int]:
    """(date taken, camera, orientation) from EXIF, each None/1 when absent or unreadable."""
    try:
        exif = image.getexif()
    except Exception:  # broken EXIF never costs the image, only its metadata
        return None, None, 1
    return exif_fields(exif)


def exif_fields(exif: Image.Exif) -> tuple[datetime | None, str | None, int]:
    """exif_metadata's fields from loaded EXIF (a RAW's comes from its preview or container)."""
    try:
        raw = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
        make = str(exif.get(_MAKE) or "").strip("\x00 ")
        model = str(exif.get(_MODEL) or "").strip("\x00 ")
        orientation = int(exif.get(_ORIENTATION) or 1)
    except Exception:  # broken EXIF never costs the image, only its metadata
        return None, None, 1
    taken = None
    if raw:
        try:
            taken = datetime.strptime(str(raw).strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
        except ValueError:
            taken = None
    camera = model if make and model.lower().startswith(make.lower()) else f"{make} {model}".strip()
    return taken, camera or None, orientation

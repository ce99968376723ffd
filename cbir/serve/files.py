"""An image's bytes and thumbnails, found by image id only: a client never names a path, so no
request can reach a file that is not an image of the library.

Thumbnails are WebP at a few fixed sizes, made on first request and cached in the library's
``thumbs/`` folder under the image's content hash, so a changed photo gets new thumbnails and a
moved one keeps its old ones. A library that cannot be written (read-only folder, full disk)
still gets its thumbnails, only not cached.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from cbir.fsutil import atomic_write

THUMB_SIZES = (160, 320, 640, 1280)  # longest side in pixels; a request gets the next size up
THUMB_DIR = "thumbs"
WEBP_QUALITY = 80
TARS_REMEMBERED = 8  # member tables of this many tars are kept in memory

MEDIA_TYPES = {
    "jpeg": "image/jpeg",
    "mpo": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "avif": "image/avif",
    "heif": "image/heic",
}


class ImageGone(Exception):
    """The image is not in the library, or its file is no longer where it was ingested."""


@dataclass(frozen=True)
class Served:
    data: bytes
    media_type: str
    etag: str  # strong validator: the content hash (and the thumbnail size)
    cacheable: bool = True  # False when the file changed since it was ingested


def thumb_size(requested: int) -> int:
    """The smallest fixed size at least ``requested`` (the largest when none is)."""
    return next((s for s in THUMB_SIZES if s >= requested), THUMB_SIZES[-1])


class ImageFiles:
    def __init__(self, catalog, library: Path, gate=None):
        self.catalog = catalog
        self.gate = gate  # a cbir.serve.gate.DecodeGate: thumbnails not cached yet are made in its slots
        self.cache = library / THUMB_DIR
        self._tars: OrderedDict = OrderedDict()  # (tar, mtime_ns) -> {member: (offset, size)}
        self._tars_lock = threading.Lock()

    def original(self, image_id: int) -> Served:
        stored = self._stored(image_id)
        data = self._read(stored)
        return Served(
            data,
            MEDIA_TYPES.get(stored.format, "application/octet-stream"),
            f'"{stored.content_hash}"',
            _unchanged(stored, data),
        )

    def thumbnail(self, image_id: int, size: int) -> Served:
        from cbir.ingest.decode import BadImage, display_image

        stored = self._stored(image_id)
        size = thumb_size(size)
        etag = f'"{stored.content_hash}-{size}"'
        cached = self.cache / str(size) / stored.content_hash[:2] / f"{stored.content_hash}.webp"
        try:
            return Served(cached.read_bytes(), "image/webp", etag)
        except OSError:
            pass
        with self.gate.slot() if self.gate else nullcontext():
            data = self._read(stored)
            try:
                picture = display_image(data, size, fmt=stored.format)
            except BadImage as e:
                raise ImageGone(f"image {image_id} cannot be shown: {e}") from None
            out = io.BytesIO()
            picture.save(out, "WEBP", quality=WEBP_QUALITY, method=4)
            webp = out.getvalue()
        unchanged = _unchanged(stored, data)
        if unchanged:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(cached, lambda tmp: tmp.write_bytes(webp))
            except OSError:
                pass  # a read-only library or a full disk: serve it uncached
        return Served(webp, "image/webp", etag, unchanged)

    def _stored(self, image_id: int):
        stored = self.catalog.image_file(image_id)
        if stored is None:
            raise ImageGone(f"no image {image_id} in this library")
        return stored

    def _read(self, stored) -> bytes:
        """The image's bytes, read as ingest reads them (cbir.ingest.limits.read_image_file): a
        regular file, under the size cap, so that a file replaced since by a FIFO or a huge one
        cannot block or swell the server."""
        from cbir.ingest.limits import BadImage, read_image_file

        try:
            if stored.dataset and stored.dataset.startswith("tar:"):
                return read_image_file(*self._member(stored.path))
            return read_image_file(stored.path)
        except (OSError, KeyError):
            raise ImageGone(f"image {stored.id}'s file is gone from {stored.path}; run cbir ingest again") from None
        except BadImage as e:
            raise ImageGone(f"image {stored.id} cannot be shown: {e}") from None

    def _member(self, path: Path) -> tuple[Path, int, int]:
        """(tar, offset, size) of a WebDataset sample's image (path: tar/member)."""
        tar = next((p for p in path.parents if p.is_file()), None)
        if tar is None:
            raise FileNotFoundError(path)
        offset, size = self._members(tar)[path.relative_to(tar).as_posix()]
        return tar, offset, size

    def _members(self, tar: Path) -> dict:
        key = (tar, tar.stat().st_mtime_ns)
        with self._tars_lock:
            if key in self._tars:
                self._tars.move_to_end(key)
                return self._tars[key]
        with tarfile.open(tar, "r:") as archive:  # one pass over the headers, never the data
            members = {m.name: (m.offset_data, m.size) for m in archive if m.isfile()}
        with self._tars_lock:
            self._tars[key] = members
            while len(self._tars) > TARS_REMEMBERED:
                self._tars.popitem(last=False)
        return members


def _unchanged(stored, data: bytes) -> bool:
    """Whether ``data`` is still what was ingested (the file may have been edited since)."""
    return len(data) == stored.size and hashlib.sha256(data).hexdigest() == stored.content_hash

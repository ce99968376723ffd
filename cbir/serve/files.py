"""An image's bytes and thumbnails, found by image id only: a client never names a path, so no
request can reach a file that is not an image of the library.

Thumbnails are WebP at a few fixed sizes, made on first request and cached in the library's
``thumbs/`` folder under the image's content hash, so a changed photo gets new thumbnails and a
moved one keeps its old ones. A library that cannot be written (read-only folder, full disk)
still gets its thumbnails, only not cached.

A PDF page or a video frame (its path ``report.pdf#page=3``, ``clip.mp4#t=12.5``) is drawn from
its file by path (pdfium renders the one page, FFmpeg seeks to the frame), never read whole into
memory; its thumbnails are cached only while the file's size and mtime are still those ingest
saw. Its original is the whole PDF or video, opened here and streamed by the app in byte ranges
(a browser seeks a video with Range requests).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cbir.fsutil import atomic_write, special_file

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
    # the files of PDF pages and video frames: "pdf", and a video's extension
    "pdf": "application/pdf",
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
    "webm": "video/webm",
    "avi": "video/x-msvideo",
    "mpg": "video/mpeg",
    "mpeg": "video/mpeg",
    "3gp": "video/3gpp",
    "mts": "video/mp2t",
    "m2ts": "video/mp2t",
    "wmv": "video/x-ms-wmv",
    "ogv": "video/ogg",
}


class ImageGone(Exception):
    """The image is not in the library, or its file is no longer where it was ingested."""


@dataclass(frozen=True)
class Served:
    data: bytes
    media_type: str
    etag: str  # strong validator: the content hash (and the thumbnail size)
    cacheable: bool = True  # False when the file changed since it was ingested


@dataclass(frozen=True)
class Opened:
    """A PDF's or video's whole file, open for streaming: the caller sends it and closes it."""

    file: BinaryIO
    size: int  # bytes, as the open file is now
    media_type: str
    etag: str  # strong validator: the file's size and mtime (its bytes are never all read)
    cacheable: bool  # False when the file changed since it was ingested


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

    def original(self, image_id: int) -> Served | Opened:
        """The image file as ingested; for a PDF page or a video frame, its whole file, opened."""
        stored = self._stored(image_id)
        if stored.item:
            return self._open_whole(stored)
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
        if stored.item:
            return self._item_thumbnail(stored, size, etag, cached)
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
            webp = _webp(picture)
        unchanged = _unchanged(stored, data)
        if unchanged:
            _cache(cached, webp)
        return Served(webp, "image/webp", etag, unchanged)

    def _item_thumbnail(self, stored, size: int, etag: str, cached: Path) -> Served:
        """A PDF page rendered, or a video frame decoded, from the file in place. Cached only when
        the file was the one ingested before and after it was drawn."""
        from cbir.ingest.limits import BadImage

        before = self._stat_whole(stored)
        unchanged = _same_file(stored, before)
        if unchanged:
            try:
                return Served(cached.read_bytes(), "image/webp", etag)
            except OSError:
                pass
        else:  # the page or frame as the file holds it now: not the ingested one's validator
            etag = f'{etag[:-1]}-{before.st_size:x}-{before.st_mtime_ns:x}"'
        with self.gate.slot() if self.gate else nullcontext():
            try:
                picture = _draw_item(str(stored.file), stored.item, size)
            except BadImage as e:
                raise ImageGone(f"image {stored.id} cannot be shown: {e}") from None
            except OSError:
                raise self._gone(stored) from None
            webp = _webp(picture)
        unchanged = unchanged and _same_stat(before, self._stat_whole(stored))
        if unchanged:
            _cache(cached, webp)
        return Served(webp, "image/webp", etag, unchanged)

    def _stat_whole(self, stored) -> os.stat_result:
        """The stat of a page's or frame's file; ImageGone when it is gone or not a regular file."""
        try:
            st = os.stat(stored.file)
        except OSError:
            raise self._gone(stored) from None
        kind = special_file(st.st_mode)
        if kind == "a folder":
            raise self._gone(stored)
        if kind:
            raise ImageGone(f"image {stored.id} cannot be shown: not a regular file: {kind}")
        return st

    def _open_whole(self, stored) -> Opened:
        """A page's or frame's whole file, opened as ingest opens it (never blocking on a FIFO)."""
        from cbir.ingest.limits import BadImage, open_regular

        try:
            f = open_regular(stored.file)
        except OSError:
            raise self._gone(stored) from None
        except BadImage as e:
            raise ImageGone(f"image {stored.id} cannot be shown: {e}") from None
        st = os.fstat(f.fileno())
        return Opened(
            f,
            st.st_size,
            MEDIA_TYPES.get(stored.format, "application/octet-stream"),
            f'"{st.st_size:x}-{st.st_mtime_ns:x}"',
            _same_file(stored, st),
        )

    def _gone(self, stored) -> ImageGone:
        where = stored.file if stored.item else stored.path
        return ImageGone(f"image {stored.id}'s file is gone from {where}; run cbir ingest again")

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
            raise self._gone(stored) from None
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


def _same_file(stored, st: os.stat_result) -> bool:
    """Whether a page's or frame's file is still the one ingested: its size and mtime, as the
    next ingest would judge it (the file is not hashed: a video may be gigabytes)."""
    return st.st_size == stored.size and st.st_mtime_ns == stored.mtime_ns


def _same_stat(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_ino, b.st_size, b.st_mtime_ns)


def _draw_item(path: str, item: str, size: int):
    """A PDF page (item "page=3") or the video frame shown at a moment ("t=12.5"), its longest
    side ``size`` pixels (a frame: at most its own)."""
    if item.startswith("page="):
        from cbir.ingest.pdf import render_page

        return render_page(path, int(item[5:]), size)
    from cbir.ingest.video import frame_at

    return frame_at(path, float(item[2:]), size)


def _webp(picture) -> bytes:
    out = io.BytesIO()
    picture.save(out, "WEBP", quality=WEBP_QUALITY, method=4)
    return out.getvalue()


def _cache(cached: Path, webp: bytes) -> None:
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, lambda tmp: tmp.write_bytes(webp))
    except OSError:
        pass  # a read-only library or a full disk: serve it uncached

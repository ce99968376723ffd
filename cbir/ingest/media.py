"""PDF documents and videos as images of the library: each page of a PDF (cbir.ingest.pdf) and
each sampled frame of a video (cbir.ingest.video) is an image whose path names it inside its
file, ``report.pdf#page=3`` or ``clip.mp4#t=12.5`` (a W3C media fragment: what a browser opens).

Such a file is planned as one file (its size and mtime, shared by its items), read in one decode
task, and committed in one transaction, so a run stopped half-way through a PDF stores none of it
and reads it again. The task delivers the file's items, then the file itself: its SHA-256
(``container_hash`` of every item, by which they move and copy together) and, when something was
left out, why (a recorded skip of the file: "only the first 500 of 2,000 pages read"). A file
whose content the library holds already is not opened: its items follow that content.

Pages are read whole (white margins make them square: a centre crop would cut a page's head and
foot); frames are cropped like photos. With --ocr, a page without a text layer (a scan) is read
by OCR; video frames are not."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from cbir.encode.spec import Preprocess
from cbir.ingest import pdf, raw, video
from cbir.ingest.limits import BadImage, open_regular
from cbir.ingest.pdf import PDF_EXTENSIONS, is_pdf_name, read_pdf, render_page
from cbir.ingest.pixels import to_model_pixels
from cbir.ingest.video import VIDEO_EXTENSIONS, fragment, read_video

if TYPE_CHECKING:
    from cbir.ingest.decode import Decoded, FileTask

CONTAINER_EXTENSIONS = PDF_EXTENSIONS | VIDEO_EXTENSIONS


def is_container_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in CONTAINER_EXTENSIONS


def extra_installed(reason: str) -> bool:
    """Whether ``reason`` is the skip of a file that needed the media extra (a RAW photo, a PDF,
    a video), which is installed now: such a file is read again."""
    installed = {
        raw.NEEDS_MEDIA: raw.media_installed,
        pdf.NEEDS_MEDIA: pdf.pdf_installed,
        video.NEEDS_MEDIA: video.video_installed,
    }
    return reason in installed and installed[reason]()


def container_of(path: str) -> str:
    """The file a page or frame's path names (``report.pdf`` of ``report.pdf#page=3``)."""
    return path.rsplit("#", 1)[0]


def item_of(path: str) -> str:
    """Where in its file a page or frame is (``page=3`` of ``report.pdf#page=3``)."""
    return path.rsplit("#", 1)[1]


def item_path(container: str, item: str) -> str:
    return f"{container}#{item}"


def item_hash(container_hash: str, item: str) -> str:
    """A page's or frame's content hash: its file's, and where in the file it is. Equal for the
    same page of two copies of a file, different for two pages of one file."""
    return hashlib.sha256(f"{container_hash}#{item}".encode()).hexdigest()


def file_hash(path: str) -> str:
    """The SHA-256 of a whole file, read in blocks (a video may be gigabytes); a FIFO or device
    is refused without blocking (cbir.ingest.limits)."""
    with open_regular(path) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def decode_container(task: FileTask, pp: Preprocess, known: frozenset) -> list[Decoded]:
    """The items of the PDF or video ``task`` names, then the file itself (``Decoded.container``:
    its hash, and its error when it could not be used or was read in part)."""
    from cbir.ingest.decode import UNREADABLE, VANISHED, Decoded

    whole = Decoded(task, container=True)
    missing = pdf.NEEDS_MEDIA if is_pdf_name(task.path) else video.NEEDS_MEDIA
    if not extra_installed(missing):  # not hashed: a video may be gigabytes
        whole.error = missing
        return [whole]
    start = time.perf_counter()
    try:
        whole.container_hash = file_hash(task.abspath)
    except FileNotFoundError:
        whole.error = VANISHED
        return [whole]
    except BadImage as e:
        whole.error = str(e)
        return [whole]
    except OSError as e:
        whole.error = f"{UNREADABLE}: {e.strerror or e}"
        return [whole]
    whole.content_hash = whole.container_hash
    whole.read_seconds = time.perf_counter() - start
    if whole.container_hash in known:
        return [whole]  # moved, renamed, copied or touched: its stored items are reused
    start = time.perf_counter()
    try:
        if is_pdf_name(task.path):
            items = _pages(whole, pp)
        else:
            items = _frames(whole, pp)
    except BadImage as e:
        whole.error = str(e)
        return [whole]
    finally:  # less the OCR of scanned pages, which their own ocr_seconds count
        whole.decode_seconds = time.perf_counter() - start
    whole.decode_seconds -= sum(d.ocr_seconds for d in items)
    whole.items = len(items)
    return [*items, whole]


def _item(whole: Decoded, item: str, fmt: str) -> Decoded:
    from cbir.ingest.decode import Decoded

    assert whole.container_hash is not None
    return Decoded(
        replace(whole.task, path=item_path(whole.task.path, item)),
        content_hash=item_hash(whole.container_hash, item),
        format=fmt,
        container_hash=whole.container_hash,
    )


def _pages(whole: Decoded, pp: Preprocess) -> list[Decoded]:
    document = read_pdf(whole.task.abspath, pp.size)
    page_pp = replace(pp, resize_mode="longest", fill_color=255)
    items = []
    for page in document.pages:
        d = _item(whole, f"page={page.number}", "pdf")
        if page.error is not None or page.image is None:
            d.error = f"page {page.number}: {page.error}"
        else:
            d.pixels = to_model_pixels(page.image, page_pp)
            d.width, d.height = page.width, page.height
            d.document_text = page.text
            if whole.task.ocr and not page.text:
                _read_scanned_page(d, whole.task.abspath, page.number)
        items.append(d)
    bad = [d.error for d in items if d.error]
    notes = [n for n in (document.note, *bad[:3]) if n]
    if notes:
        whole.error = "partly read: " + "; ".join(notes) + (f" (and {len(bad) - 3} more pages)" if len(bad) > 3 else "")
    return [d for d in items if not d.error]


def _read_scanned_page(d: Decoded, path: str, number: int) -> None:
    """With --ocr, the text of a page without a text layer (a scan), rendered again at the size
    OCR reads; a failure costs the page its text only, as for images."""
    from cbir.ingest.decode import why
    from cbir.ocr import MAX_SIDE, read_text

    start = time.perf_counter()
    try:
        d.ocr_text = read_text(render_page(path, number, MAX_SIDE))
    except Exception as e:  # noqa: BLE001  (whatever the OCR pipeline raises costs only the text)
        d.ocr_error = why(e)
    d.ocr_seconds = time.perf_counter() - start


def _frames(whole: Decoded, pp: Preprocess) -> list[Decoded]:
    video = read_video(whole.task.abspath, pp.size, every=whole.task.frame_every, max_frames=whole.task.max_frames)
    fmt = os.path.splitext(whole.task.path)[1][1:].lower()
    whole.duration = video.duration
    items = []
    for frame in video.frames:
        d = _item(whole, fragment(frame.seconds), fmt)
        d.pixels = to_model_pixels(frame.image, pp)
        d.width, d.height = video.width, video.height
        d.duration = video.duration
        items.append(d)
    if video.note:
        whole.error = f"partly read: {video.note}"
    return items

"""PDF documents through pdfium (pypdfium2, the media extra): each page an image of the library,
rendered whole at the model's resolution, with the page's own text layer beside it.

A PDF is a program as much as a picture, so every cost is bounded before it is paid: a page is
rendered at a scale that keeps its bitmap within ``side`` x ``side`` whatever its /MediaBox says,
only the first ``max_pages`` pages (and no more than the pixel budget allows) are ever loaded,
a page tree that declares pages it does not hold stops being read after a run of pages that
cannot be loaded, and the document is reopened every PAGES_PER_OPEN pages so that the streams
pdfium keeps do not pile up. pdfium is not thread-safe (serve renders thumbnails from threads):
every call into it holds one lock, taken page by page so that a long document does not starve a
preview. Pillow, cbir.ingest.limits and the cbir.fsutil leaf only at import; pypdfium2 is
imported when a PDF is read, so a plain install records such files as skipped, naming the extra
to install."""

from __future__ import annotations

import errno
import importlib.util
import math
import os
import threading
from dataclasses import dataclass

from PIL import Image

from cbir.fsutil import special_file
from cbir.ingest.limits import MAX_DECODE_BYTES, BadImage

PDF_EXTENSIONS = frozenset({".pdf"})
# Pages read per PDF; the rest are left out, and the document's note says so.
MAX_PAGES = 500
# Of a page's text layer, kept (whitespace collapsed): a page of text is ~3,000 characters.
MAX_TEXT_CHARS = 20_000
# The pixels of all the pages of one read_pdf call together: the decode budget of one image, as
# Pillow holds RGB (4 bytes a pixel). At side 224 that is 1,494 pages, above MAX_PAGES; at 448
# it leaves 373.
MAX_PIXELS = MAX_DECODE_BYTES // 4
# Consecutive pages pdfium cannot load after which the rest of a document is taken as missing:
# a page tree whose /Count declares a million pages over a few real ones.
MAX_MISSING_PAGES = 20
# Pages read from one opening of a document (see read_pdf).
PAGES_PER_OPEN = 50
# The skip reason of a PDF on an install without pypdfium2 (retried once it is installed).
NEEDS_MEDIA = "PDF document: reading it needs the media extra: pip install 'cbir[media]'"

# pdfium keeps global state (its font cache, the last error) and is not thread-safe.
_LOCK = threading.Lock()


def is_pdf_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in PDF_EXTENSIONS


def pdf_installed() -> bool:
    return importlib.util.find_spec("pypdfium2") is not None


@dataclass(frozen=True)
class PdfPage:
    number: int  # 1-based
    image: Image.Image | None  # RGB, the whole page with its longest side `side` pixels; None on error
    width: int  # the page's size in points (1/72 in) as displayed: /Rotate applied
    height: int
    text: str  # its text layer, whitespace collapsed, at most MAX_TEXT_CHARS; "" without one (a scan)
    error: str | None = None  # why this page alone could not be rendered (image is then None)


@dataclass(frozen=True)
class PdfDocument:
    page_count: int  # pages the document has, as pdfium counts them (its page tree's /Count)
    pages: list[PdfPage]  # the first pages, in order: at most max_pages
    note: str | None  # why pages were left out ("only the first 500 of 1,000,000 pages read"), or None
    title: str | None  # its /Title metadata, stripped; None when it has none


def read_pdf(path: str, side: int, *, max_pages: int = MAX_PAGES, max_pixels: int = MAX_PIXELS) -> PdfDocument:
    """The pages of the PDF at ``path``, each rendered so that its longest side is ``side``
    pixels, with its text layer. At most ``max_pages`` pages, and no more than ``max_pixels``
    worth of ``side`` x ``side`` bitmaps, are loaded; the note says what was left out. Raises
    BadImage with a one-line reason for a file that cannot be used at all (encrypted, broken,
    without pages, pypdfium2 missing); a page that cannot be rendered is that page's error."""
    pdfium = _pypdfium2()
    limit = max(1, min(max_pages, max_pixels // max(1, side * side)))
    pages: list[PdfPage] = []
    missing, known = 0, -1  # consecutive pages that could not be loaded; the page count first read
    while True:
        # pdfium keeps every stream it has read until the document is closed (a scanned page's
        # JPEG: ~0.15 MB at 150 dpi), so the document is reopened every PAGES_PER_OPEN pages.
        with _LOCK:
            pdf = _open(pdfium, path)
        try:
            with _LOCK:
                count = len(pdf)
                title = " ".join(pdf.get_metadata_value("Title").split()) or None
            if known >= 0 and count != known:
                note = f"only the first {len(pages):,} pages read: the file changed while it was read"
                return PdfDocument(known, pages, note, title)
            known, end = count, min(count, limit)
            for index in range(len(pages), min(end, len(pages) + PAGES_PER_OPEN)):
                with _LOCK:
                    page = _read_page(pdfium, pdf, index, side)
                pages.append(page)
                missing = missing + 1 if page.error == _UNLOADABLE else 0
                if missing >= MAX_MISSING_PAGES and index + 1 < end:
                    gone = f"pages {index + 2 - missing:,} to {index + 1:,} could not be loaded"
                    note = f"only the first {len(pages):,} of {count:,} pages read: {gone}"
                    return PdfDocument(count, pages, note, title)
        finally:
            with _LOCK:
                pdf.close()
        if len(pages) >= end:
            break
    if count <= limit:
        return PdfDocument(count, pages, None, title)
    why = "" if limit == max_pages else f" (the memory bound at {side} pixels a side)"
    return PdfDocument(count, pages, f"only the first {limit:,} of {count:,} pages read{why}", title)


def render_page(path: str, number: int, longest_side: int) -> Image.Image:
    """Page ``number`` (1-based) of the PDF at ``path`` for people to look at (thumbnails,
    previews): RGB, its longest side ``longest_side`` pixels. BadImage for a file that cannot be
    used, a page number out of range, a page that cannot be rendered or a size over the decode
    budget."""
    if longest_side * longest_side * 4 > MAX_DECODE_BYTES:
        raise BadImage(f"refused: a PDF page {longest_side} pixels a side is over the decode budget")
    pdfium = _pypdfium2()
    with _LOCK:
        pdf = _open(pdfium, path)
        try:
            count = len(pdf)
            if not 1 <= number <= count:
                raise BadImage(f"no page {number} in a PDF of {count:,} pages")
            page = _read_page(pdfium, pdf, number - 1, longest_side, text=False)
        finally:
            pdf.close()
    if page.image is None:
        raise BadImage(f"PDF page {number}: {page.error}")
    return page.image


_UNLOADABLE = "pdfium could not load the page"


def _pypdfium2():
    try:
        import pypdfium2
    except ImportError:
        raise BadImage(NEEDS_MEDIA) from None
    return pypdfium2


def _open(pdfium, path: str):
    """The document at ``path``, its forms set up to be drawn as a viewer draws them; BadImage
    with pdfium's reason when it cannot be opened. Called holding the lock. Opened through the
    raw API: pypdfium2's constructor reads pdfium's last error for a document without pages
    too, an error that pdfium leaves over from an earlier failure (it is not reset)."""
    kind = special_file(os.stat(path).st_mode)  # FileNotFoundError, as for any file that vanished
    if kind == "a folder":
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if kind:  # a FIFO would block pdfium's open
        raise BadImage(f"not a regular file: {kind}")
    raw = pdfium.raw.FPDF_LoadDocument(os.fsencode(path) + b"\0", None)
    if not raw:
        code = pdfium.raw.FPDF_GetLastError()
        if code == pdfium.raw.FPDF_ERR_PASSWORD:
            raise BadImage("encrypted PDF: password protected")
        if code == pdfium.raw.FPDF_ERR_SECURITY:
            raise BadImage("encrypted PDF: unsupported security handler")
        raise BadImage(f"corrupt or unsupported PDF: pdfium: {_why(pdfium, code)}")
    pdf = pdfium.PdfDocument(raw)
    try:
        pdf.init_forms()  # before anything else is asked of the document, as pypdfium2 requires
    except pdfium.PdfiumError:
        pass  # its form fields are not drawn; the pages still are
    if len(pdf) < 1:
        pdf.close()
        raise BadImage("PDF without pages")
    return pdf


def _why(pdfium, code: int) -> str:
    """pdfium's error code in words: "data format", "file access", ..."""
    return str(pdfium.internal.ErrorToStr.get(code) or f"error {code}").removesuffix(" error").lower()


def _read_page(pdfium, pdf, index: int, side: int, text: bool = True) -> PdfPage:
    """Page ``index`` rendered into at most ``side`` x ``side`` pixels, with its text layer; an
    error page when pdfium cannot load or render it. Called holding the lock."""
    number = index + 1
    try:
        page = pdf.get_page(index)
    except pdfium.PdfiumError:
        return PdfPage(number, None, 0, 0, "", _UNLOADABLE)
    try:
        w, h = page.get_width(), page.get_height()  # pdfium swaps them for /Rotate 90 and 270
        width, height = _points(w), _points(h)
        if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
            return PdfPage(number, None, width, height, "", f"page has no area ({w:g} x {h:g} points)")
        words = _text(page) if text else ""
        try:
            bitmap = page.render(scale=_scale(w, h, side), may_draw_forms=True, draw_annots=True, rev_byteorder=True)
            try:
                image = bitmap.to_pil()  # RGB is copied out of pdfium's bitmap (only RGBX/RGBA share it)
                if image.mode != "RGB":
                    image = image.convert("RGB")
            finally:
                bitmap.close()
        except (pdfium.PdfiumError, ValueError, MemoryError) as e:
            return PdfPage(number, None, width, height, words, f"pdfium could not render the page: {e}")
        return PdfPage(number, image, width, height, words)
    finally:
        page.close()


def _points(x: float) -> int:
    return round(x) if math.isfinite(x) else 0


def _scale(w: float, h: float, side: int) -> float:
    """The scale that renders a ``w`` x ``h`` point page with its longest side ``side`` pixels:
    pdfium rounds the bitmap's size up, so the scale is nudged down until that stays ``side``."""
    longest = max(w, h)
    scale = side / longest
    while math.ceil(longest * scale) > side:
        scale = math.nextafter(scale, 0.0)
    return scale


def _text(page) -> str:
    """The page's text layer, whitespace collapsed to single spaces, at most MAX_TEXT_CHARS."""
    textpage = page.get_textpage()
    try:
        chars = min(textpage.count_chars(), 4 * MAX_TEXT_CHARS)  # whitespace collapses
        raw = textpage.get_text_range(0, chars) if chars > 0 else ""
    finally:
        textpage.close()
    return " ".join(raw.split())[:MAX_TEXT_CHARS]

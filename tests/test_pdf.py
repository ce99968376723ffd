"""PDF documents (cbir.ingest.pdf): PDFs written here, by Pillow from generated pages or by hand
(a text layer, /Rotate, /Encrypt, a page tree declaring a million pages, a huge /MediaBox), read
through pdfium. The tests that read PDFs need pypdfium2 (the media extra, also in the test
extra) and are skipped without it, failed with CBIR_REQUIRE_MEDIA=1; the skip without the extra
runs everywhere."""

from __future__ import annotations

import io
import os
import sys
import threading
import time

import pytest
from PIL import Image, ImageDraw

from cbir.ingest.limits import BadImage
from cbir.ingest.pdf import (
    MAX_MISSING_PAGES,
    MAX_TEXT_CHARS,
    NEEDS_MEDIA,
    PdfPage,
    is_pdf_name,
    read_pdf,
    render_page,
)

SIDE = 224
COLOURS = [(220, 30, 30), (30, 180, 40), (40, 60, 220)]


# CI sets this so that these tests fail, rather than skip, without pypdfium2. Read at import:
# conftest's autouse isolated_env removes every CBIR_* variable before a test's fixtures run.
REQUIRE_MEDIA = os.environ.get("CBIR_REQUIRE_MEDIA") == "1"


@pytest.fixture
def pypdfium2():
    if REQUIRE_MEDIA:
        import pypdfium2  # noqa: F401  (an ImportError here fails the test)
    return pytest.importorskip(
        "pypdfium2", reason="the media extra (pypdfium2) is not installed: pip install 'cbir[media]'"
    )


def make_pdf(objects: list[bytes], trailer: bytes = b"") -> bytes:
    """A PDF of ``objects`` (numbered from 1, the first the catalog) with a correct xref table."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer, xref)
    return bytes(out)


def text_pdf(
    texts: list[str], *, count: int | None = None, mediabox: bytes = b"[0 0 612 792]", rotate: int | None = None
) -> bytes:
    """A PDF with one page per text, written in Helvetica 24 pt at the top left of a US letter page
    (or ``mediabox``); ``count`` declares another page count in the page tree."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in texts:
        number = len(objects) + 1
        kids.append(b"%d 0 R" % number)
        extra = b" /Rotate %d" % rotate if rotate is not None else b""
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox %s%s /Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>"
            % (mediabox, extra, number + 1)
        )
        content = b"BT /F1 24 Tf 72 700 Td (%s) Tj ET" % text.encode("latin-1") if text else b""
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(texts) if count is None else count)
    return make_pdf(objects)


def pillow_pdf(title: str | None = None) -> bytes:
    """Three scanned pages, no text: a red 300x200 page, a green 200x400 one with a white
    square, a blue 500x500 one (at 72 dpi, pixels are points)."""
    pages = []
    for colour, size in zip(COLOURS, [(300, 200), (200, 400), (500, 500)]):
        page = Image.new("RGB", size, colour)
        ImageDraw.Draw(page).rectangle((10, 10, 60, 60), fill="white")
        pages.append(page)
    out = io.BytesIO()
    extra = {"title": title} if title else {}
    pages[0].save(out, "PDF", save_all=True, append_images=pages[1:], resolution=72.0, **extra)
    return out.getvalue()


def write(tmp_path, data: bytes, name: str = "doc.pdf") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def picture(page: PdfPage) -> Image.Image:
    assert page.image is not None, page.error
    return page.image


def near(pixel, colour, tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


def test_pages_written_by_pillow_come_back_in_order_at_the_side_asked(pypdfium2, tmp_path):
    doc = read_pdf(write(tmp_path, pillow_pdf(title="  Quarterly   report ")), SIDE)
    assert (doc.page_count, doc.note, doc.title) == (3, None, "Quarterly report")
    assert [p.number for p in doc.pages] == [1, 2, 3]
    assert [(p.width, p.height) for p in doc.pages] == [(300, 200), (200, 400), (500, 500)]
    assert [picture(p).size for p in doc.pages] == [(224, 150), (112, 224), (224, 224)]
    for page, colour in zip(doc.pages, COLOURS):
        assert page.error is None and page.text == ""  # a scan has no text layer
        assert picture(page).mode == "RGB"
        w, h = picture(page).size
        assert near(picture(page).getpixel((w * 3 // 4, h * 3 // 4)), colour)
        assert near(picture(page).getpixel((5 * w // 100 + 2, 5 * h // 100 + 2)), (255, 255, 255), 40) or w == h
    assert read_pdf(write(tmp_path, pillow_pdf()), SIDE).title is None


def test_each_page_keeps_its_own_text_layer(pypdfium2, tmp_path):
    doc = read_pdf(write(tmp_path, text_pdf(["Hello cbir world", "Second    page\there", ""])), SIDE)
    assert [p.text for p in doc.pages] == ["Hello cbir world", "Second page here", ""]
    image = picture(doc.pages[0])
    assert image.size == (174, 224)  # 612 x 224 / 792 = 173.1, rounded up by pdfium
    assert image.getpixel((0, 0)) == (255, 255, 255)  # white paper
    darkest, _ = image.convert("L").getextrema()
    assert isinstance(darkest, int) and darkest < 100  # and dark words on it


def test_annotations_are_drawn_as_a_viewer_draws_them(pypdfium2, tmp_path):
    square = b"1 0 0 rg 0 0 200 200 re f"
    data = make_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 400] /Annots [4 0 R] >>",
            b"<< /Type /Annot /Subtype /Square /Rect [100 100 300 300] /F 4 /AP << /N 5 0 R >> >>",
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 200 200] /Length %d >>\nstream\n%s\nendstream"
            % (len(square), square),
        ]
    )
    image = picture(read_pdf(write(tmp_path, data), 200).pages[0])
    assert near(image.getpixel((100, 100)), (255, 0, 0)) and image.getpixel((10, 10)) == (255, 255, 255)


def test_a_long_text_layer_is_cut_to_the_bound(pypdfium2, tmp_path):
    words = "lorem ipsum " * 3000  # 36,000 characters on one line
    page = read_pdf(write(tmp_path, text_pdf([words])), SIDE).pages[0]
    assert len(page.text) == MAX_TEXT_CHARS and page.text.startswith("lorem ipsum lorem")


def test_a_rotated_page_is_measured_and_drawn_as_displayed(pypdfium2, tmp_path):
    page = read_pdf(write(tmp_path, text_pdf(["Turned"], rotate=90)), SIDE).pages[0]
    assert (page.width, page.height) == (792, 612)
    assert picture(page).size == (224, 174)
    assert page.text == "Turned"


def test_an_encrypted_pdf_is_a_skip_asking_for_a_password(pypdfium2, tmp_path):
    encrypt = b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -4 >>" % (b"11" * 32, b"22" * 32)
    data = make_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
            encrypt,
        ],
        trailer=b"/Encrypt 4 0 R /ID [<%s> <%s>] " % (b"ab" * 16, b"ab" * 16),
    )
    with pytest.raises(BadImage, match=r"^encrypted PDF: password protected$"):
        read_pdf(write(tmp_path, data), SIDE)
    with pytest.raises(BadImage, match="encrypted"):
        render_page(write(tmp_path, data), 1, 500)


@pytest.mark.parametrize(
    "data",
    [text_pdf(["cut short"])[:300], os.urandom(4096), b"", text_pdf([])],
    ids=["truncated", "random", "empty", "no-pages"],
)
def test_a_broken_pdf_is_a_skip_with_a_one_line_reason(pypdfium2, tmp_path, data):
    with pytest.raises(BadImage) as caught:
        read_pdf(write(tmp_path, data), SIDE)
    reason = str(caught.value)
    assert "\n" not in reason
    expected = "PDF without pages" if data == text_pdf([]) else "corrupt or unsupported PDF: pdfium: data format"
    assert reason == expected


def test_a_fifo_named_pdf_is_refused_without_blocking(pypdfium2, tmp_path):
    os.mkfifo(tmp_path / "pipe.pdf")
    with pytest.raises(BadImage, match="^not a regular file: a FIFO"):
        read_pdf(str(tmp_path / "pipe.pdf"), SIDE)


def test_a_declared_million_pages_over_one_real_page_stops_early(pypdfium2, tmp_path):
    started = time.perf_counter()
    doc = read_pdf(write(tmp_path, text_pdf(["only page"], count=1_000_000)), SIDE)
    assert time.perf_counter() - started < 5
    assert doc.page_count == 1_000_000  # pdfium believes the page tree's /Count
    assert len(doc.pages) == 1 + MAX_MISSING_PAGES
    assert doc.pages[0].text == "only page" and doc.pages[0].error is None
    assert all(p.image is None and p.error for p in doc.pages[1:])
    assert (
        doc.note == f"only the first 21 of 1,000,000 pages read: pages 2 to {1 + MAX_MISSING_PAGES} could not be loaded"
    )


def test_no_page_past_max_pages_is_loaded(pypdfium2, tmp_path, monkeypatch):
    loaded: list[int] = []
    get_page = pypdfium2.PdfDocument.get_page

    def counting(self, index):
        loaded.append(index)
        return get_page(self, index)

    monkeypatch.setattr(pypdfium2.PdfDocument, "get_page", counting)
    doc = read_pdf(write(tmp_path, text_pdf(["p"] * 40, count=1_000_000)), 32, max_pages=30)
    assert (doc.page_count, len(doc.pages)) == (1_000_000, 30)
    assert all(p.error is None for p in doc.pages)
    assert loaded == list(range(30))
    assert doc.note == "only the first 30 of 1,000,000 pages read"


def test_a_long_document_is_read_in_order_across_reopenings(pypdfium2, tmp_path, monkeypatch):
    opened: list[bytes] = []
    load = pypdfium2.raw.FPDF_LoadDocument

    def counting(path, password):
        opened.append(path)
        return load(path, password)

    monkeypatch.setattr(pypdfium2.raw, "FPDF_LoadDocument", counting)
    monkeypatch.setattr("cbir.ingest.pdf.PAGES_PER_OPEN", 7)
    doc = read_pdf(write(tmp_path, text_pdf([f"page {n}" for n in range(1, 21)])), 32)
    assert [p.text for p in doc.pages] == [f"page {n}" for n in range(1, 21)]
    assert [p.number for p in doc.pages] == list(range(1, 21)) and doc.note is None
    assert len(opened) == 3  # pages 1-7, 8-14, 15-20: pdfium's read streams are let go in between


def test_a_file_replaced_while_it_is_read_keeps_the_pages_read(pypdfium2, tmp_path, monkeypatch):
    path = write(tmp_path, text_pdf(["a", "b", "c", "d", "e"]))
    get_page = pypdfium2.PdfDocument.get_page

    def replacing(self, index):
        if index == 1:
            os.replace(write(tmp_path, text_pdf(["other"]), "new.pdf"), path)
        return get_page(self, index)

    monkeypatch.setattr(pypdfium2.PdfDocument, "get_page", replacing)
    monkeypatch.setattr("cbir.ingest.pdf.PAGES_PER_OPEN", 2)
    doc = read_pdf(path, 32)
    assert [p.text for p in doc.pages] == ["a", "b"]
    assert doc.note == "only the first 2 pages read: the file changed while it was read"


def test_the_pixel_budget_bounds_the_pages_read(pypdfium2, tmp_path):
    doc = read_pdf(write(tmp_path, text_pdf(["p"] * 12)), 64, max_pixels=5 * 64 * 64 + 1)
    assert len(doc.pages) == 5
    assert doc.note == "only the first 5 of 12 pages read (the memory bound at 64 pixels a side)"


def test_a_huge_mediabox_is_rendered_within_the_side(pypdfium2, tmp_path):
    page = read_pdf(write(tmp_path, text_pdf(["vast"], mediabox=b"[0 0 14400000 14400000]")), SIDE).pages[0]
    assert (page.width, page.height) == (14_400_000, 14_400_000)
    assert picture(page).size == (224, 224)


@pytest.mark.parametrize("box", [b"[0 0 0 0]", b"[0 0 100 0]", b"[0 0 NaN 5]", b"[0 0 -100 -200]", b"[1 2]"])
def test_a_degenerate_mediabox_never_crashes(pypdfium2, tmp_path, box):
    page = read_pdf(write(tmp_path, text_pdf(["odd"], mediabox=box)), SIDE).pages[0]
    # pdfium gives an empty or broken box US letter's size and normalises a negative one
    assert page.error is None and max(picture(page).size) == SIDE
    assert (page.width, page.height) in ((612, 792), (100, 200))


def test_a_page_without_area_is_that_pages_error(pypdfium2, tmp_path, monkeypatch):
    # pdfium itself replaces an empty box (above); the guard is for what it may report otherwise
    monkeypatch.setattr(pypdfium2.PdfPage, "get_width", lambda self: 0.0)
    doc = read_pdf(write(tmp_path, text_pdf(["flat", "flat too"])), SIDE)
    assert [(p.image, p.error) for p in doc.pages] == [(None, "page has no area (0 x 792 points)")] * 2
    with pytest.raises(BadImage, match="^PDF page 2: page has no area"):
        render_page(write(tmp_path, text_pdf(["flat", "flat too"])), 2, 300)


def test_render_page_draws_one_page_at_the_size_asked(pypdfium2, tmp_path):
    path = write(tmp_path, pillow_pdf())
    image = render_page(path, 2, 1000)
    assert image.mode == "RGB" and image.size == (500, 1000)
    assert near(image.getpixel((400, 900)), COLOURS[1])
    for number in (0, 4):
        with pytest.raises(BadImage, match=f"^no page {number} in a PDF of 3 pages$"):
            render_page(path, number, 500)
    with pytest.raises(BadImage, match="over the decode budget"):
        render_page(path, 1, 100_000)


def test_pages_render_from_many_threads_at_once(pypdfium2, tmp_path):
    path = write(tmp_path, pillow_pdf())
    sizes: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def work(number: int) -> None:
        try:
            for _ in range(5):
                sizes.append(render_page(path, number, 300).size)
                read_pdf(path, 64)
        except BaseException as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(1 + i % 3,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(set(sizes)) == [(150, 300), (300, 200), (300, 300)]


def test_without_the_extra_a_pdf_is_a_skip_naming_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdfium2", None)  # import pypdfium2 raises ImportError
    path = write(tmp_path, text_pdf(["x"]))
    with pytest.raises(BadImage) as caught:
        read_pdf(path, SIDE)
    assert str(caught.value) == NEEDS_MEDIA and "cbir[media]" in NEEDS_MEDIA
    with pytest.raises(BadImage, match="media extra"):
        render_page(path, 1, 300)


def test_pdf_names():
    assert is_pdf_name("Report.PDF") and is_pdf_name("a/b.pdf")
    assert not is_pdf_name("pdf") and not is_pdf_name("scan.pdf.png")

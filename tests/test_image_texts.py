"""Texts that come with an image: embedded descriptions (EXIF, XMP, PNG text, comments) and
sidecar caption files."""

from __future__ import annotations

import io

import pytest
from PIL import Image, PngImagePlugin

from cbir.ingest.sidecars import SIDECAR_SUFFIX, SidecarError, find_sidecar, read_sidecar, sidecar_candidates
from cbir.ingest.texts import MAX_TEXT_CHARS, embedded_texts

EXIF_IFD, USER_COMMENT = 0x8769, 0x9286
XP_TITLE, XP_COMMENT, XP_SUBJECT = 0x9C9B, 0x9C9C, 0x9C9F


def _xmp(description: str | None = None, title: str | None = None, lang="x-default") -> bytes:
    def alt(name, value):
        if value is None:
            return ""
        return (
            f"<dc:{name}><rdf:Alt><rdf:li xml:lang='de'>Deutsch</rdf:li>"
            f"<rdf:li xml:lang='{lang}'>{value}</rdf:li></rdf:Alt></dc:{name}>"
        )

    return (
        "<?xpacket begin='\ufeff' id='W5M0MpCehiHzreSzNTczkc9d'?>"
        "<x:xmpmeta xmlns:x='adobe:ns:meta/'>"
        "<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
        "<rdf:Description rdf:about='' xmlns:dc='http://purl.org/dc/elements/1.1/'>"
        f"{alt('description', description)}{alt('title', title)}"
        "</rdf:Description></rdf:RDF></x:xmpmeta>" + " " * 200 + "<?xpacket end='w'?>"
    ).encode("utf-8")


def _save(fmt: str = "JPEG", size=(16, 12), **kw) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(buffer, fmt, **kw)
    return buffer.getvalue()


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def _texts(data: bytes, camera: str | None = None) -> list[str]:
    return embedded_texts(_open(data), camera)


# -- embedded texts ---------------------------------------------------------------------------
def test_exif_image_description():
    exif = Image.Exif()
    exif[270] = "  A red   barn\nin the snow \x00\x00"
    assert _texts(_save(exif=exif.tobytes())) == ["A red barn in the snow"]


def test_exif_description_utf8_and_non_utf8_bytes():
    exif = Image.Exif()
    exif[270] = "Café über Straße".encode()  # Pillow reads ASCII tags as latin-1
    assert _texts(_save(exif=exif.tobytes())) == ["Café über Straße"]
    exif[270] = b"caf\xe9 \x93quoted\x94 \xff"  # not UTF-8: Windows-1252, never a crash
    (text,) = _texts(_save(exif=exif.tobytes()))
    assert text.startswith("café “quoted”")


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_xmp_description_and_title_prefer_x_default(fmt):
    data = _save(fmt, xmp=_xmp(description="A dog on a beach", title="Holiday"))
    assert _texts(data) == ["A dog on a beach", "Holiday"]


def test_xmp_in_png_itxt():
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", _xmp(description="Sunset over the harbour").decode())
    assert _texts(_save("PNG", pnginfo=info)) == ["Sunset over the harbour"]


def test_xmp_first_language_when_no_x_default_and_attribute_form():
    assert _texts(_save(xmp=_xmp(description="Ein Hund", lang="en"))) == ["Deutsch"]
    packet = (
        b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF "
        b"xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'><rdf:Description "
        b"xmlns:dc='http://purl.org/dc/elements/1.1/' dc:title='Short form'/></rdf:RDF>"
        b"</x:xmpmeta>\x00\x00"
    )
    assert _texts(_save(xmp=packet)) == ["Short form"]


@pytest.mark.parametrize(
    "fmt, packet",
    [
        ("JPEG", b"<x:xmpmeta><rdf:RDF><unclosed"),
        ("JPEG", b"\xff\xfe\x00garbage"),
        # over the size cap (WebP: a JPEG segment cannot hold it)
        ("WEBP", _xmp(description="too big") + b" " * (1024 * 1024)),
        # entity tricks are refused outright
        (
            "JPEG",
            b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaaaaaaaa'>]>"
            + _xmp(description="&a;&a;&a;").split(b"?>", 1)[1],
        ),
    ],
    ids=["malformed", "not-xml", "huge", "entities"],
)
def test_broken_xmp_costs_only_its_text(fmt, packet):
    exif = Image.Exif()
    exif[270] = "Still here"
    assert _texts(_save(fmt, exif=exif.tobytes(), xmp=packet)) == ["Still here"]


def test_xmp_with_junk_around_the_packet():
    packet = b"junk\x00" + _xmp(description="Recovered") + b"\x00trailing junk <"
    assert _texts(_save(xmp=packet)) == ["Recovered"]


def test_png_text_chunks():
    info = PngImagePlugin.PngInfo()
    info.add_text("Description", "Two cats")
    info.add_itxt("Title", "Katzen – zwei")
    info.add_text("Comment", "Scanned from a slide", zip=True)
    info.add_text("Software", "GIMP 2.10")  # not a description
    assert _texts(_save("PNG", pnginfo=info)) == [
        "Two cats",
        "Katzen – zwei",
        "Scanned from a slide",
    ]


def test_jpeg_and_gif_comments():
    assert _texts(_save(comment=b"Grandma's garden, 1987")) == ["Grandma's garden, 1987"]
    assert _texts(_save("GIF", comment=b"An animated wave")) == ["An animated wave"]


def test_windows_xp_tags_utf16():
    exif = Image.Exif()
    exif[XP_TITLE] = "Mountain ✓".encode("utf-16-le") + b"\x00\x00"
    exif[XP_SUBJECT] = tuple("Alps".encode("utf-16-le"))  # some writers give a tuple of ints
    exif[XP_COMMENT] = "Taken from the ridge".encode("utf-16-le") + b"\x00\x00"
    expected = ["Mountain ✓", "Alps", "Taken from the ridge"]
    assert _texts(_save(exif=exif.tobytes())) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"ASCII\x00\x00\x00A quiet lake   \x00\x00", "A quiet lake"),
        (b"UNICODE\x00" + "Nordlicht ü".encode("utf-16-be"), "Nordlicht ü"),
        (b"UNICODE\x00" + "Nordlicht ü".encode("utf-16-le"), "Nordlicht ü"),  # detected
        (b"UNICODE\x00" + "Nordlicht ü".encode("utf-16"), "Nordlicht ü"),  # with a BOM
        (b"UNICODE\x00" + "東京タワー".encode("utf-16-be"), "東京タワー"),  # EXIF order (big)
        (b"JIS\x00\x00\x00\x00\x00" + "富士山".encode("iso2022_jp"), "富士山"),
        (b"\x00" * 8 + b"Undefined charset", "Undefined charset"),
        (b"\x00" * 8 + b" " * 40, None),  # the usual empty comment
    ],
)
def test_user_comment(raw, expected):
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = raw
    assert _texts(_save(exif=exif.tobytes())) == ([expected] if expected else [])


@pytest.mark.parametrize(
    "text",
    [
        "OLYMPUS DIGITAL CAMERA",
        "  sony dsc ",
        "Default\x00",
        "Untitled",
        "...",
        "IMG_1234",
        "DSC01234.JPG",
        "IMG_20190101_123456",
    ],
)
def test_placeholders_are_dropped(text):
    exif = Image.Exif()
    exif[270] = text
    assert _texts(_save(exif=exif.tobytes())) == []


def test_camera_name_only_is_dropped():
    exif = Image.Exif()
    exif[271], exif[272] = "Canon", "Canon EOS 5D Mark II"
    for text in ("Canon EOS 5D Mark II", "CANON", "EOS 5D Mark II"):
        exif[270] = text
        assert _texts(_save(exif=exif.tobytes())) == [], text
    exif = Image.Exif()
    exif[270] = "KENOX S630"
    data = _save(exif=exif.tobytes())
    assert _texts(data) == ["KENOX S630"]  # no make/model known: kept
    assert _texts(data, camera="Samsung KENOX S630") == []
    exif[270] = "Shot on a Canon EOS 5D"  # mentions the camera, but says more
    assert _texts(_save(exif=exif.tobytes()), camera="Canon EOS 5D") == ["Shot on a Canon EOS 5D"]


def test_duplicates_across_sources_keep_the_first():
    exif = Image.Exif()
    exif[270] = "A Red Barn"
    exif[XP_COMMENT] = "a red  barn".encode("utf-16-le")
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"ASCII\x00\x00\x00A RED BARN"
    data = _save(exif=exif.tobytes(), xmp=_xmp(description="a red barn", title="Farm"), comment=b"A red barn")
    assert _texts(data) == ["A Red Barn", "Farm"]


def test_order_of_sources():
    exif = Image.Exif()
    exif[270] = "exif description"
    exif[XP_COMMENT] = "xp comment".encode("utf-16-le")
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"ASCII\x00\x00\x00user comment"
    data = _save(exif=exif.tobytes(), xmp=_xmp("xmp description", "xmp title"), comment=b"com")
    assert _texts(data) == [
        "exif description",
        "xmp description",
        "xmp title",
        "com",
        "xp comment",
        "user comment",
    ]


def test_long_text_is_capped():
    exif = Image.Exif()
    exif[270] = "word " * 1000
    (text,) = _texts(_save(exif=exif.tobytes()))
    assert len(text) <= MAX_TEXT_CHARS and text.startswith("word word")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")  # from Image.open, not from us
def test_no_metadata_and_corrupt_exif():
    assert _texts(_save()) == []
    plain_png = _open(_save("PNG"))
    assert embedded_texts(plain_png) == []
    assert plain_png._im is None  # PNG getexif() would have loaded it to look for a late eXIf
    assert _texts(_save("BMP")) == []
    # An APP1 Exif segment that is not a TIFF structure: no texts, no exception.
    assert _texts(_save(exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f garbage")) == []


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_does_not_decode_the_pixels(fmt):
    info = PngImagePlugin.PngInfo()
    info.add_text("Description", "Lazy")
    kw = (
        {"pnginfo": info}
        if fmt == "PNG"
        else {"comment": b"Lazy"}
        if fmt == "GIF"
        else {"xmp": _xmp(description="Lazy")}
    )
    exif = Image.Exif()
    exif[270] = "Lazy"  # a duplicate, but it makes the EXIF reader run
    image = _open(_save(fmt, size=(64, 48), exif=exif.tobytes(), **kw))
    assert embedded_texts(image) == ["Lazy"]
    assert image._im is None  # pixels still not loaded (Pillow's private attribute)
    image.load()  # and it works after loading too
    assert embedded_texts(image) == ["Lazy"]


def test_works_on_loaded_and_transposed_images():
    exif = Image.Exif()
    exif[270], exif[274] = "Sideways", 6
    image = _open(_save(exif=exif.tobytes()))
    image.load()
    assert embedded_texts(image) == ["Sideways"]


def test_never_raises_on_odd_objects():
    image = Image.new("RGB", (4, 4))  # not from a file at all
    image.info["xmp"] = 12345
    image.info["comment"] = object()
    assert embedded_texts(image) == []


# -- sidecar caption files --------------------------------------------------------------------
def test_sidecar_candidates():
    assert SIDECAR_SUFFIX == ".txt"
    assert sidecar_candidates("dir/IMG_1.jpg") == ("dir/IMG_1.jpg.txt", "dir/IMG_1.txt")
    assert sidecar_candidates("a.b/c.d.png") == ("a.b/c.d.png.txt", "a.b/c.d.txt")
    assert sidecar_candidates("top.JPG") == ("top.JPG.txt", "top.txt")


def test_find_sidecar_prefers_the_full_name(tmp_path):
    (tmp_path / "dir").mkdir()
    assert find_sidecar(tmp_path, "dir/IMG_1.jpg") is None
    (tmp_path / "dir/IMG_1.txt").write_text("short form")
    assert find_sidecar(tmp_path, "dir/IMG_1.jpg") == "dir/IMG_1.txt"
    (tmp_path / "dir/IMG_1.jpg.txt").write_text("full form")
    assert find_sidecar(tmp_path, "dir/IMG_1.jpg") == "dir/IMG_1.jpg.txt"
    assert read_sidecar(tmp_path / "dir/IMG_1.jpg.txt") == "full form"
    (tmp_path / "dir/folder.jpg.txt").mkdir()  # a folder is not a caption file
    assert find_sidecar(tmp_path, "dir/folder.jpg") is None


@pytest.mark.parametrize(
    "data",
    [
        b"A man riding a horse\non a beach.\r\n",
        b"\xef\xbb\xbf" + b"A man riding a horse on a beach.",
        "\ufeffA man riding a horse\ton a beach.".encode("utf-16-le"),
        "\ufeffA man riding a horse on a beach.".encode("utf-16-be"),
        "\ufeffA man riding a horse on a beach.".encode("utf-32"),
    ],
)
def test_read_sidecar_encodings(tmp_path, data):
    path = tmp_path / "x.txt"
    path.write_bytes(data)
    assert read_sidecar(path) == "A man riding a horse on a beach."


def test_read_sidecar_unicode_and_whole_file_is_one_caption(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("Ein Hund   läuft\n\nüber die Wiese 🐕\n", encoding="utf-8")
    assert read_sidecar(str(path)) == "Ein Hund läuft über die Wiese 🐕"


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n", b"\xef\xbb\xbf  \n"])
def test_read_sidecar_empty(tmp_path, data):
    path = tmp_path / "x.txt"
    path.write_bytes(data)
    assert read_sidecar(path) == ""


def test_read_sidecar_invalid_utf8(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"caption with \xff in it")
    reason = r"^caption file is not UTF-8 text \(byte 0xff at offset 13\)$"
    with pytest.raises(SidecarError, match=reason):
        read_sidecar(path)
    path.write_bytes(b"\xef\xbb\xbfok\xc3")  # truncated sequence after a BOM: file offsets
    with pytest.raises(SidecarError, match=r"byte 0xc3 at offset 5"):
        read_sidecar(path)
    path.write_bytes("no BOM".encode("utf-16-le"))
    with pytest.raises(SidecarError, match=r"byte 0x00 at offset 1; UTF-16 needs a byte-order"):
        read_sidecar(path)
    path.write_bytes(b"\xff\xfe" + b"A\x00\x00\xdc")  # UTF-16 with a lone surrogate
    with pytest.raises(SidecarError, match=r"^caption file is not valid UTF-16 text"):
        read_sidecar(path)


def test_read_sidecar_size_limit(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"a" * (64 * 1024))
    assert len(read_sidecar(path)) == 64 * 1024  # exactly the limit is fine
    path.write_bytes(b"a" * (64 * 1024 + 1))
    with pytest.raises(SidecarError, match=r"^caption file is over 65.5 kB$"):
        read_sidecar(path)
    with pytest.raises(SidecarError, match=r"over 10 B$"):
        read_sidecar(path, max_bytes=10)


def test_read_sidecar_missing_or_unreadable(tmp_path):
    with pytest.raises(SidecarError, match="vanished"):
        read_sidecar(tmp_path / "missing.txt")
    with pytest.raises(SidecarError, match="unreadable"):
        read_sidecar(tmp_path)  # a folder
    assert str(SidecarError("x")) == "x" and issubclass(SidecarError, Exception)

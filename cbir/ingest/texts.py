"""Texts that come with an image: descriptions embedded in its metadata (caption files next to it
are cbir.ingest.sidecars'). They are embedded with CLIP's text tower and indexed for keyword
search.

Runs in decoder worker processes, so it imports no torch. Nothing here forces a pixel decode:
embedded texts are read from what Pillow parsed when it opened the file.
"""

from __future__ import annotations

import re
import warnings
import xml.etree.ElementTree as ElementTree

from PIL import Image

MAX_TEXT_CHARS = 2000  # per embedded text; CLIP reads ~77 tokens, keyword search a bit more
MAX_XMP_BYTES = 1024 * 1024  # XMP packets are a few KB; larger ones are not worth parsing

# EXIF / TIFF tags
_IMAGE_DESCRIPTION, _MAKE, _MODEL = 270, 271, 272
_XP_TITLE, _XP_COMMENT, _XP_SUBJECT = 0x9C9B, 0x9C9C, 0x9C9F  # Windows Explorer, UTF-16LE
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286

_DC = "{http://purl.org/dc/elements/1.1/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

# Texts that cameras and tools write by default: they describe nothing. Compared casefolded.
_PLACEHOLDERS = frozenset(
    s.casefold()
    for s in (
        "OLYMPUS DIGITAL CAMERA",
        "SONY DSC",
        "DIGITAL CAMERA",
        "KODAK Digital Still Camera",
        "MINOLTA DIGITAL CAMERA",
        "SAMSUNG",
        "Exif_JPEG_PICTURE",
        "DCIM",
        "Camera",
        "Created with GIMP",
        "LEAD Technologies Inc. V1.01",
        "Default",
        "Untitled",
        "Image",
        "Photo",
        "Picture",
        "Description",
        "Title",
        "Comment",
        "None",
        "n/a",
    )
)
# A file name or frame number standing in for a description: "IMG_1234", "DSC01234.JPG".
_FILE_NAME_LIKE = re.compile(r"[a-z]{0,5}[_-]?\d{3,}([_-]\d+)*(\.[a-z0-9]{2,4})?", re.IGNORECASE)
# Tools sign files in their comment and description fields ("File written by Adobe Photoshop
# 5.0", "CREATOR: gd-jpeg v1.0 (using IJG JPEG v62), quality = 90"). A phrase like "created by"
# counts as a signature only with a version number or a known tool in it, so "Created by my
# son at school" stays.
_SIGNED = re.compile(
    r"(file\s+)?(written|created|generated|edited|processed|optimi[sz]ed|compressed|converted|"
    r"saved|encoded)\s+(by|with|using|in)\b|creator\s*:",
    re.IGNORECASE,
)
_VERSION = re.compile(r"\bv?\d+([.,]\d+)+\b|\bv\d+\b", re.IGNORECASE)
_SOFTWARE = (
    "adobe",
    "photoshop",
    "lightroom",
    "gimp",
    "picasa",
    "imagemagick",
    "graphicsmagick",
    "paint.net",
    "acdsee",
    "acd systems",
    "corel",
    "paintshop",
    "lead technologies",
    "intel(r) jpeg",
    "applemark",
    "google",
    "snapseed",
    "microsoft",
    "digikam",
    "darktable",
    "rawtherapee",
    "capture one",
    "dxo",
    "jpegmini",
    "libjpeg",
    "ijg",
    "gd-jpeg",
    "irfanview",
    "xnview",
    "faststone",
    "photoscape",
    "pixelmator",
    "affinity photo",
    "luminar",
    "picsart",
    "ducky",
)
# Words that go with a tool's name and say nothing of the picture ("Adobe Photoshop CS6
# (Windows)", "Intel(R) JPEG Library, version 1,5,4,36").
_SOFTWARE_WORDS = frozenset(
    "jpeg jpg png tiff library version inc ltd corp corporation co technologies software systems "
    "windows macintosh mac os linux ios android cc cs classic pro elements photo photos editor "
    "viewer image imaging for by with using tm pc edition express studio suite plus lite free "
    "trial professional premium app quality camera raw and".split()
) | frozenset(w for name in _SOFTWARE for w in name.split())
_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")
_HEX = re.compile(r"(0x)?[0-9a-f]{8,}", re.IGNORECASE)
_EDGE_PUNCTUATION = ".,;:!?\"'()[]{}<>|*#=+/\\"
# C0/C1 control characters (NUL padding, tabs, newlines) become spaces; lone surrogates (from
# broken UTF-16), BOMs and replacement characters are dropped.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_JUNK = re.compile("[\ud800-\udfff\ufeff\ufffd]+")
_SPACES = re.compile(r"\s+")


# -- cleaning -------------------------------------------------------------------------------------
def _decode_bytes(data: bytes) -> str:
    """Free-form metadata bytes of unknown charset: UTF-8 if valid, else Windows-1252 (what
    'latin-1' text from Windows tools really is), else latin-1, which never fails."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for charset in ("utf-8", "cp1252"):
        try:
            return data.decode(charset)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def _redecode_latin1(text: str) -> str:
    """Pillow decodes EXIF ASCII and PNG tEXt as latin-1, but writers often put UTF-8 there:
    undo Pillow's guess and decode the original bytes as any other metadata bytes."""
    try:
        return _decode_bytes(text.encode("latin-1"))
    except UnicodeEncodeError:  # not a latin-1 decode after all (e.g. PNG iTXt): keep it
        return text


def plain_text(text: str) -> str:
    """Control characters as spaces, junk (lone surrogates, byte-order marks, replacement
    characters) dropped, whitespace runs collapsed: how every text of an image is stored."""
    return _SPACES.sub(" ", _JUNK.sub("", _CONTROL.sub(" ", text))).strip()


def _clean(text: str) -> str:
    text = plain_text(text)
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS].rstrip()
    return text


def _is_placeholder(text: str, camera_names: set[str]) -> bool:
    key = text.casefold()
    if key in _PLACEHOLDERS or key in camera_names:
        return True
    if not any(c.isalnum() for c in text):  # "...", "-", "***"
        return True
    if _FILE_NAME_LIKE.fullmatch(text) is not None:
        return True
    return _is_id_like(text) or _is_signature(text)


def _words(text: str) -> list[str]:
    """The tokens of ``text`` that are words: letters only (hyphens and apostrophes inside),
    at least two of them, and not a long run of hex digits ("deadbeef")."""
    words = []
    for token in text.split():
        token = token.strip(_EDGE_PUNCTUATION)
        if len(token) >= 2 and _WORD.fullmatch(token) and not _HEX.fullmatch(token):
            words.append(token)
    return words


def _is_id_like(text: str) -> bool:
    """No word at all: hashes, UUIDs, serial numbers, "cmp3.10.3.2Lq3 0x756ffbf7"."""
    return not _words(text)


def _is_signature(text: str) -> bool:
    """A tool's signature: "File written by ... 5.0", or a tool's name with nothing but
    versions and tool words after it ("GIMP 2.10.30", "Adobe Photoshop CS6 (Windows)")."""
    key = text.casefold()
    signed = _SIGNED.match(key)
    if signed and (_VERSION.search(key) or any(name in key for name in _SOFTWARE)):
        return True
    name = next((n for n in _SOFTWARE if key.startswith(n)), None)
    if name is None:
        return False
    return all(w.casefold() in _SOFTWARE_WORDS for w in _words(key[len(name) :]))


def _camera_names(camera: str | None, exif) -> set[str]:
    """Casefolded strings that are only the camera's name: the given name, the EXIF make and
    model, and the leading or trailing words of the name ("Canon", "EOS 5D" of "Canon EOS 5D")."""
    names = [camera or ""]
    if exif is not None:
        make = _as_text(exif.get(_MAKE))
        model = _as_text(exif.get(_MODEL))
        names += [make, model, f"{make} {model}"]
    result: set[str] = set()
    for name in names:
        words = _clean(name).casefold().split()
        for i in range(1, len(words) + 1):
            result.add(" ".join(words[:i]))
            result.add(" ".join(words[-i:]))
    return result


# -- readers, one per kind of metadata ------------------------------------------------------------
def _as_text(value) -> str:
    """An EXIF ASCII value (str from Pillow, occasionally bytes) as text."""
    if isinstance(value, str):
        return _redecode_latin1(value)
    if isinstance(value, bytes):
        return _decode_bytes(value)
    return ""


def _as_bytes(value) -> bytes:
    """BYTE/UNDEFINED tags reach us as bytes or, depending on how they were written, a tuple of
    ints."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, int) and 0 <= v < 256 for v in value):
        return bytes(value)
    return b""


def _get_exif(image: Image.Image):
    """The image's EXIF, or None. PNG's getexif() loads the whole image to look for an eXIf
    chunk after the pixels; skip it unless one was already found before them."""
    if image.format == "PNG" and "exif" not in image.info:
        return None
    return image.getexif()  # cached by Pillow; the decoder reads it too


def _xp_texts(exif) -> list[str]:
    texts = []
    for tag in (_XP_TITLE, _XP_SUBJECT, _XP_COMMENT):
        data = _as_bytes(exif.get(tag))
        if data:
            texts.append(data.decode("utf-16-le", "replace"))
    return texts


def _user_comment(exif) -> str:
    """EXIF UserComment: an 8-byte charset code, then the text (not NUL-terminated)."""
    data = _as_bytes(exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT))
    code, body = data[:8], data[8:]
    if code == b"ASCII\0\0\0" or code == b"\0" * 8:  # undefined charset: treat as free text
        return _decode_bytes(body)
    if code == b"UNICODE\0":
        return _decode_utf16(body, getattr(exif, "endian", None))
    if code == b"JIS\0\0\0\0\0":
        for charset in ("iso2022_jp", "shift_jis", "euc_jp"):  # cameras disagree on what JIS is
            try:
                return body.decode(charset)
            except UnicodeDecodeError:
                pass
        return ""
    return _decode_bytes(data)  # no charset code at all: some tools write just the text


def _decode_utf16(data: bytes, exif_endian: str | None) -> str:
    """EXIF says UCS-2 in the file's byte order, but writers ignore that about as often as they
    follow it. A BOM decides; else the NULs of mostly-Latin text do (high bytes of ASCII come
    first in big-endian); else the EXIF byte order; else big-endian, the UTF-16 default."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16", "replace")
    even_nuls, odd_nuls = data[0::2].count(0), data[1::2].count(0)
    if even_nuls != odd_nuls and max(even_nuls, odd_nuls) * 2 >= len(data) // 2:
        big = even_nuls > odd_nuls
    else:
        big = exif_endian != "<"
    return data.decode("utf-16-be" if big else "utf-16-le", "replace")


def _xmp_texts(image: Image.Image) -> tuple[list[str], list[str]]:
    """(descriptions, titles) from the XMP packet's dc:description and dc:title."""
    packet = image.info.get("xmp")
    if isinstance(packet, tuple):  # TIFF may hand the tag over as a 1-tuple or ints
        packet = packet[0] if len(packet) == 1 else _as_bytes(packet)
    if isinstance(packet, str):
        packet = packet.encode("utf-8", "replace")
    if not isinstance(packet, bytes) or not packet or len(packet) > MAX_XMP_BYTES:
        return [], []
    # XMP never needs a DTD; refusing one rules out entity-expansion tricks whatever expat does.
    if b"<!DOCTYPE" in packet or b"<!ENTITY" in packet:
        return [], []
    packet = packet.strip(b"\x00 \t\r\n")
    try:
        root = ElementTree.fromstring(packet)
    except ElementTree.ParseError:
        # Some writers put junk around a well-formed packet: try the x:xmpmeta element alone.
        match = re.search(rb"<x:xmpmeta[\s>].*</x:xmpmeta>", packet, re.DOTALL)
        if not match:
            return [], []
        try:
            root = ElementTree.fromstring(match.group(0))
        except ElementTree.ParseError:
            return [], []
    return _dc_values(root, "description"), _dc_values(root, "title")


def _dc_values(root, name: str) -> list[str]:
    values = []
    for description in root.iter(f"{_RDF}Description"):  # the attribute shorthand
        if f"{_DC}{name}" in description.attrib:
            values.append(description.attrib[f"{_DC}{name}"])
    for element in root.iter(f"{_DC}{name}"):
        items = list(element.iter(f"{_RDF}li"))
        if not items:
            values.append(element.text or "")
            continue
        # A language alternative: the x-default entry, else the first one with text.
        default = [li for li in items if li.get(_XML_LANG, "").lower() == "x-default"]
        for li in default + items:
            if li.text and li.text.strip():
                values.append(li.text)
                break
    return values


def _info_texts(image: Image.Image) -> list[str]:
    """PNG Description/Title/Comment text chunks, and JPEG COM / GIF comments."""
    texts: list[str] = []
    by_key = {k.casefold(): k for k in image.info if isinstance(k, str)}
    for key in ("description", "title"):
        if key in by_key:
            texts.append(_info_value(image.info[by_key[key]]))
    comments = [data for marker, data in getattr(image, "applist", ()) if marker == "COM"]
    if len(comments) > 1:  # JPEG keeps only the last COM segment in info; take all of them
        texts += [_decode_bytes(c) for c in comments]
    elif "comment" in by_key:
        texts.append(_info_value(image.info[by_key["comment"]]))
    return texts


def _info_value(value) -> str:
    if isinstance(value, bytes):
        return _decode_bytes(value)
    if isinstance(value, str):
        # PNG iTXt (a str subclass) is real UTF-8; tEXt/zTXt came through latin-1.
        return value if type(value) is not str else _redecode_latin1(value)
    return ""


def embedded_texts(image: Image.Image, camera: str | None = None) -> list[str]:
    """Descriptions embedded in an opened image's metadata, cleaned, deduplicated and in a
    stable order: EXIF ImageDescription, XMP dc:description, XMP dc:title, PNG text chunks and
    JPEG/GIF comments, Windows XP* tags, EXIF UserComment.

    Works whether or not the pixels were loaded and never loads them. Never raises: broken
    metadata costs only its text. Texts that only name the camera (``camera``, or EXIF
    Make/Model) and common camera/tool placeholders are dropped."""
    with warnings.catch_warnings():  # Pillow warns about corrupt EXIF; the user can't act on it
        warnings.simplefilter("ignore")
        try:
            return _embedded_texts(image, camera)
        except Exception:  # a safety net: each reader below already contains its own failures
            return []


def _embedded_texts(image: Image.Image, camera: str | None) -> list[str]:
    try:
        exif = _get_exif(image)
    except Exception:
        exif = None
    try:
        xmp_descriptions, xmp_titles = _xmp_texts(image)
    except Exception:
        xmp_descriptions, xmp_titles = [], []
    readers = [
        lambda: [_as_text(exif.get(_IMAGE_DESCRIPTION))] if exif is not None else [],
        lambda: xmp_descriptions,
        lambda: xmp_titles,
        lambda: _info_texts(image),
        lambda: _xp_texts(exif) if exif is not None else [],
        lambda: [_user_comment(exif)] if exif is not None else [],
    ]
    try:
        camera_names = _camera_names(camera, exif)
    except Exception:  # an unreadable Make/Model: only the given name then
        camera_names = _camera_names(camera if isinstance(camera, str) else None, None)
    result: list[str] = []
    seen: set[str] = set()
    for read in readers:
        try:
            raw = read()
        except Exception:  # one broken field or packet loses only its own texts
            continue
        for text in raw:
            text = _clean(text)
            key = text.casefold()
            if text and key not in seen and not _is_placeholder(text, camera_names):
                seen.add(key)
                result.append(text)
    return result

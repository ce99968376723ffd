"""RAW photos (cbir.ingest.raw): DNGs built here (a Bayer mosaic, with or without a preview in
the first directory) read through LibRaw. The tests that read RAWs need rawpy (the media extra,
also in the test extra) and are skipped without it, failed with CBIR_REQUIRE_MEDIA=1; pairing
RAW with JPEG and the skip without the extra run everywhere."""

from __future__ import annotations

import io
import struct
import sys

import numpy as np
import pytest
from PIL import Image

from cbir.encode.spec import Preprocess
from cbir.ingest.decode import FileTask, decode_file, display_image, read_failed
from cbir.ingest.limits import BadImage
from cbir.ingest.raw import NEEDS_MEDIA, raw_image
from cbir.ingest.scan import scan
from tests.conftest import media_module, write_image

BYTE, ASCII, SHORT, LONG, RATIONAL, SRATIONAL = 1, 2, 3, 4, 5, 10
_PACK = {BYTE: "B", SHORT: "H", LONG: "I", RATIONAL: "II", SRATIONAL: "ii"}


@pytest.fixture
def rawpy():
    return media_module("rawpy")


def _ifd(entries: list, at: int) -> bytes:
    """A little-endian TIFF directory of (tag, type, values) placed at offset ``at``, its
    out-of-line values right after it."""
    entries = sorted(entries)
    head, data = [struct.pack("<H", len(entries))], b""
    data_at = at + 2 + 12 * len(entries) + 4
    for tag, kind, values in entries:
        if kind == ASCII:
            raw, count = values.encode() + b"\0", len(values) + 1
        else:
            values = values if isinstance(values, list) else [values]
            flat = [x for v in values for x in (v if isinstance(v, tuple) else (v,))]
            raw, count = struct.pack("<" + _PACK[kind] * len(values), *flat), len(values)
        if len(raw) <= 4:
            head.append(struct.pack("<HHI", tag, kind, count) + raw.ljust(4, b"\0"))
        else:
            head.append(struct.pack("<HHII", tag, kind, count, data_at + len(data)))
            data += raw + b"\0" * (len(raw) % 2)
    return b"".join(head) + struct.pack("<I", 0) + data


def make_dng(
    mosaic: np.ndarray, preview: bytes | np.ndarray | None = None, *, orientation: int = 1, size=None
) -> bytes:
    """A DNG of ``mosaic`` (uint16 RGGB Bayer data, 12 bits), with ``preview`` (JPEG bytes or an
    RGB array) in its first directory when given; ``size`` declares other sensor dimensions."""
    h, w = mosaic.shape
    rw, rh = size or (w, h)
    if isinstance(preview, np.ndarray):
        pdata, (ph, pw) = preview.tobytes(), preview.shape[:2]
        compression, photometric = 1, 2  # uncompressed RGB
    elif preview is not None:
        pdata, (pw, ph) = preview, Image.open(io.BytesIO(preview)).size
        compression, photometric = 7, 6  # JPEG, YCbCr
    first = [
        (271, ASCII, "Cbir"), (272, ASCII, "Test Camera"), (274, SHORT, orientation),
        (306, ASCII, "2021:06:05 14:03:02"), (50706, BYTE, [1, 4, 0, 0]), (50707, BYTE, [1, 1, 0, 0]), (50708, ASCII, "Cbir Test Camera"),
        (50721, SRATIONAL, [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]),
        (50728, RATIONAL, [(1, 2), (1, 1), (1, 2)]), (50778, SHORT, 21),
    ]  # fmt: skip
    if preview is not None:
        first += [
            (254, LONG, 1), (256, LONG, pw), (257, LONG, ph), (258, SHORT, [8, 8, 8]), (259, SHORT, compression),
            (262, SHORT, photometric), (277, SHORT, 3), (278, LONG, ph),
        ]  # fmt: skip
    else:  # a first directory that declares a 1x1 reduced image and holds none (LibRaw wants one)
        pdata = b""
        first += [(254, LONG, 1), (256, LONG, 1), (257, LONG, 1)]
    sensor = [
        (254, LONG, 0), (256, LONG, rw), (257, LONG, rh), (258, SHORT, 16), (259, SHORT, 1), (262, SHORT, 32803),
        (277, SHORT, 1), (278, LONG, rh), (33421, SHORT, [2, 2]), (33422, BYTE, [0, 1, 1, 2]), (50717, LONG, 4095),
        (284, SHORT, 1), (50714, LONG, 0),
    ]  # fmt: skip
    pixels = mosaic.astype("<u2").tobytes()
    # offsets depend on the directories' lengths only, not on the offsets' values: lay out twice
    strips = [(273, LONG, 0), (279, LONG, 0)] if pdata else []
    sub_at = 8 + len(_ifd([*first, (330, LONG, 0), *strips], 8))
    p_at = sub_at + len(_ifd([*sensor, (273, LONG, 0), (279, LONG, 0)], sub_at))
    s_at = p_at + len(pdata) + len(pdata) % 2
    strips = [(273, LONG, p_at), (279, LONG, len(pdata))] if pdata else []
    ifd0 = _ifd([*first, (330, LONG, sub_at), *strips], 8)
    ifd1 = _ifd([*sensor, (273, LONG, s_at), (279, LONG, len(pixels))], sub_at)
    return b"II*\0" + struct.pack("<I", 8) + ifd0 + ifd1 + pdata + b"\0" * (len(pdata) % 2) + pixels


def red_mosaic(w: int = 600, h: int = 400) -> np.ndarray:
    """Sensor data of a red scene: the red sites bright, green dim, blue dark."""
    mosaic = np.full((h, w), 300, np.uint16)
    mosaic[0::2, 0::2] = 3500
    mosaic[1::2, 1::2] = 50
    return mosaic


def jpeg(size=(300, 200), colour=(0, 0, 255), **save) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", **save)
    return out.getvalue()


def mean_rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64).mean(axis=(0, 1))


def decode(path, size: int = 64):
    st = path.stat()
    return decode_file(FileTask(path.name, str(path), st.st_size, st.st_mtime_ns), Preprocess(size=size))


# -- reading -------------------------------------------------------------------------------------
def test_the_embedded_preview_is_used_when_it_covers_the_model(rawpy, tmp_path):
    """The preview (blue) differs from the sensor data (red): the pixels show which was read."""
    path = tmp_path / "IMG_1.DNG"
    path.write_bytes(make_dng(red_mosaic(), jpeg((300, 200), (0, 0, 255))))
    read = raw_image(path.read_bytes(), 150)
    assert read.source == "preview"
    assert read.image.size == (300, 200)
    d = decode(path, size=150)
    assert d.error is None
    r, g, b = d.pixels.reshape(-1, 3).mean(axis=0)
    assert b > 200 and r < 40  # the blue preview, not the red sensor data
    assert (d.width, d.height, d.format) == (600, 400, "dng")  # the sensor's size, not the preview's
    assert d.camera == "Cbir Test Camera" and d.taken_at.isoformat() == "2021-06-05T14:03:02"


def test_a_preview_smaller_than_the_model_input_is_not_used(rawpy):
    read = raw_image(make_dng(red_mosaic(), jpeg((120, 80), (0, 0, 255))), 150)
    assert read.source == "raw"
    assert read.image.size == (300, 200)  # half size


def test_a_bitmap_preview_is_used(rawpy):
    preview = np.zeros((200, 300, 3), np.uint8)
    preview[..., 1] = 255
    read = raw_image(make_dng(red_mosaic(), preview), 150)
    assert read.source == "preview"
    r, g, b = mean_rgb(read.image)
    assert g == 255 and r == b == 0


def test_without_a_preview_the_sensor_data_is_decoded_at_half_size(rawpy, tmp_path):
    path = tmp_path / "p.dng"
    path.write_bytes(make_dng(red_mosaic()))
    read = raw_image(path.read_bytes(), 64)
    assert read.source == "raw"
    assert read.image.size == (300, 200) and read.image.mode == "RGB"
    r, g, b = mean_rgb(read.image)
    assert r > 200 and g < 100 and b < 100  # the red scene, white-balanced as shot
    d = decode(path)
    assert d.error is None and d.pixels.shape == (64, 64, 3)
    assert d.camera == "Cbir Test Camera"  # from the DNG's own directory


@pytest.mark.parametrize("with_preview", [True, False])
def test_the_orientation_is_applied(rawpy, with_preview):
    """Orientation 6: shot with the camera turned; preview and sensor data come out upright."""
    data = make_dng(red_mosaic(), jpeg((300, 200)) if with_preview else None, orientation=6)
    read = raw_image(data, 200)  # the preview as it is: not drafted down
    assert read.source == ("preview" if with_preview else "raw")
    assert read.image.size == (200, 300)
    assert (read.width, read.height) == (400, 600)


def test_serve_thumbnails_show_the_preview(rawpy):
    picture = display_image(make_dng(red_mosaic(), jpeg((300, 200), (0, 0, 255))), 160, fmt="dng")
    assert picture.size == (160, 107)
    assert mean_rgb(picture)[2] > 200


# -- hostile files -------------------------------------------------------------------------------
def test_broken_raws_are_skipped_with_a_reason(rawpy, fake_library, tmp_path):
    folder = tmp_path / "raws"
    folder.mkdir()
    whole = make_dng(red_mosaic())
    (folder / "truncated.dng").write_bytes(whole[: len(whole) // 2])
    (folder / "random.NEF").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())
    (folder / "empty.cr2").write_bytes(b"")
    write_image(folder / "fine.jpg")
    lib = fake_library()
    report = lib.ingest(folder)
    assert (report.added, report.skipped) == (1, 3)
    reasons = {p.name: why for p, why in lib.status(with_skipped=True).skipped_files}
    assert reasons["truncated.dng"].startswith("corrupt or unsupported RAW photo: LibRaw: ")
    assert reasons["random.NEF"] == "corrupt or unsupported RAW photo: LibRaw: Unsupported file format or not RAW file"
    assert reasons["empty.cr2"].startswith("corrupt or unsupported RAW photo: LibRaw: ")
    assert all("\n" not in why for why in reasons.values())


def test_a_broken_preview_falls_back_to_the_sensor_data(rawpy):
    broken = jpeg((300, 200))[:200] + b"\0" * 3000  # a JPEG header, then nothing decodable
    read = raw_image(make_dng(red_mosaic(), broken), 100)
    assert read.source == "raw"
    assert mean_rgb(read.image)[0] > 200


def test_a_raw_declaring_huge_dimensions_is_refused_before_decoding(rawpy):
    """20000 x 15000 declared over 480 KB of data: refused from the sizes LibRaw reads from the
    header (600 MB of mosaic alone), not found out by allocating it."""
    with pytest.raises(BadImage, match=r"^refused: a 20000x15000 RAW photo without a usable preview needs .* limit$"):
        raw_image(make_dng(red_mosaic(), size=(20000, 15000)), 64)


def test_the_decode_memory_limit_applies_to_ordinary_raws(rawpy):
    data = make_dng(red_mosaic())  # 600 x 400: about 1.3 MB to decode at half size
    assert raw_image(data, 64, max_bytes=2_000_000).source == "raw"
    with pytest.raises(BadImage, match="over the 1 MB limit"):
        raw_image(data, 64, max_bytes=1_000_000)


# -- without the media extra -----------------------------------------------------------------------
def test_without_rawpy_a_raw_is_a_skip_naming_the_extra(fake_library, tmp_path, monkeypatch):
    folder = tmp_path / "raws"
    folder.mkdir()
    (folder / "IMG_2.CR2").write_bytes(b"II*\0not really a raw")
    monkeypatch.setitem(sys.modules, "rawpy", None)  # import rawpy raises ImportError
    monkeypatch.setattr("cbir.ingest.raw.media_installed", lambda: False)
    lib = fake_library()
    report = lib.ingest(folder)
    assert (report.added, report.skipped) == (0, 1)
    [(path, why)] = lib.status(with_skipped=True).skipped_files
    assert why == NEEDS_MEDIA == "RAW photo: reading it needs the media extra: pip install 'cbir[media]'"
    assert not read_failed(why)  # not retried while the extra is missing ...
    monkeypatch.setattr("cbir.ingest.raw.media_installed", lambda: True)
    assert read_failed(why)  # ... and retried once it is installed


# -- RAW + JPEG pairs ------------------------------------------------------------------------------
def test_a_raw_beside_a_jpeg_of_the_same_name_is_listed_with_it(tmp_path):
    folder = tmp_path / "shots"
    write_image(folder / "IMG_1.JPG")
    (folder / "IMG_1.CR2").write_bytes(b"raw")
    (folder / "img_1.dng").write_bytes(b"raw too")  # case aside
    (folder / "IMG_2.NEF").write_bytes(b"a RAW on its own")
    write_image(folder / "sub" / "IMG_2.jpg")  # another folder: no pair
    files = {f.path: f for f in scan(folder).files}
    assert sorted(files) == ["IMG_1.JPG", "IMG_2.NEF", "sub/IMG_2.jpg"]
    assert files["IMG_1.JPG"].companions == ("IMG_1.CR2", "img_1.dng")
    assert files["IMG_1.JPG"].extra == {"raw": "IMG_1.CR2, img_1.dng"}
    assert files["IMG_2.NEF"].companions == () and files["sub/IMG_2.jpg"].extra is None


def test_a_raw_jpeg_pair_is_one_image(fake_library, tmp_path):
    folder = tmp_path / "shots"
    write_image(folder / "IMG_1.JPG", seed=1)
    (folder / "IMG_1.CR2").write_bytes(b"never read")
    lib = fake_library()
    report = lib.ingest(folder)
    assert (report.added, report.skipped) == (1, 0)
    [hit] = lib.search("x", k=5)
    assert hit.path.name == "IMG_1.JPG" and hit.format == "jpeg"
    assert lib.catalog.image_file(hit.id).extra == {"raw": "IMG_1.CR2"}  # shown in serve's details

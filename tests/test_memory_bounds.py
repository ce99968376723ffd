"""A small file must not take gigabytes (issue 18): images are refused by the memory their
decoding needs (worked out from the header), files by their size and type before they are read,
and big images that are allowed are reduced without full-size copies. The crafted files are
written here without ever holding their pixels: PNGs row by row through zlib, JPEGs by patching
a small one's header, large files sparse."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.encode.spec import Preprocess
from cbir.ingest import decode, limits, pixels
from cbir.ingest.decode import (
    BadImage,
    FileTask,
    decode_file,
    display_image,
    open_image,
)
from cbir.ingest.limits import MAX_DECODE_BYTES, MAX_FILE_BYTES
from cbir.ingest.query_image import read_query_image
from tests.conftest import cbir_env, run_cbir, write_image

PP = Preprocess(size=32)
GB = 2**30


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(
    width: int,
    height: int,
    bit_depth: int,
    color_type: int,
    channels: int,
    rows: bool = True,
    before_pixels: bytes = b"",
) -> bytes:
    """A PNG of one mid-grey colour. ``rows=False`` writes only the header and a token of pixel
    data: enough for a check that must refuse the file before decoding it."""
    row = b"\0" + b"\x80" * (width * channels * bit_depth // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height if rows else 1)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + before_pixels + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _progressive_jpeg(width: int, height: int) -> bytes:
    """A small progressive JPEG whose header claims ``width`` x ``height``."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(out, "JPEG", progressive=True)
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc2")  # progressive start of frame: length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
        f.truncate(size)
    return path


def _texts_png(*chunks: bytes) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(out, "PNG")
    data = out.getvalue()
    at = data.index(b"IDAT") - 4
    return data[:at] + b"".join(chunks) + data[at:]


def _in_time(call, seconds: float = 20):
    """call() in a thread: what it returned or raised, failing the test if it blocks (a FIFO)."""
    box = {}

    def run():
        try:
            box["value"] = call()
        except BaseException as e:  # handed to the test
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    return box


# -- decoded bytes, from the header ------------------------------------------------------------
@pytest.mark.parametrize(
    "data, kind, needed",
    [
        (_png(13000, 13000, 16, 0, 1, rows=False), "16-bit greyscale PNG", "33[89]"),
        (_png(13000, 13000, 8, 6, 4, rows=False), "RGBA PNG", "67[67]"),
        (_progressive_jpeg(13000, 13000), "RGB JPEG", "52[89]"),  # its DCT coefficients, even at 1/8 scale
    ],
    ids=["16-bit-png", "rgba-png", "progressive-jpeg"],
)
def test_an_image_is_refused_by_the_memory_its_decoding_needs(data, kind, needed):
    for decode_it in (lambda: open_image(data, PP), lambda: display_image(data, 256)):
        with pytest.raises(BadImage) as e:
            decode_it()
        message = str(e.value)
        assert message.startswith(f"refused: a 13000x13000 {kind} image needs "), message
        assert re.search(f"needs {needed} MB to decode", message), message
        assert f"over the {MAX_DECODE_BYTES // 10**6} MB limit" in message and "\n" not in message


def test_big_camera_jpegs_still_decode_at_reduced_size():
    """A sequential (camera) JPEG at the pixel limit is decoded at 1/8 scale: far under the budget."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 220)).save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 10000, 17000)  # 170 MP, only the header
    pixels, w, h, *_ = open_image(bytes(data), PP)  # its scan data ends early: libjpeg pads it
    assert (w, h) == (17000, 10000) and pixels.shape == (32, 32, 3)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "PT", "I;16", "I;16-dark", "L", "CMYK", "1"])
@pytest.mark.parametrize("factor", [1, 3])
def test_conversion_in_strips_equals_converting_at_once(monkeypatch, mode, factor):
    """Big images are converted to RGB a few rows at a time (and box-reduced): the result must be
    the one converting the whole image at once gives."""
    rng = np.random.default_rng(7)
    if mode.startswith("I;16"):
        values = rng.integers(0, 256, (101, 67)).astype(np.uint16)
        if mode == "I;16":
            values[-1, -1] = 60000  # one bright pixel in the last strip sets the scale of them all
        image = Image.fromarray(values)
    else:
        image = Image.fromarray(rng.integers(0, 256, (101, 67, 4), dtype=np.uint8), "RGBA")
        image = image.convert("P") if mode == "PT" else image.convert(mode)
        if mode == "PT":
            image.info["transparency"] = 3
    top = 65535.0 if mode == "I;16" else 255.0
    whole = pixels._rgb_strip(image, top)
    expected = whole.reduce(factor) if factor > 1 else whole
    monkeypatch.setattr(pixels, "_STRIP_BYTES", 67 * 4 * 5)  # five rows a strip
    assert image.mode != "RGB"
    np.testing.assert_array_equal(np.asarray(pixels.to_rgb(image, factor)), np.asarray(expected))


def test_a_big_allowed_image_is_reduced_before_it_is_converted(monkeypatch):
    """Over REDUCE_ABOVE_BYTES an image is box-reduced to twice the model input first; the
    result stays close to the exact transform."""
    values = (np.add.outer(np.arange(600), np.arange(400)) * 50).astype(np.uint16)  # a 16-bit ramp
    out = io.BytesIO()
    Image.fromarray(values).save(out, "PNG")
    exact = open_image(out.getvalue(), PP)[0]
    monkeypatch.setattr(limits, "REDUCE_ABOVE_BYTES", 1000)
    calls = []
    real = decode.to_rgb
    monkeypatch.setattr(decode, "to_rgb", lambda image, factor=1: calls.append(factor) or real(image, factor))
    reduced = open_image(out.getvalue(), PP)[0]
    assert calls == [400 // (2 * PP.size)]
    assert np.abs(reduced.astype(int) - exact.astype(int)).max() <= 3


# -- files: type and size before reading -------------------------------------------------------
def test_a_fifo_or_device_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO (named pipe)"), (Path("/dev/zero"), "a character device")):
        box = _in_time(lambda: read_query_image(path, PP))  # noqa: B023 (called here)
        assert isinstance(box.get("error"), BadImage) and str(box["error"]) == f"not a regular file: {kind}"
    result = _in_time(lambda: decode_file(FileTask("fifo.jpg", str(fifo), 0, 0), PP))["value"]
    assert result.error == "not a regular file: a FIFO (named pipe)" and not result.content_hash
    with pytest.raises(IsADirectoryError):  # a folder keeps its own error (callers word it)
        read_query_image(tmp_path, PP)


def test_a_file_over_the_size_cap_is_refused_unread(tmp_path):
    big = _sparse(tmp_path / "big.jpg", MAX_FILE_BYTES + 1)  # sparse: no disk, no memory
    message = f"over the {MAX_FILE_BYTES // 10**6} MB limit for an image"
    with pytest.raises(BadImage, match=message):
        read_query_image(big, PP)
    result = decode_file(FileTask("big.jpg", str(big), MAX_FILE_BYTES + 1, 0), PP)
    assert result.error == f"refused: the file is {MAX_FILE_BYTES + 1:,} bytes, {message}"
    assert not result.content_hash  # refused before reading (hashing) it


def test_a_png_with_a_huge_text_chunk_keeps_its_pixels_and_other_texts(fake_library, tmp_path):
    huge = zlib.compress(b"spam " * 400_000)  # 2 MB once inflated: over Pillow's MAX_TEXT_CHUNK
    data = _texts_png(
        _chunk(b"tEXt", b"Description\0a red kite over the hills"),
        _chunk(b"zTXt", b"Comment\0\0" + huge),
        _chunk(b"iTXt", b"Title\0\1\0en\0\0" + huge),
    )
    pixels, w, h, fmt, _, _, texts = open_image(data, PP)
    assert (w, h, fmt) == (40, 30, "png") and pixels.shape == (32, 32, 3)
    assert texts == ("a red kite over the hills",)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "kite.png").write_bytes(data)
    report = fake_library().ingest(folder)
    assert (report.added, report.skipped) == (1, 0)


# -- scanning: what is named like an image but is no file is a recorded skip ----------------------
def test_fifos_and_dangling_symlinks_are_recorded_skips(fake_library, tmp_path):
    folder = tmp_path / "photos"
    write_image(folder / "real.jpg")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(folder / "not-an-image")  # like any other non-image file: not listed
    lib = fake_library()
    report = _in_time(lambda: lib.ingest(folder))["value"]
    assert (report.added, report.skipped) == (1, 2)
    reasons = {p.name: r for p, r in lib.status(with_skipped=True).skipped_files}
    assert reasons == {
        "pipe.jpg": "not a regular file: a FIFO (named pipe)",
        "gone.png": f"dangling symlink (to {tmp_path / 'nowhere.png'}, which does not exist)",
    }
    (folder / "gone.png").unlink()  # fixed: the skip goes
    assert lib.ingest(folder).skipped_total == 1


# -- the goal, measured: peak RSS of real processes on the crafted files -------------------------
_MEASURE = """
import os, resource, signal, subprocess, sys
p = subprocess.Popen(sys.argv[2:], start_new_session=True)
try:
    code = p.wait(float(sys.argv[1]))
except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    code = "timeout"
print(f"rc={code} peak_kb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
"""


def _measured(*args: str, timeout: float = 240):
    """A cbir command's (exit code, peak RSS in bytes of it and its workers, stdout, stderr),
    as run_cbir runs it, under a small parent that reads its children's peak RSS."""
    env = cbir_env()
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(timeout), sys.executable, "-m", "cbir", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout + 60,
    )
    *err, last = done.stderr.rstrip("\n").split("\n")
    rc, peak = (part.split("=")[1] for part in last.split())
    return rc, int(peak) * 1024, done.stdout, "\n".join(err)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crafted")
    (folder / "grey16.png").write_bytes(_png(13000, 13000, 16, 0, 1))  # 169 MP of 16-bit in ~350 KB
    (folder / "rgba.png").write_bytes(_png(13000, 13000, 8, 6, 4))
    (folder / "grey16-allowed.png").write_bytes(_png(12000, 12000, 16, 0, 1))  # 288 MB: reduced
    (folder / "progressive.jpg").write_bytes(_progressive_jpeg(13000, 13000))
    _sparse(folder / "sparse.jpg", 2_500_000_000)
    (folder / "bigtext.png").write_bytes(_texts_png(_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"x" * 2_000_000))))
    os.mkfifo(folder / "fifo.jpg")
    (folder / "dangling.jpg").symlink_to(folder / "missing.jpg")
    return folder


@pytest.mark.slow
def test_peak_memory_of_ingest_and_image_search_on_crafted_files(crafted, tmp_path):
    from cbir.synthetic import make_gallery

    library = str(tmp_path / "lib")
    make_gallery(tmp_path / "gallery", 3, seed=0)
    assert (
        run_cbir(
            "ingest", str(tmp_path / "gallery"), "--library", library, "--model", "cbir-tiny", "--quiet"
        ).returncode
        == 0
    )
    rc, peak, stdout, stderr = _measured("ingest", str(crafted), "--library", library, "--json")
    assert rc == "0" and "Traceback" not in stderr, stderr
    assert peak < 1.5 * GB, f"ingest peaked at {peak / GB:.2f} GB"
    report = json.loads(stdout)
    assert (report["added"], report["skipped"]) == (2, 6)  # bigtext.png, grey16-allowed.png
    for path in [*sorted(crafted.iterdir()), Path("/dev/zero")]:
        rc, peak, stdout, stderr = _measured("search", "--library", library, "--image", str(path), "--json")
        assert peak < 1.5 * GB, f"search --image {path.name} peaked at {peak / GB:.2f} GB"
        assert rc in ("0", "1", "2"), (path.name, rc)
        if rc != "0":  # one line, no traceback
            assert stderr.startswith("Error: ") and stderr.count("\n") == 0, (path.name, stderr)

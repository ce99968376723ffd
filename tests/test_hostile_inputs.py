"""Odd and hostile files in a photo folder: each becomes a correct image or a recorded skip with
its reason; none crashes the run; unchanged failures are not retried, unless --retry-failed."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from cbir.ingest.decode import HEIF
from tests.conftest import run_cbir


def _rgb(seed: int, size=(64, 48)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _jpeg(seed: int, **save) -> bytes:
    out = io.BytesIO()
    _rgb(seed).save(out, "JPEG", **save)
    return out.getvalue()


def _broken_exif(seed: int) -> bytes:
    data = _jpeg(seed)
    garbage = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + b"\xff" * 40  # an IFD pointing nowhere
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(garbage) + 2) + garbage + data[2:]


def _animated(fmt: str) -> bytes:
    out = io.BytesIO()
    frames = [_rgb(i) for i in range(3)]
    frames[0].save(out, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


GOOD = {
    "png-named.jpg": lambda: _save(_rgb(1), "PNG"),  # the content decides, not the name
    "cmyk.jpg": lambda: _save(_rgb(2).convert("CMYK"), "JPEG"),
    "sixteen-bit.png": lambda: _save(
        Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)), "PNG"
    ),
    "palette-transparent.png": lambda: _save(_rgb(3).convert("P"), "PNG", transparency=0),
    "alpha.png": lambda: _save(_rgb(4).convert("RGBA"), "PNG"),
    "animated.gif": lambda: _animated("GIF"),
    "animated.webp": lambda: _animated("WEBP"),
    "broken-exif.jpg": lambda: _broken_exif(5),
    "photo.avif": lambda: _save(_rgb(6), "AVIF"),
    ("x" * 240) + ".jpg": lambda: _jpeg(7),
}
BAD = {
    "empty.jpg": (lambda: b"", "empty file"),
    "truncated.jpg": (lambda: _jpeg(8)[:300], "corrupt or truncated"),
    "text.png": (lambda: b"hello, not an image at all\n" * 10, "not an image"),
    "photoshop.png": (
        lambda: _save(_rgb(9), "PSD") if "PSD" in Image.SAVE else b"8BPS\x00\x01" + b"\x00" * 40,
        "not an image",
    ),
    "bomb.png": (lambda: _save(Image.new("1", (20000, 20000)), "PNG"), "refused"),
}


@pytest.fixture
def hostile(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, make in GOOD.items():
        (folder / name).write_bytes(make())
    if HEIF:
        (folder / "iphone.heic").write_bytes(_save(_rgb(10), "HEIF"))
    for name, (make, _) in BAD.items():
        (folder / name).write_bytes(make())
    (folder / "folder.jpg").mkdir()  # a directory named like an image is walked, not read
    (folder / "folder.jpg" / "inside.jpg").write_bytes(_jpeg(11))
    return folder


def test_every_odd_file_is_an_image_or_a_recorded_skip(fake_library, hostile):
    lib = fake_library()
    report = lib.ingest(hostile)
    good = len(GOOD) + (1 if HEIF else 0) + 1  # and folder.jpg/inside.jpg
    assert (report.added, report.skipped) == (good, len(BAD))
    reasons = {path.name: why for path, why in lib.status(with_skipped=True).skipped_files}
    for name, (_, reason) in BAD.items():
        assert reason in reasons[name], (name, reasons[name])
    images = {info.path.name: info for info in lib.catalog.images(lib.catalog.vector_ids("images")).values()}
    assert images["animated.gif"].format == "gif" and images["photo.avif"].format == "avif"
    assert images["cmyk.jpg"].width == 64 and images["png-named.jpg"].format == "png"
    # unchanged failures are not tried again; --retry-failed tries them
    again = lib.ingest(hostile)
    assert (again.added, again.skipped, again.unchanged) == (0, 0, good + len(BAD))
    retried = lib.ingest(hostile, retry_failed=True)
    assert (retried.added, retried.skipped) == (0, len(BAD))
    assert lib.catalog.count_skipped() == len(BAD)


def test_the_cli_records_the_same_and_retries_on_request(hostile, tmp_path):
    library = str(tmp_path / "lib")
    out = run_cbir("ingest", str(hostile), "--library", library, "--model", "cbir-tiny", "--json")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    first = __import__("json").loads(out.stdout)
    assert first["skipped"] == len(BAD)
    out = run_cbir("ingest", str(hostile), "--library", library, "--retry-failed", "--json")
    assert out.returncode == 0 and __import__("json").loads(out.stdout)["skipped"] == len(BAD)


def test_a_file_that_could_not_be_read_is_tried_again_next_run(fake_library, tmp_path, monkeypatch):
    """Permission denied (simulated: the tests run as root, which ignores permissions) says
    nothing about the content, unlike a corrupt file: the next run tries it again by itself."""
    import builtins

    from cbir.ingest import limits

    photos = tmp_path / "photos"
    locked = photos / "locked.jpg"
    locked.parent.mkdir()
    locked.write_bytes(_jpeg(1))
    (photos / "broken.jpg").write_bytes(_jpeg(2)[:300])

    def no_access(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied")
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(limits, "open", no_access, raising=False)
    lib = fake_library()
    first = lib.ingest(photos)
    assert first.added == 0 and first.skipped == 2
    assert dict((p.name, r) for p, r in lib.catalog.skipped())["locked.jpg"] == "unreadable: Permission denied"
    monkeypatch.setattr(limits, "open", builtins.open)  # permissions fixed; the file is unchanged
    second = lib.ingest(photos)
    assert second.added == 1 and second.skipped == 0  # the corrupt one, unchanged, is not retried
    assert [p.name for p, _ in lib.catalog.skipped()] == ["broken.jpg"]
    lib.close()

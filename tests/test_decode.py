"""Decoding: the worker-side preprocessing equals open_clip's eval transform; odd images work."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cbir.encode.spec import Preprocess
from cbir.ingest.decode import BadImage, open_image
from cbir.ingest.pixels import to_model_pixels


def _normalised(pixels: np.ndarray, pp: Preprocess) -> np.ndarray:
    x = pixels.astype(np.float32).transpose(2, 0, 1) / 255.0
    return (x - np.array(pp.mean, np.float32)[:, None, None]) / np.array(pp.std, np.float32)[:, None, None]


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("size", [(97, 61), (61, 97), (300, 300), (224, 500), (33, 20)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocessing_matches_open_clip(mode, size, interpolation):
    from open_clip.transform import image_transform

    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    pp = Preprocess(size=64, resize_mode=mode, interpolation=interpolation)
    reference = image_transform(
        64, is_train=False, mean=pp.mean, std=pp.std, resize_mode=mode, interpolation=interpolation
    )(image).numpy()
    ours = _normalised(to_model_pixels(image, pp), pp)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


PP = Preprocess(size=32)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    # A picture whose top-left quarter is white; after transposition the white corner must be
    # wherever the orientation tag says the viewer sees it.
    image = Image.new("RGB", (64, 32), "black")
    image.paste((255, 255, 255), (0, 0, 16, 16))
    exif = Image.Exif()
    exif[274] = orientation
    data = _encode(image, "PNG", exif=exif.tobytes())
    expected = to_model_pixels(
        __import__("PIL.ImageOps").ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"), PP
    )
    pixels, w, h, *_ = open_image(data, PP)
    np.testing.assert_array_equal(pixels, expected)
    assert (w, h) == ((32, 64) if orientation >= 5 else (64, 32))


def test_odd_modes_become_sensible_rgb():
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    pixels = open_image(_encode(rgba, "PNG"), PP)[0]
    assert pixels.mean() == pytest.approx(255, abs=1)  # composited on white
    sixteen = Image.fromarray(np.full((40, 40), 65535, dtype=np.uint16))
    assert open_image(_encode(sixteen, "PNG"), PP)[0].mean() == pytest.approx(255, abs=1)
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))
    pixels = open_image(_encode(cmyk, "JPEG"), PP)[0]
    assert pixels[..., 0].mean() > 200 and pixels[..., 1].mean() < 60
    palette = Image.new("P", (40, 40), 3)
    assert open_image(_encode(palette, "GIF"), PP)[0].shape == (32, 32, 3)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in ("blue", "yellow")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    pixels = open_image(buffer.getvalue(), PP)[0]
    assert pixels[..., 2].mean() > 200 and pixels[..., 0].mean() < 60


def test_jpeg_draft_decode_stays_close_to_full_decode():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((1600, 1200), Image.BICUBIC)  # smooth, camera-like
    data = _encode(image, "JPEG", quality=92)
    drafted = open_image(data, Preprocess(size=64))[0].astype(float)
    full = to_model_pixels(Image.open(io.BytesIO(data)).convert("RGB"), Preprocess(size=64)).astype(float)
    assert np.abs(drafted - full).mean() < 3.0


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"hello, world", "not an image"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "corrupt or truncated"),
    ],
)
def test_bad_bytes_give_a_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        open_image(data, PP)


def test_pixel_limit_is_checked_before_decoding():
    data = _encode(Image.new("1", (5000, 5000)), "PNG")
    with pytest.raises(BadImage, match="decompression bomb"):
        open_image(data, PP, max_pixels=1_000_000)

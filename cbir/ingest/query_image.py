"""Query images (the search's --image): decoded like ingested ones and embedded with the model,
every unreadable one a one-line usage error. A query may use a box of its image (--crop): the
picture is decoded upright, cut to the box, then brought to the model's pixels as any image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from cbir.encode.spec import Encoder, Preprocess
from cbir.errors import UsageError
from cbir.ingest.decode import MAX_PIXELS, BadImage, open_image, upright_picture
from cbir.ingest.limits import read_image_file
from cbir.ingest.pixels import to_model_pixels
from cbir.ingest.raw import is_raw_name, raw_image

# A box's shorter side keeps at least the model's input size for pictures up to this elongated
# (4:1); a longer panorama's box is upscaled a little, as a small picture is.
_ASPECT = 4

Box = tuple[float, float, float, float]  # x, y, w, h: fractions of the upright picture (cbir.query.Crop)


def embed_image_data(image, encoder: Encoder, crop: Box | None = None) -> np.ndarray:
    """The vector of an image given as bytes (a :class:`cbir.query.ImageData`), of its box
    ``crop`` alone when given."""
    try:
        if crop is None:
            pixels = open_image(image.data, encoder.preprocess)[0]
        else:
            pixels = cropped_pixels(_upright(image.data, encoder.preprocess, crop), crop, encoder.preprocess)
    except BadImage as e:
        raise UsageError(f"cannot use the {image} as a query image: {e}") from None
    return encoder.encode_images(pixels[None])[0]


def embed_image_file(path: Path, given, encoder: Encoder, crop: Box | None = None) -> np.ndarray:
    """The vector of the image file at ``path`` (``given`` by the user, as errors name it), of
    its box ``crop`` alone when given."""
    pp = encoder.preprocess
    try:
        if crop is None:
            pixels = read_query_image(path, pp)
        elif is_raw_name(path.name):
            picture = raw_image(read_image_file(path), _side(pp, crop), longest=True).image
            pixels = cropped_pixels(picture, crop, pp)
        else:
            pixels = cropped_pixels(_upright(read_image_file(path), pp, crop), crop, pp)
    except FileNotFoundError:
        raise UsageError(f"query image not found: {given}") from None
    except (OSError, BadImage) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise UsageError(f"cannot use {given} as a query image: {reason}") from None
    return encoder.encode_images(pixels[None])[0]


def read_query_image(path: Path, pp: Preprocess, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Model pixels for an image given as a query; raises OSError or BadImage."""
    if is_raw_name(path.name):
        return to_model_pixels(raw_image(read_image_file(path), pp.size).image, pp)
    return open_image(read_image_file(path), pp, max_pixels)[0]


def cropped_pixels(picture: Image.Image, crop: Box, pp: Preprocess) -> np.ndarray:
    """Model pixels of the box ``crop`` of an upright RGB picture: whole pixels, at least one,
    then the model's own resize and crop (cbir.ingest.pixels, as for every image)."""
    width, height = picture.size
    x, y, w, h = crop
    left, top = min(width - 1, math.floor(x * width)), min(height - 1, math.floor(y * height))
    right = max(left + 1, min(width, math.ceil((x + w) * width)))
    bottom = max(top + 1, min(height, math.ceil((y + h) * height)))
    return to_model_pixels(picture.crop((left, top, right, bottom)), pp)


def _side(pp: Preprocess, crop: Box) -> int:
    """The longest side to decode a picture at so that its box still covers the model's input."""
    return math.ceil(pp.size * _ASPECT / min(crop[2], crop[3]))


def _upright(data: bytes, pp: Preprocess, crop: Box) -> Image.Image:
    """The picture as displayed, decoded only as large as the box needs (ingest's decoding and
    checks, asked for the picture instead of model pixels)."""
    return upright_picture(data, _side(pp, crop))

"""Query images (the search's --image): decoded like ingested ones and embedded with the model,
every unreadable one a one-line usage error."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbir.encode.spec import Encoder
from cbir.errors import UsageError
from cbir.ingest.decode import BadImage, open_image, read_query_image


def embed_image_data(image, encoder: Encoder) -> np.ndarray:
    """The vector of an image given as bytes (a :class:`cbir.query.ImageData`)."""
    try:
        pixels = open_image(image.data, encoder.preprocess)[0]
    except BadImage as e:
        raise UsageError(f"cannot use the {image} as a query image: {e}") from None
    return encoder.encode_images(pixels[None])[0]


def embed_image_file(path: Path, given, encoder: Encoder) -> np.ndarray:
    """The vector of the image file at ``path`` (``given`` by the user, as errors name it)."""
    try:
        pixels = read_query_image(path, encoder.preprocess)
    except FileNotFoundError:
        raise UsageError(f"query image not found: {given}") from None
    except (OSError, BadImage) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise UsageError(f"cannot use {given} as a query image: {reason}") from None
    return encoder.encode_images(pixels[None])[0]

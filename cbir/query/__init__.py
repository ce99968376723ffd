"""Queries: what users type or send, parsed before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cbir.errors import UsageError


@dataclass(frozen=True)
class ImageData:
    """A query image given as bytes rather than a file (an upload to ``cbir serve``); decoded
    with the same format and decompression-bomb checks as a file."""

    data: bytes = field(repr=False)
    name: str = "uploaded image"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Query:
    """One search: a text (which may combine terms: ``"dog" + "snow" - "indoors"``), an image
    file, an image already in the library (``like``), or an image or like plus text terms."""

    text: str | None = None
    image: Path | str | ImageData | None = None
    like: Path | str | None = None

    def __post_init__(self):
        if self.text is None and self.image is None and self.like is None:
            raise UsageError("a query needs a text, an image or a library image (--like)")
        if self.image is not None and self.like is not None:
            raise UsageError('give --image or --like, not both (combine with text: --image a.jpg + "in winter")')
        if self.text is not None and not self.text.strip() and self.image is None and self.like is None:
            raise UsageError("empty query text")

    def expression(self):
        from cbir.query.expression import Term, parse_expression

        first = None
        if self.image is not None:
            first = Term(1.0, image=self.image if isinstance(self.image, ImageData) else str(self.image))
        elif self.like is not None:
            first = Term(1.0, like=str(self.like))
        return parse_expression(self.text, first=first)

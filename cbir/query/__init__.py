"""Queries: what users type or send, parsed before anything is loaded."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from cbir.errors import UsageError


@dataclass(frozen=True)
class ImageData:
    """A query image given as bytes rather than a file (an upload to ``cbir serve``); decoded
    with the same format and decompression-bomb checks as a file."""

    data: bytes = field(repr=False)
    name: str = "uploaded image"

    def __str__(self) -> str:
        return self.name


class Crop(NamedTuple):
    """A box of a query image, relative to the image as displayed (upright): left, top, width
    and height, each a fraction of the image's width or height. Relative, so that the box drawn
    on a preview of any size, or typed from what one sees, means the same pixels of the file."""

    x: float
    y: float
    w: float
    h: float

    @classmethod
    def parse(cls, text: str, option: str = "--crop") -> Crop:
        """``x,y,w,h`` (``0.5,0,0.5,1``: the right half), checked; a one-line UsageError if not."""
        parts = [p.strip() for p in str(text).split(",")]
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) != 4:
            raise UsageError(f"{option} {text}: expected four numbers x,y,w,h (fractions of the image: 0.5,0,0.5,1)")
        x, y, w, h = numbers
        return cls.checked(x, y, w, h, option=option)

    @classmethod
    def checked(cls, x: float, y: float, w: float, h: float, option: str = "--crop") -> Crop:
        box = cls(float(x), float(y), float(w), float(h))
        shown = ",".join(_number(v) for v in box)
        if not all(math.isfinite(v) for v in box):
            raise UsageError(f"{option} {shown}: the numbers must be finite")
        if not (0 <= box.x < 1 and 0 <= box.y < 1):
            raise UsageError(f"{option} {shown}: x and y are fractions of the image, from 0 to below 1")
        if not (0 < box.w <= 1 and 0 < box.h <= 1):
            raise UsageError(f"{option} {shown}: w and h are fractions of the image, above 0 and at most 1")
        # a small tolerance: a box dragged to the edge may sum to 1.0000000000000002
        if box.x + box.w > 1 + 1e-9 or box.y + box.h > 1 + 1e-9:
            raise UsageError(f"{option} {shown}: the box runs off the image (x+w and y+h must be at most 1)")
        return box

    def __str__(self) -> str:
        return ",".join(_number(v) for v in self)


def _number(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)


PathLike = Path | str


@dataclass(frozen=True)
class Query:
    """One search: a text (which may combine terms: ``"dog" + "snow" - "indoors"``), an image
    file (``image``, optionally cropped to ``crop``), images already in the library that results
    should look like (``like``) or not (``unlike``), or several of these together. ``like`` and
    ``unlike`` are relevance feedback, combined with the rest by a Rocchio update
    (:mod:`cbir.query.feedback`). One ``like`` without ``image`` or ``unlike`` is what it always
    was: the library image as the query's first term, weight 1, words added to it by query
    arithmetic (``like=a.jpg, text='+ "in winter"'``); so feedback starts with a second liked
    image, an unliked one, or a liked one beside a query image."""

    text: str | None = None
    image: PathLike | ImageData | None = None
    like: PathLike | Sequence[PathLike] | None = None
    unlike: PathLike | Sequence[PathLike] | None = None
    crop: Crop | tuple[float, float, float, float] | str | None = None  # a str: "x,y,w,h"

    def __post_init__(self):
        # one path or several, stored as a tuple either way
        for name in ("like", "unlike"):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(_paths(value)))
        if self.text is None and self.image is None and not self.like:
            if self.unlike:
                raise UsageError("--unlike says what results should not look like: give a query or --like too")
            raise UsageError("a query needs a text, an image or a library image (--like)")
        if self.text is not None and not self.text.strip() and self.image is None and not self.like:
            raise UsageError("empty query text")
        if self.crop is not None:
            if self.image is None:
                raise UsageError("--crop is a box of the query image: give --image with it")
            box = Crop.parse(self.crop) if isinstance(self.crop, str) else Crop.checked(*self.crop)
            object.__setattr__(self, "crop", box)
        both = {str(p) for p in _paths(self.like)} & {str(p) for p in _paths(self.unlike)}
        if both:
            raise UsageError(f"{sorted(both)[0]} is given as both --like and --unlike")

    def expression(self):
        from cbir.query.expression import Term, parse_expression, parse_terms
        from cbir.query.feedback import rocchio

        first = None
        if self.image is not None:
            image = self.image if isinstance(self.image, ImageData) else str(self.image)
            first = Term(1.0, image=image, crop=self.crop if isinstance(self.crop, Crop) else None)
        likes, unlikes = _paths(self.like), _paths(self.unlike)
        if not likes and not unlikes:
            return parse_expression(self.text, first=first)
        if first is None and len(likes) == 1 and not unlikes:
            # one --like, maybe with words: query arithmetic with that image, as it always was
            return parse_expression(self.text, first=Term(1.0, like=str(likes[0])))
        own = parse_terms(self.text, first=first)
        return rocchio(own, [str(p) for p in likes], [str(p) for p in unlikes])


def _paths(value) -> list:
    """One path or several as a list (a str is one path, not its letters); a tuple after __post_init__."""
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    return list(dict.fromkeys(value))  # a path given twice counts once

"""Queries: what users type or send, parsed before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cbir.errors import UsageError


@dataclass(frozen=True)
class Query:
    """One search: a text, or an image file (exactly one of them)."""

    text: str | None = None
    image: Path | None = None

    def __post_init__(self):
        if (self.text is None) == (self.image is None):
            raise UsageError("a query needs either a text or an image, not both")
        if self.text is not None and not self.text.strip():
            raise UsageError("empty query text")

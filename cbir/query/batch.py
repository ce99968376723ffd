"""Batch query files: one query per line, a text or a JSON object such as {"image": "a.jpg"}."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from cbir.errors import UsageError
from cbir.query import Query


def parse_batch(lines: Iterable[str], source: str = "batch") -> list[tuple[object, Query]]:
    """(what to echo as the result's ``query``, Query) per non-blank line.

    Image paths in JSON lines are taken relative to the current directory."""
    parsed = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("{"):
            parsed.append((line, Query(text=line)))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{source} line {number}: invalid JSON at column {e.colno}: {e.msg}") from None
        if not isinstance(obj, dict) or not ({"image", "text"} & obj.keys()):
            raise UsageError(f'{source} line {number}: expected {{"image": "PATH"}} or {{"text": "..."}}')
        image, text = obj.get("image"), obj.get("text")
        if (image is None) == (text is None) or not isinstance(image or text, str):
            raise UsageError(f"{source} line {number}: give one string field, image or text")
        parsed.append((obj, Query(image=Path(image)) if image is not None else Query(text=text)))
    return parsed

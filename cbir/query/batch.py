"""Batch query files: one query per line, a text (query arithmetic allowed) or a JSON object
such as {"image": "a.jpg"}, {"like": "photos/b.jpg", "text": "+ in winter"}, {"text": "red car",
"like": ["a.jpg", "b.jpg"], "unlike": ["c.jpg"]} (relevance feedback, cbir.query.feedback)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from cbir.errors import UsageError
from cbir.query import Query

FIELDS = ("text", "image", "like", "unlike")


def parse_batch(lines: Iterable[str], source: str = "batch") -> list[tuple[object, Query]]:
    """(what to echo as the result's ``query``, Query) per non-blank line.

    Image paths in JSON lines are taken relative to the current directory."""
    parsed: list[tuple[object, Query]] = []
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
        if not isinstance(obj, dict) or not (set(FIELDS) & obj.keys()):
            raise UsageError(
                f'{source} line {number}: expected {{"image": "PATH"}}, {{"like": "PATH"}} or {{"text": "..."}}'
            )
        values = {k: obj.get(k) for k in FIELDS}
        if any(v is not None and not isinstance(v, str) for k, v in values.items() if k in ("text", "image")):
            raise UsageError(f"{source} line {number}: text and image must be strings")
        paths = {k: _paths(values[k]) for k in ("like", "unlike")}
        if any(p is None for p in paths.values()):
            raise UsageError(f"{source} line {number}: like and unlike must be a path or a list of paths")
        try:
            query = Query(
                text=values["text"],
                image=Path(values["image"]) if values["image"] is not None else None,
                like=paths["like"],
                unlike=paths["unlike"],
            )
        except UsageError as e:
            raise UsageError(f"{source} line {number}: {e}") from None
        parsed.append((obj, query))
    return parsed


def _paths(value) -> list[Path] | None:
    """A line's "like" or "unlike": a path or a list of paths (None: neither)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [Path(value)]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [Path(v) for v in value]
    return None

"""Reading datasets: what the readers share (the formats, ``BadRow``, cell values).

The readers: :mod:`cbir.ingest.manifests` (CSV, TSV, JSON Lines, Parquet: one row per image) and
:mod:`cbir.ingest.webdataset` (WebDataset tar shards, as img2dataset and LAION write them). Pure
reading: no database, no model, no image decoding. Readers stream, so a 10M-row manifest or a
100 GB shard costs the memory of one row (one Parquet batch, one tar sample).

Bad input never stops a read: a row or sample that cannot be used comes out as a ``BadRow``
in its place and reading goes on. Only a problem with the whole input (unknown format, no
image column, missing file, compressed shards) raises ``UsageError``. The readers are
generators, so those errors are raised when iteration starts.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from cbir.errors import UsageError

FORMATS = ("folder", "csv", "tsv", "jsonl", "parquet", "webdataset")
MANIFEST_FORMATS = ("csv", "tsv", "jsonl", "parquet")

_SUFFIXES = (
    (".csv", "csv"),
    (".tsv", "tsv"),
    (".tab", "tsv"),
    (".jsonl", "jsonl"),
    (".ndjson", "jsonl"),
    (".parquet", "parquet"),
    (".tar", "webdataset"),
    (".tar.gz", "webdataset"),
    (".tgz", "webdataset"),
)
COMPRESSED_TAR = (".tar.gz", ".tgz")
SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes under errors="surrogateescape"
PATTERN = re.compile(r"[{*?\[]")  # a glob or a brace list: several shards


@dataclass(frozen=True)
class BadRow:
    """A row or sample that cannot be used. ``row``: 1-based data row (CSV/TSV: records after
    the header; Parquet: rows), or the line number (JSON Lines); None for a tar sample or a
    whole tar (the reason names the key)."""

    source: str
    row: int | None
    reason: str


# -- format detection -----------------------------------------------------------------------------
def detect_format(target: str, *, format: str | None = None) -> str:
    """The format of a dataset argument, one of ``FORMATS``. ``format`` forces it (validated)."""
    if format is not None:
        if format not in FORMATS:
            raise UsageError(f"unknown dataset format {format!r}: use one of {', '.join(FORMATS)}")
        return format
    if os.path.isdir(target):
        return "folder"
    if PATTERN.search(target) and not os.path.exists(target):
        if all(p.lower().endswith((".tar", *COMPRESSED_TAR)) for p in expand_braces(target)):
            return "webdataset"
        raise UsageError(f"{target}: patterns are only for WebDataset shards (names ending in .tar)")
    lower = target.lower()
    for suffix, fmt in _SUFFIXES:
        if lower.endswith(suffix):
            return fmt
    if not os.path.exists(target):
        raise UsageError(f"{target}: no such file or folder")
    raise UsageError(
        f"cannot tell the dataset format of {target}: expected a folder, a .csv, .tsv, .jsonl or "
        ".parquet manifest, or .tar shards (or pass --format)"
    )


def expand_braces(pattern: str) -> Iterable[str]:
    """The names a brace list spells out (``{00000..00009}``, ``{a,b}``); a name without braces
    as it is."""
    if "{" not in pattern:
        return [pattern]
    try:
        from braceexpand import braceexpand
    except ImportError:
        raise UsageError("brace patterns need braceexpand: pip install braceexpand") from None
    return braceexpand(pattern)


# -- cell values -----------------------------------------------------------------------------------
def plain(value):
    """Any cell value as plain JSON data (containers kept): numpy and pyarrow scalars unwrapped,
    dates as ISO strings, NaN/infinity as None, bytes dropped (None)."""
    if isinstance(value, np.generic):  # before str/int/float: np.float64 is a float
        return plain(value.item())
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if hasattr(value, "as_py"):  # a pyarrow scalar
        return plain(value.as_py())
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, Decimal):
        return plain(float(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    return str(value)


def caption_texts(value) -> tuple[str, ...]:
    """One caption or a list of them, stripped; empty ones, None and NaN dropped, duplicates
    once. Non-string scalars (a numeric label) become their text; nested objects are skipped."""
    value = plain(value)
    texts = []
    for item in value if isinstance(value, list) else [value]:
        if item is None or isinstance(item, (list, dict)):
            continue
        text = str(item).strip()
        if text:
            texts.append(text)
    return tuple(dict.fromkeys(texts))

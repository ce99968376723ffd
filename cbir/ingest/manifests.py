"""Manifests: CSV, TSV, JSON Lines and Parquet files with one row per image.

A header (CSV/TSV), the keys of each object (JSON Lines) or the schema (Parquet) names the
columns. One column holds the image path, relative to the manifest's folder or absolute; one
optional column holds the caption: a string, or (JSON Lines, Parquet) a list of strings, e.g.
COCO's five captions per image. Every other column is kept as metadata (``extra``), converted to
JSON scalars. Columns are found by name, case-insensitively, first match in ``IMAGE_COLUMNS`` /
``CAPTION_COLUMNS`` order; the caller may name them instead. Only local paths are read: a URL
cell is a bad row. A row that cannot be used comes out as a ``BadRow`` (see
:mod:`cbir.ingest.datasets`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

from cbir.errors import UsageError
from cbir.ingest.datasets import (
    MANIFEST_FORMATS,
    SURROGATE,
    BadRow,
    caption_texts,
    detect_format,
    plain,
)

# Column names tried in order (compared case-insensitively). Names that can only mean a local
# image path come first; ``url`` comes last, so a manifest that has both a URL and a downloaded
# path uses the path.
IMAGE_COLUMNS = (
    "image_path",
    "image_file",
    "img_path",
    "filepath",
    "file_path",
    "path",
    "image",
    "img",
    "file",
    "filename",
    "file_name",
    "url",
)
# Captions proper before generic texts; ``label`` (a class name) is the last resort.
CAPTION_COLUMNS = (
    "caption",
    "captions",
    "text",
    "alt_text",
    "alt",
    "title",
    "description",
    "sentence",
    "sentences",
    "label",
)

CSV_FIELD_LIMIT = 64 * 1024 * 1024  # the stdlib default (128 KiB) rejects long descriptions
PARQUET_BATCH_ROWS = 1024

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_JSON_TYPES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


@dataclass(frozen=True)
class ManifestRow:
    row: int
    image: Path  # resolved against the manifest's folder and normalised; existence not checked
    raw: str  # the cell's text (stripped), for messages
    captions: tuple[str, ...]
    extra: dict = field(hash=False)


def read_manifest(
    path: Path,
    fmt: str | None = None,
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
) -> Iterator[ManifestRow | BadRow]:
    """The rows of a manifest, in file order, each a ``ManifestRow`` or a ``BadRow``."""
    path = Path(path)
    fmt = detect_format(str(path), format=fmt)
    if fmt not in MANIFEST_FORMATS:
        raise UsageError(f"{path} is not a manifest (format {fmt}): use .csv, .tsv, .jsonl or .parquet")
    if not path.is_file():
        raise UsageError(f"manifest not found: {path}")

    def pick(columns: list[str]) -> tuple[str, str | None]:
        """The image and caption columns, called by each reader once it knows the columns."""
        image = _pick_column(columns, image_column, IMAGE_COLUMNS, "--image-column", path)
        caption = _pick_column(columns, caption_column, CAPTION_COLUMNS, "--caption-column", path, exclude=image)
        if image is None:
            raise UsageError(f"no image column in {path} (columns: {_names(columns)}); name it with --image-column")
        return image, caption

    if fmt == "parquet":
        records = _parquet_records(path, pick)
    elif fmt == "jsonl":
        records = _jsonl_records(path, pick)
    else:
        records = _delimited_records(path, pick, "," if fmt == "csv" else "\t")
    try:
        image, caption = next(records)  # each reader first reads its columns and calls pick()
        source, base = str(path), str(path.parent)
        for item in records:
            if isinstance(item, BadRow):
                yield item
            else:
                yield _manifest_row(source, base, item[0], item[1], image, caption)
    finally:
        records.close()


def _pick_column(columns, forced, candidates, option, path, exclude=None) -> str | None:
    """The column to use: the forced one (case-insensitive), else the first candidate found."""
    by_name: dict[str, str] = {}
    for name in columns:
        by_name.setdefault(name.casefold(), name)
    if forced is not None:
        if forced in columns:
            return forced
        if forced.casefold() in by_name:
            return by_name[forced.casefold()]
        raise UsageError(f"no column {forced!r} in {path} (columns: {_names(columns)}); check {option}")
    for candidate in candidates:
        name = by_name.get(candidate)
        if name is not None and name != exclude:
            return name
    return None


def _names(columns: list[str], limit: int = 20) -> str:
    if not columns:
        return "none found"
    shown = ", ".join(columns[:limit])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


def _manifest_row(source, base, row, record: dict, image, caption) -> ManifestRow | BadRow:
    value = record.get(image)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # a bare number as a file name, e.g. {"file": 123}
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = ""
    if not isinstance(value, str):
        return BadRow(source, row, f"column {image!r} holds {_kind(value)}, not an image path")
    raw = value.strip()
    if not raw:
        return BadRow(source, row, f"no image path (column {image!r} is empty or missing)")
    if _URL.match(raw):
        shown = raw if len(raw) <= 200 else raw[:200] + "..."
        reason = "URLs are not downloaded; download the images first (e.g. img2dataset)"
        return BadRow(source, row, f"{shown} is a URL: {reason}")
    extra = {k: _scalar(v) for k, v in record.items() if k != image and k != caption}
    image_path = Path(os.path.normpath(os.path.join(base, raw)))  # join keeps an absolute raw
    captions = caption_texts(record.get(caption)) if caption is not None else ()
    return ManifestRow(row, image_path, raw, captions, extra)


def _delimited_records(path: Path, pick, delimiter: str) -> Generator:
    """CSV/TSV: pick(header), then (row, dict) or BadRow per record. Decoding with
    surrogateescape keeps the csv module going past invalid UTF-8; the record that holds it
    (and only that record) becomes a BadRow. TSV follows the CSV quoting rules, as pandas and
    spreadsheets write it."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    source = str(path)
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = [name.strip() for name in next(reader, [])]
        except csv.Error as e:
            raise UsageError(f"cannot read the header of {path}: {e}") from None
        if any(SURROGATE.search(name) for name in header):
            raise UsageError(f"the header of {path} is not valid UTF-8; save the file as UTF-8")
        yield pick(header)
        row = 0
        while True:
            row += 1  # blank records count too: without quoted newlines, row N is line N + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield BadRow(source, row, f"unreadable record: {e}")
                continue
            if not fields:
                continue
            if any(SURROGATE.search(value) for value in fields):
                yield BadRow(source, row, "not valid UTF-8; save the file as UTF-8")
            elif len(fields) != len(header):
                reason = f"{len(fields)} fields where the header has {len(header)}"
                yield BadRow(source, row, reason)
            else:
                yield row, dict(zip(header, fields))


def _jsonl_records(path: Path, pick, sample_lines: int = 100) -> Generator:
    """JSON Lines: pick(the keys seen in the first ``sample_lines`` objects: objects need not
    all have the same keys), then (line number, dict) or BadRow per non-blank line."""
    records = _jsonl_objects(path)
    try:
        head = list(islice(records, sample_lines))
        objects = [item[1] for item in head if not isinstance(item, BadRow)]
        yield pick(list(dict.fromkeys(key for obj in objects for key in obj)))
        yield from chain(head, records)
    finally:
        records.close()


def _jsonl_objects(path: Path) -> Generator:
    source = str(path)
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                yield BadRow(source, number, "not valid UTF-8")
                continue
            except ValueError as e:
                yield BadRow(source, number, f"invalid JSON: {e}")
                continue
            if isinstance(obj, dict):
                yield number, obj
            else:
                yield BadRow(source, number, f"not a JSON object but {_kind(obj)}")


def _parquet_records(path: Path, pick) -> Generator:
    """Parquet: pick(column names), then (row, dict) or BadRow, read one batch at a time.
    Binary columns (embedded image bytes) are not read: they are not metadata."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UsageError(f"cannot read {path} as Parquet: {e}") from None
    schema = parquet.schema_arrow
    image, caption = pick(schema.names)
    image_type = schema.field(image).type
    if pa.types.is_dictionary(image_type):
        image_type = image_type.value_type
    if not (
        pa.types.is_string(image_type)
        or pa.types.is_large_string(image_type)
        or pa.types.is_integer(image_type)
        or pa.types.is_null(image_type)
    ):
        raise UsageError(
            f"column {image!r} of {path} holds {image_type}, not image paths (images embedded "
            "in the file are not supported); name the path column with --image-column"
        )
    yield image, caption

    binary = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary)
    columns = [f.name for f in schema if not any(is_binary(f.type) for is_binary in binary)]
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except (pa.ArrowException, OSError) as e:
        yield BadRow(str(path), None, f"cannot read the rest of the file after row {row}: {e}")


def _scalar(value) -> str | int | float | bool | None:
    """A metadata value as one JSON scalar; lists and objects become their JSON text."""
    value = plain(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _kind(value) -> str:
    """How a JSON value is named in messages: "an array", "a number"..."""
    if isinstance(value, dict):
        return "an object"
    return _JSON_TYPES.get(type(value), type(value).__name__)

"""Reading datasets: manifests (CSV, TSV, JSON Lines, Parquet) and WebDataset tar shards.

Pure reading: no database, no model, no image decoding. Readers stream, so a 10M-row manifest
or a 100 GB shard costs the memory of one row (one Parquet batch, one tar sample).

Manifests
    One row per image. A header (CSV/TSV), the keys of each object (JSON Lines) or the schema
    (Parquet) names the columns. One column holds the image path, relative to the manifest's
    folder or absolute; one optional column holds the caption: a string, or (JSON Lines,
    Parquet) a list of strings, e.g. COCO's five captions per image. Every other column is
    kept as metadata (``extra``), converted to JSON scalars. Columns are found by name,
    case-insensitively, first match in ``IMAGE_COLUMNS`` / ``CAPTION_COLUMNS`` order; the
    caller may name them instead. Only local paths are read: a URL cell is a bad row.

WebDataset shards (what img2dataset and LAION produce)
    Plain ``.tar`` files in which the files of a sample share a key: the member name up to the
    first dot of its base name (``dir/abc.jpg``, ``dir/abc.txt``, ``dir/abc.json`` are sample
    ``dir/abc``). The image is located by its byte offset in the tar, so it is read in place
    (``read_member``) without unpacking; ``.txt`` is the caption, ``.json`` the metadata.

Bad input never stops a read: a row or sample that cannot be used comes out as a ``BadRow``
in its place and reading goes on. Only a problem with the whole input (unknown format, no
image column, missing file, compressed shards) raises ``UsageError``. The readers are
generators, so those errors are raised when iteration starts.
"""

from __future__ import annotations

import csv
import datetime
import glob
import json
import math
import os
import re
import tarfile
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import chain, islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from cbir.errors import UsageError

FORMATS = ("folder", "csv", "tsv", "jsonl", "parquet", "webdataset")
MANIFEST_FORMATS = ("csv", "tsv", "jsonl", "parquet")

# Column names tried in order (compared case-insensitively). Names that can only mean a local
# image path come first; ``url`` comes last, so a manifest that has both a URL and a downloaded
# path uses the path.
IMAGE_COLUMNS = (
    "image_path", "image_file", "img_path", "filepath", "file_path", "path", "image", "img",
    "file", "filename", "file_name", "url",
)
# Captions proper before generic texts; ``label`` (a class name) is the last resort.
CAPTION_COLUMNS = (
    "caption", "captions", "text", "alt_text", "alt", "title", "description", "sentence",
    "sentences", "label",
)

# Tar members that are images, in order of preference when a sample has several.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "jpe", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif", "avif")
MAX_SIDECAR_BYTES = 8 * 1024 * 1024  # a .txt/.json member larger than this is not metadata
CSV_FIELD_LIMIT = 64 * 1024 * 1024  # the stdlib default (128 KiB) rejects long descriptions
PARQUET_BATCH_ROWS = 1024

_SUFFIXES = (
    (".csv", "csv"), (".tsv", "tsv"), (".tab", "tsv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
    (".parquet", "parquet"), (".tar", "webdataset"), (".tar.gz", "webdataset"),
    (".tgz", "webdataset"),
)
_COMPRESSED_TAR = (".tar.gz", ".tgz")
_COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd",
}
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes under errors="surrogateescape"
_PATTERN = re.compile(r"[{*?\[]")
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


@dataclass(frozen=True)
class BadRow:
    """A row or sample that cannot be used. ``row``: 1-based data row (CSV/TSV: records after
    the header; Parquet: rows), or the line number (JSON Lines); None for a tar sample or a
    whole tar (the reason names the key)."""

    source: str
    row: int | None
    reason: str


@dataclass(frozen=True)
class ManifestRow:
    row: int
    image: Path  # resolved against the manifest's folder and normalised; existence not checked
    raw: str  # the cell's text (stripped), for messages
    captions: tuple[str, ...]
    extra: dict = field(hash=False)


@dataclass(frozen=True)
class TarSample:
    tar: Path
    key: str
    member: str  # the image member's name
    offset: int  # of the member's data in the tar: read_member(tar, offset, size)
    size: int
    mtime: int
    captions: tuple[str, ...]
    extra: dict = field(hash=False)  # the parsed .json member ({"json": value} if not an object)
    problems: tuple[str, ...] = ()  # usable, but something in the sample was ignored


# -- format detection -----------------------------------------------------------------------------
def detect_format(target: str, *, format: str | None = None) -> str:
    """The format of a dataset argument, one of ``FORMATS``. ``format`` forces it (validated)."""
    if format is not None:
        if format not in FORMATS:
            raise UsageError(
                f"unknown dataset format {format!r}: use one of {', '.join(FORMATS)}"
            )
        return format
    if os.path.isdir(target):
        return "folder"
    if _PATTERN.search(target) and not os.path.exists(target):
        if all(p.lower().endswith((".tar", *_COMPRESSED_TAR)) for p in _braces(target)):
            return "webdataset"
        raise UsageError(
            f"{target}: patterns are only for WebDataset shards (names ending in .tar)"
        )
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


# -- manifests ------------------------------------------------------------------------------------
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
        raise UsageError(
            f"{path} is not a manifest (format {fmt}): use .csv, .tsv, .jsonl or .parquet"
        )
    if not path.is_file():
        raise UsageError(f"manifest not found: {path}")

    def pick(columns: list[str]) -> tuple[str, str | None]:
        """The image and caption columns, called by each reader once it knows the columns."""
        image = _pick_column(columns, image_column, IMAGE_COLUMNS, "--image-column", path)
        caption = _pick_column(
            columns, caption_column, CAPTION_COLUMNS, "--caption-column", path, exclude=image
        )
        if image is None:
            raise UsageError(
                f"no image column in {path} (columns: {_names(columns)}); "
                "name it with --image-column"
            )
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
        raise UsageError(
            f"no column {forced!r} in {path} (columns: {_names(columns)}); check {option}"
        )
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
    captions = _captions(record.get(caption)) if caption is not None else ()
    return ManifestRow(row, image_path, raw, captions, extra)


def _delimited_records(path: Path, pick, delimiter: str) -> Iterator:
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
        if any(_SURROGATE.search(name) for name in header):
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
            if any(_SURROGATE.search(value) for value in fields):
                yield BadRow(source, row, "not valid UTF-8; save the file as UTF-8")
            elif len(fields) != len(header):
                reason = f"{len(fields)} fields where the header has {len(header)}"
                yield BadRow(source, row, reason)
            else:
                yield row, dict(zip(header, fields))


def _jsonl_records(path: Path, pick, sample_lines: int = 100) -> Iterator:
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


def _jsonl_objects(path: Path) -> Iterator:
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


def _parquet_records(path: Path, pick) -> Iterator:
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
    if not (pa.types.is_string(image_type) or pa.types.is_large_string(image_type)
            or pa.types.is_integer(image_type) or pa.types.is_null(image_type)):
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


# -- value conversion -----------------------------------------------------------------------------
def _plain(value):
    """Any cell value as plain JSON data (containers kept): numpy and pyarrow scalars unwrapped,
    dates as ISO strings, NaN/infinity as None, bytes dropped (None)."""
    if isinstance(value, np.generic):  # before str/int/float: np.float64 is a float
        return _plain(value.item())
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if hasattr(value, "as_py"):  # a pyarrow scalar
        return _plain(value.as_py())
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, Decimal):
        return _plain(float(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    return str(value)


def _scalar(value) -> str | int | float | bool | None:
    """A metadata value as one JSON scalar; lists and objects become their JSON text."""
    value = _plain(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _captions(value) -> tuple[str, ...]:
    """One caption or a list of them, stripped; empty ones, None and NaN dropped, duplicates
    once. Non-string scalars (a numeric label) become their text; nested objects are skipped."""
    value = _plain(value)
    texts = []
    for item in value if isinstance(value, list) else [value]:
        if item is None or isinstance(item, (list, dict)):
            continue
        text = str(item).strip()
        if text:
            texts.append(text)
    return tuple(dict.fromkeys(texts))


def _kind(value) -> str:
    """How a JSON value is named in messages: "an array", "a number"..."""
    if isinstance(value, dict):
        return "an object"
    return _JSON_TYPES.get(type(value), type(value).__name__)


# -- WebDataset shards ----------------------------------------------------------------------------
def expand_shards(pattern: str) -> list[Path]:
    """The tar files a shard argument names: one path, a glob (``shards/*.tar``), a brace list
    (``shards/{00000..00009}.tar``, ``{a,b}.tar``) or both; sorted, each once. A name the braces
    spell out must exist (a missing shard is an error, not a silent gap; use a glob to take
    whatever is there); a glob must match something."""
    paths: set[Path] = set()
    for part in _braces(pattern):
        if os.path.isfile(part):
            paths.add(Path(os.path.normpath(part)))
        elif _PATTERN.search(part):
            matches = glob.glob(part, recursive=True)
            paths.update(Path(os.path.normpath(p)) for p in matches if os.path.isfile(p))
        elif "{" in pattern:
            raise UsageError(f"shard not found: {part} (from {pattern})")
    if not paths:
        raise UsageError(f"no shard matches {pattern}")
    _refuse_compressed(paths)
    return sorted(paths)


def _braces(pattern: str) -> Iterable[str]:
    if "{" not in pattern:
        return [pattern]
    try:
        from braceexpand import braceexpand
    except ImportError:
        raise UsageError("brace patterns need braceexpand: pip install braceexpand") from None
    return braceexpand(pattern)


def _refuse_compressed(paths: Iterable[Path]) -> None:
    for path in paths:
        if str(path).lower().endswith(_COMPRESSED_TAR):
            raise UsageError(
                f"compressed tar shards are not supported: {path} "
                "(img2dataset writes plain .tar; decompress with gunzip)"
            )


def read_webdataset(shards: list[Path]) -> Iterator[TarSample | BadRow]:
    """The samples of each shard in order. Files of a sample are grouped while consecutive (as
    webdataset writes them); a key that comes back later is read as another sample."""
    shards = [Path(s) for s in shards]
    _refuse_compressed(shards)
    for shard in shards:
        yield from _read_shard(shard)


def _read_shard(path: Path) -> Iterator[TarSample | BadRow]:
    source = str(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        yield BadRow(source, None, f"cannot read shard: {e.strerror or e}")
        return
    with f:
        file_size = os.fstat(f.fileno()).st_size
        magic = f.read(6)
        for prefix, kind in _COMPRESSED_MAGIC.items():
            if magic.startswith(prefix):
                reason = f"compressed tar shards are not supported: {kind} data"
                yield BadRow(source, None, f"{reason} (img2dataset writes plain .tar)")
                return
        f.seek(0)
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except (tarfile.TarError, OSError) as e:
            yield BadRow(source, None, f"not a tar file: {e}")
            return
        samples, group, error = 0, [], None
        try:
            while (member := tar.next()) is not None:
                tar.members = []  # tarfile keeps every member it reads; we need none of them
                if not member.isfile() or member.issparse():
                    continue
                key, ext = _split_name(member.name)
                if key is None:
                    continue
                if group and key != group[0][0]:
                    sample = _sample(path, group, file_size)
                    samples += isinstance(sample, TarSample)
                    yield sample
                    group = []
                payload = None
                if ext in ("txt", "json") and member.size <= MAX_SIDECAR_BYTES:
                    payload = tar.extractfile(member).read()
                group.append((key, ext, member, payload))
        except (tarfile.TarError, OSError) as e:
            error = str(e) or type(e).__name__
        if error is None and not _ends_cleanly(f, tar.offset):
            error = "no end-of-archive marker"
        if group:  # after an error, only a sample whose image is all there
            sample = _sample(path, group, file_size)
            if sample is not None and (error is None or isinstance(sample, TarSample)):
                samples += isinstance(sample, TarSample)
                yield sample
        if error is not None:
            yield BadRow(source, None, f"truncated or corrupt tar after {samples} samples: {error}")


def _split_name(name: str) -> tuple[str | None, str]:
    """(key, extension) by the webdataset convention: the key is the name up to the first dot
    of its base name. Hidden names (``._abc.jpg`` from macOS, ``.DS_Store``) give no key."""
    folder, _, base = name.rpartition("/")
    if not base or base.startswith("."):
        return None, ""
    stem, _, ext = base.partition(".")
    folder = folder.removeprefix("./")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _sample(tar: Path, group: list, file_size: int) -> TarSample | BadRow | None:
    """One sample from its members; None when its image lies past the end of a truncated tar
    (the tar's own BadRow reports that)."""
    key = group[0][0]
    images, sidecars, problems = [], {}, []
    for _, ext, member, payload in group:
        suffix = ext.rpartition(".")[2]  # "seg.png" is a png too
        if suffix in IMAGE_EXTENSIONS:
            images.append((IMAGE_EXTENSIONS.index(suffix), member))
        elif ext in ("txt", "json"):
            sidecars.setdefault(ext, (member, payload))
    if not images:
        return BadRow(str(tar), None, f"no image in sample {_safe(key)}")
    image = min(images, key=lambda ranked: ranked[0])[1]  # the first of the preferred kind
    if _SURROGATE.search(image.name):  # tarfile's stand-ins for undecodable bytes
        return BadRow(str(tar), None, f"member name {_safe(image.name)} is not valid UTF-8")
    if len(images) > 1:
        problems.append(f"{len(images)} images in sample {key}; using {image.name}")
    if image.offset_data + image.size > file_size:
        return None
    text = meta = None
    if "txt" in sidecars:
        member, payload = sidecars["txt"]
        try:
            text = payload.decode("utf-8-sig") if payload is not None else None
        except UnicodeDecodeError:
            problems.append(f"caption {member.name} is not valid UTF-8; ignored")
    if "json" in sidecars:
        member, payload = sidecars["json"]
        try:
            meta = json.loads(payload) if payload is not None else None
        except ValueError:
            problems.append(f"metadata {member.name} is not valid JSON; ignored")
    for member, payload in sidecars.values():
        if payload is None:
            problems.append(f"{member.name} is larger than {MAX_SIDECAR_BYTES} bytes; ignored")
    extra = meta if isinstance(meta, dict) else ({} if meta is None else {"json": meta})
    captions = _captions(text)
    if not captions:  # no .txt, or an empty or unreadable one: the .json's caption, if any
        captions = _captions(extra.get("caption")) or _captions(extra.get("text"))
    return TarSample(tar, key, image.name, image.offset_data, image.size, int(image.mtime),
                     captions, extra, tuple(problems))


def _safe(name: str) -> str:
    """A name for messages: undecodable bytes (surrogates) shown as escapes."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _ends_cleanly(f, offset: int) -> bool:
    """Whether an end-of-archive block is where tarfile stopped. tarfile ends quietly on a
    missing or cut-off header, which is how a tar cut at a member boundary looks."""
    f.seek(offset)
    block = f.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and block.count(0) == tarfile.BLOCKSIZE


def read_member(tar: Path, offset: int, size: int) -> bytes:
    """The ``size`` bytes at ``offset`` in a tar (a ``TarSample``'s image); OSError if fewer."""
    with open(tar, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{tar}: expected {size} bytes at offset {offset}, read {len(data)}")
    return data

"""A dataset as the ingest pipeline sees it: the images a manifest or WebDataset shards list,
with their captions and other columns, as a ScanResult relative to the library root that holds
them. The readers (cbir.ingest.manifests, cbir.ingest.webdataset) know the formats; this module
knows the library's side: paths relative to a root, which dataset owns which image, and where
bad rows are recorded.

Each manifest is one dataset (``manifest:train.csv``) and each tar shard one (``tar:shards/0001.tar``),
so ingesting some of a dataset's shards never removes the others' images. Bad rows are recorded
as skipped under the manifest's or tar's own path (``train.csv/row 12``), so they are kept until
that file changes and dropped once a fixed file no longer has them.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from cbir.errors import UsageError
from cbir.ingest.datasets import BadRow
from cbir.ingest.manifests import ManifestRow, read_manifest
from cbir.ingest.scan import ScannedFile, ScanResult, is_image_name
from cbir.ingest.webdataset import TarSample, expand_shards, read_webdataset


@dataclass
class Dataset:
    """What one dataset argument lists, before it is placed under a root."""

    base: Path  # a folder holding every file the dataset names (the root goes here or above)
    files: list[tuple[Path, ScannedFile]] = field(default_factory=list)  # (file to read, entry)
    problems: list[tuple[Path, str, str]] = field(default_factory=list)  # (listing file, row, why)
    listings: list[tuple[str, Path]] = field(default_factory=list)  # (kind, manifest or tar)

    def scan_result(self, root: Path) -> ScanResult:
        """The dataset as a scan of ``root`` (``base`` or a folder above it). An image listed
        more than once (a manifest with a row per caption, as COCO's) is one image with all its
        captions and the first row's columns."""
        rel = lambda p: Path(os.path.relpath(p, root)).as_posix()  # noqa: E731
        owners = {listing: f"{kind}:{rel(listing)}" for kind, listing in self.listings}
        result = ScanResult(datasets=frozenset(owners.values()), skip_scopes=tuple(rel(p) for _, p in self.listings))
        placed: dict[str, ScannedFile] = {}
        for listing_path, entry in self.files:
            path = rel(entry.abspath) if entry.offset is None else f"{rel(entry.abspath)}/{entry.path}"
            first = placed.get(path)
            captions = tuple(dict.fromkeys((first.captions if first else ()) + entry.captions))
            placed[path] = replace(first or entry, path=path, captions=captions, dataset=owners[listing_path])
        result.files = list(placed.values())
        names: Counter = Counter()
        for listing, row, why in self.problems:  # a name per problem: skip records are unique
            name = f"{rel(listing)}/{row}"
            names[name] += 1
            result.problems.append((name if names[name] == 1 else f"{name} ({names[name]})", why))
        return result


def read_dataset(
    target: str, fmt: str, *, image_column: str | None = None, caption_column: str | None = None
) -> Dataset:
    """Read a manifest (csv, tsv, jsonl, parquet) or WebDataset shards (a tar, a glob or a brace
    list) into a Dataset; files a manifest names are looked up (size, mtime) here."""
    if fmt == "webdataset":
        return _webdataset(expand_shards(target))
    manifest = Path(target).expanduser().resolve()
    if not manifest.is_file():
        raise UsageError(f"no such manifest file: {target}")
    return _manifest(manifest, fmt, image_column, caption_column)


def _manifest(manifest: Path, fmt: str, image_column, caption_column) -> Dataset:
    dataset = Dataset(manifest.parent, listings=[("manifest", manifest)])
    base = str(manifest.parent)
    for row in read_manifest(manifest, fmt, image_column=image_column, caption_column=caption_column):
        if isinstance(row, BadRow):
            dataset.problems.append((manifest, _row_name(row.row), row.reason))
            continue
        assert isinstance(row, ManifestRow)
        image = Path(os.path.normpath(row.image)).resolve()
        reason = _unusable(image, row.raw)
        if reason:
            dataset.problems.append((manifest, _row_name(row.row), reason))
            continue
        stat = image.stat()
        base = os.path.commonpath([base, str(image.parent)])
        extra = {k: _typed(v) for k, v in row.extra.items()} if fmt in ("csv", "tsv") else row.extra
        entry = ScannedFile(image.name, stat.st_size, stat.st_mtime_ns, str(image), None, row.captions, extra or None)
        dataset.files.append((manifest, entry))
    dataset.base = Path(base)
    return dataset


_INTEGER = re.compile(r"-?(0|[1-9]\d{0,17})")
_DECIMAL = re.compile(r"-?\d+\.\d*([eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")


def _typed(value):
    """A CSV cell as the number it spells (so extra.score >= 1.5 compares numbers); text that
    only looks numeric with a leading zero (a zip code, an id like 007) stays text."""
    if isinstance(value, str):
        if _INTEGER.fullmatch(value):
            return int(value)
        if _DECIMAL.fullmatch(value):
            return float(value)
    return value


def _unusable(image: Path, raw: str) -> str | None:
    """Why a manifest row's image cannot be ingested, or None."""
    if not is_image_name(image.name):
        return f"{raw}: not an image file name (supported: jpg, png, webp, gif, bmp, tiff, heic, avif)"
    try:
        if image.is_file():
            return None
        return f"{raw}: a folder, not an image" if image.exists() else f"{raw}: no such file"
    except OSError as e:
        return f"{raw}: unreadable ({e.strerror})"


def _row_name(row: int | None) -> str:
    return f"row {row}" if row is not None else "file"


def _webdataset(shards: list[Path]) -> Dataset:
    shards = [s.resolve() for s in shards]
    base = Path(os.path.commonpath([str(s.parent) for s in shards]))
    dataset = Dataset(base, listings=[("tar", s) for s in shards])
    for sample in read_webdataset(shards):
        if isinstance(sample, BadRow):
            tar = Path(sample.source).resolve()
            dataset.problems.append((tar, "sample", sample.reason))
            continue
        assert isinstance(sample, TarSample)
        extra = dict(sample.extra or {})
        if sample.problems:
            extra["problems"] = list(sample.problems)
        entry = ScannedFile(
            sample.member,
            sample.size,
            sample.mtime * 1_000_000_000,
            str(sample.tar.resolve()),
            sample.offset,
            sample.captions,
            extra or None,
        )
        dataset.files.append((sample.tar.resolve(), entry))
    return dataset

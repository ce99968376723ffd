"""`cbir export`: a library's image vectors with their ids and metadata, for other tools (pandas,
numpy, another index), streamed in chunks so a large library never sits in memory.

parquet: one file; a row per image: id, path, width, height, format, bytes, taken_at, taken,
  camera, dataset, extra (JSON text of a dataset row's other columns), captions (list), and
  vector (fixed-size list of float32; ``np.stack(df.vector)`` gives the matrix).
npy: a folder with vectors.npy (float32 [n, dim], L2-normalised), ids.npy (int64 [n], the same
  order) and metadata.jsonl (one JSON object per image, the same order): ``np.load(...,
  mmap_mode="r")`` reads the vectors without loading them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from cbir.errors import UsageError
from cbir.fsutil import atomic_write, storage_error
from cbir.store.records import IMAGE_FIELDS

FORMATS = ("parquet", "npy")
CHUNK = 20_000


def export(catalog, out: Path, fmt: str) -> int:
    """Write the library's images to ``out`` in ``fmt``; returns how many. The output appears
    whole or not at all (written beside it, then renamed)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    count = len(catalog.vector_ids("images"))
    try:
        if fmt == "parquet":
            atomic_write(out, lambda tmp: _parquet(catalog, Path(tmp), count))
        else:
            _npy(catalog, out, count)
    except OSError as e:
        raise storage_error(e, out) from e
    return count


def _rows(catalog):
    """(ids, vectors, metadata rows) chunks in id order."""
    for ids, vectors in catalog.iter_vectors(chunk=CHUNK):
        meta = catalog.export_rows(ids)
        keep = np.asarray([int(i) in meta for i in ids], dtype=bool)  # an image removed meanwhile
        yield ids[keep], vectors[keep], [meta[int(i)] for i in ids[keep]]


def _parquet(catalog, path: Path, count: int) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("exporting Parquet needs pyarrow: pip install pyarrow") from None
    dim = catalog.dim or 0
    schema = pa.schema(
        [
            *((name, getattr(pa, kind)()) for name, kind in IMAGE_FIELDS.items()),  # int64, int32, string
            ("captions", pa.list_(pa.string())),
            ("vector", pa.list_(pa.float32(), dim)),
        ]
    )
    with pq.ParquetWriter(str(path), schema) as writer:
        for _ids, vectors, meta in _rows(catalog):
            columns = {name: [row[name] for row in meta] for name in schema.names if name not in ("vector", "extra")}
            columns["extra"] = [json.dumps(row["extra"], ensure_ascii=False) if row["extra"] else None for row in meta]
            columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
            writer.write_table(pa.table(columns, schema=schema))


def _npy(catalog, folder: Path, count: int) -> None:
    """vectors.npy and ids.npy are filled chunk by chunk through memory maps; the folder is
    written under a temporary name and renamed when complete."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{folder} exists and is not an empty folder; give a new folder for the npy export")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        _npy_into(catalog, tmp, count)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        folder.rmdir()
    os.replace(tmp, folder)


def _npy_into(catalog, tmp: Path, count: int) -> None:
    vectors = np.lib.format.open_memmap(tmp / "vectors.npy", "w+", np.float32, (count, catalog.dim or 0))
    ids = np.lib.format.open_memmap(tmp / "ids.npy", "w+", np.int64, (count,))
    written = 0
    with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as meta_file:
        for chunk_ids, chunk_vectors, meta in _rows(catalog):
            end = min(written + len(chunk_ids), count)  # images added meanwhile are left out
            vectors[written:end] = chunk_vectors[: end - written]
            ids[written:end] = chunk_ids[: end - written]
            for row in meta[: end - written]:
                meta_file.write(json.dumps(row, ensure_ascii=False) + "\n")
            written = end
    vectors.flush()
    ids.flush()
    del vectors, ids
    if written < count:  # images removed meanwhile: shrink the arrays to what was written
        for name in ("vectors.npy", "ids.npy"):
            kept = np.load(tmp / name)[:written]  # read whole before the file is rewritten
            np.save(tmp / name, kept)

"""The Catalog's vectors and exports: stored image and text vectors for building and searching
indexes, image columns by id, labels for evaluation, and rows for `cbir export`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import SQLColumnExpression, func, select

from cbir.store.base import CatalogBase
from cbir.store.models import Image, ImageText, Vector
from cbir.store.records import CAPTION, IMAGE_FIELDS, SIDECAR, _from_blob, json_value
from cbir.store.sql import json_text, position


class VectorCatalog(CatalogBase):
    # -- reading for search and status ---------------------------------------------------------
    def iter_vectors(self, chunk: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All stored image vectors in id order, in chunks of (ids, float32 matrix)."""
        return self._iter_vectors(Vector.image_id, Vector.vector, chunk)

    def iter_text_vectors(self, chunk: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All stored text vectors in id order, in chunks of (ids, float32 matrix)."""
        return self._iter_vectors(ImageText.id, ImageText.vector, chunk)

    def _vector_columns(self, name: str):
        return (Vector.image_id, Vector.vector) if name == "images" else (ImageText.id, ImageText.vector)

    def vector_ids(self, name: str) -> np.ndarray:
        """Every id with a stored vector, for the index ``name`` ("images" or "texts")."""
        id_column, _ = self._vector_columns(name)
        with self.engine.connect() as c:
            return np.fromiter(c.execute(select(id_column).order_by(id_column)).scalars(), dtype=np.int64)

    def vectors_of(self, name: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found, their stored vectors), in the order of ``ids``."""
        id_column, vector_column = self._vector_columns(name)
        found = self._by_id(id_column, ids, vector_column)
        kept = [int(i) for i in ids if int(i) in found]
        dim = self.dim or 0
        vectors = np.stack([_from_blob(found[i][0]) for i in kept]) if kept else np.zeros((0, dim), np.float32)
        return np.asarray(kept, dtype=np.int64), vectors

    def top_folders(self, ids: np.ndarray) -> list[str]:
        """For each image id: its root and top-level folder ("3:2019"; "3:" for files at the root)."""
        rows = self._image_column(ids, Image.root_id, func.substr(Image.path, 1, position(Image.path, "/") - 1))
        return [f"{root}:{top}" for root, top in rows]

    def dates_taken(self, ids: np.ndarray) -> list[datetime]:
        return [taken for (taken,) in self._image_column(ids, Image.taken)]

    def _image_column(self, ids: np.ndarray, *columns) -> list[tuple]:
        """``columns`` of the images ``ids``, in the order of ``ids``."""
        rows = self._by_id(Image.id, ids, *columns)
        return [rows[int(i)] for i in ids]

    def _by_id(self, id_column, ids, *columns) -> dict[int, tuple]:
        """id -> ``columns`` of the rows whose ``id_column`` is in ``ids`` (any number of ids)."""
        ids = [int(i) for i in ids]
        rows: dict[int, tuple] = {}
        with self.engine.connect() as c:
            for start in range(0, len(ids), 10_000):  # SQLite caps bound parameters
                query = select(id_column, *columns).where(id_column.in_(ids[start : start + 10_000]))
                rows.update((r[0], tuple(r[1:])) for r in c.execute(query))
        return rows

    def sample_vectors(self, name: str, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``size`` stored (ids, vectors) picked at random (ids first, so only the chosen
        vectors are read)."""
        ids = self.vector_ids(name)
        if len(ids) > size:
            ids = np.random.default_rng(seed).choice(ids, size, replace=False)
        return self.vectors_of(name, ids)

    def _iter_vectors(self, id_column, vector_column, chunk: int):
        last = -1
        while True:
            with self.engine.connect() as c:
                rows = c.execute(
                    select(id_column, vector_column).where(id_column > last).order_by(id_column).limit(chunk)
                ).all()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, np.stack([_from_blob(r[1]) for r in rows])
            last = int(ids[-1])

    # -- rows for evaluation and export ---------------------------------------------------------
    def image_labels(self, column: str, condition=None) -> tuple[np.ndarray, list[str]]:
        """(image ids, their label) for zero-shot evaluation: ``folder`` is the name of the
        folder holding the image (a class-per-folder dataset), ``extra.NAME`` a dataset
        column; images without one are left out."""
        label: SQLColumnExpression[Any]
        if column == "folder":
            label = Image.path
        elif column.startswith("extra.") and len(column) > 6:
            label = json_text(Image.extra, column[6:])
        else:
            raise ValueError(f"not a label column: {column}")
        query = select(Image.id, label).where(label.is_not(None)).order_by(Image.id)
        if condition is not None:
            query = query.where(condition)
        ids, labels = [], []
        with self.engine.connect() as c:
            for image_id, value in c.execute(query):
                if column == "folder":
                    value = value.rpartition("/")[0].rpartition("/")[2]
                if value not in ("", None):
                    ids.append(image_id)
                    labels.append(str(value))
        return np.asarray(ids, np.int64), labels

    def export_rows(self, ids: Iterable[int]) -> dict[int, dict]:
        """image id -> its metadata as plain values (absolute path, dates as ISO text, the
        dataset's extra columns and captions), for `cbir export`."""
        ids = [int(i) for i in ids]
        roots = self.roots()
        rows: dict[int, dict] = {}
        # each field from the column of its name (the file's size is "bytes"), the path from its root
        columns = [getattr(Image, "size" if name == "bytes" else name).label(name) for name in IMAGE_FIELDS]
        with self.engine.connect() as c:
            for start in range(0, len(ids), 10_000):  # SQLite caps bound parameters
                chunk = ids[start : start + 10_000]
                for r in c.execute(select(Image.root_id, *columns).where(Image.id.in_(chunk))):
                    row = {name: json_value(getattr(r, name)) for name in IMAGE_FIELDS}
                    row["path"] = str(roots[r.root_id] / r.path)
                    row["extra"] = json.loads(r.extra) if r.extra else None
                    rows[r.id] = {**row, "captions": []}
                for image_id, content in c.execute(
                    select(ImageText.image_id, ImageText.content)
                    .where(ImageText.image_id.in_(chunk), ImageText.source.in_((CAPTION, SIDECAR)))
                    .order_by(ImageText.id)
                ):
                    rows[image_id]["captions"].append(content)
        return rows

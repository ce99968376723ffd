"""An exact inner-product index over image (or text) ids, saved atomically with a manifest that
says which vector version of the database it reflects, so a stale index is detected and rebuilt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from cbir.fsutil import atomic_write, atomic_write_text

IMAGES, TEXTS = "images", "texts"  # the indexes of a library: index/NAME.faiss + index/NAME.json
INDEX_TYPE = "flat-ip"
ROW_CHUNK = 65_536  # vectors scored at a time in exact subset search (bounds the memory used)


def index_file(folder: Path, name: str) -> Path:
    return folder / f"{name}.faiss"


def manifest_file(folder: Path, name: str) -> Path:
    return folder / f"{name}.json"


@dataclass(frozen=True)
class Manifest:
    type: str
    dim: int
    count: int
    vector_version: int

    @classmethod
    def read(cls, folder: Path, name: str) -> "Manifest | None":
        try:
            data = json.loads(manifest_file(folder, name).read_text(encoding="utf-8"))
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError):
            return None


class FlatIndex:
    """faiss IndexIDMap2(IndexFlatIP): exact cosine search on L2-normalised vectors."""

    exact = True  # search returns the true top-k (the planner relies on it)

    def __init__(self, dim: int, name: str = IMAGES, index=None):
        import faiss

        self.dim = dim
        self.name = name
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        # The database vector version this index reflects; whoever changes the index updates it.
        self.vector_version: int | None = None
        self._rows: tuple[np.ndarray, np.ndarray] | None = None  # (sorted ids, their rows)

    @classmethod
    def build(
        cls,
        dim: int,
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        vector_version: int,
        name: str = IMAGES,
    ) -> "FlatIndex":
        """An index of ``chunks`` of (ids, vectors), the database's vectors at ``vector_version``."""
        index = cls(dim, name)
        for ids, vectors in chunks:
            index.add(ids, vectors)
        index.vector_version = vector_version
        return index

    @classmethod
    def load(cls, folder: Path, dim: int, vector_version: int, name: str = IMAGES) -> "FlatIndex | None":
        """The saved index if it matches ``vector_version``; None if missing or stale."""
        import faiss

        manifest = Manifest.read(folder, name)
        if manifest is None or manifest.vector_version != vector_version or manifest.dim != dim:
            return None
        try:
            index = faiss.read_index(str(index_file(folder, name)))
        except RuntimeError:
            return None
        if index.ntotal != manifest.count or index.d != dim:
            return None
        loaded = cls(dim, name, index)
        loaded.vector_version = vector_version
        return loaded

    def save(self, folder: Path) -> None:
        """Write the index and a manifest naming the vector version it reflects."""
        import faiss

        if self.vector_version is None:
            raise ValueError("an index must know which vector version it holds before it is saved")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(index_file(folder, self.name), lambda tmp: faiss.write_index(self._index, str(tmp)))
        manifest = Manifest(INDEX_TYPE, self.dim, self.ntotal, self.vector_version)
        atomic_write_text(manifest_file(folder, self.name), json.dumps(manifest.__dict__, indent=2))

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))
            self._rows = None

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))
            self._rows = None

    def apply(self, changes) -> None:
        """Follow a committed ``cbir.store.catalog.VectorChanges``."""
        self.remove(changes.remove_ids)
        self.add(changes.add_ids, changes.add_vectors)
        self.vector_version = changes.version

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; rows are padded with id -1 when fewer than k exist."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        return self._index.search(queries, k)

    # -- exact work on chosen ids (filtered search, de-duplication) -----------------------------
    def _matrix(self) -> np.ndarray:
        """The stored vectors as a read-only [ntotal, dim] view (no copy)."""
        import faiss

        flat = faiss.downcast_index(self._index.index)
        n = self.ntotal
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        view = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)
        view.flags.writeable = False
        return view

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row numbers of ``ids`` in the index (ids it does not hold are left out)."""
        if self._rows is None:
            all_ids = self.ids()
            order = np.argsort(all_ids, kind="stable")
            self._rows = (all_ids[order], order)
        sorted_ids, order = self._rows
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(sorted_ids, ids)
        pos = np.minimum(pos, max(len(sorted_ids) - 1, 0))
        found = (sorted_ids[pos] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)
        return order[pos[found]]

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found, their vectors)."""
        rows = self.rows_of(ids)
        return self.ids()[rows], np.array(self._matrix()[rows])

    def search_subset(self, query: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k (scores, ids) among ``ids`` only, best first, ties by id: scores just those
        vectors, in chunks, so a selective filter costs little whatever the index size."""
        rows = np.sort(self.rows_of(ids))
        matrix, all_ids = self._matrix(), self.ids()
        query = np.asarray(query, dtype=np.float32).ravel()
        best_scores, best_ids = np.zeros(0, np.float32), np.zeros(0, np.int64)
        for start in range(0, len(rows), ROW_CHUNK):
            chunk = rows[start : start + ROW_CHUNK]
            scores = matrix[chunk] @ query
            best_scores = np.concatenate([best_scores, scores])
            best_ids = np.concatenate([best_ids, all_ids[chunk]])
            if len(best_scores) > k:
                keep = np.argpartition(-best_scores, k - 1)[:k]
                best_scores, best_ids = best_scores[keep], best_ids[keep]
        order = np.lexsort((best_ids, -best_scores))[:k]
        return best_scores[order], best_ids[order]

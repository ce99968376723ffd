"""An exact inner-product index over image ids, saved atomically with a manifest that says which
vector version of the database it reflects, so a stale index is detected and rebuilt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from cbir.fsutil import atomic_write, atomic_write_text

INDEX_FILE = "images.faiss"
MANIFEST_FILE = "index.json"
INDEX_TYPE = "flat-ip"


@dataclass(frozen=True)
class Manifest:
    type: str
    dim: int
    count: int
    vector_version: int

    @classmethod
    def read(cls, folder: Path) -> "Manifest | None":
        try:
            data = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError):
            return None


class FlatIndex:
    """faiss IndexIDMap2(IndexFlatIP): exact cosine search on L2-normalised vectors."""

    def __init__(self, dim: int, index=None):
        import faiss

        self.dim = dim
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        # The database vector version this index reflects; whoever changes the index updates it.
        self.vector_version: int | None = None

    @classmethod
    def build(
        cls, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]], vector_version: int
    ) -> "FlatIndex":
        """An index of ``chunks`` of (ids, vectors), the database's vectors at ``vector_version``."""
        index = cls(dim)
        for ids, vectors in chunks:
            index.add(ids, vectors)
        index.vector_version = vector_version
        return index

    @classmethod
    def load(cls, folder: Path, dim: int, vector_version: int) -> "FlatIndex | None":
        """The saved index if it matches ``vector_version``; None if missing or stale."""
        import faiss

        manifest = Manifest.read(folder)
        if manifest is None or manifest.vector_version != vector_version or manifest.dim != dim:
            return None
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
        except RuntimeError:
            return None
        if index.ntotal != manifest.count or index.d != dim:
            return None
        loaded = cls(dim, index)
        loaded.vector_version = vector_version
        return loaded

    def save(self, folder: Path) -> None:
        """Write the index and a manifest naming the vector version it reflects."""
        import faiss

        if self.vector_version is None:
            raise ValueError("an index must know which vector version it holds before it is saved")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / INDEX_FILE, lambda tmp: faiss.write_index(self._index, str(tmp)))
        manifest = Manifest(INDEX_TYPE, self.dim, self.ntotal, self.vector_version)
        atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest.__dict__, indent=2))

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; rows are padded with id -1 when fewer than k exist."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        return self._index.search(queries, k)

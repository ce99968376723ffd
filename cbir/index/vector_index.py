"""One FAISS index of a library's vectors (images or texts), of any kind cbir builds: flat (exact),
HNSW, IVF-Flat or IVF-PQ. Ids are the database's ids. The index follows the database through
``apply`` between rebuilds: flat and IVF indexes remove vectors natively; an HNSW graph cannot,
so its removed rows are tombstoned and skipped by a per-call selector until the next rebuild
compacts them. Searches take per-call parameters (nprobe, efSearch); nothing mutates the index
while searching."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import faiss
import numpy as np

from cbir.index import gpu as faiss_gpu
from cbir.index.choice import choose_spec
from cbir.index.faiss_ops import new_index, search_parameters, train, with_id_lookup
from cbir.index.types import IndexSpec
from cbir.names import IMAGES  # the indexes of a library (re-exported: old path)
from cbir.names import TEXTS as TEXTS


class VectorIndex:
    def __init__(self, dim: int, name: str = IMAGES, spec: IndexSpec | None = None, index=None, dead=None):
        self.dim = dim
        self.name = name
        self.spec = spec or choose_spec(0, dim, kind="flat")
        self._index = index if index is not None else new_index(self.spec, dim)
        # HNSW only: internal rows whose vectors were removed or replaced (skipped when searching)
        self._dead = np.asarray(dead if dead is not None else [], dtype=np.int64)
        # The database vector version this index reflects; whoever changes the index updates it.
        self.vector_version: int | None = None
        self._rows: tuple[np.ndarray, np.ndarray] | None = None  # (sorted live ids, their rows)
        self._id_map_copy: np.ndarray | None = None
        # Search on the GPU (set by whoever opens the index, after checking one is usable): a GPU
        # copy of the index, made on first search and dropped whenever the index changes.
        self.gpu = False
        self._gpu_copy: faiss.Index | None = None
        # IVF-PQ: ids -> (ids found, exact vectors) from the library's database, for re-ranking;
        # set by whoever opens the index (without it, PQ scores are final)
        self.exact_source: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        dim: int,
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        vector_version: int,
        name: str = IMAGES,
        spec: IndexSpec | None = None,
        sample: np.ndarray | None = None,
        gpu: bool = False,
    ) -> VectorIndex:
        """An index of ``chunks`` of (ids, vectors), the database's vectors at ``vector_version``;
        kinds that need training are trained on ``sample`` first. With ``gpu`` the training
        (k-means) and adding run on the GPU, the result is kept on the CPU too (for saving) and
        searched on the GPU."""
        index = cls(dim, name, spec)
        if not gpu:
            index._fill(chunks, sample)
        else:
            with faiss_gpu.LOCK:
                index._index = faiss_gpu.to_gpu(new_index(index.spec, dim, for_gpu=True), index.kind)
                index._fill(chunks, sample)
                built = index._index
                index._index = with_id_lookup(faiss_gpu.to_cpu(built), index.spec)
                index.gpu, index._gpu_copy = True, built
        index.vector_version = vector_version
        return index

    def _fill(self, chunks, sample) -> None:
        if self.spec.train_size:
            train(self._index, self.spec, sample)
        for ids, vectors in chunks:
            self.add(ids, vectors)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def exact(self) -> bool:
        """Search returns the true top-k (the planner relies on it)."""
        return self.spec.exact

    @property
    def stores_exact_vectors(self) -> bool:
        """Whether ``vectors`` gives the stored vectors exactly (PQ keeps only compressed codes)."""
        return self.kind != "ivfpq"

    @property
    def faiss_index(self):
        return self._index

    @property
    def dead_rows(self) -> np.ndarray:
        return self._dead

    # -- contents ------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Live vectors (tombstoned rows not counted)."""
        return int(self._index.ntotal) - len(self._dead)

    def _id_map(self) -> np.ndarray | None:
        """Internal row -> id, for indexes wrapped in IndexIDMap2 (flat, HNSW); kept until the
        index changes, since every HNSW search with tombstones maps rows through it."""
        if self._id_map_copy is None and hasattr(self._index, "id_map"):
            self._id_map_copy = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        return self._id_map_copy

    def _row_ids(self) -> np.ndarray:
        """Internal row -> id of a flat or HNSW index."""
        id_map = self._id_map()
        assert id_map is not None  # flat and HNSW indexes are wrapped in IndexIDMap2
        return id_map

    def ids(self) -> np.ndarray:
        """The ids of the live vectors."""
        id_map = self._id_map()
        if id_map is not None:
            return np.delete(id_map, self._dead) if len(self._dead) else id_map.copy()
        ivf = faiss.extract_index_ivf(self._index)
        invlists = ivf.invlists
        parts = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
            for i in range(ivf.nlist)
            if invlists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
            self._changed()

    def _changed(self) -> None:
        self._rows = self._id_map_copy = self._gpu_copy = None

    def remove(self, ids: np.ndarray) -> None:
        if not len(ids):
            return
        ids = np.asarray(ids, dtype=np.int64)
        if self.kind == "hnsw":  # no removal from a graph: tombstone the rows holding these ids
            rows = np.flatnonzero(np.isin(self._row_ids(), ids))
            self._dead = np.union1d(self._dead, rows).astype(np.int64)
        else:
            self._index.remove_ids(ids)
        self._changed()

    def apply(self, changes) -> None:
        """Follow a committed ``cbir.store.catalog.VectorChanges`` (removals before additions, so a
        replaced vector is tombstoned, then added anew)."""
        self.remove(changes.remove_ids)
        self.add(changes.add_ids, changes.add_vectors)
        self.vector_version = changes.version

    # -- searching -----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query, with per-call search parameters (nprobe, efSearch)
        over the defaults chosen at build time; rows are padded with id -1."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        merged = {**self.spec.params, **(params or {})}
        rerank = merged.pop("rerank", 0) if self.exact_source is not None else 0
        if rerank > 1:
            return rerank_exactly(queries, self._search(queries, k * rerank, merged)[1], k, self.exact_source)
        if not len(self._dead):
            return self._search(queries, k, merged)
        # Search the graph directly so the selector sees internal rows, then map rows to ids.
        dead = faiss.IDSelectorBatch(self._dead)
        alive = faiss.IDSelectorNot(dead)
        scores, rows = self._index.index.search(queries, k, params=search_parameters(self.spec, merged, alive))
        id_map = self._row_ids()
        return scores, np.where(rows >= 0, id_map[np.maximum(rows, 0)], -1)

    def rerank_candidates(self, queries: np.ndarray, k: int, params: dict | None = None) -> np.ndarray | None:
        """IVF-PQ re-ranked by someone else (a Ray actor has no database): the ``rerank`` x k
        candidate ids by compressed codes, for ``rerank_exactly``; None when this search would
        not re-rank."""
        merged = {**self.spec.params, **(params or {})}
        rerank = merged.pop("rerank", 0)
        if rerank <= 1:
            return None
        return self._search(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32), k * rerank, merged)[1]

    def _search(self, queries: np.ndarray, k: int, params: dict):
        """faiss search with ``params``: on the GPU copy when searching on the GPU and the call is
        within what faiss's GPU k-selection handles, else on the CPU index."""
        if self.gpu and max(k, params.get("nprobe", 0)) <= faiss_gpu.MAX_K:
            with faiss_gpu.LOCK:
                if self._gpu_copy is None:
                    self._gpu_copy = faiss_gpu.to_gpu(self._index, self.kind)
                return self._gpu_copy.search(queries, k, params=search_parameters(self.spec, params))
        return self._index.search(queries, k, params=search_parameters(self.spec, params))

    # -- exact work on chosen ids (filtered search, de-duplication) -----------------------------
    def _matrix(self) -> np.ndarray:
        """A flat index's stored vectors as a read-only [rows, dim] view (no copy)."""
        flat = faiss.downcast_index(self._index.index)
        n = int(self._index.ntotal)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        view = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)
        view.flags.writeable = False
        return view

    def _rows_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found, their live rows) for indexes wrapped in IndexIDMap2, in the order of ``ids``."""
        if self._rows is None:
            id_map = self._row_ids()
            rows = np.delete(np.arange(len(id_map)), self._dead) if len(self._dead) else np.arange(len(id_map))
            order = np.argsort(id_map[rows], kind="stable")
            self._rows = (id_map[rows][order], rows[order])
        sorted_ids, rows = self._rows
        ids = np.asarray(ids, dtype=np.int64)
        if not len(sorted_ids):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        hit = sorted_ids[pos] == ids
        return ids[hit], rows[pos[hit]]

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found, their stored vectors), in the order of ``ids``; exact unless
        ``stores_exact_vectors`` is False."""
        if self.kind == "flat":
            found, rows = self._rows_of(ids)
            return found, np.array(self._matrix()[rows])
        if self.kind == "hnsw":
            found, rows = self._rows_of(ids)
            empty = np.zeros((0, self.dim), np.float32)
            return found, (self._index.index.reconstruct_batch(rows) if len(rows) else empty)
        held, vectors = [], []  # IVF: by id through the direct map, which knows every id it holds
        for i in ids:
            try:
                vectors.append(self._index.reconstruct(int(i)))
            except RuntimeError:  # not in the index
                continue
            held.append(int(i))
        return np.asarray(held, dtype=np.int64), (np.stack(vectors) if vectors else np.zeros((0, self.dim), np.float32))


def rerank_exactly(queries: np.ndarray, candidates: np.ndarray, k: int, exact_source) -> tuple[np.ndarray, np.ndarray]:
    """IVF-PQ: candidates found by compressed codes, re-scored with their exact vectors from
    ``exact_source``; the best k of those, ties by id."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, found) in enumerate(zip(queries, candidates)):
        found_ids, vectors = exact_source(found[found >= 0])
        exact = vectors @ query
        order = np.lexsort((found_ids, -exact))[:k]
        scores[row, : len(order)], ids[row, : len(order)] = exact[order], found_ids[order]
    return scores, ids

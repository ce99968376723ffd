"""An index split into shards, each a VectorIndex of its own file: a query fans out over the
shards in parallel (FAISS releases the GIL while it searches) and the per-shard top-k lists are
merged by score; on flat shards the result equals the unsharded exact search. New vectors go to
the shard their rule names: by hash of the id, by folder, or by date taken."""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from cbir.errors import UsageError
from cbir.index.topk import merge_top_k
from cbir.index.vector_index import VectorIndex

BY = ("hash", "folder", "date")
_POOL: list[ThreadPoolExecutor] = []


def search_pool() -> ThreadPoolExecutor:
    """One pool of searcher threads for the process, made on first use (shared with the Ray
    shard actors, cbir.distributed.search)."""
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="shard"))
    return _POOL[0]


def check_shard_count(shards: int, vectors: int) -> None:
    """At most one shard per vector: each shard is a file built and tuned on its own, so a
    count beyond the vectors would only build empty shards (for a very long time)."""
    if shards > vectors:
        raise UsageError(
            f"--shards {shards} is more than the {vectors} vectors of the image index; each shard needs at least one"
        )


@dataclass
class Router:
    """Which shard holds an id. ``folders`` (folder key -> shard) and ``bounds`` (the first date
    of shards 1..n-1, ISO) are fixed when sharding and kept in the manifest; ``keys`` turns ids
    into folder keys or dates and is bound by the library that opens the index."""

    by: str
    shards: int
    folders: dict[str, int] = field(default_factory=dict)
    bounds: list[str] = field(default_factory=list)
    keys: Callable[[np.ndarray], list[str]] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {"by": self.by, "shards": self.shards, "folders": self.folders, "bounds": self.bounds}

    @classmethod
    def from_dict(cls, data: dict) -> Router:
        return cls(data["by"], data["shards"], dict(data.get("folders") or {}), list(data.get("bounds") or []))

    def assign(self, ids: np.ndarray, sizes: list[int] | None = None) -> np.ndarray:
        """The shard of each id. A folder seen for the first time joins the smallest shard."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.by == "hash":
            # Fibonacci hashing spreads any id pattern evenly, not only consecutive ids.
            return ((ids.astype(np.uint64) * np.uint64(11400714819323198485)) >> np.uint64(40)).astype(
                np.int64
            ) % self.shards
        assert self.keys is not None  # bound by whoever opens a folder- or date-sharded index
        keys = self.keys(ids)
        if self.by == "date":
            return np.asarray([bisect.bisect_right(self.bounds, key) for key in keys], dtype=np.int64)
        sizes = list(sizes or [0] * self.shards)
        out = []
        for key in keys:
            if key not in self.folders:
                self.folders[key] = int(np.argmin(sizes))
            out.append(self.folders[key])
            sizes[out[-1]] += 1
        return np.asarray(out, dtype=np.int64)


class ShardedIndex:
    """The VectorIndex interface over shards."""

    def __init__(self, shards: list[VectorIndex], router: Router):
        self.shards = shards
        self.router = router

    # what the planner and the library ask of any index
    @property
    def name(self) -> str:
        return self.shards[0].name

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    @property
    def spec(self):
        return self.shards[0].spec

    @property
    def kind(self) -> str:
        """The shards' kind, e.g. "flat", or "flat+hnsw" when a shard was rebuilt as another."""
        return "+".join(dict.fromkeys(s.kind for s in self.shards))

    @property
    def exact(self) -> bool:
        return all(s.exact for s in self.shards)

    @property
    def stores_exact_vectors(self) -> bool:
        return all(s.stores_exact_vectors for s in self.shards)

    @property
    def vector_version(self) -> int | None:
        return self.shards[0].vector_version

    @vector_version.setter
    def vector_version(self, version: int | None) -> None:
        for shard in self.shards:
            shard.vector_version = version

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    def ids(self) -> np.ndarray:
        return np.concatenate([s.ids() for s in self.shards])

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids):
            return
        where = self.router.assign(ids, [s.ntotal for s in self.shards])
        for number, shard in enumerate(self.shards):
            mine = where == number
            shard.add(np.asarray(ids)[mine], np.asarray(vectors)[mine])

    def remove(self, ids: np.ndarray) -> None:
        for shard in self.shards:  # an id lives in one shard; the others ignore it
            shard.remove(ids)

    def apply(self, changes) -> None:
        self.remove(changes.remove_ids)
        self.add(changes.add_ids, changes.add_vectors)
        self.vector_version = changes.version

    def search(self, queries: np.ndarray, k: int, params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every shard's top-k, in parallel, merged into the overall top-k (ties by id)."""
        return merge_top_k(list(search_pool().map(lambda s: s.search(queries, k, params), self.shards)), k)

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [s.vectors(ids) for s in self.shards]
        found = np.concatenate([p[0] for p in parts])
        vectors = np.concatenate([p[1] for p in parts]) if len(found) else np.zeros((0, self.dim), np.float32)
        position = {int(i): n for n, i in enumerate(np.asarray(ids).tolist())}
        order = np.argsort([position[int(i)] for i in found], kind="stable")
        return found[order], vectors[order]

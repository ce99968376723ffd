"""The Ray side of sharded search (cbir.distributed.search): a ShardActor holds shards of an index
by key and searches them; shards travel to it as plain data (``payload``) through Ray's object
store. Also used in the driver's own process, as a plain object, to answer for an actor that is
lost."""

from __future__ import annotations

import numpy as np

from cbir.index.topk import merge_top_k


def payload(shard) -> dict:
    """One shard as plain data for the object store: its FAISS bytes, tombstones and spec."""
    import faiss

    return {
        "index": faiss.serialize_index(shard.faiss_index),
        "dead": np.asarray(shard.dead_rows, dtype=np.int64),
        "spec": shard.spec.as_dict(),
        "dim": shard.dim,
        "name": shard.name,
    }


def _unpack(payload: dict):
    import faiss

    from cbir.index.types import IndexSpec
    from cbir.index.vector_index import VectorIndex

    index = faiss.deserialize_index(np.asarray(payload["index"]))
    return VectorIndex(payload["dim"], payload["name"], IndexSpec.from_dict(payload["spec"]), index, payload["dead"])


class ShardActor:
    """Shards of an index, by key (a shard's number and file checksums); a search names the
    keys of one generation, so a generation being loaded beside it is never mixed in."""

    def __init__(self):
        self.held: dict[str, object] = {}

    def load(self, key: str, payload: dict) -> str:
        self.held[key] = _unpack(payload)
        return key

    def drop(self, keys: list[str]) -> None:
        for key in keys:
            self.held.pop(key, None)

    def search(self, keys: list[str], queries: np.ndarray, k: int, params: dict | None):
        """(scores, ids) of these shards merged (None without such shards), and for IVF-PQ
        shards that re-rank, their candidate ids: the driver re-scores those exactly, since
        the exact vectors live in the library's database."""
        from cbir.index.sharded import search_pool

        def one(shard):
            candidates = shard.rerank_candidates(queries, k, params)
            return (None, candidates) if candidates is not None else (shard.search(queries, k, params), None)

        results = list(search_pool().map(one, [self.held[key] for key in keys]))
        found = [r for r, _ in results if r is not None]
        return (merge_top_k(found, k) if found else None), [c for _, c in results if c is not None]

    def vectors(self, keys: list[str], ids: np.ndarray):
        from cbir.index.sharded import ShardedIndex

        return ShardedIndex([self.held[key] for key in keys], None).vectors(ids)

    def ids(self, keys: list[str]) -> np.ndarray:
        return np.concatenate([self.held[key].ids() for key in keys])

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


_REMOTE: list = []


def remote_actor_class():
    from cbir.distributed.cluster import import_ray

    ray = import_ray()
    if not _REMOTE:
        _REMOTE.append(ray.remote(ShardActor))
    return _REMOTE[0]

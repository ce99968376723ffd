"""Sharded search served by Ray actors: each ShardActor holds one or more shards of the image
index (on whatever node Ray's scheduler places it), a query fans out to every actor, each
searches its shards with the call's parameters, and the driver merges the per-actor top-k lists
with a heap, ties broken by id exactly as ``ShardedIndex.search`` does, so the results are the
local sharded search's.

Shards travel as bytes through Ray's object store (``faiss.serialize_index`` plus the HNSW
tombstones), never as paths: the nodes need no shared filesystem. The actors are a read-only
serving copy: the library's own process reads each generation, and ``RayEngine.wrap`` (called
where ``LibraryIndexes`` loads a generation, so also when it follows a newer one) ships only the
shards whose files changed, then switches searches over to the new set at once.

Ray is imported here only, when asked for. Without token authentication anyone who reaches a
Ray cluster can run code on it: without an address a private Ray is started on 127.0.0.1 only
(cbir.distributed.cluster); a cluster belongs on a private network.

Losing an actor or its node never costs a query: a call an actor does not answer within
``RayOptions.deadline`` (or answers with its death) is answered for that actor's shards by the
driver, from the copy of the index it loaded to publish, so the results are the same; meanwhile
a background thread starts a replacement on a live node and publishes the index again, which
ships it its shards, and searches go back to the actors. Actor counts come from the live nodes.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from cbir.distributed.shard_actor import ShardActor, payload, remote_actor_class
from cbir.errors import CbirError, EngineUnavailable, UsageError
from cbir.index.topk import merge_top_k
from cbir.names import IMAGES

log = logging.getLogger(__name__)
RECOVER_EVERY = 10.0  # seconds between attempts to replace lost actors


class RayError(EngineUnavailable):
    """Ray is unreachable, or its actors failed."""


class ActorLost(RayError):
    """A shard actor died: killed, out of memory, or its node went down."""


@dataclass(frozen=True)
class RayOptions:
    """How to serve the image shards on Ray."""

    address: str | None = None  # None: a private local Ray on 127.0.0.1; "auto", "ray://HOST:10001", HOST:PORT
    actors: int | None = None  # None: one actor per ``shards_per_actor`` shards
    shards_per_actor: int | None = None  # None (and no ``actors``): as many actors as the cluster's CPUs hold
    num_cpus: float = 1.0  # reserved per actor by Ray's scheduler
    max_concurrency: int = 4  # searches one actor runs at once (FAISS releases the GIL)
    timeout: float = 120.0  # seconds to wait for actors to be placed and loaded
    deadline: float = 5.0  # seconds an actor has to answer a search before the driver answers for it

    def __post_init__(self):
        if self.actors is not None and self.actors < 1:
            raise UsageError(f"--actors must be at least 1, got {self.actors}")
        if self.shards_per_actor is not None and self.shards_per_actor < 1:
            raise UsageError(f"--shards-per-actor must be at least 1, got {self.shards_per_actor}")
        if not self.num_cpus >= 0:
            raise UsageError(f"--actor-cpus must be 0 or more, got {self.num_cpus}")

    def actor_count(self, shards: int, cluster_cpus: float) -> int:
        """Actors for ``shards`` shards: as asked, else one a shard up to what the cluster's
        CPUs can place (a private 2-core Ray cannot hold 4 one-CPU actors)."""
        if self.actors:
            return min(shards, self.actors)
        if self.shards_per_actor:
            return min(shards, math.ceil(shards / self.shards_per_actor))
        fits = int(cluster_cpus // self.num_cpus) if self.num_cpus > 0 else shards
        return max(1, min(shards, fits))


# -- the driver -------------------------------------------------------------------------------
def _shard_keys(count: int, files: dict | None) -> list[str]:
    """A key per shard naming its content: its number and the checksums of its files, so an
    unchanged shard keeps its key across generations; without files (an index built in memory)
    a fresh key each time."""
    if not files:
        fresh = next(_FRESH)
        return [f"{n}:new{fresh}" for n in range(count)]
    from cbir.index.generations import shard_of_file

    keys = []
    for n in range(count):
        mine = sorted((f, c) for f, c in files.items() if (shard_of_file(f) or 0) == n)
        keys.append(f"{n}:" + hashlib.sha256(repr(mine).encode()).hexdigest()[:32])
    return keys


_FRESH = itertools.count()


class RayEngine:
    """The actors serving one library's image index, and the hook ``LibraryIndexes`` calls with
    every generation it loads (``wrap``). Close it to stop the actors (and the private Ray)."""

    def __init__(self, options: RayOptions | None = None):
        self.options = options or RayOptions()
        from cbir.distributed.cluster import connected

        # kept connected until close(); a connection this process already has is kept after it
        self._connection = ExitStack()
        self.ray = self._connection.enter_context(connected(self.options.address))
        self.actors: list = []
        self.held: list[set[str]] = []  # the keys each actor holds
        self.shipped = 0  # shards sent to actors so far (a refresh sends only the changed ones)
        self.current: RayShardedIndex | None = None
        self._live: list[RayShardedIndex] = []  # published, and not yet released
        self._lock = threading.Lock()
        self.down: set[int] = set()  # actors that died or missed a deadline: the driver answers for them
        self._recovering: threading.Thread | None = None
        self._last_recovery = 0.0
        self.recovered = 0  # actors replaced so far

    # LibraryIndexes calls this with each generation a reader loads
    def wrap(self, name: str, index, files: dict | None, reload=None):
        return self.publish(index, files, reload) if name == IMAGES else index

    def publish(self, local, files: dict | None = None, reload=None) -> RayShardedIndex:
        """Serve ``local`` (a ShardedIndex or one VectorIndex) from the actors: shards they do
        not hold yet are shipped, then searches switch to it; the previous set is dropped once
        the searches still running on it end. ``reload``: how to load the index again (and
        publish it) when an actor is lost; without it a lost actor is an error."""
        ray = self.ray
        shards = list(getattr(local, "shards", [local]))
        keys = _shard_keys(len(shards), files)
        from cbir.distributed.cluster import live_capacity

        cpus = live_capacity(ray).cpus
        count = self.options.actor_count(len(shards), cpus)
        if max(count, len(self.actors)) * self.options.num_cpus > cpus:  # would wait for CPUs forever
            raise RayError(
                f"{max(count, len(self.actors))} Ray actor(s) of {self.options.num_cpus:g} CPU(s) each do not fit this Ray "
                f"cluster's {cpus:g} CPUs: ask for fewer --actors, more --shards-per-actor or less --actor-cpus"
            )
        loads, added = [], []
        with self._lock:
            self._start_actors(count)
            placement = [n % count for n in range(len(shards))]
            for shard, key, actor in zip(shards, keys, placement):
                if key not in self.held[actor]:
                    loads.append(self.actors[actor].load.remote(key, ray.put(payload(shard))))
                    self.held[actor].add(key)
                    added.append((actor, key))
            index = RayShardedIndex(self, local, keys, placement, reload)
            self._live.append(index)
        try:
            self._wait(loads, f"load {len(loads)} shard(s) onto {count} Ray actor(s)")
        except BaseException:
            with self._lock:
                self._live.remove(index)
                for actor, key in added:
                    self.held[actor].discard(key)
            raise
        self.shipped += len(loads)
        with self._lock:
            self.down -= set(placement)  # they loaded their shards: answering again
            old, self.current = self.current, index
        if old is not None:
            old.retire()
        return index

    def _start_actors(self, count: int) -> None:
        """At least ``count`` actors, spread over the cluster's nodes by Ray's scheduler."""
        while len(self.actors) < count:
            self.actors.append(self._new_actor())
            self.held.append(set())

    def _new_actor(self):
        return (
            remote_actor_class()
            .options(
                num_cpus=self.options.num_cpus,
                max_concurrency=self.options.max_concurrency,
                scheduling_strategy="SPREAD",
            )
            .remote()
        )

    def lost(self, actor: int, reload) -> None:
        """Actor ``actor`` died or missed a deadline: the driver answers for it from now on, and
        a background thread replaces it and publishes the index again (``reload``)."""
        with self._lock:
            self.down.add(actor)
            if self._recovering is not None or time.monotonic() - self._last_recovery < RECOVER_EVERY:
                return
            self._recovering = threading.Thread(
                target=self._recover, args=(reload,), name="cbir-ray-recover", daemon=True
            )
            self._recovering.start()

    def _recover(self, reload) -> None:
        ray = self.ray
        try:
            with self._lock:
                suspects = {n: self.actors[n] for n in self.down}
            for n, actor in suspects.items():
                try:  # only slow, not gone: keep it
                    ray.get(actor.node.remote(), timeout=self.options.deadline)
                    with self._lock:
                        # a replacement placed since an earlier round failed holds no shards (and
                        # searches still call the actor it replaced): down until the reload below
                        if self.held[n]:
                            self.down.discard(n)
                    continue
                except Exception:  # noqa: BLE001 - dead, or its node unreachable: replace it
                    pass
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 - already gone with its node
                    pass
                with self._lock:
                    self.actors[n] = self._new_actor()
                    self.held[n] = set()
                self.recovered += 1
            if reload is not None and self.down:
                reload()  # ships the new actors their shards; a success clears ``down``
        except Exception as e:  # noqa: BLE001 - the driver keeps answering; tried again later
            log.info("replacing lost Ray shard actors failed: %s", e)
        finally:
            with self._lock:
                self._recovering = None
                self._last_recovery = time.monotonic()

    def _wait(self, refs: list, what: str):
        ray = self.ray
        try:
            return ray.get(refs, timeout=self.options.timeout)
        except ray.exceptions.GetTimeoutError:
            raise RayError(
                f"Ray could not {what} within {self.options.timeout:g} s: are there "
                f"{self.options.num_cpus:g} free CPUs per actor? (`ray status`; fewer --actors or --actor-cpus)"
            ) from None
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, CbirError):
                raise e.cause from None
            raise RayError(f"a Ray shard actor failed: {type(e.cause).__name__}: {e.cause}") from None
        except ray.exceptions.RayActorError as e:
            raise ActorLost(f"a Ray shard actor was lost ({str(e).splitlines()[0]})") from None
        except ray.exceptions.RayError as e:
            raise RayError(f"Ray failed: {str(e).splitlines()[0]}") from None

    def _release(self, index: RayShardedIndex) -> None:
        """Drop from the actors the shards of ``index`` that no live index uses."""
        with self._lock:
            if index in self._live:
                self._live.remove(index)
            in_use = {(a, key) for live in self._live for a, key in zip(live.placement, live.keys)}
            for actor, key in zip(index.placement, index.keys):
                if (actor, key) not in in_use and key in self.held[actor]:
                    self.held[actor].discard(key)
                    self.actors[actor].drop.remote([key])

    def nodes(self) -> list[str]:
        """The Ray node of each actor."""
        return self._wait([a.node.remote() for a in self.actors], "reach the shard actors")

    def close(self) -> None:
        ray = self.ray
        with self._lock:
            actors, self.actors, self.held, self._live, self.current = self.actors, [], [], [], None
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone, or Ray is shutting down
                pass
        self._connection.close()

    def describe(self) -> dict:
        """Who answers searches, for --explain and /api/status (read-only): the cluster, and for
        each shard actor the shards of the current index it holds and its node's address (None:
        it did not answer within 5 s, gone with its node)."""
        ray = self.ray
        with self._lock:
            actors, current, down = list(self.actors), self.current, set(self.down)
        placement = current.placement if current is not None else []
        refs = [actor.node.remote() for actor in actors]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=5.0)[0]) if refs else set()
        addresses = {n["NodeID"]: n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}
        nodes = []
        for ref in refs:
            try:
                nodes.append(addresses.get(ray.get(ref)) if ref in ready else None)
            except ray.exceptions.RayError:  # the actor is gone
                nodes.append(None)
        return {
            "engine": "ray",
            "address": self.options.address or "private local cluster (127.0.0.1)",
            "shards": len(placement),
            "actors": [
                {
                    "actor": n,
                    "shards": [s for s, a in enumerate(placement) if a == n],
                    "node": node,
                    "down": n in down,  # lost or late: this process answers for its shards
                }
                for n, node in enumerate(nodes)
            ],
        }


class RayShardedIndex:
    """The index interface searches use (as ``ShardedIndex``), over shards held by Ray actors.
    Read-only: ingest and rebuilds change the library's files, and the engine follows them."""

    def __init__(self, engine: RayEngine, local, keys: list[str], placement: list[int], reload=None):
        self.engine = engine
        self._reload = reload
        self.keys, self.placement = keys, placement
        self.name, self.dim, self.spec = local.name, local.dim, local.spec
        self.kind, self.exact = local.kind, local.exact
        self.stores_exact_vectors = local.stores_exact_vectors
        self.vector_version = local.vector_version
        self.ntotal = local.ntotal
        self.shard_count = len(keys)
        shards = list(getattr(local, "shards", [local]))
        self.exact_source = shards[0].exact_source  # for IVF-PQ shards that re-rank
        by_actor: dict[int, list[str]] = {}
        for actor, key in zip(placement, keys):
            by_actor.setdefault(actor, []).append(key)
        self._by_actor = [(a, engine.actors[a], ks) for a, ks in sorted(by_actor.items())]
        # the driver's own copy, which answers for an actor that is lost: the index it loaded to
        # publish, so memory is what publishing it took (a plain ShardActor, not a Ray one)
        self._local = ShardActor()
        self._local.held = dict(zip(keys, shards))
        self._running = 0
        self._retired = False
        self._state = threading.Lock()

    @property
    def actor_count(self) -> int:
        return len(self._by_actor)

    def _call(self, method: str, *args) -> list:
        """``method`` on every actor with its keys, waited for up to the deadline; an actor that
        is down, dies or misses the deadline is answered for by the driver's copy of its shards
        (and replaced in the background). The shards stay loaded until the last call on this
        generation returns, even after a newer one is published."""
        ray, engine = self.engine.ray, self.engine
        with self._state:
            self._running += 1
        try:
            asked = {}
            for n, actor, keys in self._by_actor:
                if n in engine.down:
                    continue
                try:
                    asked[n] = getattr(actor, method).remote(keys, *args)
                except Exception:  # noqa: BLE001 - Ray itself unreachable: answered here
                    engine.lost(n, self._reload)
            try:
                ready = set(ray.wait(list(asked.values()), num_returns=len(asked), timeout=engine.options.deadline)[0])
            except Exception:  # noqa: BLE001 - as above
                ready = set()
            results = []
            for n, _, keys in self._by_actor:
                ref = asked.get(n)
                if ref is not None and ref in ready:
                    try:
                        results.append(engine._wait([ref], f"{method} on the shard actors")[0])
                        continue
                    except RayError:  # lost with its node, or Ray failed: answered here
                        pass
                # an actor still down is reported again: a replacement that failed (no live CPU
                # for it yet) or was not tried (RECOVER_EVERY) is tried again, not forgotten
                if ref is not None or n in engine.down:
                    engine.lost(n, self._reload)
                results.append(getattr(self._local, method)(keys, *args))
            return results
        finally:
            with self._state:
                self._running -= 1
                release = self._retired and self._running == 0
            if release:
                self.engine._release(self)

    def retire(self) -> None:
        with self._state:
            self._retired = True
            release = self._running == 0
        if release:
            self.engine._release(self)

    def search(self, queries: np.ndarray, k: int, params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every actor's top-k over its shards, merged into the overall top-k (ties by id)."""
        from cbir.index.vector_index import rerank_exactly

        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        parts = []
        for found, pending in self._call("search", queries, k, params):
            if found is not None:
                parts.append(found)
            parts.extend(rerank_exactly(queries, candidates, k, self.exact_source) for candidates in pending)
        return merge_top_k(parts, k)

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        parts = self._call("vectors", ids)
        found = np.concatenate([p[0] for p in parts])
        vectors = np.concatenate([p[1] for p in parts]) if len(found) else np.zeros((0, self.dim), np.float32)
        position = {int(i): n for n, i in enumerate(ids.tolist())}
        order = np.argsort([position[int(i)] for i in found], kind="stable")
        return found[order], vectors[order]

    def ids(self) -> np.ndarray:
        return np.concatenate(self._call("ids"))

    def _read_only(self, *_args) -> None:
        raise UsageError("the Ray-served index is a read-only copy: ingest and rebuild change the library itself")

    add = remove = apply = _read_only


def attach(library, options: RayOptions | None = None) -> RayEngine:
    """Serve ``library``'s image index from Ray actors from now on (they start when it loads);
    ``library.close()`` stops them."""
    engine = RayEngine(options)
    library.indexes.serve_from(engine)
    return engine

"""Distributed ingestion on Ray: the decode+encode stage of cbir.ingest.pipeline, spread over a
cluster and scheduled by the driver, so that it rides through the loss of a node.

    files -> decode tasks (1 CPU, CHUNK files each) -> encode actors (the model loaded once) -> driver

The driver sends each group of decode tasks (about a batch of files) to the least busy encode
actor, at most two groups an actor, so memory stays flat however slow the encoders are; the
batches come back in any order and the caller commits them as the local engine does (the
single writer), keeping each file once, by path.

Capacity is what the nodes that are alive hold (``ray.nodes()``), never
``ray.cluster_resources()``, which counts a dead node's CPUs until the cluster notices. An encode
actor holds one CPU, and one CPU is always left for decoding: a layout that leaves none is
refused at once, and when nodes go, actors are retired until one is free again.

Faults: Ray runs a decode task again when its worker or node dies. An encode call that fails
because its actor or node is gone (or its decoded input went with a node) is sent again, decoded
afresh, to a replacement actor on a live node, each group up to RETRIES times; the run ends with
one line saying what it survived. A run that makes no progress for ``stall_timeout`` seconds
stops with one line saying what waits for what, keeping what it committed. Every node must see
the files at the same paths and have cbir and the model installed."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from cbir import errors
from cbir.distributed.cluster import Capacity, connected, live_capacity
from cbir.encode.spec import Encoder, Preprocess, same_model
from cbir.errors import CbirError, ModelMismatch, UsageError
from cbir.ingest.decode import MAX_PIXELS, Decoded, FileTask, decode_task
from cbir.ingest.pipeline import Item, encode_decoded, file_chunks
from cbir.timing import Timer

RETRIES = 3  # per group of files, against lost actors, workers and nodes
GROUPS_PER_ACTOR = 2  # one encoding, one decoding or waiting: enough to keep an actor busy
# Seconds a run may go without progress (default 600: a node's first encode actor may spend
# minutes downloading the model's weights, which looks the same from here)
STALL_TIMEOUT = "CBIR_RAY_STALL_TIMEOUT"
_CHECK_EVERY = 2.0  # seconds between looks at which nodes are alive


def encoder_recipe(encoder: Encoder) -> Callable[[str], Encoder]:
    """How a worker builds the same model on its device: by its spec on torch, unless the encoder
    provides its own recipe (ONNX Runtime's, the fake encoder of tests)."""
    recipe = getattr(encoder, "recipe", None)
    if recipe is not None:
        return recipe()
    from cbir.encode import load_encoder

    return partial(load_encoder, encoder.spec, backend="torch")


def most_workers(capacity: Capacity, gpus_per_worker: float) -> int:
    """Encode actors the live nodes can hold with a CPU left for decoding (0: none fit)."""
    most = int(capacity.cpus) - 1
    if gpus_per_worker:
        most = min(most, int(capacity.gpus // gpus_per_worker))
    return max(0, most)


def plan_workers(capacity: Capacity, asked: int | None, gpus_per_worker: float) -> int:
    """Encode actors for this run: ``asked``, else one per ``gpus_per_worker`` GPUs, else one per
    two CPUs; refused at once, in one line, when they cannot all run with a CPU left to decode."""
    most = most_workers(capacity, gpus_per_worker)
    if most == 0:
        needs = f"{gpus_per_worker:g} GPU and 2 CPUs" if gpus_per_worker else "2 CPUs"
        raise UsageError(
            f"the Ray cluster has {capacity.describe()}: an ingest needs at least {needs} "
            "(one CPU encodes, one decodes)"
        )
    if asked is None:
        return most if gpus_per_worker else max(1, min(most, int(capacity.cpus) // 2))
    if asked > most:
        raise UsageError(
            f"--ray-workers {asked} cannot run on {capacity.describe()}: each encode worker holds a "
            f"CPU{' and a GPU share' if gpus_per_worker else ''} and decoding needs one CPU more; "
            f"use --ray-workers {most} or fewer"
        )
    return asked


@dataclass
class RayStage:
    """A cbir.ingest.pipeline Stage on a Ray cluster (see cbir.distributed.cluster.connected
    for ``address``). ``workers``: encode actors (see :func:`plan_workers`); ``num_cpus`` sizes
    a private local cluster (default: this machine's cores, at least 2). After a run,
    ``survived`` says in one line what the run rode through, if anything."""

    recipe: Callable[[str], Encoder]
    fingerprint: dict
    preprocess: Preprocess
    batch_size: int
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    num_cpus: int | None = None
    stall_timeout: float | None = None  # None: $CBIR_RAY_STALL_TIMEOUT, else 600
    survived: str | None = None

    @classmethod
    def of(cls, encoder: Encoder, **options) -> RayStage:
        """The stage whose workers load ``encoder``'s model (checked against its fingerprint)."""
        return cls(encoder_recipe(encoder), encoder.fingerprint(), encoder.preprocess, **options)

    def __call__(self, tasks: list[FileTask], known: frozenset, timer: Timer) -> Iterator[list[Item]]:
        self.survived = None
        if not tasks:
            return
        private_cpus = self.num_cpus or max(2, os.cpu_count() or 1)
        with connected(self.address, num_cpus=private_cpus) as ray:
            with timer("cluster"):
                capacity = live_capacity(ray)
                workers = plan_workers(capacity, self.workers, self.gpus_per_worker)
                stall = self.stall_timeout or float(os.environ.get(STALL_TIMEOUT) or 600)
                run = _Run(ray, self, known, workers, capacity, stall)
            batches = run.batches(_groups(file_chunks(tasks), self.batch_size))
            try:
                while True:
                    with timer("wait"):  # for the cluster: decoding and encoding happen there
                        batch = next(batches, None)
                    if batch is None:
                        return
                    yield batch
            finally:
                run.stop()
                self.survived = run.survived()


def _groups(blocks: Iterator[list[FileTask]], batch_size: int) -> Iterator[list[list[FileTask]]]:
    """Blocks of files grouped into about ``batch_size`` files: one encode call each."""
    group: list[list[FileTask]] = []
    files = 0
    for block in blocks:
        group.append(block)
        files += len(block)
        if files >= batch_size:
            yield group
            group, files = [], 0
    if group:
        yield group


@dataclass
class _Group:
    blocks: list[list[FileTask]]
    attempts: int = 0
    actor: Any = None


@dataclass
class _Run:
    """One ingest's actors and groups in flight."""

    ray: Any
    stage: RayStage
    known: frozenset
    workers: int
    start: Capacity
    stall_timeout: float
    actors: list = field(default_factory=list)
    busy: dict = field(default_factory=dict)  # actor -> its groups in flight
    lost: int = 0  # encode actors lost with their node or worker
    started: int = 0  # encode actors started after the first ones (in place of lost or retired ones)
    retried: int = 0
    retired: int = 0

    def __post_init__(self):
        ray = self.ray
        gpus = self.stage.gpus_per_worker
        self._decode = ray.remote(num_cpus=1, max_retries=RETRIES)(decode_block)
        self._actor = ray.remote(num_cpus=1, num_gpus=gpus or 0, max_restarts=0, scheduling_strategy="SPREAD")(
            EncodeActor
        )  # spread: one node lost takes as few as it can
        self._device = "cuda" if gpus else "cpu"
        self.capacity = self.start
        for _ in range(self.workers):
            self._add_actor()

    def _add_actor(self) -> None:
        stage = self.stage
        actor = self._actor.remote(stage.recipe, stage.fingerprint, self._device)
        self.actors.append(actor)
        self.busy[actor] = 0

    def _drop_actor(self, actor) -> None:
        if actor in self.busy:
            self.actors.remove(actor)
            del self.busy[actor]
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already gone with its node
                pass

    def batches(self, groups: Iterator[list[list[FileTask]]]) -> Iterator[list[Item]]:
        ray = self.ray
        pending: dict = {}  # encode call -> its group
        waiting: list[_Group] = []  # groups to send again
        groups = iter(groups)
        exhausted = False
        progress = checked = time.monotonic()
        while True:
            while self.actors and (waiting or not exhausted):
                actor = min(self.actors, key=self.busy.__getitem__)
                if self.busy[actor] >= GROUPS_PER_ACTOR:
                    break
                group = waiting.pop(0) if waiting else None
                if group is None:
                    blocks = next(groups, None)
                    if blocks is None:
                        exhausted = True
                        break
                    group = _Group(blocks)
                pending[self._send(group, actor)] = group
            if not pending and not waiting and exhausted:
                return
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0) if pending else ([], [])
            now = time.monotonic()
            for ref in ready:
                group = pending.pop(ref)
                if group.actor in self.busy:  # not retired or replaced meanwhile
                    self.busy[group.actor] -= 1
                try:
                    items = ray.get(ref)
                except Exception as e:
                    self._failed(group, e)
                    waiting.append(group)
                else:
                    yield items
                progress = now
            if now - checked >= _CHECK_EVERY or (waiting and not self.actors):
                self._follow_nodes()
                checked = now
            if now - progress > self.stall_timeout:
                raise CbirError(self._stalled(len(pending) + len(waiting)))

    def _send(self, group: _Group, actor):
        decoded = [self._decode.remote(block, self.stage.preprocess, self.known) for block in group.blocks]
        group.actor = actor
        self.busy[actor] += 1
        return actor.encode.remote(*decoded)

    def _failed(self, group: _Group, error: Exception) -> None:
        """A failed encode call: a cbir error (another model, a file no decoder survives) ends
        the run; a lost actor, worker, node or object has its group sent again."""
        cbir_error = _cbir_error(error)
        if cbir_error is not None:
            raise cbir_error from error
        group.attempts += 1
        if group.attempts > RETRIES:
            files = [t.path for block in group.blocks for t in block]
            raise CbirError(
                f"the Ray ingest failed {group.attempts} times on the {len(files)} files from {files[0]} "
                f"({_first_line(error)}); everything committed so far is kept: run the same command again"
            ) from error
        self.retried += 1
        if _actor_lost(self.ray, error) and group.actor in self.busy:
            self._drop_actor(group.actor)
            self.lost += 1
            self._follow_nodes()

    def _follow_nodes(self) -> None:
        """Retire actors when the live nodes can no longer hold them with a CPU left to decode,
        and start actors again, up to the planned number, when they can."""
        self.capacity = live_capacity(self.ray)
        most = most_workers(self.capacity, self.stage.gpus_per_worker)
        while len(self.actors) > max(most, 1):
            self._drop_actor(min(self.actors, key=self.busy.__getitem__))
            self.retired += 1
        while len(self.actors) < min(self.workers, most):
            self._add_actor()
            self.started += 1

    def _stalled(self, groups: int) -> str:
        ray = self.ray
        free = ray.available_resources()
        capacity = live_capacity(ray)
        gpus = f", {free.get('GPU', 0):g}/{capacity.gpus:g} GPUs free" if capacity.gpus else ""
        batches = f"{groups} batch of files waits" if groups == 1 else f"{groups} batches of files wait"
        return (
            f"the Ray ingest made no progress for {self.stall_timeout:g} s: {batches} for "
            f"{len(self.actors)} encode workers and decode tasks (1 CPU each); the cluster has "
            f"{capacity.describe()}, {free.get('CPU', 0):g}/{capacity.cpus:g} CPUs free{gpus} "
            "(see `ray status`; a node still downloading the model's weights looks the same: raise "
            f"{STALL_TIMEOUT}); everything committed so far is kept: run the same command again"
        )

    def survived(self) -> str | None:
        """What the run rode through, in one line (None: nothing). A node killed moments before
        the end may not be known dead yet (Ray's health checks take seconds): its actors' loss is."""
        if self.lost or self.retried:
            self.capacity = live_capacity(self.ray)
        lost = [address for node, address in self.start.nodes.items() if node not in self.capacity.nodes]
        if not (lost or self.lost or self.retried):
            return None
        parts = []
        if lost:
            parts.append(f"lost {len(lost)} node{'s' if len(lost) != 1 else ''} ({', '.join(sorted(lost))})")
        if self.lost:
            parts.append(f"lost {self.lost} encode worker{'s' if self.lost != 1 else ''} ({self.started} started anew)")
        parts.append(f"sent {self.retried} batch{'es' if self.retried != 1 else ''} again")
        return f"Ray: {', '.join(parts)}; finished on {self.capacity.describe()}"

    def stop(self) -> None:
        for actor in list(self.actors):
            self._drop_actor(actor)


def decode_block(tasks: list[FileTask], pp: Preprocess, known: frozenset) -> list[Decoded]:
    """Files decoded as the local engine decodes them (a bad file carries its reason; a PDF or
    video, its pages or frames and then itself)."""
    return [d for task in tasks for d in decode_task(task, pp, known, MAX_PIXELS)]


class EncodeActor:
    """Loads the model once, checks it is the library's, then encodes batch after batch."""

    def __init__(self, recipe: Callable[[str], Encoder], fingerprint: dict, device: str):
        self.encoder = recipe(device)
        actual = self.encoder.fingerprint()
        if not same_model(fingerprint, actual):
            raise ModelMismatch(
                f"a Ray worker loaded {actual['spec']} ({actual['weights']}), not the library's "
                f"{fingerprint['spec']} ({fingerprint['weights']}): every node needs the same model files"
            )

    def encode(self, *blocks: list[Decoded]) -> list[Item]:
        return encode_decoded(self.encoder, [d for block in blocks for d in block])  # vectors, not pixels, go back


def _actor_lost(ray, error: Exception) -> bool:
    return isinstance(error, ray.exceptions.RayActorError)


def _cbir_error(error: BaseException) -> CbirError | None:
    """The cbir error a worker or actor raised (not Ray's copy of it, whose text is a traceback),
    or None when Ray itself failed (a lost worker, node or object)."""
    seen: BaseException | None = error
    depth = 0
    while seen is not None and depth < 20:
        if type(seen).__module__ == "cbir.errors":
            return seen  # type: ignore[return-value]
        seen, depth = getattr(seen, "cause", None) or seen.__cause__, depth + 1
    # an actor that failed to start reaches the driver as text: its traceback's last cbir error
    found = _CBIR_ERROR.findall(str(error))
    if found:
        name, message = found[-1]
        kind = getattr(errors, name, CbirError)
        return kind(message.strip()) if isinstance(kind, type) and issubclass(kind, CbirError) else CbirError(message)
    return None


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


_CBIR_ERROR = re.compile(r"^\s*cbir\.errors\.(\w+): (.+)$", re.MULTILINE)

"""Distributed ingestion on Ray Data: the decode+encode stage of cbir.ingest.pipeline, spread
over a cluster.

    files -> map_batches(decode, CPU tasks) -> map_batches(EncodeActor, actor pool) -> driver

Decode tasks read, hash and decode a block of files each; encode actors load the model once and
turn the decoded pixels into vectors; the blocks stream back to the driver, which commits them
batch by batch as the local engine does (the single writer). Ray Data's streaming executor
bounds what is in flight, so memory stays flat however slow the encoders are.

Faults: a decode task whose worker dies is run again, an encode actor that dies is restarted
and its batch retried (each up to RETRIES times); the driver keeps each file once, by path,
should a block ever arrive twice. Every node must see the files at the same paths, and have
cbir and the model installed."""

from __future__ import annotations

import math
import pickle
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

from cbir import errors
from cbir.distributed.cluster import connected
from cbir.encode.spec import Encoder, Preprocess, same_model
from cbir.errors import CbirError, ModelMismatch
from cbir.ingest.decode import MAX_PIXELS, FileTask, decode_task
from cbir.ingest.pipeline import CHUNK, Item, encode_decoded
from cbir.timing import Timer

RETRIES = 3  # per decode task and per encode batch, against crashed or lost workers


def encoder_recipe(encoder: Encoder) -> Callable[[str], Encoder]:
    """How a worker builds the same model on its device: by its spec on torch, unless the encoder
    provides its own recipe (ONNX Runtime's, the fake encoder of tests)."""
    recipe = getattr(encoder, "recipe", None)
    if recipe is not None:
        return recipe()
    from cbir.encode import load_encoder

    return partial(load_encoder, encoder.spec, backend="torch")


@dataclass
class RayStage:
    """A cbir.ingest.pipeline Stage on a Ray cluster (see cbir.distributed.cluster.connected
    for ``address``). ``workers``: encode actors (default: one per ``gpus_per_worker`` GPUs of
    the cluster, or without GPUs one per two CPUs); ``num_cpus`` sizes a private local cluster."""

    recipe: Callable[[str], Encoder]
    fingerprint: dict
    preprocess: Preprocess
    batch_size: int
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    num_cpus: int | None = None

    @classmethod
    def of(cls, encoder: Encoder, **options) -> RayStage:
        """The stage whose workers load ``encoder``'s model (checked against its fingerprint)."""
        return cls(encoder_recipe(encoder), encoder.fingerprint(), encoder.preprocess, **options)

    def __call__(self, tasks: list[FileTask], known: frozenset, timer: Timer) -> Iterator[list[Item]]:
        if not tasks:
            return
        with connected(self.address, num_cpus=self.num_cpus) as ray:
            from ray.data import DataContext

            context = DataContext.get_current()
            context.enable_progress_bars = False  # cbir reports progress itself
            context.print_on_execution_start = False
            with timer("cluster"):
                dataset = self._dataset(ray, tasks, known)
            batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
            while True:
                try:
                    with timer("wait"):  # for the cluster: decode and encode happen there
                        batch = next(batches, None)
                except Exception as e:  # the pipeline's: a worker's error, a lost cluster
                    raise _error(e) from e
                if batch is None:
                    return
                yield [pickle.loads(item) for item in batch["item"]]

    def _dataset(self, ray, tasks: list[FileTask], known: frozenset):
        workers = self.workers or _default_workers(ray.cluster_resources(), self.gpus_per_worker)
        rows = [{"task": pickle.dumps(t)} for t in tasks]
        with warnings.catch_warnings():
            # Bounded retries (a file that crashes the decoder every time must end the run, not
            # loop) are still Ray's generic remote args in Ray Data 2.60, which warns about them.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            return self._pipeline(ray, rows, known, workers)

    def _pipeline(self, ray, rows: list[dict], known: frozenset, workers: int):
        gpus = self.gpus_per_worker
        return (
            ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / CHUNK))
            .map_batches(
                decode_batch,
                batch_size=CHUNK,
                fn_kwargs={"pp": self.preprocess, "known": known},
                num_cpus=1,
                max_retries=RETRIES,
            )
            .map_batches(
                EncodeActor,
                fn_constructor_kwargs={
                    "recipe": self.recipe,
                    "fingerprint": self.fingerprint,
                    "device": "cuda" if gpus else "cpu",
                },
                batch_size=self.batch_size,
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=1,
                num_gpus=gpus or None,
                max_restarts=RETRIES,
                max_task_retries=RETRIES,
            )
        )


def _default_workers(resources: dict, gpus_per_worker: float) -> int:
    if gpus_per_worker:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, int(resources.get("CPU", 1)) // 2)  # the other half decodes


def decode_batch(batch: dict, pp: Preprocess, known: frozenset) -> dict:
    """A Ray Data batch of pickled FileTasks -> their pickled Decoded (a bad file carries its
    reason, as in the local engine; a PDF or video, its pages or frames and then itself)."""
    decoded = [d for t in batch["task"] for d in decode_task(pickle.loads(t), pp, known, MAX_PIXELS)]
    return {"item": _column(decoded)}


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

    def __call__(self, batch: dict) -> dict:
        decoded = [pickle.loads(b) for b in batch["item"]]
        return {"item": _column(encode_decoded(self.encoder, decoded))}  # vectors, not pixels, go back


def _column(values: list) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = [pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL) for v in values]
    return column


def _error(e: BaseException) -> CbirError:
    """A failed Ray pipeline as one line: the cbir error a worker raised, else Ray's first line."""
    seen, depth = e, 0
    while seen is not None and depth < 20:
        if type(seen).__module__ == "cbir.errors":  # not Ray's copy of it, whose text is a traceback
            return seen
        seen, depth = getattr(seen, "cause", None) or seen.__cause__, depth + 1
    # an actor that failed to start reaches the driver as text: its traceback's last cbir error
    found = _CBIR_ERROR.findall(str(e))
    if found:
        name, message = found[-1]
        kind = getattr(errors, name, CbirError)
        return kind(message.strip()) if isinstance(kind, type) and issubclass(kind, CbirError) else CbirError(message)
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return CbirError(
        f"the Ray ingest failed ({first}); everything committed so far is kept: run the same command again"
    )


_CBIR_ERROR = re.compile(r"^\s*cbir\.errors\.(\w+): (.+)$", re.MULTILINE)

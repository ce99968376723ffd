"""One model, many request threads: concurrent text encodes are gathered into one batch.

A web server answers each request on its own thread. Letting every thread run the model at once
makes them fight over the same cores (or GPU), and each pays a whole forward pass for one short
text. Instead every encode goes to one worker thread that owns the model: texts that arrive
while it is busy (or within a couple of milliseconds) are encoded together, so ten concurrent
queries cost about one batch, not ten passes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future

import numpy as np

MAX_BATCH = 64  # texts per model call (bounded memory on the device)
WINDOW_SECONDS = 0.002  # how long the worker waits for more texts once it has one


class BatchingEncoder:
    """An Encoder (see cbir.encode.spec) whose calls are served by one worker thread, with
    concurrent ``encode_texts`` calls batched together. Everything else is the wrapped model's."""

    def __init__(self, encoder, max_batch: int = MAX_BATCH, window: float = WINDOW_SECONDS):
        self.inner = encoder
        self.max_batch = max_batch
        self.window = window
        self.batch_sizes: Counter = Counter()  # texts per model call -> how many calls (status)
        self._jobs: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="cbir-encoder", daemon=True)
        self._worker.start()

    def __getattr__(self, name):  # spec, preprocess, dim, device, fingerprint
        return getattr(self.inner, name)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self._submit("texts", list(texts))

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        return self._submit("images", pixels)

    def _submit(self, kind: str, payload) -> np.ndarray:
        done: Future = Future()
        self._jobs.put((kind, payload, done))
        return done.result()

    def _run(self) -> None:
        waiting = None  # a job taken while gathering texts that is not a text job
        while True:
            job = waiting or self._jobs.get()
            waiting = None
            kind, payload, done = job
            if kind == "images":
                self._finish([job], lambda: self.inner.encode_images(payload))  # noqa: B023 (called here)
                continue
            batch, count = [job], len(payload)
            deadline = time.perf_counter() + self.window
            while count < self.max_batch:
                try:
                    more = self._jobs.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if more[0] != "texts":
                    waiting = more
                    break
                batch.append(more)
                count += len(more[1])
            self._finish(batch, lambda: self._encode_together(batch))  # noqa: B023 (called here)

    def _encode_together(self, batch) -> list[np.ndarray]:
        texts = [t for _, payload, _ in batch for t in payload]
        self.batch_sizes[len(texts)] += 1
        vectors = self.inner.encode_texts(texts)
        out, start = [], 0
        for _, payload, _ in batch:
            out.append(vectors[start : start + len(payload)])
            start += len(payload)
        return out

    @staticmethod
    def _finish(batch, compute) -> None:
        try:
            results = compute()
        except BaseException as e:  # the callers raise it, each on its own thread
            for _, _, done in batch:
                done.set_exception(e)
            return
        if len(batch) == 1 and not isinstance(results, list):
            results = [results]
        for (_, _, done), result in zip(batch, results):
            done.set_result(result)

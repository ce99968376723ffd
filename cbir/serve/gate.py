"""A small, bounded pool for the requests that decode images (uploaded query images, thumbnails
made from originals): each may need hundreds of MB while it runs, so how many run at once, not
how many arrive, decides the server's memory. At most ``slots`` decode at once and at most
``queue`` more wait their turn; beyond that a request is answered 503 with Retry-After at once,
instead of the server growing until the system kills it.

After each decode the freed memory is handed back to the system (glibc's malloc_trim). Pillow
allocates pixels in 16 MB blocks, which glibc serves from the heap arena of the thread that
asked; freed, they stayed there, so every request thread kept the few hundred MB of its largest
decode and eight one-at-a-time uploads of a 144 MP PNG left the server 1.5 GB larger.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from contextlib import contextmanager
from functools import cache

from cbir.errors import CbirError, UsageError

DECODE_SLOTS = 2  # decodes at once: peak memory is about this many times one decode's bound
DECODE_QUEUE = 16  # requests waiting for a slot (a browser opens at most 6 connections per server)
RETRY_AFTER_SECONDS = 1


class ServerBusy(CbirError):
    """Every decode slot is taken and the queue is full: try again in a moment (HTTP 503)."""


class DecodeGate:
    def __init__(self, slots: int = DECODE_SLOTS, queue: int = DECODE_QUEUE):
        if slots < 1 or queue < 0:
            raise UsageError(f"the decode pool needs at least 1 slot and a queue of 0 or more, not {slots} and {queue}")
        self.slots = slots
        self.queue = queue
        self._running = threading.Semaphore(slots)
        self._lock = threading.Lock()
        self._admitted = 0  # running or waiting

    @property
    def admitted(self) -> int:
        """Requests decoding or waiting to, now."""
        return self._admitted

    @contextmanager
    def slot(self):
        """Run the block in a decode slot, waiting for one if the queue has room; ServerBusy if not."""
        with self._lock:
            if self._admitted >= self.slots + self.queue:
                raise ServerBusy(
                    f"the server is busy decoding other images ({self.slots} at a time, {self.queue} waiting): "
                    f"try again in a moment"
                )
            self._admitted += 1
        try:
            with self._running:
                yield
        finally:
            with self._lock:
                self._admitted -= 1
            release_freed_memory()


def release_freed_memory() -> None:
    """Return the process's free heap pages to the system, where the C library can (glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None), "malloc_trim", None)  # None on musl

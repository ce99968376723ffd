"""A value made on a thread ahead of need: started early, taken with ``result()``, which waits for
it and raises what making it raised. A leaf: imports nothing of cbir."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    def __init__(self, make: Callable[[], T], name: str):
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        # Not a daemon: a command that fails meanwhile exits after the load ends, not during it;
        # a process that exits while ONNX Runtime builds a session on a daemon thread aborts
        # ("terminate called without an active exception", SIGABRT).
        threading.Thread(target=self._run, args=(make,), name=name).start()

    def _run(self, make: Callable[[], T]) -> None:
        try:
            self._value = make()
        except BaseException as e:  # handed to the thread that takes the result
            self._error = e
        finally:
            self._done.set()

    def result(self) -> T:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set when no error was

"""Decode worker processes that end with the ingest that started them.

The OOM killer, ``kill PID``, ``timeout``, systemd and a closed terminal end the main process
alone. Forked workers would live on, holding the parent's stdout and stderr (a pipe's reader
never sees its end) and working for nobody. So each worker:

* dies with its parent: ``PR_SET_PDEATHSIG`` on Linux, and everywhere a thread that ends the
  worker once its parent is gone (it is re-parented, so ``getppid`` changes);
* leaves terminal signals to its parent: Ctrl-C and a hang-up reach the whole process group,
  and the parent ends the run with one line (a worker would print a traceback of its own);
* writes nowhere: its stdout and stderr point at /dev/null.

The library's write lock is dropped in every forked child by cbir.fsutil itself."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

PARENT_CHECK_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def worker_pool(workers: int, initializer: Callable, initargs: tuple) -> ProcessPoolExecutor:
    """A process pool whose workers run ``initializer(*initargs)`` after the set-up above."""
    return ProcessPoolExecutor(
        workers,
        mp_context=_context(),
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, initargs),
    )


def _context():
    """fork on Linux, as torch's DataLoader does: workers start at once and a script needs no
    ``if __name__ == "__main__"`` guard; they run only PIL/numpy, never torch. macOS and Windows
    cannot fork safely and spawn instead."""
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _start_worker(parent: int, initializer: Callable, initargs: tuple) -> None:
    for sig in (signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    _die_with_parent(parent)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    initializer(*initargs)


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watching thread below still ends the worker
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="cbir-parent-watch").start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)

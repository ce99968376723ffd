"""Small filesystem helpers: atomic replace and a writer lock, which keep files whole, and what
kind of file a path is."""

from __future__ import annotations

import errno
import json
import os
import shlex
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from cbir.errors import LibraryLocked, StorageError


def special_file(mode: int) -> str | None:
    """What a file that is not a regular file is ("a FIFO"), from its st_mode; None for a regular one."""
    for test, kind in (
        (stat.S_ISREG, None),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "a special file"


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; os.replace is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` for a temporary file beside ``path``, fsync it and rename it over
    ``path``: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        raise storage_error(e, path) from e
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # (a read-only disk) never in place of the error that got here
            pass


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def storage_error(e: OSError, path: Path) -> StorageError:
    if e.errno == errno.ENOSPC:
        return StorageError(
            f"disk full while writing {path}; what was committed before is kept: free some space and run again"
        )
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"cannot write {path}: {e.strerror}")
    return StorageError(f"cannot write {path}: {e.strerror or e}")


# Descriptors of the write locks this process holds. A forked child (a decode worker) must not
# keep one: flock belongs to the open file description, so a child that outlived a killed parent
# would hold the library locked until someone found and killed it.
_held_locks: set[int] = set()


def _drop_locks_in_child() -> None:
    if not _held_locks:
        return
    devnull = os.open(os.devnull, os.O_RDONLY)
    for fd in _held_locks:
        os.dup2(devnull, fd)  # the descriptor stays valid for the copied file object, lock-free
    os.close(devnull)
    _held_locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_child)


#: The lock file in a library folder (also the record of who holds it).
LOCK_FILENAME = "write.lock"
#: Seconds a writer waits for a brief holder (a search saving the index it rebuilt) to finish.
BRIEF_WAIT = 60.0


@contextmanager
def writer_lock(library: Path, brief: bool = False) -> Iterator[None]:
    """One writer per library at a time (readers are never blocked: SQLite WAL). The kernel
    frees the lock when its holder dies, however it dies; the file names the holder (pid,
    command, since) so that a busy library can say who is writing. ``brief``: the holder only
    saves what a search rebuilt, a matter of seconds, so a writer that finds it waits for it
    (up to BRIEF_WAIT) instead of failing, which a search would otherwise make it do."""
    import fcntl

    path = library / LOCK_FILENAME
    try:
        f = open(path, "a+")
    except OSError as e:  # a read-only library (or disk), or something odd in its place
        raise storage_error(e, path) from e
    with f:
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if brief or time.monotonic() - start > _patience(path):
                    raise LibraryLocked(_busy_message(library, path)) from None
                time.sleep(0.05)
        _held_locks.add(f.fileno())
        _record_holder(f, brief)
        try:
            yield
        finally:
            _held_locks.discard(f.fileno())
            _clear_holder(f)  # before the unlock: a record on file is always its holder's
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


#: Seconds a writer gives a holder that has the lock but has not yet written who it is.
RECORD_WAIT = 2.0


def _patience(path: Path) -> float:
    """How long a writer waits for the lock's present holder: not at all for another writer,
    BRIEF_WAIT for a search saving a rebuilt index, and RECORD_WAIT while the record does not
    name a live holder, which is a holder between taking the lock and recording itself (a
    leftover child of a killed holder is then named once that wait is over)."""
    holder = _holder(path)
    if holder is None or not _alive(holder["pid"]):
        return RECORD_WAIT
    return BRIEF_WAIT if holder["brief"] else 0.0


def _record_holder(f, brief: bool) -> None:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    program = {"cbir": "cbir", "__main__.py": "cbir", "-c": "python -c", "": "python"}.get(program, program)
    command = " ".join([program, *map(shlex.quote, sys.argv[1:])])
    holder = {"pid": os.getpid(), "command": command[:200], "since": datetime.now().isoformat(timespec="seconds")}
    if brief:
        holder["brief"] = True
    try:  # best effort (a full disk must not stop the lock from working), and unbuffered, so
        # that closing the file has nothing left to flush
        os.ftruncate(f.fileno(), 0)
        os.write(f.fileno(), (json.dumps(holder) + "\n").encode())
    except OSError:
        pass


def _clear_holder(f) -> None:
    try:
        os.ftruncate(f.fileno(), 0)
    except OSError:
        pass


def _holder(path: Path) -> dict | None:
    """What the lock file says of its holder: pid (an int), command, since and brief; None when
    it cannot be read (a holder that has not written it yet, an older cbir's file)."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return {
            "pid": int(holder["pid"]),
            "command": str(holder["command"]),
            "since": str(holder["since"]),
            "brief": holder.get("brief") is True,
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _busy_message(library: Path, path: Path) -> str:
    holder = _holder(path)
    if holder is None:
        return f"another process is writing to {library}; wait for it to finish"
    pid, command, since = holder["pid"], holder["command"], holder["since"]
    if _alive(pid):
        when = since.replace("T", " ")
        return f"another cbir process is writing to {library} (pid {pid}, `{command}`, since {when}); wait for it to finish"
    # Only a process that inherited the lock from the recorded holder can hold it now (e.g. a
    # worker of a cbir older than this one, whose parent was killed).
    return (
        f"{library} is locked by a leftover process of pid {pid} (`{command}`), which has ended; "
        f"`fuser -v {path}` names it, stop it and run again"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True

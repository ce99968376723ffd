"""Small filesystem helpers that keep files whole: atomic replace and a writer lock."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from cbir.errors import LibraryLocked, StorageError


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; os.replace is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
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
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def storage_error(e: OSError, path: Path) -> StorageError:
    if e.errno == errno.ENOSPC:
        return StorageError(f"disk full while writing {path}; free some space and run again")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"cannot write {path}: {e.strerror}")
    return StorageError(f"cannot write {path}: {e.strerror or e}")


@contextmanager
def writer_lock(library: Path) -> Iterator[None]:
    """One writer per library at a time (readers are never blocked: SQLite WAL)."""
    import fcntl

    path = library / "write.lock"
    try:
        f = open(path, "a+")
    except OSError as e:  # a read-only library (or disk), or something odd in its place
        raise storage_error(e, path) from e
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LibraryLocked(
                f"another cbir process is writing to {library}; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

"""Folders that keep themselves indexed: ``cbir watch`` and ``cbir serve --watch``.

A catch-up ingest of each folder first (it may have changed while nobody watched), then the
changes the kernel reports (watchfiles: Rust's notify over inotify, FSEvents or
ReadDirectoryChangesW; no polling), gathered into batches, each handed to Library.ingest: new,
changed, moved and deleted files go through the same code and guarantees as ``cbir ingest``
(crash-safe, one writer at a time, moves followed by content). The watcher starts before the
catch-up, so a file landing during it is not missed.

Batches: a change opens one; it is ingested once no change has come for ``debounce`` seconds,
or ``max_wait`` seconds after it opened under a steady stream. Quiet is timed here, per change
reported, because notify's own grouping stops waiting as soon as no *new* path changes: a file
still being written, changing again and again, would not hold it back. Held back here, a file
written slowly is read once, whole, after its last write. One still growing after ``max_wait``
is read as it is then (skipped as unreadable, or encoded from what it held) and read again by
the batch its next change opens: ingest re-reads a file whose size or mtime changed.

Scopes: a batch scans, for each watched folder, the nearest existing folder that holds all of
its changes (a file's own folder; for changes in two folders, the folder above both), so a file
moved between two folders is seen leave and arrive in one scan: a move keeping its vector,
labels and tags, not a copy and a removal. Left out before any scan: the library's own folder,
what the folder's exclusions leave out (cbir.ingest.exclude: the defaults, which cover temporary
and partial files, .cbirignore files and the --exclude patterns remembered for its root), and
files that are neither images nor caption files. A changed .cbirignore rescans its folder.

Library code: it never prints; each batch is handed to ``on_batch``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cbir.errors import CbirError, LibraryLocked, UsageError
from cbir.ingest.exclude import IGNORE_FILE, Exclusions, check_patterns, remembered
from cbir.ingest.scan import is_read_name
from cbir.ingest.sidecars import SIDECAR_SUFFIX

DEBOUNCE_SECONDS = 2.0  # quiet before a batch is ingested
MAX_WAIT_SECONDS = 10.0  # the longest a batch waits under a steady stream of changes
CATCH_UP, CHANGES = "catch-up", "changes"  # the kinds of Batch
LOCK_RETRY_SECONDS = 1.0  # how often a batch tries again while another process writes
# A watched folder removed (or its drive unplugged): the kernel no longer reports on it, even if
# a folder of that name comes back; its images stay, as for any scanned folder that vanished.
GONE = "the folder is gone: no longer watched; its images stay in the library (cbir status lists it)"
# notify's side: how often its loop wakes (signals, the stop event, new changes), how long it
# groups a burst before handing it over, and how long it waits before handing over nothing, so
# that a batch whose quiet has passed is ingested without a new change. Idle, the watcher wakes
# a few times a second for microseconds: no measurable CPU.
STEP_MS = 200
BURST_MS = 1000
TICK_MS = 500


@dataclass
class Batch:
    """What one ingest of the watcher did: the catch-up of a folder, or a batch of changes."""

    kind: str  # CATCH_UP or CHANGES
    folders: list[Path]  # the folders scanned
    changes: int = 0  # the file-system changes it answered (none for a catch-up)
    added: int = 0  # new files encoded, or whose content the library already held
    updated: int = 0
    moved: int = 0
    removed: int = 0
    skipped: int = 0
    unchanged: int = 0
    encoded: int = 0
    seconds: float = 0.0  # the ingests, from the first try to searchable
    waited: float = 0.0  # of ``seconds``: waiting for another process's write lock
    error: str | None = None  # a batch that failed (the watcher goes on)
    errors: list[str] = field(default_factory=list, repr=False)

    def add(self, report) -> None:
        self.added += report.added + report.copied
        self.updated += report.updated
        self.moved += report.moved
        self.removed += report.removed
        self.skipped += report.skipped
        self.unchanged += report.unchanged + report.touched
        self.encoded += report.encoded

    def summary(self) -> str:
        """One line: "FOLDER: +3 new, 1 changed, 2 removed in 0.8 s; searchable"."""
        where = ", ".join(map(str, self.folders))
        if self.error == GONE:
            return f"{where}: {GONE}"
        if self.error:
            return f"{where}: error: {self.error}; still watching"
        parts = [f"+{self.added} new"]
        for count, label in (
            (self.updated, "changed"),
            (self.moved, "moved"),
            (self.removed, "removed"),
            (self.skipped, "skipped"),
        ):
            if count:
                parts.append(f"{count} {label}")
        waited = f" (waited {self.waited:.1f} s for another writer)" if self.waited >= 0.05 else ""
        caught_up = "caught up: " if self.kind == CATCH_UP else ""
        return f"{where}: {caught_up}{', '.join(parts)} in {self.seconds:.1f} s{waited}; searchable"

    def as_dict(self) -> dict:
        data = asdict(self)
        del data["errors"]
        data["folders"] = [str(f) for f in self.folders]
        data["seconds"] = round(self.seconds, 3)
        data["waited"] = round(self.waited, 3)
        return data


class Debouncer:
    """The changed paths of the open batch, and when it is due: ``quiet`` seconds after the last
    change, or ``max_wait`` seconds after the first. Times are passed in (tests use their own)."""

    def __init__(self, quiet: float, max_wait: float):
        self.quiet = quiet
        self.max_wait = max(max_wait, quiet)
        self.pending: set[str] = set()
        self._opened: float | None = None
        self._last: float | None = None

    def add(self, paths: Iterable[str], now: float) -> None:
        paths = set(paths)
        if not paths:
            return
        self.pending |= paths
        if self._opened is None:
            self._opened = now
        self._last = now

    def due(self, now: float) -> bool:
        if self._opened is None or self._last is None:
            return False
        return now - self._last >= self.quiet or now - self._opened >= self.max_wait

    def take(self) -> set[str]:
        taken, self.pending = self.pending, set()
        self._opened = self._last = None
        return taken


def check_folders(folders: Sequence[str | os.PathLike[str]], exclude: Sequence[str] | None = None) -> list[Path]:
    """The folders to watch, absolute and resolved, a folder inside another one dropped (the
    outer one's watch covers it); a usage error for one that is missing or not a folder, or
    for an ``exclude`` pattern gitignore's syntax refuses: checked before a library opens."""
    if exclude is not None:
        check_patterns(exclude)
    if not folders:
        raise UsageError("name at least one folder to watch")
    resolved = []
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.exists():
            raise UsageError(f"{folder}: no such folder")
        if not path.is_dir():
            raise UsageError(f"{folder}: not a folder (watch the folder it is in)")
        resolved.append(path.resolve())
    unique = sorted(set(resolved))
    return [p for p in unique if not any(other in p.parents for other in unique)]


def _owner(path: Path, watched: Sequence[Path]) -> Path | None:
    """The innermost watched folder holding ``path``."""
    holders = [w for w in watched if path == w or w in path.parents]
    return max(holders, key=lambda w: len(w.parts)) if holders else None


def _nearest_folder(path: Path, top: Path) -> Path | None:
    """``path`` if it is a folder, else the nearest existing folder above it, no higher than
    ``top``; None when ``top`` itself is gone."""
    here = path
    while True:
        if here.is_dir():
            return here
        if here == top or top not in here.parents:
            return None
        here = here.parent


def scopes(paths: Iterable[Path], watched: Sequence[Path]) -> dict[Path, Path]:
    """Watched folder -> the folder to scan for its ``paths``: the nearest existing folder
    holding them all (see the module's note). Paths outside the watched folders, and those of a
    watched folder that is itself gone, are dropped. The folders where something arrived come
    first: a file moved from one watched folder to another is then found in the second while
    the first still holds it, a copy whose vector is reused, before the first's scan removes it
    (the other way round it would be encoded again)."""
    found: dict[Path, Path] = {}
    arrived: set[Path] = set()
    for path in paths:
        owner = _owner(path, watched)
        if owner is None:
            continue
        folder = _nearest_folder(path, owner)
        if folder is None:
            continue
        found[owner] = Path(os.path.commonpath([found[owner], folder])) if owner in found else folder
        if folder == path or path.exists():
            arrived.add(owner)
    return {owner: found[owner] for owner in sorted(found, key=lambda o: (o not in arrived, o))}


def _wanted_kind(path: Path) -> bool:
    """A change that can matter to the library: a folder, an image, a caption file, or a path
    that is gone (it may have been any of these)."""
    try:
        is_dir = path.is_dir()
        exists = is_dir or path.exists()
    except OSError:
        return True
    if not exists or is_dir:
        return True
    return is_read_name(path.name) or path.name.endswith(SIDECAR_SUFFIX)


class ChangeFilter:
    """Which changed paths a batch scans for: the module's rules, with the exclusions of the
    library's roots as they are now (a batch builds its own: a catch-up or an ingest beside
    the watcher may have changed the remembered patterns)."""

    def __init__(self, library):
        self.library_dir = Path(library.path).resolve()
        self.catalog = library.catalog
        self.roots = sorted(library.catalog.roots().values(), key=lambda p: len(p.parts), reverse=True)
        self._rules: dict[tuple[Path, str], Exclusions] = {}

    def relevant(self, path: Path, watched: Sequence[Path]) -> Path | None:
        """The path to scope the scan by (a .cbirignore's folder, else ``path``), or None when
        the change is of no interest."""
        if path == self.library_dir or self.library_dir in path.parents:
            return None
        if path.name == IGNORE_FILE:
            return path.parent
        if not _wanted_kind(path):
            return None
        try:
            return None if self._excluded(path, watched) else path
        except CbirError:  # an unreadable .cbirignore: the scan says what is wrong with it
            return path

    def _excluded(self, path: Path, watched: Sequence[Path]) -> bool:
        root = next((r for r in self.roots if path == r or r in path.parents), None) or _owner(path, watched)
        if root is None or path == root:
            return False
        parts = path.relative_to(root).parts
        here = self._at(root, "")
        rel = ""
        for n, part in enumerate(parts):
            last = n == len(parts) - 1
            rel = f"{rel}/{part}" if rel else part
            if here.excludes(rel, not last or path.is_dir()):
                return True
            if not last:
                here = self._below(root, rel, here)
        return False

    def _at(self, root: Path, rel: str) -> Exclusions:
        key = (root, rel)
        if key not in self._rules:
            self._rules[key] = Exclusions.for_root(root, remembered(self.catalog, root))
        return self._rules[key]

    def _below(self, root: Path, rel: str, above: Exclusions) -> Exclusions:
        key = (root, rel)
        if key not in self._rules:
            self._rules[key] = above.below(root / rel, rel)
        return self._rules[key]


def to_scan(library, changed: Iterable[str], watched: Sequence[Path]) -> dict[Path, Path]:
    """Watched folder -> the folder a batch of ``changed`` paths scans (see the module's note)."""
    rules = ChangeFilter(library)
    kept = []
    for name in changed:
        path = rules.relevant(Path(name), watched)
        if path is not None:
            kept.append(path)
    return scopes(kept, watched)


def ingest_batch(
    library,
    folders: Sequence[Path],
    kind: str,
    stop: threading.Event,
    *,
    changes: int = 0,
    exclude: Sequence[str] | None = None,
    retry: float = LOCK_RETRY_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Batch | None:
    """Ingest ``folders`` one after the other, waiting (every ``retry`` seconds) while another
    process holds the library's write lock: one writer at a time, as for ``cbir ingest``. A
    batch of changes that fails (a folder gone meanwhile, a full disk) is recorded in the batch,
    not raised: the watcher goes on and the next change tries again. A catch-up's error is
    raised: it is the command's (another model than the library's, a folder excluded by its
    root's rules). None when ``stop`` is set while waiting."""
    batch = Batch(kind, list(folders), changes=changes)
    started = clock()
    for folder in folders:
        while True:
            try:
                batch.add(library.ingest(folder, exclude=list(exclude) if exclude is not None else None))
                break
            except LibraryLocked:
                waiting = clock()
                if stop.wait(retry):
                    return None
                batch.waited += clock() - waiting
            except CbirError as e:
                if kind == CATCH_UP:
                    raise
                batch.errors.append(f"{folder}: {e}")
                break
    batch.error = "; ".join(batch.errors) or None
    batch.seconds = clock() - started
    return batch


def watch(
    library,
    folders: Sequence[str | os.PathLike[str]],
    *,
    debounce: float = DEBOUNCE_SECONDS,
    max_wait: float = MAX_WAIT_SECONDS,
    stop_event: threading.Event | None = None,
    on_batch: Callable[[Batch], None] | None = None,
    on_ready: Callable[[list[Path]], None] | None = None,
    exclude: Sequence[str] | None = None,
) -> None:
    """Keep ``library`` up to date with ``folders`` until ``stop_event`` is set (or a signal
    interrupts the main thread: KeyboardInterrupt, as in any long command). ``on_batch`` gets
    each ingest's Batch; ``on_ready`` the watched folders once the catch-up is done.
    ``exclude``: --exclude patterns for the catch-up ingests, remembered for the folders' roots
    as by ``cbir ingest --exclude`` (None keeps the remembered ones)."""
    import watchfiles

    watched = check_folders(folders, exclude)  # before the watcher starts or a model loads
    stop = stop_event or threading.Event()
    report = on_batch or (lambda batch: None)
    changes = watchfiles.watch(
        *watched,
        watch_filter=None,  # the ChangeFilter decides, with the library's exclusions
        debounce=BURST_MS,
        step=STEP_MS,
        rust_timeout=TICK_MS,
        yield_on_timeout=True,
        stop_event=stop,
    )
    try:
        next(changes, None)  # the watcher is started: what lands during the catch-up is kept
        for folder in watched:
            if stop.is_set():
                return
            done = ingest_batch(library, [folder], CATCH_UP, stop, exclude=exclude)
            if done is None:
                return
            report(done)
        if on_ready is not None:
            on_ready(watched)
        debouncer = Debouncer(debounce, max_wait)
        gone: set[Path] = set()
        for changed in changes:
            debouncer.add((path for _, path in changed), time.monotonic())
            if not debouncer.due(time.monotonic()):
                continue
            paths = debouncer.take()
            for folder in watched:
                if folder not in gone and not folder.is_dir():
                    gone.add(folder)
                    report(Batch(CHANGES, [folder], error=GONE))
            targets = to_scan(library, paths, watched)
            if not targets:
                continue
            done = ingest_batch(library, list(targets.values()), CHANGES, stop, changes=len(paths))
            if done is None:
                return
            report(done)
    finally:
        changes.close()


class WatchThread:
    """``watch`` on a daemon thread of a process that does other work (cbir serve), on a
    library of its own that the thread closes when it ends."""

    def __init__(self, thread: threading.Thread, stop: threading.Event):
        self.thread = thread
        self._stop = stop

    @classmethod
    def start(
        cls,
        library,
        folders: Sequence[str | os.PathLike[str]],
        *,
        on_batch: Callable[[Batch], None],
        on_error: Callable[[str], None],
        on_ready: Callable[[list[Path]], None] | None = None,
        debounce: float = DEBOUNCE_SECONDS,
    ) -> WatchThread:
        """``on_error`` gets the one line of an error that ended the watching (the process
        goes on without it)."""
        stop = threading.Event()

        def run() -> None:
            try:
                watch(library, folders, debounce=debounce, stop_event=stop, on_batch=on_batch, on_ready=on_ready)
            except CbirError as e:
                on_error(str(e))
            except Exception as e:
                on_error(f"unexpected {type(e).__name__}: {e}")
            finally:
                library.close()

        thread = threading.Thread(target=run, name="cbir-watch", daemon=True)
        thread.start()
        return cls(thread, stop)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching; a batch being ingested is given ``timeout`` seconds to finish (one
        cut short at exit loses nothing committed: ingest is crash-safe)."""
        self._stop.set()
        self.thread.join(timeout)

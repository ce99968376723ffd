"""`cbir watch` and `cbir serve --watch` (cbir.watch): batching and scoping without a watcher,
the watcher in this process on the fake encoder, and the real command on cbir-tiny."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cbir.errors import LibraryLocked, StorageError, UsageError
from cbir.ingest.report import IngestReport
from cbir.watch import (
    CATCH_UP,
    CHANGES,
    GONE,
    Batch,
    Debouncer,
    check_folders,
    ingest_batch,
    scopes,
    to_scan,
    watch,
)
from tests.conftest import cbir_env, run_cbir, write_image

# -- batching -------------------------------------------------------------------------------


def test_a_batch_is_due_after_quiet_or_at_most_max_wait():
    d = Debouncer(quiet=2.0, max_wait=10.0)
    assert not d.due(0.0)
    d.add(["a.jpg"], now=0.0)
    assert not d.due(1.9) and d.due(2.0)
    d.add(["b.jpg"], now=1.5)  # a later change restarts the quiet
    assert not d.due(3.0) and d.due(3.5)
    assert d.take() == {"a.jpg", "b.jpg"} and not d.due(100.0) and d.pending == set()


def test_a_file_still_being_written_holds_its_batch_back():
    """Each write of the same file renews the quiet (notify's own grouping would not: it only
    waits while new paths appear), until max_wait."""
    d = Debouncer(quiet=2.0, max_wait=10.0)
    for t in range(0, 9):  # a write every second
        d.add(["slow.jpg"], now=float(t))
        assert not d.due(t + 0.99)
    assert d.due(10.0)  # a steady stream is taken at max_wait all the same
    d.take()
    d.add([], now=20.0)  # nothing changed: nothing opens
    assert not d.due(100.0)


def test_max_wait_is_never_below_the_quiet():
    d = Debouncer(quiet=30.0, max_wait=10.0)
    d.add(["a.jpg"], now=0.0)
    assert not d.due(29.0) and d.due(30.0)


# -- scopes -------------------------------------------------------------------------------------


def test_changes_are_scanned_from_the_nearest_folder_holding_them_all(tmp_path):
    root = tmp_path / "photos"
    (root / "a" / "deep").mkdir(parents=True)
    (root / "b").mkdir()
    other = tmp_path / "other"
    other.mkdir()
    watched = [root, other]
    assert scopes([root / "a" / "x.jpg"], watched) == {root: root / "a"}
    # a move between two folders: one scan above both, which sees it leave and arrive
    assert scopes([root / "a" / "deep" / "x.jpg", root / "b" / "x.jpg"], watched) == {root: root}
    assert scopes([root / "a" / "deep" / "x.jpg", root / "a" / "y.jpg"], watched) == {root: root / "a"}
    # a deleted folder: the nearest one still there
    assert scopes([root / "gone" / "sub" / "x.jpg", root / "gone"], watched) == {root: root}
    assert scopes([root / "b", other / "z.jpg", tmp_path / "elsewhere.jpg"], watched) == {
        root: root / "b",
        other: other,
    }
    # what arrived is scanned before what left: a move between watched folders reuses the vector
    (other / "x.jpg").write_bytes(b"x")
    assert list(scopes([root / "a" / "x.jpg", other / "x.jpg"], watched).items()) == [
        (other, other),
        (root, root / "a"),
    ]
    (other / "x.jpg").unlink()
    other.rmdir()
    assert scopes([other / "z.jpg"], watched) == {}  # the watched folder itself is gone


def test_check_folders(tmp_path):
    (tmp_path / "a" / "inner").mkdir(parents=True)
    write_image(tmp_path / "img.jpg")
    assert check_folders([tmp_path / "a" / "inner", str(tmp_path / "a")]) == [(tmp_path / "a").resolve()]
    with pytest.raises(UsageError, match="no such folder"):
        check_folders([tmp_path / "nope"])
    with pytest.raises(UsageError, match="not a folder"):
        check_folders([tmp_path / "img.jpg"])


def test_what_a_batch_leaves_out(fake_library, tmp_path):
    root = tmp_path / "photos"
    (root / "keep").mkdir(parents=True)
    (root / "raw").mkdir()
    (root / "private").mkdir()
    write_image(root / "keep" / "a.jpg")
    (root / "private" / ".cbirignore").write_text("*.png\n")
    lib = fake_library("lib")
    lib.ingest(root, exclude=["raw/"])
    watched = [root.resolve()]

    def scanned(*names: str) -> dict:
        return to_scan(lib, [str(root / n) for n in names], watched)

    write_image(root / "keep" / "b.jpg", seed=2)
    assert scanned("keep/b.jpg") == {root: root / "keep"}
    for name in ("keep/c.jpg.part", "keep/.hidden.jpg", "raw/r.jpg", "private/p.png", "keep/notes.log"):
        (root / name).write_bytes(b"x")
        assert scanned(name) == {}, name
    assert scanned("keep/gone.jpg") == {root: root / "keep"}  # a deletion: what it was is unknown
    assert scanned("private/.cbirignore") == {root: root / "private"}  # new rules: rescan the folder
    (root / "keep" / "a.txt").write_text("a caption")
    assert scanned("keep/a.txt") == {root: root / "keep"}
    # the library's own files, when the library lies inside a watched folder
    inside = fake_library("photos/lib-inside")
    assert to_scan(inside, [str(root / "lib-inside" / "catalog.db-wal")], watched) == {}


# -- ingesting a batch ------------------------------------------------------------------------


class _Library:
    """Library.ingest as a script: each call takes the next outcome (an exception or a report)."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls: list = []

    def ingest(self, path, exclude=None):
        self.calls.append((path, exclude))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_a_batch_waits_for_another_writer_rather_than_failing(tmp_path):
    report = IngestReport(tmp_path, added=2, copied=1, moved=1, removed=3, encoded=2)
    lib = _Library(LibraryLocked("busy"), LibraryLocked("busy"), report)
    batch = ingest_batch(lib, [tmp_path], CHANGES, threading.Event(), changes=4, retry=0.05)
    assert batch is not None and len(lib.calls) == 3 and batch.waited >= 0.09 and batch.error is None
    assert (batch.added, batch.moved, batch.removed, batch.encoded) == (3, 1, 3, 2)
    assert batch.summary().endswith("+3 new, 1 moved, 3 removed in 0.1 s (waited 0.1 s for another writer); searchable")
    stopped = threading.Event()
    stopped.set()
    assert ingest_batch(_Library(LibraryLocked("busy")), [tmp_path], CHANGES, stopped, retry=0.05) is None


def test_a_failed_batch_is_reported_and_a_failed_catch_up_raised(tmp_path):
    lib = _Library(StorageError("disk full"), IngestReport(tmp_path, added=1))
    batch = ingest_batch(lib, [tmp_path / "a", tmp_path / "b"], CHANGES, threading.Event())
    assert batch is not None and batch.added == 1 and "disk full" in (batch.error or "")
    assert batch.summary() == f"{tmp_path / 'a'}, {tmp_path / 'b'}: error: {tmp_path / 'a'}: disk full; still watching"
    with pytest.raises(StorageError):
        ingest_batch(_Library(StorageError("disk full")), [tmp_path], CATCH_UP, threading.Event(), exclude=["x/"])
    assert Batch(CATCH_UP, [tmp_path]).summary() == f"{tmp_path}: caught up: +0 new in 0.0 s; searchable"


# -- the watcher in this process (fake encoder) -----------------------------------------------


class _Watching:
    """watch() on a thread; its batches on a queue."""

    def __init__(self, lib, folders, **options):
        self.batches: queue.Queue = queue.Queue()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: list[BaseException] = []

        def run():
            try:
                watch(
                    lib,
                    folders,
                    stop_event=self.stop,
                    on_batch=self.batches.put,
                    on_ready=lambda _: self.ready.set(),
                    **options,
                )
            except BaseException as e:
                self.error.append(e)
                self.ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.ready.wait(60) and not self.error, self.error

    def next(self, timeout: float = 30) -> Batch:
        return self.batches.get(timeout=timeout)

    def close(self):
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive() and not self.error, self.error


def test_watching_in_process(fake_library, tmp_path):
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    write_image(root / "a" / "first.jpg", seed=1)
    lib = fake_library("lib")
    w = _Watching(lib, [root], debounce=0.3)
    try:
        catch_up = w.next()
        assert catch_up.kind == CATCH_UP and catch_up.added == 1
        write_image(root / "a" / "second.jpg", seed=2)
        batch = w.next()
        assert batch.kind == CHANGES and batch.added == 1 and batch.folders == [root.resolve() / "a"]
        os.rename(root / "a" / "second.jpg", root / "b" / "second.jpg")  # across folders: a move
        batch = w.next()
        assert (batch.added, batch.moved, batch.removed, batch.encoded) == (0, 1, 0, 0), batch
        (root / "b" / "second.jpg").unlink()
        batch = w.next()
        assert batch.removed == 1 and lib.catalog.count_images() == 1
        (root / "a" / "ignored.jpg.part").write_bytes(b"partial")
        write_image(root / "a" / ".hidden.jpg", seed=3)
        with pytest.raises(queue.Empty):
            w.next(timeout=1.5)
    finally:
        w.close()


def test_a_file_written_slowly_is_read_once_whole(fake_library, tmp_path):
    """Written in chunks, 0.3 s apart, for about 2 s with a quiet of 0.8 s: the batch waits for
    the last write, and the image is added once, not skipped half-written."""
    root = tmp_path / "photos"
    root.mkdir()
    whole = write_image(tmp_path / "whole.jpg", seed=5, size=(320, 240)).read_bytes()
    lib = fake_library("lib")
    w = _Watching(lib, [root], debounce=0.8)
    try:
        assert w.next().kind == CATCH_UP
        chunks = [whole[i : i + len(whole) // 7 + 1] for i in range(0, len(whole), len(whole) // 7 + 1)]
        with open(root / "slow.jpg", "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(0.3)
        batch = w.next()
        assert (batch.added, batch.skipped) == (1, 0), batch
        with pytest.raises(queue.Empty):
            w.next(timeout=1.5)  # and nothing more to do
        assert lib.status(with_skipped=True).skipped == 0
    finally:
        w.close()


def test_a_missing_folder_or_bad_pattern_stops_before_anything_starts(tmp_path):
    (tmp_path / "photos").mkdir()
    result = run_cbir("watch", str(tmp_path / "nope"), "--library", str(tmp_path / "lib"))
    assert result.returncode == 2 and result.stderr.strip() == f"Error: {tmp_path / 'nope'}: no such folder"
    result = run_cbir("watch", str(tmp_path / "photos"), "--library", str(tmp_path / "lib"), "--exclude", "#x")
    assert result.returncode == 2 and "matches nothing" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "lib").exists()


# -- the real command (cbir-tiny) --------------------------------------------------------------


class _Command:
    """`cbir watch` (or serve) in a subprocess, its stdout lines read on a thread."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cbir", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cbir_env(),
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def line(self, timeout: float = 60) -> tuple[float, str]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            raise AssertionError(f"no line in {timeout} s; stderr: {self.process.stderr.read()}") from None

    def silent_for(self, seconds: float) -> bool:
        try:
            self.lines.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def until(self, text: str, timeout: float = 60) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while True:
            at, line = self.line(max(deadline - time.monotonic(), 0.1))
            if text in line:
                return at, line

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _search(library: Path, image: Path) -> dict:
    result = run_cbir("search", "--library", str(library), "--image", str(image), "-k", "1", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[0])


@pytest.mark.slow
def test_cbir_watch_keeps_a_folder_indexed(tmp_path):
    photos, library = tmp_path / "photos", tmp_path / "lib"
    (photos / "a").mkdir(parents=True)
    (photos / "b").mkdir()
    write_image(photos / "a" / "old.jpg", seed=1)
    watcher = _Command(
        "watch", str(photos), "--library", str(library), "--model", "cbir-tiny", "--debounce", "1", "--json"
    )
    try:
        catch_up = json.loads(watcher.line(120)[1])
        assert catch_up["kind"] == "catch-up" and catch_up["added"] == 1
        assert json.loads(watcher.line()[1]) == {"kind": "watching", "folders": [str(photos.resolve())]}

        if sys.platform.startswith("linux"):  # idle: no polling, no CPU
            before, started = _cpu_seconds(watcher.process.pid), time.monotonic()
            time.sleep(4)
            idle = (_cpu_seconds(watcher.process.pid) - before) / (time.monotonic() - started)
            print(f"watcher idle CPU: {idle:.2%} of a core")
            assert idle < 0.05

        latencies = []
        for n in range(3):  # a new image is searchable a few seconds after it lands
            landed = time.monotonic()
            new = write_image(photos / "a" / f"new{n}.jpg", seed=10 + n)
            at, line = watcher.line()
            batch = json.loads(line)
            assert (batch["kind"], batch["added"], batch["encoded"]) == ("changes", 1, 1), batch
            latencies.append(at - landed)
            assert _search(library, new)["path"] == str(new.resolve())
        print(f"landed -> searchable: {sorted(latencies)} s (debounce 1 s)")
        assert sorted(latencies)[1] < 10

        before = _search(library, photos / "a" / "new0.jpg")
        os.rename(photos / "a" / "new0.jpg", photos / "b" / "moved.jpg")  # moved, not encoded again
        batch = json.loads(watcher.line()[1])
        assert (batch["moved"], batch["added"], batch["removed"], batch["encoded"]) == (1, 0, 0, 0), batch
        after = _search(library, photos / "b" / "moved.jpg")
        assert after["id"] == before["id"] and after["path"] == str((photos / "b" / "moved.jpg").resolve())

        (photos / "a" / "new1.jpg").unlink()
        batch = json.loads(watcher.line()[1])
        assert batch["removed"] == 1 and batch["added"] == 0
        status = json.loads(run_cbir("status", "--library", str(library), "--json").stdout)
        assert status["images"] == 3

        downloading = write_image(tmp_path / "download.jpg", seed=20).read_bytes()
        (photos / "a" / "download.jpg.part").write_bytes(downloading)  # excluded: no batch at all
        assert watcher.silent_for(4)
    finally:
        watcher.kill()


@pytest.mark.slow
def test_sigterm_ends_cbir_watch_with_one_line(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "a.jpg")
    watcher = _Command("watch", str(photos), "--library", str(tmp_path / "lib"), "--model", "cbir-tiny")
    try:
        first = watcher.line(120)[1]
        assert first.startswith(f"{photos.resolve()}: caught up: +1 new in ") and first.endswith("; searchable")
        watcher.until("Ctrl-C stops")
        watcher.process.send_signal(signal.SIGTERM)
        assert watcher.process.wait(30) == 143
        stderr = watcher.process.stderr.read().strip().splitlines()
        assert len(stderr) == 1 and stderr[0].startswith("Interrupted"), stderr
    finally:
        watcher.kill()


@pytest.mark.slow
def test_serve_watch_finds_a_new_file(tmp_path):
    import httpx

    photos, library = tmp_path / "photos", tmp_path / "lib"
    photos.mkdir()
    write_image(photos / "first.jpg", seed=1)
    assert run_cbir("ingest", str(photos), "--library", str(library), "--model", "cbir-tiny").returncode == 0
    missing = run_cbir("serve", "--library", str(library), "--port", "0", "--watch", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.strip() == f"Error: {tmp_path / 'nope'}: no such folder"

    server = _Command("serve", "--library", str(library), "--port", "0", "--watch", str(photos))
    try:
        url = server.until("in a browser", 120)[1].split()[1]
        server.until("cbir serve: watching")
        write_image(photos / "second.jpg", seed=2)
        server.until("+1 new")
        with open(photos / "second.jpg", "rb") as f:
            hits = httpx.post(url + "api/search/image", files={"file": f}, params={"k": 1}, timeout=30).json()["hits"]
        assert hits[0]["path"] == str((photos / "second.jpg").resolve())
        hits = httpx.get(url + "api/search", params={"q": "a picture", "k": 5}, timeout=30).json()["hits"]
        assert {h["path"] for h in hits} == {str((photos / n).resolve()) for n in ("first.jpg", "second.jpg")}
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(30) == 0
    finally:
        server.kill()


def test_a_move_between_two_watched_folders_encodes_nothing(fake_library, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    write_image(first / "x.jpg", seed=4)
    lib = fake_library("lib")
    w = _Watching(lib, [first, second], debounce=0.3)
    try:
        assert [w.next().kind, w.next().kind] == [CATCH_UP, CATCH_UP]
        os.rename(first / "x.jpg", second / "x.jpg")
        batch = w.next()
        assert batch.folders == [second.resolve(), first.resolve()]
        assert (batch.added, batch.removed, batch.encoded) == (1, 1, 0), batch
        assert lib.catalog.count_images() == 1
    finally:
        w.close()


def test_a_batch_waits_while_another_writer_holds_the_library(fake_library, tmp_path):
    from cbir.fsutil import writer_lock

    root = tmp_path / "photos"
    root.mkdir()
    lib = fake_library("lib")
    w = _Watching(lib, [root], debounce=0.3)
    try:
        assert w.next().kind == CATCH_UP
        with writer_lock(lib.path):  # as another `cbir ingest` or `cbir watch` would
            write_image(root / "new.jpg", seed=6)
            time.sleep(2.0)
            assert lib.catalog.count_images() == 0
        batch = w.next()
        assert batch.added == 1 and batch.error is None and batch.waited >= 0.5, batch
        assert "s for another writer); searchable" in batch.summary()
    finally:
        w.close()


def test_a_watched_folder_that_goes_away_is_said_once(fake_library, tmp_path):
    import shutil

    root, other = tmp_path / "photos", tmp_path / "other"
    root.mkdir()
    other.mkdir()
    write_image(root / "a.jpg")
    lib = fake_library("lib")
    w = _Watching(lib, [root, other], debounce=0.3)
    try:
        assert [w.next().kind, w.next().kind] == [CATCH_UP, CATCH_UP]
        shutil.rmtree(root)
        batch = w.next()
        assert batch.error == GONE and batch.summary() == f"{root.resolve()}: {GONE}"
        assert lib.catalog.count_images() == 1  # kept, as for any scanned folder that vanished
        write_image(other / "b.jpg", seed=2)  # the other folder is still watched
        assert w.next().added == 1
    finally:
        w.close()

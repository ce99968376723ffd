"""Faults that must lose nothing: a rebuild killed at random moments, searches in other processes
while an ingest writes. Real SQLite files, real FAISS indexes, real processes and signals."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cbir.bench.filtered import build_library
from cbir.config import resolve_settings
from cbir.encode.fake import FakeEncoder
from cbir.index import generations
from cbir.library import Library
from tests.conftest import cbir_env, count_images, run_cbir, tiny_ingest_command, write_image

DIM = 64


@pytest.mark.slow  # a kill loop
def test_a_rebuild_killed_at_any_moment_leaves_a_loadable_generation(tmp_path):
    lib, _ = build_library(tmp_path / "lib", 30_000, DIM)  # clustered vectors, no images
    query = lib.catalog.vectors_of("images", np.array([17]))[1][0]
    lib.close()
    env = cbir_env()
    rng = random.Random(11)
    kinds = ["hnsw", "ivf", "ivfpq", "hnsw"]  # the slower builds: more of them die midway
    kills = 0
    for run in range(8):
        cmd = [
            sys.executable,
            "-m",
            "cbir",
            "index",
            "rebuild",
            "--type",
            kinds[run % 4],
            "--library",
            str(tmp_path / "lib"),
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 2.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # whatever moment it died at, the current generation is whole and agrees with the database
        with Library.open(resolve_settings(library=tmp_path / "lib", env={}), encoder=FakeEncoder(dim=DIM)) as again:
            assert again.verify_index() == {"images": [], "texts": []}, f"run {run}"
            index = again._index("images")
            assert index.ntotal == 30_000
            assert index.search(query, 10)[1][0][0] == 17  # a stored vector finds itself, whatever kind is current
    print(f"\n{kills} of 8 rebuilds killed; the current generation stayed whole every time")
    assert kills >= 3  # many runs were really cut short (the others finished first)
    folders = [p.name for p in (tmp_path / "lib" / "index").iterdir() if p.is_dir()]
    manifest = generations.read_manifest(tmp_path / "lib" / "index")
    assert manifest.folder in folders
    # a finished rebuild cleans up what killed ones left behind
    with Library.open(resolve_settings(library=tmp_path / "lib", env={}), encoder=FakeEncoder(dim=DIM)) as again:
        again.rebuild_index("flat")
    assert [p.name for p in (tmp_path / "lib" / "index").iterdir() if p.is_dir()] == [
        generations.read_manifest(tmp_path / "lib" / "index").folder
    ]


def _searcher(library: str, seconds: float, out) -> None:
    """Open the library again and again and search it until time is up; report what failed."""
    errors, searches = [], 0
    stop = time.time() + seconds
    while time.time() < stop:
        try:
            with Library.open(resolve_settings(library=library, env={}), encoder=FakeEncoder()) as lib:
                for _ in range(5):
                    hits = lib.search("anything", k=5)
                    assert len(hits) == 5 and len({h.id for h in hits}) == 5
                    searches += 1
        except Exception as e:  # noqa: BLE001 - every failure is the finding
            errors.append(f"{type(e).__name__}: {e}")
    out.put((searches, errors))


_HOLDER = """
import sys, time
from pathlib import Path
from cbir.fsutil import writer_lock
with writer_lock(Path(sys.argv[1]), brief=sys.argv[2] == "brief"):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _holding(library, kind: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(library), kind, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_writer_waits_for_a_search_saving_the_index_it_rebuilt_but_not_for_another_writer(tmp_path):
    """A search that rebuilt a stale index saves it under the writer lock, briefly: an ingest
    starting meanwhile waits for that save to end (it failed with "another process is writing",
    as the long suite's searchers met once), while another writer still fails at once, and a
    search never waits: it leaves the save to whoever holds the lock."""
    from cbir.errors import LibraryLocked
    from cbir.fsutil import writer_lock

    library = tmp_path / "lib"
    library.mkdir()
    search = _holding(library, "brief", 1.0)
    with writer_lock(library):  # held by the search when asked: waited for, not refused
        assert search.wait(timeout=30) == 0
    writer = _holding(library, "writer", 60)
    try:
        with pytest.raises(LibraryLocked, match=rf"pid {writer.pid}"):
            with writer_lock(library):
                pass
        with pytest.raises(LibraryLocked):
            with writer_lock(library, brief=True):
                pass
    finally:
        writer.kill()
        writer.wait()


_UNRECORDED = """
import fcntl, sys, time
with open(sys.argv[1], "a+") as f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_writer_waits_for_a_holder_that_has_not_yet_said_who_it_is(tmp_path):
    """Between taking the lock and writing its record, a holder is nameless: a writer meeting it
    then gives it RECORD_WAIT (the long suite's ingest failed at once, meeting a search there),
    and a released lock leaves no record behind to be taken for its next holder's."""
    from cbir.fsutil import RECORD_WAIT, writer_lock

    library = tmp_path / "lib"
    library.mkdir()
    with writer_lock(library):
        assert f'"pid": {os.getpid()}' in (library / "write.lock").read_text()
    assert (library / "write.lock").read_text() == ""
    proc = subprocess.Popen(
        [sys.executable, "-c", _UNRECORDED, str(library / "write.lock"), str(RECORD_WAIT / 8)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "held\n"
        with writer_lock(library):  # waited for the holder (it raised at once before)
            assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow  # a concurrency loop of processes
def test_searches_in_other_processes_never_fail_while_an_ingest_writes(fake_library, tmp_path):
    first = tmp_path / "photos" / "first"
    for i in range(20):
        write_image(first / f"{i}.jpg", seed=i)
    lib = fake_library()
    lib.ingest(first)
    more = tmp_path / "photos" / "more"
    for i in range(300):
        write_image(more / f"{i}.jpg", seed=1000 + i)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    searchers = [context.Process(target=_searcher, args=(str(lib.path), 12.0, out)) for _ in range(3)]
    for p in searchers:
        p.start()
    time.sleep(1.0)
    for chunk in range(3):  # several ingests, each a new index generation while they search
        (more / f"batch{chunk}").mkdir()
        for path in sorted(more.glob("*.jpg"))[:100]:
            path.rename(more / f"batch{chunk}" / path.name)
        report = lib.ingest(more / f"batch{chunk}")
        assert report.added == 100
    results = [out.get(timeout=60) for _ in searchers]
    for p in searchers:
        p.join()
    assert sum(n for n, _ in results) > 30
    assert [e for _, errors in results for e in errors] == []
    assert lib.catalog.count_images() == 320


def test_a_full_disk_stops_the_ingest_with_one_message_and_keeps_what_was_committed(fake_library, photos, monkeypatch):
    """SQLite reports a full disk as "database or disk is full": the batch in flight is rolled
    back, the ones before stay, and the next run carries on."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from cbir.errors import StorageError

    lib = fake_library(batch_size=4)
    real_apply = lib.catalog.apply
    calls = {"n": 0}

    def apply_until_the_disk_is_full(changes):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))
        return real_apply(changes)

    monkeypatch.setattr(lib.catalog, "apply", apply_until_the_disk_is_full)
    with pytest.raises(StorageError, match="disk full .* everything committed before is kept"):
        lib.ingest(photos)
    kept = lib.catalog.count_images()
    assert kept == 8  # two batches of 4 committed, the third lost nothing but itself
    monkeypatch.setattr(lib.catalog, "apply", real_apply)
    report = lib.ingest(photos)  # space is back: the run resumes where it stopped
    assert report.added == 12 and lib.catalog.count_images() == 20
    assert lib.verify_index()["images"] == []


def test_a_full_disk_while_saving_the_index_is_reported_and_the_index_rebuilt_next_time(
    fake_library, photos, monkeypatch
):
    import errno

    import faiss

    from cbir.errors import StorageError

    lib = fake_library()
    lib.ingest(photos / "a")  # 10 images, indexed and saved

    def no_space(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(faiss, "write_index", no_space)
    with pytest.raises(StorageError, match="disk full while writing .* every image ingested is committed"):
        lib.ingest(photos)
    assert lib.catalog.count_images() == 20  # the 10 new ones committed before the index save
    monkeypatch.undo()
    with Library.open(resolve_settings(library=lib.path, env={}), encoder=FakeEncoder()) as again:
        assert len(again.search("x", k=20)) == 20  # the stale index is rebuilt from the database
        assert again.verify_index()["images"] == []


@pytest.mark.slow
def test_twenty_kills_during_changing_ingests_lose_nothing(tmp_path):
    """20 rounds: the folder changes (new photos, deletions, a move), `cbir ingest` is killed with
    SIGKILL at a random moment, then run again to the end; after every round the database is
    sound, holds every file exactly once, and the index agrees with it; at the end top-10 equals
    a clean build's."""
    import shutil
    import sqlite3

    from cbir.synthetic import make_gallery

    photos = tmp_path / "photos"
    library = tmp_path / "lib"
    cmd = tiny_ingest_command(photos, library)
    env = cbir_env()
    rng = random.Random(20)
    kills = 0
    for round_ in range(20):
        make_gallery(photos / f"r{round_:02d}", 12, seed=5000 + round_)
        existing = sorted(photos.rglob("*.jpg"))
        for path in rng.sample(existing, 2):
            path.unlink()
        moved = rng.choice(sorted(photos.rglob("*.jpg")))
        shutil.move(moved, moved.with_name("moved-" + moved.name))
        before = count_images(library / "library.db")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if round_ % 2:  # at a random time: while starting, scanning, encoding or committing
            time.sleep(rng.uniform(0.2, 3.0))
        else:  # after a random number of committed batches
            target, deadline = before + rng.randint(1, 8), time.time() + 60
            while proc.poll() is None and count_images(library / "library.db") < target and time.time() < deadline:
                time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        on_disk = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg"))
        with sqlite3.connect(library / "library.db") as c:
            assert c.execute("pragma integrity_check").fetchone()[0] == "ok"
            stored = sorted(p for (p,) in c.execute("select path from images"))
            hashes = [h for (h,) in c.execute("select content_hash from images")]
            assert c.execute("select count(*) from vectors").fetchone()[0] == len(stored)
        assert stored == on_disk, f"round {round_}"
        assert len(set(hashes)) == len(hashes)
        with Library.open(resolve_settings(library=library, env={})) as lib:
            assert lib.verify_index() == {"images": [], "texts": []}, f"round {round_}"
    print(f"\n{kills} of 20 ingests killed; every round lost nothing")  # shown with pytest -s
    assert kills >= 8  # the other runs ended before their kill came
    clean = tmp_path / "clean"
    assert subprocess.run([*cmd[:6], str(clean), *cmd[7:]], env=env, capture_output=True).returncode == 0
    with (
        Library.open(resolve_settings(library=library, env={})) as lib,
        Library.open(resolve_settings(library=clean, env={})) as fresh,
    ):
        for query in ("a red circle on a gray background", "a white star on a cyan background"):
            assert [h.path for h in lib.search(query, k=10)] == [h.path for h in fresh.search(query, k=10)]


def test_a_library_that_cannot_be_written_is_a_one_line_error(fake_library, photos):
    """What a read-only folder does to the lock file, without needing a non-root user: the lock
    file cannot be opened for writing. Searching, which takes no lock, still works."""
    from cbir.errors import StorageError

    lib = fake_library()
    lib.ingest(photos / "a")
    (lib.path / "write.lock").unlink()
    (lib.path / "write.lock").mkdir()
    with pytest.raises(StorageError, match="cannot write .*write.lock"):
        lib.ingest(photos)
    assert lib.catalog.count_images() == 10 and len(lib.search("x", k=5)) == 5


@pytest.fixture
def read_only_mount(tmp_path):
    """A tmpfs mounted at tmp_path/ro, to be remounted read-only: a really read-only disk (root
    ignores permission bits, not a read-only mount). Skipped where mounting is not allowed."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "cbir-test", str(folder)], capture_output=True
    ).returncode:
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.slow  # a real read-only mount
def test_a_library_on_a_read_only_disk_is_searchable_and_refuses_changes(tmp_path, photos, read_only_mount):
    """SQLite's WAL mode cannot open a database whose folder cannot hold its -shm file; cbir
    opens it immutable instead. Searching, status and verify work; ingest and labels refuse
    with one line; nothing changes."""
    import shutil

    library = read_only_mount / "lib"
    assert (
        run_cbir("ingest", str(photos), "--library", str(library), "--model", "cbir-tiny", "--device", "cpu").returncode
        == 0
    )
    before = {p: p.stat().st_mtime_ns for p in library.rglob("*") if p.is_file()}
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], check=True)
    found = run_cbir("search", "a red circle", "--library", str(library), "--json", "-k", "3")
    assert found.returncode == 0 and len(found.stdout.splitlines()) == 3, found.stderr
    assert run_cbir("status", "--library", str(library)).returncode == 0
    assert run_cbir("index", "verify", "--library", str(library)).returncode == 0
    for args in (["ingest", str(photos)], ["label", "add", str(photos / "a" / "img01.jpg"), "x"]):
        refused = run_cbir(*args, "--library", str(library))
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in library.rglob("*") if p.is_file()} == before
    shutil.rmtree(library, ignore_errors=True)


def test_a_file_edited_between_scan_and_read_is_stored_as_read_and_settled_next_run(
    fake_library, tmp_path, monkeypatch
):
    """The hash is taken from the very bytes that are decoded, so the stored vector always
    matches the stored hash; the listing's older size and time make the next run look again,
    find the content it already has, and only update them."""
    import hashlib

    import cbir.ingest.pipeline as pipeline

    photos = tmp_path / "photos"
    edited = write_image(photos / "edited.jpg", seed=1)
    write_image(photos / "other.jpg", seed=2)
    listed = pipeline.scan

    def list_then_edit(*args, **kwargs):
        result = listed(*args, **kwargs)
        write_image(edited, seed=99, size=(90, 70))  # changed after the listing, before reading
        return result

    monkeypatch.setattr(pipeline, "scan", list_then_edit)
    lib = fake_library()
    assert lib.ingest(photos).added == 2
    monkeypatch.setattr(pipeline, "scan", listed)
    image_id = lib.catalog.image_at(edited)
    record = lib.catalog.record_of(image_id)
    assert record.content_hash == hashlib.sha256(edited.read_bytes()).hexdigest()
    assert (record.width, record.height) == (90, 70)  # the pixels are the edited file's
    best = lib.search(image=edited, k=1)[0]
    assert best.id == image_id and best.score > 0.999
    again = lib.ingest(photos)
    assert again.encoded == 0 and again.touched == 1  # same content: only size and time updated
    assert lib.catalog.record_of(image_id).size == edited.stat().st_size
    assert lib.ingest(photos).unchanged == 2
    assert not any(lib.verify_index().values())
    lib.close()

"""A full disk says so in one line, loses nothing committed, leaves no half-written generation,
and never stops a search: on a real small tmpfs where mounting is allowed, and by injected
ENOSPC / SQLITE_FULL everywhere."""

from __future__ import annotations

import errno
import gc
import shutil
import sqlite3
import subprocess

import pytest

from cbir.config import resolve_settings
from cbir.encode.fake import FakeEncoder
from cbir.errors import CbirWarning, StorageError
from cbir.index import generations
from cbir.library import Library
from tests.conftest import count_images, run_cbir

DISK_FULL = r"^disk full while writing .*; what was committed before is kept: free some space and run again"


def generation_folders(library):
    return sorted(p.name for p in (library / "index").glob(f"{generations.PREFIX}*"))


def current_folder(library):
    return generations.read_manifest(library / "index").folder


def raises(error: Exception):
    def fail(*_):
        raise error

    return fail


# -- injected ----------------------------------------------------------------------------------


def test_the_ingest_error_is_reported_when_saving_the_index_afterwards_fails_too(fake_library, photos, monkeypatch):
    """The index save in ingest's `finally` used to replace the run's own error with faiss's
    RuntimeError (exactly what faiss raises when its own writer meets a full disk)."""
    import faiss

    lib = fake_library(batch_size=4)
    lib.ingest(photos / "a")
    real_apply = lib.catalog.apply
    calls = {"n": 0}

    def full_at_the_second_batch(changes):
        calls["n"] += 1
        if calls["n"] == 2:
            raise StorageError(
                f"disk full while writing {lib.path / 'library.db'}; what was committed before is kept: free some space and run again"
            )
        return real_apply(changes)

    monkeypatch.setattr(lib.catalog, "apply", full_at_the_second_batch)
    monkeypatch.setattr(
        faiss,
        "write_index",
        raises(
            RuntimeError(
                "Error in void faiss::write_index(...): 'ret == (size * 4)' failed: write error in x.tmp: "
                "4014 != 27648 (No space left on device)"
            )
        ),
    )
    with pytest.raises(StorageError, match=DISK_FULL):
        lib.ingest(photos)
    assert lib.catalog.count_images() == 14  # the 10 before and the first batch of 4
    assert generation_folders(lib.path) == [current_folder(lib.path)]


def test_a_failed_index_write_is_a_storage_error_and_leaves_no_generation_folder(fake_library, photos, monkeypatch):
    """faiss writes through a Python file, so ENOSPC arrives as itself (faiss's own writer turned
    it into a RuntimeError, or only printed it when the final flush failed)."""
    lib = fake_library()
    lib.ingest(photos)
    before = (lib.index_dir / generations.MANIFEST).read_bytes()
    real_open = open

    class FullFile:
        def __init__(self, path):
            self.file, self.written = real_open(path, "wb"), 0

        def write(self, data):
            if self.written + len(data) > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.file.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def full_disk_open(path, mode="r", *args, **kwargs):
        return FullFile(path) if "w" in mode else real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(generations, "open", full_disk_open, raising=False)
    index = lib.indexes.get("images")
    index.vector_version += 1  # as if changed: a new generation is due
    with pytest.raises(StorageError, match=DISK_FULL) as raised:
        lib.indexes.save({"images": index})
    assert "images.faiss" in str(raised.value) and "\n" not in str(raised.value)
    assert (lib.index_dir / generations.MANIFEST).read_bytes() == before
    assert generation_folders(lib.path) == [current_folder(lib.path)]
    assert not [p for p in lib.index_dir.rglob("*") if p.name.endswith(".tmp")]


def test_a_search_serves_a_stale_index_from_memory_when_saving_it_fails(fake_library, photos, monkeypatch):
    import faiss

    lib = fake_library()
    lib.ingest(photos / "a")
    monkeypatch.setattr(faiss, "write_index", raises(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(StorageError):
        lib.ingest(photos)  # committed, but the index save met a full disk: the index is stale
    lib.close()
    # what faiss raises when its own writer meets a full disk
    monkeypatch.setattr(
        faiss,
        "write_index",
        raises(
            RuntimeError("Error in faiss::write_index: write error in x.tmp: 4014 != 27648 (No space left on device)")
        ),
    )
    with Library.open(resolve_settings(library=lib.path, env={}), encoder=FakeEncoder()) as reader:
        with pytest.warns(CbirWarning, match="images index is searched from memory, not saved"):
            hits = reader.search("x", k=20)
        assert len(hits) == 20  # the 10 images the stale index lacked are found
    assert generation_folders(lib.path) == [current_folder(lib.path)]


@pytest.fixture
def sqlite_max_pages(monkeypatch):
    """Every new SQLite connection limited to N pages: beyond them SQLite answers SQLITE_FULL,
    "database or disk is full", as on a full disk."""
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    limit = {"pages": None}

    def on_connect(dbapi_connection, _record):
        if limit["pages"] is not None:
            dbapi_connection.execute(f"PRAGMA max_page_count = {limit['pages']}")

    event.listen(Pool, "connect", on_connect)
    yield limit
    event.remove(Pool, "connect", on_connect)


def test_a_full_disk_while_creating_the_database_is_a_full_disk(tmp_path, sqlite_max_pages):
    """It was "cannot upgrade the library database ... from schema None ... it may come from a
    newer cbir", on two lines."""
    sqlite_max_pages["pages"] = 3
    with pytest.raises(StorageError, match=DISK_FULL + "$") as raised:
        Library.open(resolve_settings(library=tmp_path / "lib", env={}), create=True, encoder=FakeEncoder())
    assert "library.db" in str(raised.value) and "\n" not in str(raised.value)


def test_a_full_disk_while_upgrading_the_database_is_a_full_disk(fake_library, photos, sqlite_max_pages):
    from cbir.store.db import downgrade

    lib = fake_library()
    lib.ingest(photos)
    downgrade(lib.catalog.engine, "0001")
    lib.close()
    c = sqlite3.connect(lib.path / "library.db")
    c.execute("VACUUM")  # no free pages left for the upgrade to reuse
    pages = c.execute("PRAGMA page_count").fetchone()[0]
    c.close()
    sqlite_max_pages["pages"] = pages  # no room for the tables the upgrade adds
    with pytest.raises(StorageError, match=DISK_FULL + "$"):
        Library.open(resolve_settings(library=lib.path, env={}), encoder=FakeEncoder())
    sqlite_max_pages["pages"] = None
    with Library.open(resolve_settings(library=lib.path, env={}), encoder=FakeEncoder()) as again:
        assert again.catalog.count_images() == 20  # space is back: the upgrade goes through


def test_a_cleanup_error_never_replaces_the_write_error(tmp_path, monkeypatch):
    """The temporary file cannot be removed either (a disk gone read-only): the report is still
    the write's own error."""
    from pathlib import Path

    from cbir.fsutil import atomic_write

    def no_space(tmp):
        tmp.write_bytes(b"")
        raise OSError(errno.ENOSPC, "No space left on device")

    def cannot_unlink(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", cannot_unlink)
    with pytest.raises(StorageError, match=DISK_FULL):
        atomic_write(tmp_path / "f.bin", no_space)


def test_a_failed_unlock_of_a_shared_catalogue_never_replaces_the_commands_error():
    """PostgreSQL: the connection holding the writer lock died with the command (the server
    went away, its disk filled): the command's error is reported, not the unlock's."""
    from types import SimpleNamespace

    from sqlalchemy.exc import OperationalError

    from cbir.store.db import catalogue_writer_lock

    class HeldConnection:
        def execution_options(self, **_):
            return self

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def exec_driver_sql(self, sql):
            if "unlock" in sql:
                raise OperationalError(sql, {}, Exception("server closed the connection unexpectedly"))
            return SimpleNamespace(scalar=lambda: True)

    engine = SimpleNamespace(dialect=SimpleNamespace(name="postgresql"), connect=HeldConnection)
    with pytest.raises(StorageError, match="disk full"):
        with catalogue_writer_lock(engine):
            raise StorageError("disk full while writing x; free some space and run again")


# -- a real full disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs at tmp_path/disk; skipped where mounting is not allowed."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "cbir-full-disk", str(folder)], capture_output=True
    ).returncode:
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
    yield folder
    gc.collect()  # sqlite3 connections (count_images) close when collected
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # detached now, freed when unused


def fill(disk, leave_kb: int):
    """A filler file leaving about ``leave_kb`` KiB free."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    free = shutil.disk_usage(disk).free
    filler.write_bytes(b"\0" * max(0, free - leave_kb * 1024))
    return filler


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("leave_kb", [350, 120])
def test_ingest_on_a_full_disk_says_so_and_searching_still_works(tmp_path, small_disk, leave_kb):
    from cbir.synthetic import make_gallery

    make_gallery(tmp_path / "first", 12, seed=1)
    make_gallery(tmp_path / "more", 600, seed=2)
    library = small_disk / "lib"
    db = library / "library.db"
    assert (
        run_cbir(
            "ingest", str(tmp_path / "first"), "--library", str(library), "--model", "cbir-tiny", "--device", "cpu"
        ).returncode
        == 0
    )
    filler = fill(small_disk, leave_kb)

    refused = run_cbir("ingest", str(tmp_path / "more"), "--library", str(library))
    assert refused.returncode != 0
    assert one_line(refused.stderr).startswith("Error: disk full while writing "), refused.stderr
    assert "free some space and run again" in refused.stderr
    committed = count_images(db)
    assert committed >= 12
    assert generation_folders(library) == [current_folder(library)]  # no empty gen-* left

    found = run_cbir("search", "a red circle", "--library", str(library), "-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    assert len(found.stdout.splitlines()) == 3
    if found.stderr.strip():  # the stale index could not be saved: one warning, nothing more
        assert one_line(found.stderr).startswith("Warning: "), found.stderr
    assert count_images(db) == committed
    assert generation_folders(library) == [current_folder(library)]

    fill(small_disk, 120)  # where creating a library said "cannot upgrade ... from schema None"
    new_library = run_cbir(
        "ingest",
        str(tmp_path / "first"),
        "--library",
        str(small_disk / "new"),
        "--model",
        "cbir-tiny",
        "--device",
        "cpu",
    )
    assert new_library.returncode != 0
    assert one_line(new_library.stderr).startswith("Error: disk full while writing "), new_library.stderr

    filler.unlink()  # space is back: the same command finishes the job
    again = run_cbir("ingest", str(tmp_path / "more"), "--library", str(library))
    assert again.returncode == 0, again.stderr
    assert count_images(db) == 612
    assert run_cbir("index", "verify", "--library", str(library)).returncode == 0

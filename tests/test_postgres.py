"""The catalogue in PostgreSQL, as users run it: `cbir ingest --db URL` on the demo photos and
cbir-tiny, then searches from another library folder (another machine) through
CBIR_DATABASE_URL; one-line errors that never show a password; writers serialised by advisory
locks. The server is the tests' own (tests/postgres.py)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, make_url, text

from cbir.demo import make_demo_photos, scene_of
from cbir.errors import LibraryLocked, LibraryNotFound, StorageError, UsageError
from tests import postgres
from tests.conftest import run_cbir

# PostgreSQL end to end: the long suite (.ci/run), not the README's fast tier
pytestmark = pytest.mark.slow


@pytest.fixture
def database(postgres_server):
    with postgres.fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def shared(tmp_path_factory, postgres_server):
    """24 demo photos (6 with a caption file) ingested into a PostgreSQL catalogue."""
    base = tmp_path_factory.mktemp("postgres")
    photos = make_demo_photos(base / "photos", 24)
    with postgres.fresh_database(postgres_server) as url:
        library = base / "lib"
        out = run_cbir(
            "ingest", str(base / "photos"), "--library", str(library), "--db", url, "--model", "cbir-tiny", "--json"
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["texts"] == 6
        yield base, photos, library, url


def _rows(out) -> list[dict]:
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_ingest_and_search_through_db_and_the_environment(shared):
    base, photos, library, url = shared
    assert not (library / "library.db").exists()  # the catalogue is in PostgreSQL
    assert (library / "index").is_dir()
    rows = _rows(
        run_cbir(
            "search", "a red circle on a gray background", "--library", str(library), "--db", url, "--json", "-k", "3"
        )
    )
    assert [scene_of(Path(r["path"])) for r in rows] == ["red-circle-on-gray"] * 3
    # Another machine: its own library folder (indexes built there), the same catalogue.
    env = {"CBIR_DATABASE_URL": url}
    other = str(base / "other-machine")
    keyword = _rows(
        run_cbir("search", "red circle", "--target", "text", "--mode", "keyword", "--library", other, "--json", env=env)
    )
    assert keyword and all("red" in r["text"] or "circle" in r["text"] for r in keyword)
    assert keyword[0]["source"] == "sidecar"
    hybrid = _rows(
        run_cbir(
            "search",
            "a red circle on a gray background",
            "--target",
            "text",
            "--library",
            other,
            "--json",
            "-k",
            "2",
            env=env,
        )
    )
    assert "a red circle on a gray background" in hybrid[0]["text"]
    assert (base / "other-machine" / "index").is_dir()
    status = json.loads(run_cbir("status", "--library", other, "--json", env=env).stdout)
    assert status["images"] == 24 and status["texts"] == 6 and status["database_bytes"] > 0


def test_labels_written_on_one_machine_are_seen_on_another(shared):
    base, photos, library, url = shared
    image = str(photos[5].path)
    out = run_cbir("label", "add", image, "Rex", "--library", str(library), "--db", url)
    assert out.returncode == 0, out.stderr
    rows = _rows(
        run_cbir(
            "search", "x", "--tag", "rex", "--library", str(base / "third"), "--json", env={"CBIR_DATABASE_URL": url}
        )
    )
    assert [r["path"] for r in rows] == [image]
    assert run_cbir("label", "remove", image, "Rex", "--library", str(library), "--db", url).returncode == 0


def test_errors_are_one_line_without_the_password(tmp_path, postgres_server, database):
    admin = make_url(postgres_server)
    closed = postgres._free_port()  # nothing listens there
    refused = f"postgresql+psycopg://cbir:s3cret@127.0.0.1:{closed}/cbir"
    missing = admin.set(password="s3cret", database="no_such_db").render_as_string(hide_password=False)
    library = str(tmp_path / "lib")
    for url, message in [
        (refused, "cannot reach the catalogue"),
        (missing, "no database 'no_such_db'"),
        (database, "no cbir library in the database"),
    ]:
        out = run_cbir("status", "--library", library, "--db", url)
        assert out.returncode == 1, out.stderr
        assert out.stderr.startswith("Error: ") and message in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "s3cret" not in out.stderr
        assert "127.0.0.1" in out.stderr
    out = run_cbir("status", "--library", library, "--db", "mysql://root:s3cret@localhost/cbir")
    assert out.returncode == 2 and "unsupported database 'mysql'" in out.stderr and "s3cret" not in out.stderr


def test_open_errors_through_the_api(tmp_path, database):
    from cbir.config import resolve_settings
    from cbir.library import Library

    settings = resolve_settings(library=tmp_path / "lib", database_url=database, env={})
    with pytest.raises(LibraryNotFound, match="no cbir library"):
        Library.open(settings)
    assert "s3cret" not in repr(resolve_settings(database_url="postgresql://u:s3cret@h/db", env={}))
    with pytest.raises(UsageError, match="name the database"):
        resolve_settings(database_url="postgresql://u:s3cret@h", env={})
    refused = f"postgresql+psycopg://u:s3cret@127.0.0.1:{postgres._free_port()}/x"
    with pytest.raises(StorageError) as error:
        Library.open(resolve_settings(library=tmp_path / "lib", database_url=refused, env={}))
    assert "s3cret" not in str(error.value) and "Connection refused" in str(error.value)


def test_one_writer_at_a_time_across_machines(fake_library, photos, database):
    from cbir.store.db import catalogue_writer_lock, create_db_engine

    lib = fake_library(database_url=database)
    elsewhere = create_db_engine(database)  # another machine's writer
    with catalogue_writer_lock(elsewhere):
        with pytest.raises(LibraryLocked, match="another cbir process is writing to the catalogue"):
            lib.ingest(photos)
        with pytest.raises(LibraryLocked):
            with catalogue_writer_lock(elsewhere):
                pass
    elsewhere.dispose()
    assert lib.ingest(photos).added == 20
    other = fake_library("other", database_url=database)  # another machine's library folder
    assert other.add_label(photos / "a" / "img01.jpg", "Rex")
    assert lib.catalog.texts_of(other.catalog.image_at(photos / "a" / "img01.jpg")) == [("label", "Rex")]


def test_write_transactions_take_turns(database):
    from cbir.store.db import create_db_engine, for_writing, migrate

    engine = create_db_engine(database)
    migrate(engine)
    order = []
    holding = threading.Event()

    def first():
        with for_writing(engine).begin() as c:
            holding.set()
            time.sleep(0.5)
            c.execute(text("insert into meta (key, value) values ('first', '1')"))
            order.append("first")

    thread = threading.Thread(target=first)
    thread.start()
    holding.wait()
    with for_writing(engine).begin() as c:  # waits for the first to commit, as BEGIN IMMEDIATE
        order.append("second")
        assert c.execute(text("select value from meta where key = 'first'")).scalar() == "1"
    thread.join()
    assert order == ["first", "second"]
    # A writer that waits longer than the timeout gets a "lock timeout" (LibraryLocked in cbir).
    impatient = create_db_engine(database, busy_timeout_ms=100)
    with for_writing(engine).begin():
        with pytest.raises(Exception, match="lock timeout"):
            with for_writing(impatient).begin() as c:
                c.execute(text("select 1"))
    engine.dispose()
    impatient.dispose()


GLOB_CHARS = st.sampled_from(list("ab*?[]^-\\/.$()+|{}é ") + ["z-a", "[a-c]", "[^a]", "[]]", "[!a]"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pattern=st.lists(GLOB_CHARS, max_size=6).map("".join),
    subject=st.lists(st.sampled_from(list("ab-]^[\\/.$é ")), max_size=6).map("".join),
)
def test_glob_as_a_regular_expression_matches_what_sqlite_glob_does(postgres_connection, pattern, subject):
    from cbir.store.sql import glob_to_regex

    expected = bool(sqlite3.connect(":memory:").execute("select ? glob ?", (subject, pattern)).fetchone()[0])
    regex = glob_to_regex(pattern)
    got = regex is not None and postgres_connection.execute(text("select :s ~ :r"), {"s": subject, "r": regex}).scalar()
    assert got == expected, (pattern, subject, regex)


@pytest.fixture(scope="module")
def postgres_connection(postgres_server):
    engine = create_engine(postgres_server)
    with engine.connect() as c:
        yield c
    engine.dispose()


def test_a_dataset_with_extra_columns(fake_library, tmp_path, database):
    from cbir.query.filters import Filters
    from tests.conftest import write_image

    data = tmp_path / "data"
    lines = ["path,caption,split,score"]
    for i in range(6):
        write_image(data / "imgs" / f"img{i}.jpg", seed=i)
        lines.append(f"imgs/img{i}.jpg,caption number {i},{'val' if i < 2 else 'train'},{i / 2}")
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    lib = fake_library(database_url=database)
    assert lib.ingest(data / "train.csv").added == 6
    hits = lib.search("x", k=9, filters=Filters(where="extra.split = TRAIN and extra.score >= 1.5"))
    assert sorted(h.path.name for h in hits) == ["img3.jpg", "img4.jpg", "img5.jpg"]
    assert [h.text for h in lib.search("number", target="texts", mode="keyword", k=9)][:1] == ["caption number 0"]
    ids, labels = lib.catalog.image_labels("extra.split")
    assert sorted(labels) == ["train"] * 4 + ["val"] * 2
    rows = lib.catalog.export_rows(ids)
    assert {r["extra"]["split"] for r in rows.values()} == {"train", "val"}


@pytest.fixture
def killable_server():
    """A server of the test's own (never CBIR_TEST_DATABASE_URL's), which it may kill and start
    again on the same data folder and port."""
    if postgres.find_bin() is None:
        if postgres.REQUIRED:
            pytest.fail("CBIR_REQUIRE_POSTGRES=1 but PostgreSQL is not installed")
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    with postgres.own_server() as server:
        yield server


def _images(url: str) -> tuple[int, int, int]:
    """(rows, distinct paths) of the catalogue's images, and its skipped files; zeros while the
    schema is not there yet."""
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            images, paths = c.execute(text("select count(*), count(distinct path) from images")).one()
            return images, paths, c.execute(text("select count(*) from skipped")).scalar_one()
    except Exception:
        return 0, 0, 0
    finally:
        engine.dispose()


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_the_server_dying_mid_ingest_is_one_line_and_the_same_command_finishes(tmp_path, killable_server, engine):
    import subprocess

    from tests.conftest import cbir_env, need_ray, tiny_ingest_command

    if engine == "ray":
        need_ray()
    photos = make_demo_photos(tmp_path / "photos", 300)
    url = killable_server.url
    # --engine ray starts a private local cluster that stops with the command (its token file in
    # a HOME of the test's own: the user's could draw a warning)
    command = tiny_ingest_command(tmp_path / "photos", tmp_path / "lib", "--db", url, "--engine", engine)
    env = {**cbir_env(), "HOME": str(tmp_path)}
    ingest = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while _images(url)[0] < 8 and ingest.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        committed = _images(url)[0]
        killable_server.kill()
        out, err = ingest.communicate(timeout=120)
    finally:
        ingest.kill()
    assert 8 <= committed < len(photos), "the kill did not land mid-ingest"
    assert ingest.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "pg_advisory" not in err, err
    assert lines[0].startswith("Error: lost the connection to the catalogue "), err
    assert "everything committed so far is kept: run the same command again" in lines[0]
    assert out == ""
    killable_server.start()
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    # every photo once, the broken file skipped once
    assert _images(url) == (len(photos), len(photos), 1)


def test_only_a_lost_connection_reads_as_one():
    import psycopg
    from psycopg import errors
    from sqlalchemy.exc import OperationalError

    from cbir.store.db import connection_lost

    def wrapped(orig: Exception) -> Exception:
        try:
            try:
                raise OperationalError("SELECT 1", {}, orig)
            except OperationalError as e:
                raise StorageError("database error") from e  # as the ingest reports it
        except StorageError as e:
            return e

    closed = psycopg.OperationalError(
        "consuming input failed: server closed the connection unexpectedly\n\tThis probably means the server "
        "terminated abnormally\n\tbefore or while processing the request."
    )
    assert connection_lost(wrapped(closed)) == "server closed the connection unexpectedly"
    refused = psycopg.OperationalError(
        'connection failed: connection to server at "10.0.0.5", port 5432 failed: Connection refused\n\t'
        "Is the server running on that host and accepting TCP/IP connections?"
    )
    assert connection_lost(wrapped(refused)) == "Connection refused"
    shutdown = errors.AdminShutdown("terminating connection due to administrator command")
    assert connection_lost(wrapped(shutdown)) == "terminating connection due to administrator command"
    for other in (errors.LockNotAvailable("canceling statement due to lock timeout"), errors.DiskFull("no space")):
        assert connection_lost(wrapped(other)) is None
    assert connection_lost(StorageError("disk full")) is None

"""Opening a library's database: SQLite in the library folder (pragmas, immediate write
transactions) or a shared PostgreSQL catalogue (advisory locks), and migrations."""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError

from cbir.dburl import parse_database_url, safe_url
from cbir.errors import LibraryLocked, LibraryNotFound, StorageError
from cbir.fsutil import storage_error
from cbir.store.hint import DB_FILENAME

log = logging.getLogger(__name__)

# Advisory lock keys (any constants, per database): one held by each write transaction, the
# equivalent of SQLite's BEGIN IMMEDIATE; one held by a whole ingest or label change, the
# equivalent across machines of the library folder's write.lock.
WRITE_TRANSACTION_LOCK = 0x63626972_0001
WRITER_LOCK = 0x63626972_0002


def library_db_path(library: Path) -> Path:
    return library / DB_FILENAME


def create_db_engine(target: Path | str | URL, *, busy_timeout_ms: int = 30_000) -> Engine:
    """An engine for a SQLite library file (a path) or a PostgreSQL catalogue (a URL)."""
    if isinstance(target, str) and "://" in target:
        target = parse_database_url(target)
    if isinstance(target, URL):
        return _postgresql_engine(target, busy_timeout_ms)
    return _sqlite_engine(Path(target), busy_timeout_ms)


def _sqlite_engine(db_path: Path, busy_timeout_ms: int) -> Engine:
    """WAL (readers never block the writer), a busy timeout, foreign keys on, synchronous=FULL.
    Transactions of ``for_writing(engine)`` start with ``BEGIN IMMEDIATE``: they take the write
    lock up front instead of failing half-way with "database is locked"; reads start a plain
    ``BEGIN`` and never wait for a writer."""
    read_only = db_path.is_file() and not os.access(db_path.parent, os.W_OK)
    if read_only:
        # A WAL database needs its -shm file, which a read-only folder (or disk, or mount) cannot
        # hold: open it immutable instead, so searching still works; writing fails cleanly.
        engine = create_engine(f"sqlite:///file:{quote(str(db_path))}?mode=ro&immutable=1&uri=true")
    else:
        engine = create_engine(f"sqlite:///{db_path}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" event, not the sqlite3 module, decide when transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if not read_only:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        write = connection.get_execution_options().get("cbir_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    @event.listens_for(engine, "handle_error")
    def _on_error(context):
        # Whatever SQLite was doing (a batch, a migration, opening the -shm file), a full disk
        # is reported as one: the same error a full disk gives for every other file.
        if disk_full(context.original_exception, db_path):
            return storage_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), db_path)
        return None

    return engine


# Below this much free space, SQLite's "disk I/O error" is taken for what it then is: a full disk.
NEARLY_FULL_BYTES = 1 << 20


def disk_full(error: BaseException, db_path: Path) -> bool:
    """Whether a SQLite error means the disk holding ``db_path`` is full: SQLITE_FULL ("database
    or disk is full"), or an I/O error (SQLite's word for a failed write of its -wal or -shm
    file) while next to nothing is free there."""
    message = str(error)
    if "database or disk is full" in message:
        return True
    if "disk I/O error" not in message:
        return False
    try:
        return shutil.disk_usage(db_path.parent).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def _postgresql_engine(url: URL, lock_timeout_ms: int) -> Engine:
    """Pooled connections checked before use (a shared server restarts, idle connections are
    cut). Transactions of ``for_writing(engine)`` first take a transaction-scoped advisory lock,
    so writers run one at a time as with SQLite's BEGIN IMMEDIATE (waiting at most the lock
    timeout); reads take no lock and never wait for a writer."""
    engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        if connection.get_execution_options().get("cbir_write", False):
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_TRANSACTION_LOCK})")

    return engine


def is_postgresql(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def describe(engine: Engine) -> str:
    """Where the catalogue is, for messages (never with a password)."""
    return safe_url(engine.url) if is_postgresql(engine) else str(engine.url.database)


@contextmanager
def catalogue_writer_lock(engine: Engine) -> Iterator[None]:
    """For a PostgreSQL catalogue, which machines share: one writer (ingest, labels, tags) at a
    time, held on a connection of its own for the whole command. (The library folder's
    write.lock covers one machine; SQLite needs nothing more.) A command that loses its
    connection to the server ends with one line saying so, its committed work kept."""
    if not is_postgresql(engine):
        yield
        return
    # Autocommit: the held connection must not sit idle inside a transaction for the whole run.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        if not c.exec_driver_sql(f"SELECT pg_try_advisory_lock({WRITER_LOCK})").scalar():
            raise LibraryLocked(
                f"another cbir process is writing to the catalogue {describe(engine)}; wait for it to finish"
            )
        try:
            yield
        except BaseException as e:
            _unlock(c)
            reason = connection_lost(e)
            if reason is not None:
                raise StorageError(
                    f"lost the connection to the catalogue {describe(engine)} while writing ({reason}); "
                    "everything committed so far is kept: run the same command again once the server answers"
                ) from e
            raise
        _unlock(c)


def _unlock(c) -> None:
    """Release the writer lock. Its failure is never the command's: the lock belongs to the
    connection's session, and a lost connection's session ends on the server, which releases
    every advisory lock it held by itself."""
    try:
        c.exec_driver_sql(f"SELECT pg_advisory_unlock({WRITER_LOCK})")
    except Exception as e:
        log.debug("releasing the catalogue writer lock failed (PostgreSQL releases it with the session): %s", e)


# SQLSTATEs that end a session from the server's side: a connection exception (class 08), the
# server shutting down or crashing, or not accepting connections yet.
_SESSION_ENDED = ("08", "57P01", "57P02", "57P03")


def connection_lost(error: BaseException) -> str | None:
    """What libpq said, in one line, when ``error`` (or an error it was raised from) means the
    connection to PostgreSQL went away: the server stopped or crashed, or is unreachable. None
    for any other error, a lock timeout or a full disk among them."""
    seen: BaseException | None = error
    for _ in range(20):
        if seen is None:
            return None
        orig = getattr(seen, "orig", None)
        if isinstance(seen, DBAPIError) and type(orig).__module__.startswith("psycopg"):
            state = getattr(orig, "sqlstate", None)
            if seen.connection_invalidated or (
                isinstance(seen, OperationalError) and (state is None or state.startswith(_SESSION_ENDED))
            ):
                return one_line(str(orig))
        seen = seen.__cause__ or seen.__context__
    return None


def one_line(message: str) -> str:
    """libpq's message (its first line says what happened; the next ones guess why) as a line."""
    first = next((line.strip() for line in message.splitlines() if line.strip()), message)
    return _WHERE_FAILED.sub("", first)


# what libpq puts before the reason: the step that failed and the server (which messages name)
_WHERE_FAILED = re.compile(
    r'^(?:\w+(?: \w+)* failed: )?(?:connection to server (?:at|on)(?: socket)? ".*?"(?:, port \d+)? failed: )?'
)


def connection_error(e: OperationalError, engine: Engine):
    """A failure to reach a PostgreSQL catalogue as one line: what libpq said, and where."""
    reason = " ".join(line.strip() for line in str(e.orig).splitlines() if line.strip())
    reason = reason.removeprefix("connection failed: ")
    where = describe(engine)
    if "does not exist" in reason and "database" in reason:
        return LibraryNotFound(
            f"no database {engine.url.database!r} on the PostgreSQL server of {where}; create it "
            f"(createdb {engine.url.database}) and run `cbir ingest PHOTOS_FOLDER --db URL`"
        )
    return StorageError(f"cannot reach the catalogue {where}: {reason}")


def database_bytes(engine: Engine) -> int:
    """PostgreSQL: the bytes of cbir's tables with their indexes and TOAST."""
    with engine.connect() as c:
        return int(
            c.exec_driver_sql(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
                "AND n.nspname = current_schema() AND c.relname IN "
                "('meta', 'roots', 'images', 'vectors', 'skipped', 'texts', 'alembic_version')"
            ).scalar_one()
        )


def for_writing(engine: Engine) -> Engine:
    """The same engine, whose transactions take the write lock when they begin."""
    return engine.execution_options(cbir_write=True)


def migrations_dir() -> Path:
    """The Alembic script folder: ``cbir.migrations`` (the top-level migrations/ of a checkout,
    mapped into the package by pyproject so it also ships inside the wheel)."""
    spec = importlib.util.find_spec("cbir.migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    # Running from a source tree that is not installed (PYTHONPATH=.): use the folder itself.
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    raise RuntimeError("cbir.migrations is missing from this installation")


def _alembic_config():
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database records (None: no cbir schema yet). Read with one query
    rather than through Alembic, whose import a search would otherwise pay (0.1-0.2 s)."""
    from sqlalchemy import inspect, text

    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return versions[0] if len(versions) == 1 else None


def head_revision() -> str:
    """The newest schema revision, from the names of the migration files, which begin with their
    revision ("0004_tag_scores.py"), in one chain; tests/test_store.py checks it against Alembic's
    own reading of the scripts, which a search would pay for."""
    names = [p.name for p in (migrations_dir() / "versions").glob("[0-9]*.py")]
    return max(name.split("_", 1)[0] for name in names)


def alembic_head() -> str | None:
    """Alembic's head revision of the migration scripts (slow: imports and reads them all)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database schema (a new file gets the whole schema)."""
    from alembic import command

    config = _alembic_config()
    with for_writing(engine).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    config = _alembic_config()
    with for_writing(engine).begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

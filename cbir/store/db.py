"""Opening a library's database: SQLite pragmas, immediate write transactions, migrations."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event

DB_FILENAME = "library.db"


def library_db_path(library: Path) -> Path:
    return library / DB_FILENAME


def create_db_engine(db_path: Path, *, busy_timeout_ms: int = 30_000) -> Engine:
    """An engine for a SQLite library file: WAL (readers never block the writer), a busy timeout,
    foreign keys on, synchronous=FULL. Transactions of ``for_writing(engine)`` start with
    ``BEGIN IMMEDIATE``: they take the write lock up front instead of failing half-way with
    "database is locked"; reads start a plain ``BEGIN`` and never wait for a writer."""
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

    return engine


def for_writing(engine: Engine) -> Engine:
    """The same engine, whose transactions take SQLite's write lock when they begin."""
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
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
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

"""Alembic environment. cbir passes an open connection; the alembic CLI passes -x library=PATH
(or -x db=postgresql+psycopg://... for a catalogue in PostgreSQL)."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from cbir.store.models import Base, is_modelled

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # called by cbir.store.db.migrate
        _run(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    from pathlib import Path

    from cbir.store.db import create_db_engine, library_db_path

    arguments = context.get_x_argument(as_dictionary=True)
    library, db = arguments.get("library"), arguments.get("db")
    if not (library or db):
        raise SystemExit("pass the library folder or the catalogue's URL: alembic -x library=PATH (or -x db=URL) ...")
    engine = create_db_engine(db or library_db_path(Path(library)))
    with engine.connect() as connection:
        _run(connection)


def _run(connection) -> None:
    # render_as_batch: SQLite can only alter tables by copying them; batch mode does that.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        include_name=is_modelled,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) mode is not supported for cbir libraries")
run_migrations_online()

"""Database URLs (--db, CBIR_DATABASE_URL): a leaf, so settings are checked when they are resolved
(cbir.config) without config importing the store."""

from __future__ import annotations

from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

from cbir.errors import UsageError

POSTGRESQL_DRIVER = "postgresql+psycopg"


def parse_database_url(text: str) -> URL:
    """A --db / CBIR_DATABASE_URL value as a psycopg URL; anything but PostgreSQL is refused."""
    try:
        url = make_url(text)
    except ArgumentError:
        raise UsageError("--db: not a database URL; use postgresql+psycopg://USER:PASSWORD@HOST/DATABASE") from None
    if url.get_backend_name() != "postgresql" or url.get_driver_name() not in ("psycopg", "psycopg2"):
        raise UsageError(
            f"--db: unsupported database {url.drivername!r}; use postgresql+psycopg://USER:PASSWORD@HOST/DATABASE "
            "(without --db the library keeps its catalogue in SQLite in the library folder)"
        )
    if not url.database:
        raise UsageError(f"--db {safe_url(url)}: name the database, e.g. postgresql+psycopg://HOST/cbir")
    return url.set(drivername=POSTGRESQL_DRIVER)


def safe_url(url: URL | str) -> str:
    """A database URL fit to print: the password masked."""
    return make_url(url).render_as_string(hide_password=True)

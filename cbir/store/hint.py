"""The model a SQLite library was built with (and the folders it scanned), read through the
standard library's sqlite3 in a few milliseconds: what lets a cold text search start loading its
model before SQLAlchemy has even been imported, and `cbir demo` recognise its own library. A hint
only, read-only and never an error: the catalogue, opened properly, has the last word
(cbir.library checks the model it gets against it)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

DB_FILENAME = "library.db"  # the catalogue in a library folder
MODEL = "model"  # the meta key of the model fingerprint (JSON)


def model_fingerprint_hint(library: Path) -> dict | None:
    """The fingerprint recorded in ``library``'s SQLite catalogue; None when there is none, or no
    such file, or it cannot be read at once."""
    rows = _read(library, "SELECT value FROM meta WHERE key = ?", (MODEL,))
    try:
        fingerprint = json.loads(rows[0][0]) if rows else None
    except ValueError:
        return None
    return fingerprint if isinstance(fingerprint, dict) else None


def root_folders_hint(library: Path) -> list[str] | None:
    """The folders ``library``'s catalogue has scanned (absolute paths as stored); None when it
    cannot be read at once."""
    rows = _read(library, "SELECT path FROM roots")
    return None if rows is None else [row[0] for row in rows]


def _read(library: Path, sql: str, params: tuple = ()) -> list[tuple] | None:
    """The rows of one query on ``library``'s catalogue, opened read-only; None when there is no
    such file or it cannot be read at once."""
    path = Path(library) / DB_FILENAME
    if not path.is_file():
        return None
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=0.2)) as db:
            return db.execute(sql, params).fetchall()
    except (sqlite3.Error, OSError):
        return None

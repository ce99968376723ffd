"""Opening a library's catalogue (SQLite in the library folder, or a shared PostgreSQL database):
checks, creation, schema upgrade, and the one-line errors for what can go wrong on the way."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.exc import DatabaseError, OperationalError

from cbir.errors import CbirError, LibraryCorrupt, LibraryLocked, LibraryNotFound, StorageError, UsageError
from cbir.store.catalog import Catalog
from cbir.store.db import (
    connection_error,
    create_db_engine,
    current_revision,
    describe,
    head_revision,
    library_db_path,
    migrate,
)


def open_catalogue(path: Path, database_url: str | None, create: bool) -> tuple[Catalog, dict | None]:
    """The catalogue of the library at ``path`` (in PostgreSQL at ``database_url`` if given),
    upgraded to the current schema, and its model fingerprint (None before the first ingest).
    ``create`` makes a missing library (the folder, and SQLite's database) instead of refusing."""
    db_path = library_db_path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--library {path} is a file, not a library folder")
    shared = database_url is not None  # the catalogue in PostgreSQL
    if database_url is not None:
        catalog, revision = _open_shared_catalogue(database_url, create)
    elif not db_path.is_file() and not create:
        raise LibraryNotFound(
            f"no cbir library at {path}; create one with `cbir ingest PHOTOS_FOLDER` "
            "(or point --library / CBIR_LIBRARY at an existing library)"
        )
    # With a shared catalogue the folder still holds this machine's indexes and thumbnails.
    if create or shared:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create library folder {path}: {e.strerror}") from e
    where = describe(catalog.engine) if shared else db_path
    try:
        if not shared:
            catalog = Catalog(create_db_engine(db_path))
            revision = current_revision(catalog.engine)
        if revision != head_revision():
            try:
                migrate(catalog.engine)
            except StorageError:
                raise  # a full disk, not a schema from elsewhere
            except Exception as e:
                raise LibraryCorrupt(
                    f"cannot upgrade the library database {where} from schema {revision} "
                    f"({getattr(e, 'orig', None) or e}); it may come from a newer cbir"
                ) from e
        fingerprint = catalog.model_fingerprint()
    except OperationalError as e:
        if shared:  # the server went away meanwhile
            raise connection_error(e, catalog.engine) from e
        raise LibraryCorrupt(f"{where} is not a readable cbir library database ({e.orig})") from e
    except DatabaseError as e:
        raise LibraryCorrupt(f"{where} is not a readable cbir library database ({e.orig})") from e
    return catalog, fingerprint


def _open_shared_catalogue(url: str, create: bool) -> tuple[Catalog, str | None]:
    """A PostgreSQL catalogue and its schema revision; one without cbir's schema is no library,
    unless creating one (the migrations then create it)."""
    catalog = Catalog(create_db_engine(url))
    try:
        revision = current_revision(catalog.engine)
    except OperationalError as e:
        catalog.engine.dispose()
        raise connection_error(e, catalog.engine) from e
    if revision is None and not create:
        where = describe(catalog.engine)
        catalog.engine.dispose()
        raise LibraryNotFound(
            f"no cbir library in the database {where}; create one with `cbir ingest PHOTOS_FOLDER --db URL`"
        )
    return catalog, revision


def database_error(e: OperationalError, library: Path) -> CbirError:
    """The one-line error for a database failure while writing the library at ``library``."""
    message = str(e.orig)
    if "full" in message:
        return StorageError(
            f"disk full while writing the library at {library}; everything committed before is "
            "kept: free some space and run the same command again"
        )
    if "locked" in message or "lock timeout" in message:
        return LibraryLocked(f"the library at {library} is busy (another process holds it)")
    return StorageError(f"database error in {library}: {message}")

"""Schema: Alembic migrations are the only source of the schema and work from a wheel."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from cbir.store.db import alembic_head, create_db_engine, current_revision, downgrade, head_revision, migrate
from cbir.store.models import Base, is_modelled
from tests.conftest import REPO


def test_migrations_produce_exactly_the_models(tmp_path, database_url):
    engine = create_db_engine(database_url or tmp_path / "library.db")
    migrate(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_name": is_modelled})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_revisions_read_without_alembic_agree_with_alembic(tmp_path, database_url):
    """A search reads the schema revision and the newest one without importing Alembic."""
    assert head_revision() == alembic_head()
    engine = create_db_engine(database_url or tmp_path / "library.db")
    for revision in ("0001", "head", "base"):
        if revision == "base":
            downgrade(engine, "base")
        else:
            migrate(engine, revision)
        with engine.connect() as connection:
            expected = MigrationContext.configure(connection).get_current_revision()
        assert current_revision(engine) == expected
    assert expected is None


def test_opening_an_older_library_upgrades_it(fake_library, photos, database_url):
    lib = fake_library(database_url=database_url)
    lib.ingest(photos)
    downgrade(lib.catalog.engine, "base")
    assert current_revision(lib.catalog.engine) is None
    lib.close()
    reopened = fake_library(database_url=database_url)  # same folder (and database)
    assert current_revision(reopened.catalog.engine) == head_revision()


def test_sqlite_settings(tmp_path):
    engine = create_db_engine(tmp_path / "library.db")
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0


def test_migrations_work_from_an_installed_wheel(tmp_path):
    """Build the wheel, install it into a folder of its own and migrate from there."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = (tmp_path / "dist").glob("cbir-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
        capture_output=True,
    )
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path / "site")!r})
        sys.path = [p for p in sys.path if p.rstrip('/') != {str(REPO)!r}]
        import cbir.store.db as db
        assert db.__file__.startswith({str(tmp_path / "site")!r}), db.__file__
        assert str(db.migrations_dir()).startswith({str(tmp_path / "site")!r})
        engine = db.create_db_engine(__import__('pathlib').Path({str(tmp_path / "w.db")!r}))
        db.migrate(engine)
        print(db.current_revision(engine))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == head_revision()

"""A throwaway PostgreSQL server for the tests: Debian's binaries, a data folder in a temporary
directory, 127.0.0.1 on a free port, stopped at the end. CBIR_TEST_DATABASE_URL points the tests
at an existing server instead."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Read once at import: the tests' autouse fixture hides every CBIR_* variable from the tests.
EXISTING_URL = os.environ.get("CBIR_TEST_DATABASE_URL")
REQUIRED = os.environ.get("CBIR_REQUIRE_POSTGRES") == "1"


def find_bin() -> Path | None:
    """The newest installed server's bin folder (Debian keeps each major version apart)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable_reason() -> str | None:
    """Why no server can be started or used here, or None."""
    if EXISTING_URL:
        return None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'cbir[postgres]')"
    if find_bin() is None:
        return "PostgreSQL is not installed (Debian: apt-get install postgresql)"
    return None


@contextmanager
def server() -> Iterator[str]:
    """A running server's admin URL (database ``postgres``)."""
    if EXISTING_URL:
        yield EXISTING_URL
        return
    bin_dir = find_bin()
    run_as: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="cbir-pg-"))
    if os.geteuid() == 0:
        # postgres refuses to run as root: run it as Debian's postgres user, owning the folder.
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", _free_port()
    try:
        # C locale: lower() folds ASCII only and text sorts by bytes, as in SQLite.
        subprocess.run(
            [
                *run_as,
                bin_dir / "initdb",
                "-D",
                data,
                "-U",
                "cbir",
                "-A",
                "trust",
                "--locale=C",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off"
        subprocess.run(
            [*run_as, bin_dir / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-t", "60", "-o", options, "start"],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as e:
        log = (folder / "log").read_text(errors="replace") if (folder / "log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"cannot start PostgreSQL: {e.stderr.decode(errors='replace')}{log}") from e
    try:
        yield f"postgresql+psycopg://cbir@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the server of ``admin_url``, dropped afterwards."""
    from sqlalchemy import create_engine, make_url

    name = f"cbir_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()

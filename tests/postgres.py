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


class Server:
    """A server of the tests' own: its data folder and port stay the same across ``stop`` and
    ``start``, so a test can take PostgreSQL away mid-command and bring the same catalogue back."""

    def __init__(self, bin_dir: Path, folder: Path, run_as: list[str]):
        self.bin_dir, self.folder, self.run_as = bin_dir, folder, run_as
        self.data, self.port = folder / "data", _free_port()
        self.url = f"postgresql+psycopg://cbir@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        # C locale: lower() folds ASCII only and text sorts by bytes, as in SQLite.
        initdb = [self.bin_dir / "initdb", "-D", self.data, "-U", "cbir", "-A", "trust", "--locale=C"]
        self._run(*initdb, "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off -c full_page_writes=off"
        log = self.folder / "log"
        self._run(self.bin_dir / "pg_ctl", "-D", self.data, "-l", log, "-w", "-t", "60", "-o", options, "start")

    def kill(self) -> None:
        """Stop at once, as a crashed server or a lost machine: every connection is cut."""
        subprocess.run(
            [*self.run_as, self.bin_dir / "pg_ctl", "-D", self.data, "-m", "immediate", "stop"], capture_output=True
        )

    def _run(self, *command) -> None:
        try:
            subprocess.run([*self.run_as, *command], check=True, capture_output=True)
        except subprocess.CalledProcessError as e:
            log = (self.folder / "log").read_text(errors="replace") if (self.folder / "log").exists() else ""
            raise RuntimeError(f"cannot start PostgreSQL: {e.stderr.decode(errors='replace')}{log}") from e


@contextmanager
def server() -> Iterator[str]:
    """A running server's admin URL (database ``postgres``)."""
    if EXISTING_URL:
        yield EXISTING_URL
        return
    with own_server() as running:
        yield running.url


@contextmanager
def own_server() -> Iterator[Server]:
    """A server started here (never CBIR_TEST_DATABASE_URL's), which the caller may stop and
    start again; stopped and deleted at the end."""
    bin_dir = find_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed")
    run_as: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="cbir-pg-"))
    if os.geteuid() == 0:
        # postgres refuses to run as root: run it as Debian's postgres user, owning the folder.
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres", "postgres")
    running = Server(bin_dir, folder, run_as)
    try:
        running.init()
        running.start()
        yield running
    finally:
        running.kill()
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

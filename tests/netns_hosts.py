"""The tests' side of cbir.bench.netns: when to skip, and a PostgreSQL "host".

``network_or_skip()`` is the network of the tests that simulate machines: skipped where
namespaces cannot be made (not root, no iproute2, an unprivileged container), failed instead
under CBIR_REQUIRE_NETNS=1, where they must run.

``server()`` is a throwaway PostgreSQL server on a host of a ``netns.network()``: it listens on that host's
address alone and takes passwords (scram-sha-256) from the network's subnet, as a database
server on its own machine does. It can be killed (the postmaster alone, or the whole host) and
started again on the same data, which then goes through crash recovery.

Clients on the network's hosts use ``url``. This process, outside the network, administers the
server through its Unix socket (a file, which no network namespace hides): ``admin_url``."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cbir.bench import netns
from cbir.bench.netns import Network
from tests.conftest import need_ray
from tests.postgres import REQUIRED, find_bin

# Read at import: the tests' autouse fixture hides every CBIR_* variable from the tests.
REQUIRE_NETNS = os.environ.get("CBIR_REQUIRE_NETNS") == "1"
PORT = 5432  # the host is PostgreSQL's alone: its usual port


@contextmanager
def network_or_skip(hosts=netns.HOSTS) -> Iterator[Network]:
    """A new network of ``hosts``, with Ray installed to run on them; skips (fails under
    CBIR_REQUIRE_NETNS=1, or CBIR_REQUIRE_RAY=1 for Ray) where either is missing."""
    reason = netns.unavailable_reason()
    if reason:
        if REQUIRE_NETNS:
            pytest.fail(f"CBIR_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)
    need_ray()
    with netns.network(hosts) as network:
        yield network


@dataclass
class NetnsPostgres:
    network: Network
    host: str
    url: str  # postgresql+psycopg://cbir:PASSWORD@ADDRESS:5432/postgres, for the network's hosts
    admin_url: str  # the same server through its Unix socket, for this process
    folder: Path
    bin_dir: Path
    _command: list[str] = field(default_factory=list)
    _postmaster: subprocess.Popen | None = None

    def kill_postmaster(self) -> None:
        """SIGKILL to the postmaster alone, as the OOM killer does: its backends end as they
        notice, and the server is down until ``restart``."""
        if self._postmaster is not None:
            self._postmaster.send_signal(signal.SIGKILL)
            self._postmaster.wait()
            self._postmaster = None

    def kill_host(self) -> int:
        """SIGKILL to every process on the server's host: its machine dies."""
        killed = self.network.kill(self.host)
        self.kill_postmaster()
        return killed

    def restart(self) -> None:
        """The server started again on its data (whatever is left of it killed first)."""
        self.kill_host()
        self._start()

    def database(self, name: str) -> str:
        """A new database ``name``; returns its URL for the network's hosts."""
        from sqlalchemy import create_engine, make_url

        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            admin.dispose()
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def _start(self, timeout: float = 60) -> None:
        with (self.folder / "log").open("a") as log:
            self._postmaster = self.network.popen(self.host, self._command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        ready = [str(self.bin_dir / "pg_isready"), "-q", "-h", str(self.folder), "-p", str(PORT)]
        while subprocess.run(ready).returncode != 0:
            if self._postmaster.poll() is not None or time.monotonic() > deadline:
                said = (self.folder / "log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL on {self.host} did not start: {said}")
            time.sleep(0.1)


@contextmanager
def server_or_skip(network: Network) -> Iterator[NetnsPostgres]:
    """``server(network)``: a server of its own on the pg host, even where
    CBIR_TEST_DATABASE_URL names another; skips (fails under CBIR_REQUIRE_POSTGRES=1) where
    PostgreSQL or psycopg is missing."""
    reason = None if find_bin() else "PostgreSQL is not installed (Debian: apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        reason = "psycopg is not installed (pip install 'cbir[postgres]')"
    if reason:
        if REQUIRED:
            pytest.fail(f"CBIR_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    with server(network) as started:
        yield started


@contextmanager
def server(network: Network, host: str = "pg") -> Iterator[NetnsPostgres]:
    """A new server on ``host`` of ``network``, run as Debian's postgres user (it refuses root);
    user ``cbir`` with a random password. Removed at the end."""
    bin_dir = find_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="cbir-netns-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]  # execs: the pid is postgres's
    password = secrets.token_hex(16)
    (folder / "password").write_text(password)
    shutil.chown(folder / "password", "postgres", "postgres")
    data, address = folder / "data", network.ip(host)
    started = NetnsPostgres(
        network,
        host,
        url=f"postgresql+psycopg://cbir:{password}@{address}:{PORT}/postgres",
        admin_url=f"postgresql+psycopg://cbir:{password}@/postgres?host={folder}&port={PORT}",
        folder=folder,
        bin_dir=bin_dir,
    )
    try:
        # C locale, as tests/postgres.py: lower() folds ASCII only and text sorts by bytes.
        initdb = [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "cbir"]
        initdb += ["--pwfile", str(folder / "password"), "--auth-host=scram-sha-256", "--auth-local=scram-sha-256"]
        subprocess.run([*initdb, "--locale=C", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        subnet = f"{network.subnet}.0/24"
        (data / "pg_hba.conf").write_text(
            f"local all all scram-sha-256\nhost all all {subnet} scram-sha-256\n"
        )  # nothing else: not 127.0.0.1, not another network
        started._command = [
            *as_postgres,
            str(bin_dir / "postgres"),
            *("-D", str(data), "-p", str(PORT), "-k", str(folder), "-c", f"listen_addresses={address}"),
            *("-c", "fsync=off", "-c", "full_page_writes=off"),
        ]
        started._start()
        yield started
    finally:
        started.kill_host()
        shutil.rmtree(folder, ignore_errors=True)

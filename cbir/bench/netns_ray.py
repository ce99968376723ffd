"""A Ray cluster on hosts of a ``netns.network()``, started as on several machines: ``ray start
--head`` on the head host, ``ray start --address HEAD:6379`` on each worker host, each node with
the address of its host, token authentication on and a fresh random token.

Every port a node opens is fixed (``PORTS``, and the workers' range ``WORKER_PORTS``), as a
firewall between machines needs them to be, and the same on every host: each host has its own
ports. The documentation's recipe for a cluster on several machines uses the same flags, and the
tests check that nothing else listens. A host can be killed (every process on it, or only its
raylet) and started again, to rejoin the cluster as a new node.

Each node has a Ray folder of its own (``--temp-dir``), so nothing is written to this machine's
/tmp/ray (where ``ray start --head`` would also replace the address that ``--address auto``
finds). Never ``ray stop`` here: it finds Ray's processes by name in the process table, which
the namespaces share, and stops every Ray on the machine; this cluster is stopped by killing
the processes of its hosts."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cbir
from cbir.bench.netns import Network
from cbir.errors import CbirError

_STARTED = "Ray runtime started"
GCS_PORT = 6379  # the head's: where nodes and drivers join (--port)
# What each node opens besides: the raylet's two servers on every interface, the runtime-env
# agent on the node's address. The dashboard agent's and the metrics ports stay closed with the
# dashboard off, but are fixed all the same, so that no random port can appear.
PORTS = {
    "--node-manager-port": 6380,
    "--object-manager-port": 6381,
    "--runtime-env-agent-port": 6382,
    "--dashboard-agent-grpc-port": 6383,
    "--dashboard-agent-listen-port": 6384,
    "--metrics-export-port": 6385,
}
# Every worker process (and driver) listens on one port of this range, on every interface.
WORKER_PORTS = (10002, 10101)


@dataclass
class NetnsCluster:
    """A running cluster; ``address`` and ``token`` are what a driver needs, ``env`` the
    environment its nodes run with (HOME, token, this cbir on PYTHONPATH)."""

    network: Network
    head: str
    workers: tuple[str, ...]
    address: str
    token: str
    env: dict[str, str]
    logs: Path  # each node's `ray start` output: HOST.log (appended to at each start)
    temp: Path  # each node's Ray folder (sessions, logs, sockets): temp/HOST
    _args: dict[str, list[str]] = field(default_factory=dict)
    _running: dict[str, subprocess.Popen] = field(default_factory=dict)

    def kill_raylet(self, host: str) -> int:
        """SIGKILL to ``host``'s raylet alone: its node is lost, its machine is up. Its ``ray
        start --block`` process then stops the node's other processes and ends."""
        return self.network.kill(host, "raylet")

    def kill_host(self, host: str) -> int:
        """SIGKILL to every process on ``host``, as when its machine dies."""
        killed = self.network.kill(host)
        node = self._running.pop(host, None)
        if node is not None:
            node.wait()
        return killed

    def restart(self, host: str) -> None:
        """``host``'s node started again (whatever was left of it killed first); it joins the
        cluster as a new node. Returns when Ray says it has started."""
        self.kill_host(host)
        self._start(host)

    def run_cbir(self, *args: str, host: str | None = None, env: Mapping[str, str] | None = None, **kwargs):
        """``python -m cbir ARGS`` run on ``host`` (default: the head), as a user runs it on that
        machine: this cluster's environment (its token in RAY_AUTH_TOKEN), then ``env``.
        subprocess.run's keywords; output captured as text unless told otherwise."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return self.network.run(
            host or self.head, [sys.executable, "-m", "cbir", *args], env={**self.env, **(env or {})}, **kwargs
        )

    def nodes(self, alive: Collection[str] | None = None, timeout: float = 120) -> list[dict]:
        """``ray.nodes()`` as a driver on the head sees it: NodeID, NodeManagerAddress, Alive and
        Resources of each. With ``alive`` (addresses), it waits until the nodes alive are those,
        and raises CbirError if they are not after ``timeout`` seconds."""
        want = sorted(alive) if alive is not None else None
        code = _NODES.format(address=self.address, want=want, timeout=timeout)
        done = self.network.run(
            self.head,
            [sys.executable, "-c", code],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout + 120,
        )
        if done.returncode:
            raise CbirError(f"ray.nodes() on {self.head} failed: {done.stderr.strip()[-2000:]}")
        found = json.loads(done.stdout.strip().splitlines()[-1])
        if want is not None and sorted(n["NodeManagerAddress"] for n in found if n["Alive"]) != want:
            raise CbirError(f"after {timeout} s the nodes alive are not {want}: {found}")
        return found

    def _start(self, host: str) -> None:
        self._wait(host, self._launch(host))

    def _launch(self, host: str) -> int:
        """``host``'s node started; returns where its output begins in its log."""
        with (self.logs / f"{host}.log").open("a") as out:
            offset = out.tell()
            self._running[host] = self.network.popen(
                host,
                [sys.executable, "-m", "ray.scripts.scripts", "start", *self._args[host]],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return offset

    def _wait(self, host: str, offset: int, timeout: float = 120) -> None:
        """Returns once the node's output (from ``offset``) says Ray started; raises CbirError
        with its last lines if it ended or did not start in ``timeout`` seconds."""
        node, log = self._running[host], self.logs / f"{host}.log"
        deadline = time.monotonic() + timeout
        while node.poll() is None and time.monotonic() < deadline:
            if _STARTED in _read(log, offset):
                return
            time.sleep(0.2)
        last = [x.strip() for x in _read(log, offset).splitlines() if x.strip()][-3:]
        raise CbirError(f"ray start on {host} failed: {' / '.join(last) or 'no output'}")


# Run by a driver on the head: ray.nodes(), polled until the nodes alive are `want` (if given).
_NODES = """
import json, logging, time, ray
ray.init(address={address!r}, logging_level=logging.ERROR)
want, deadline = {want!r}, time.monotonic() + {timeout!r}
while True:
    nodes = [{{k: n[k] for k in ("NodeID", "NodeManagerAddress", "Alive", "Resources")}} for n in ray.nodes()]
    if want is None or sorted(n["NodeManagerAddress"] for n in nodes if n["Alive"]) == want or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(nodes))
"""


@contextmanager
def cluster(
    network: Network,
    logs: Path,
    *,
    head: str = "head",
    workers: tuple[str, ...] = ("w1", "w2"),
    head_cpus: int = 0,
    cpus_per_worker: int = 1,
    object_store_mb: int = 400,
    env: Mapping[str, str] | None = None,
) -> Iterator[NetnsCluster]:
    """A head on ``head`` (``head_cpus`` CPUs: none, it only coordinates) and a worker node on
    each of ``workers``. ``logs`` holds the nodes' output and stands in for their home folder.
    ``env`` is added to the nodes' and drivers' environment (CBIR_CACHE_DIR, RAY_ settings).
    At the end every process on those hosts is killed."""
    token = secrets.token_hex(32)
    temp = Path(tempfile.mkdtemp(prefix="cbir-ray-"))  # short: Ray's socket paths are limited to 107 bytes
    node_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CBIR_"))}
    node_env.update(
        HOME=str(logs),
        PYTHONPATH=os.pathsep.join([str(Path(cbir.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        **(env or {}),
    )
    address = f"{network.ip(head)}:{GCS_PORT}"
    fixed = [str(x) for pair in PORTS.items() for x in pair]
    fixed += ["--min-worker-port", str(WORKER_PORTS[0]), "--max-worker-port", str(WORKER_PORTS[1])]
    common = ["--object-store-memory", str(object_store_mb * 2**20), "--disable-usage-stats", "--block", *fixed]
    started = NetnsCluster(network, head, tuple(workers), address, token, node_env, logs, temp)
    started._args[head] = [
        *("--head", "--port", str(GCS_PORT), "--node-ip-address", network.ip(head), "--num-cpus", str(head_cpus)),
        *("--include-dashboard", "false", "--temp-dir", str(temp / head), *common),
    ]
    for host in workers:
        started._args[host] = [
            *("--address", address, "--node-ip-address", network.ip(host), "--num-cpus", str(cpus_per_worker)),
            *("--temp-dir", str(temp / host), *common),
        ]
    try:
        started._start(head)
        offsets = {host: started._launch(host) for host in workers}  # all at once
        for host, offset in offsets.items():
            started._wait(host, offset)
        yield started
    finally:
        for host in (*workers, head):
            started.kill_host(host)
        shutil.rmtree(temp, ignore_errors=True)


def _read(log: Path, offset: int) -> str:
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")

"""A Ray cluster of several nodes on this machine, started the way one is started on several
machines: ``ray start --head``, then ``ray start --address HEAD`` for each worker node. The
distributed ingest benchmark runs on it, and the tests that join a cluster cbir did not start.

Every node is its own raylet with its own object store, so work placed on different nodes
moves its data between them as it would over a network. Each node is a ``ray start --block``
process; stopping one sends it SIGTERM, which stops that node's processes (``ray stop`` would
stop every Ray on the machine). Ray binds a multi-node cluster's servers to every interface,
so the cluster runs with token authentication on and a fresh random token."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cbir.errors import CbirError

_STARTED = "Ray runtime started"


@dataclass(frozen=True)
class StartedCluster:
    address: str  # the head's HOST:PORT, for --address
    token: str  # what RAY_AUTH_TOKEN must hold to join it
    nodes: int  # worker nodes, the head not counted
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False, compare=False)  # head first

    def kill_node(self, number: int) -> None:
        """Worker node ``number`` (1..nodes) dies as a machine does: SIGKILL to its raylet and
        everything else it runs (its process group), nothing stopped in order."""
        node = self.processes[number]
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait()


@contextmanager
def started_ray_cluster(
    home: Path, *, nodes: int = 2, cpus_per_node: int = 1, head_cpus: int = 0, object_store_mb: int = 400
) -> Iterator[StartedCluster]:
    """A head with ``head_cpus`` CPUs (none: it only coordinates, as on a real cluster) and
    ``nodes`` worker nodes of ``cpus_per_node`` CPUs, joined through 127.0.0.1 (Ray replaces
    ``--node-ip-address 127.0.0.1`` with the machine's address and listens on every interface:
    hence the token; cbir.bench.netns_ray keeps a cluster inside namespaces). ``home`` stands in for
    the nodes' home folder (where Ray would write a token file of its own) and holds their logs."""
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    port = _free_port()
    common = [
        "--node-ip-address",
        "127.0.0.1",
        "--object-store-memory",
        str(object_store_mb * 2**20),
        "--disable-usage-stats",
        "--block",
    ]
    running: list[subprocess.Popen] = []
    try:
        running.append(
            _start(
                ["--head", "--port", str(port), "--num-cpus", str(head_cpus), "--include-dashboard", "false", *common],
                env,
                home / "head.log",
            )
        )
        for i in range(nodes):
            running.append(
                _start(
                    ["--address", f"127.0.0.1:{port}", "--num-cpus", str(cpus_per_node), *common],
                    env,
                    home / f"node-{i + 1}.log",
                )
            )
        yield StartedCluster(address=f"127.0.0.1:{port}", token=token, nodes=nodes, processes=running)
    finally:
        _stop(running)


@contextmanager
def joined(cluster: StartedCluster) -> Iterator:
    """This process connected to ``cluster`` as a driver, its token in the environment meanwhile
    (where a user of a remote cluster puts it)."""
    from cbir.distributed.cluster import connected, environment

    with environment("RAY_AUTH_TOKEN", cluster.token), connected(cluster.address) as ray:
        yield ray


def _stop(nodes: list[subprocess.Popen], grace: float = 10) -> None:
    """SIGTERM to every node, and SIGKILL to the process group of each node that has not stopped
    ``grace`` seconds later: nothing of cbir's is left on them by then."""
    for node in nodes:
        node.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for node in nodes:
        try:
            node.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(node.pid, signal.SIGKILL)  # what is left of the node: its raylet's workers
        except ProcessLookupError:
            pass
        node.wait()


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """One node, its output in ``log``, returned once Ray says it has started."""
    with log.open("w") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while node.poll() is None and time.monotonic() < deadline:
        if _STARTED in log.read_text(errors="replace"):
            return node
        time.sleep(0.2)
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGKILL)
    node.wait()
    last = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()][-3:]
    raise CbirError(f"ray start {' '.join(args[:2])} failed: {' / '.join(last)}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

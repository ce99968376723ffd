"""Machines simulated with network namespaces (cbir.bench.netns): a Ray head and two worker hosts,
each with an address that exists only inside the namespaces, and a PostgreSQL host. The harness
itself is tested here: the cluster forms over those addresses, cbir ingests on it from the head
as on the local engine, nothing listens on this machine's own network, the ports are the fixed
ones the documentation lists, and a killed host is seen dead and can rejoin."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbir.bench import netns
from cbir.config import resolve_settings
from cbir.library import Library
from tests.netns_hosts import network_or_skip
from tests.test_ray_ingest import assert_same, make_folder

# three Ray nodes and a PostgreSQL server: the long suite (.ci/run), not the README's fast tier
pytestmark = pytest.mark.slow


def _root_links() -> set[str]:
    done = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines()}


@pytest.fixture(scope="module")
def root_before():
    """This machine's own interfaces and listening sockets before any host exists."""
    if netns.unavailable_reason() is not None:
        return None  # network_or_skip says why
    return _root_links(), set(netns.listeners())


@pytest.fixture(scope="module")
def net(root_before):
    with network_or_skip() as network:
        yield network


@pytest.fixture(scope="module")
def cluster(net, tmp_path_factory, onnx_cache):
    from cbir.bench.netns_ray import cluster

    with cluster(net, tmp_path_factory.mktemp("netns-ray"), env={"CBIR_CACHE_DIR": str(onnx_cache)}) as started:
        yield started


def test_the_hosts_exist_only_inside_the_namespaces(net, root_before):
    links, _ = root_before
    assert _root_links() == links  # no veth end, no bridge here
    root_addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert "10.231." not in root_addresses
    for host in net.hosts:
        shown = net.run(host, ["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
        assert f"inet {net.ip(host)}/24" in shown and "inet 127.0.0.1/8" in shown
    # w1 reaches the head's address (port 9: nothing listens there): refused, not unreachable
    probe = f"import socket; s = socket.socket(); s.settimeout(5); print(s.connect_ex(({net.ip('head')!r}, 9)))"
    reached = net.run("w1", [sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert reached.stdout.strip() == "111"  # ECONNREFUSED
    net.disconnect("w1")
    try:
        cut = net.run("w1", [sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        assert cut.stdout.strip() != "111"  # unplugged: no answer at all (timeout or no route)
    finally:
        net.reconnect("w1")
    assert net.run("w1", [sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "111"


_ABANDONED = """
import os, subprocess
from cbir.bench import netns
with netns.network(("a", "b")) as net:
    net.popen("b", ["sleep", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(net.namespace("a"), net.namespace("b"), flush=True)
    os.kill(os.getpid(), 9)  # killed before its cleanup
"""


def test_a_killed_runs_hosts_are_removed_by_the_next_run(net):
    done = subprocess.run([sys.executable, "-c", _ABANDONED], capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    left = done.stdout.split()
    assert set(left) <= set(netns.namespaces()) and len(left) == 2
    sleeping = _pids_in(left[1])
    assert len(sleeping) == 1
    removed = netns.remove_leftovers()
    assert set(left) <= set(removed) and not set(left) & set(netns.namespaces())
    assert _state(sleeping[0]) in (None, "Z")  # killed (a zombie until pid 1 reaps it)
    assert net.namespace("head") in netns.namespaces()  # a live run's hosts stay


def _pids_in(namespace: str) -> list[int]:
    return [
        int(p)
        for p in subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
    ]


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_the_cluster_forms_with_the_hosts_addresses(cluster, net):
    nodes = cluster.nodes()
    alive = {n["NodeManagerAddress"]: n["Resources"].get("CPU", 0) for n in nodes if n["Alive"]}
    assert alive == {net.ip("head"): 0, net.ip("w1"): 1, net.ip("w2"): 1}


def test_ray_listens_on_the_documented_ports_only_inside_the_hosts(cluster, net, root_before):
    from cbir.bench.netns_ray import GCS_PORT, PORTS, WORKER_PORTS

    workers = range(WORKER_PORTS[0], WORKER_PORTS[1] + 1)
    for host in ("head", "w1", "w2"):
        found = {(s.address, s.port, s.processes) for s in net.listening(host)}
        # The raylet's node manager and object manager listen on every interface, the
        # runtime-env agent on the host's address; the head adds the GCS, on every interface.
        want = {("*", PORTS["--node-manager-port"], ("raylet",)), ("*", PORTS["--object-manager-port"], ("raylet",))}
        want.add((net.ip(host), PORTS["--runtime-env-agent-port"], ("ray::RuntimeEnv",)))
        if host == "head":
            want.add(("*", GCS_PORT, ("gcs_server",)))
        assert want <= found, host
        # besides: worker processes and drivers, each on a port of the workers' range, every interface
        assert all(a == "*" and p in workers for a, p, _ in found - want), (host, found - want)
    # Nothing of the cluster listens on this machine's own network. (Other processes here may
    # open sockets meanwhile: only ours, or the cluster's fixed ports, would be the harness's.)
    ours = {pid for host in net.hosts for pid in net.pids(host)}
    new = set(netns.listeners()) - root_before[1]
    fixed = {GCS_PORT, *PORTS.values()}
    assert not [s for s in new if set(s.pids) & ours or s.port in fixed]


def test_an_ingest_from_the_head_equals_the_local_engine(cluster, tmp_path_factory):
    photos = make_folder(tmp_path_factory.mktemp("netns-photos"))
    local = tmp_path_factory.mktemp("netns-local") / "lib"
    with Library.open(resolve_settings(library=local, model="cbir-tiny", device="cpu", env={}), create=True) as lib:
        lib.ingest(photos)
    on_ray = local.parent.parent / "netns-ray-lib"
    args = ["ingest", str(photos), "--library", str(on_ray), "--model", "cbir-tiny"]
    done = cluster.run_cbir(*args, "--engine", "ray", "--address", cluster.address, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same(local, on_ray)


def test_a_killed_worker_host_is_dead_and_rejoins(cluster, net):
    head, w1, w2 = (net.ip(h) for h in ("head", "w1", "w2"))
    assert cluster.kill_host("w2") > 0
    t = time.monotonic()
    nodes = cluster.nodes(alive={head, w1})
    dead = {n["NodeManagerAddress"] for n in nodes if not n["Alive"]}
    assert dead == {w2}, nodes
    print(f"w2 seen dead {time.monotonic() - t:.1f} s after its host was killed")
    cluster.restart("w2")
    cluster.nodes(alive={head, w1, w2})
    # the raylet alone killed: the node is lost, and its `ray start --block` stops the rest
    assert cluster.kill_raylet("w1") == 1
    cluster.nodes(alive={head, w2})
    assert net.pids("w1", "raylet") == []


@pytest.fixture(scope="module")
def pg(net):
    from tests.netns_hosts import server_or_skip

    with server_or_skip(net) as started:
        yield started


_SELECT = """
import sys, sqlalchemy
engine = sqlalchemy.create_engine(sys.argv[1])
with engine.connect() as c:
    print(c.exec_driver_sql("select inet_server_addr()").scalar())
"""


def _select(net, host, url):
    return net.run(host, [sys.executable, "-c", _SELECT, url], capture_output=True, text=True, timeout=60)


def test_postgresql_on_its_host_takes_passwords_from_the_network_and_restarts(pg, net):
    assert {(s.address, s.port) for s in net.listening("pg")} == {(net.ip("pg"), 5432)}
    url = pg.database("photos")
    done = _select(net, "head", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == net.ip("pg")
    from sqlalchemy import make_url

    wrong_password = make_url(url).set(password="not-the-password").render_as_string(hide_password=False)
    wrong = _select(net, "head", wrong_password)
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
    pg.kill_postmaster()
    assert _select(net, "head", url).returncode != 0
    pg.restart()
    assert _select(net, "head", url).stdout.strip() == net.ip("pg")  # the database survived

"""Several machines on this one: Linux network namespaces joined by a bridge, so that a test or a
benchmark can run a Ray head, worker "hosts" and a PostgreSQL "host", each with an address of its
own, and kill one of them as a machine dies.

Each host is a namespace ``cbir-<tag>-<host>`` with one interface, ``eth0``, at ``10.231.X.N/24``
(N: the host's place in the list, from 1), its loopback up and a default route through ``eth0``,
as on a real machine (Ray finds its address from that route). The other ends of the hosts' veth
pairs and the bridge joining them live in a namespace of their own, ``cbir-<tag>-net``: nothing
is added to this machine's own interfaces, and the addresses exist only inside the namespaces.

Namespaces outlive the process that made them, and so do the processes started in them, so the
tag starts with the creating process's id. A later run removes what a dead run left behind (the
processes inside first, since a namespace lives on, with its interfaces, while one is in it),
and never touches the namespaces of a run still going."""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PREFIX = "cbir-"
HOSTS = ("head", "w1", "w2", "pg")
_NET = "net"  # the bridge's namespace: not a host
_NAME = re.compile(r"[a-z][a-z0-9]{0,11}")  # a host's name is also an interface's (15 characters at most)
_OURS = re.compile(rf"^{re.escape(PREFIX)}(\d+)-[0-9a-z]+-[a-z0-9]+$")


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket, as ``ss -ltnp`` shows it."""

    address: str  # 10.231.1.1, 127.0.0.1, ::ffff:127.0.0.1, or * (every address of the host)
    port: int
    processes: tuple[str, ...]  # the names of the processes holding it
    pids: tuple[int, ...]


@dataclass(frozen=True)
class Network:
    """Hosts made by ``network()``; the methods run things on them."""

    tag: str
    subnet: str  # the first three numbers of the hosts' /24: "10.231.7"
    hosts: tuple[str, ...]

    def namespace(self, host: str) -> str:
        return f"{PREFIX}{self.tag}-{self._check(host)}"

    def ip(self, host: str) -> str:
        return f"{self.subnet}.{self.hosts.index(self._check(host)) + 1}"

    def command(self, host: str, argv: Sequence[str | os.PathLike]) -> list[str]:
        """``argv`` as a command line that runs it on ``host``."""
        return ["ip", "netns", "exec", self.namespace(host), *map(str, argv)]

    def popen(self, host: str, argv: Sequence[str | os.PathLike], **kwargs) -> subprocess.Popen:
        """``argv`` started on ``host`` in a session of its own (so that a signal to this
        process's group does not reach it), stdin closed unless given."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self.command(host, argv), start_new_session=True, **kwargs)

    def run(self, host: str, argv: Sequence[str | os.PathLike], **kwargs) -> subprocess.CompletedProcess:
        """``argv`` run on ``host`` to its end (subprocess.run's keywords)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(self.command(host, argv), **kwargs)

    def pids(self, host: str, name: str | None = None) -> list[int]:
        """Every process running on ``host``, or those whose command name is ``name``."""
        return [p for p in _pids(self.namespace(host)) if name is None or _comm(p) == name]

    def kill(self, host: str, name: str | None = None) -> int:
        """SIGKILL to every process on ``host`` (the machine dies), or to those whose command
        name is ``name`` (``raylet``: the node's Ray dies, the machine stays). Returns how many
        were killed; returns once they are gone, since a process killed in the middle of a fork
        can leave a child that was not there a moment before."""
        return _kill_all(self.namespace(host), name)

    def disconnect(self, host: str) -> None:
        """Unplug ``host``'s cable: its processes run on, but its packets go nowhere, and
        nobody hears from it (no refused connection either), as with a machine that lost
        power or its network."""
        _ip("-n", self.namespace(_NET), "link", "set", "dev", self._check(host), "down")

    def reconnect(self, host: str) -> None:
        _ip("-n", self.namespace(_NET), "link", "set", "dev", self._check(host), "up")

    def listening(self, host: str) -> list[Listener]:
        """The TCP sockets listening on ``host``."""
        return listeners(self.command(host, ["ss", "-ltnpH"]))

    def _check(self, host: str) -> str:
        if host != _NET and host not in self.hosts:
            raise ValueError(f"no host {host!r} in this network: {', '.join(self.hosts)}")
        return host


def unavailable_reason() -> str | None:
    """Why this process cannot make network namespaces here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux's"
    if shutil.which("ip") is None or shutil.which("ss") is None:
        return "the ip and ss commands are not installed (Debian: apt-get install iproute2)"
    if os.geteuid() != 0:
        return f"making network namespaces needs root (this process runs as user {os.geteuid()})"
    return _probe()


@functools.cache
def _probe() -> str | None:
    """Make a namespace with a bridge and a veth pair in it, as network() does: a container may
    allow the first (CAP_SYS_ADMIN) but not the others (CAP_NET_ADMIN, the kernel's modules)."""
    name = f"{PREFIX}{os.getpid()}-probe-{_NET}"
    steps = [
        ["netns", "add", name],
        ["-n", name, "link", "add", "br0", "type", "bridge"],
        ["-n", name, "link", "add", "a0", "type", "veth", "peer", "name", "b0"],
        ["-n", name, "link", "set", "a0", "master", "br0", "up"],
    ]
    try:
        for step in steps:
            done = subprocess.run(["ip", *step], capture_output=True, text=True)
            if done.returncode:
                said = (done.stderr.strip().splitlines() or ["no message"])[-1]
                return f"cannot make network namespaces here (`ip {' '.join(step[:4])}`: {said}); it takes CAP_SYS_ADMIN and CAP_NET_ADMIN, which an unprivileged container lacks"
        return None
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextmanager
def network(hosts: Sequence[str] = HOSTS, *, subnet: int | None = None) -> Iterator[Network]:
    """Hosts joined by one bridge, removed at the end with every process started on them.
    ``subnet``: X in 10.231.X.0/24 (default: from this process's id). Each network has a
    bridge of its own, so two networks on one machine never meet, whatever their subnets."""
    if len(set(hosts)) != len(hosts) or not hosts or not all(_NAME.fullmatch(h) and h != _NET for h in hosts):
        raise ValueError(f"host names must be distinct lowercase words of 1-12 letters and digits, not {_NET}")
    remove_leftovers()
    x = subnet if subnet is not None else 1 + os.getpid() % 250
    if not 0 <= x <= 255 or len(hosts) > 254:
        raise ValueError("subnet must be 0-255, with at most 254 hosts")
    net = Network(tag=f"{os.getpid()}-{secrets.token_hex(3)}", subnet=f"10.231.{x}", hosts=tuple(hosts))
    try:
        _make(net)
        yield net
    finally:
        for name in [*(net.namespace(h) for h in hosts), net.namespace(_NET)]:
            _remove(name)


def _make(net: Network) -> None:
    bridge = net.namespace(_NET)
    _ip("netns", "add", bridge)
    _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
    _ip("-n", bridge, "link", "set", "br0", "up")
    for host in net.hosts:
        name = net.namespace(host)
        _ip("netns", "add", name)
        _ip("-n", bridge, "link", "add", "name", host, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("-n", bridge, "link", "set", "dev", host, "master", "br0", "up")
        _ip("-n", name, "addr", "add", f"{net.ip(host)}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "route", "add", "default", "dev", "eth0")


def remove_leftovers() -> list[str]:
    """Remove the namespaces (and the processes in them) of runs whose process has ended:
    a run killed before its cleanup. Returns their names."""
    gone = []
    for name in namespaces():
        match = _OURS.match(name)
        if match and not _alive(int(match.group(1))):
            _remove(name)
            gone.append(name)
    return gone


def namespaces() -> list[str]:
    """The names of the network namespaces cbir's runs made, still there."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    names = (line.split()[0] for line in done.stdout.splitlines() if line.strip())
    return [n for n in names if n.startswith(PREFIX)]


def _remove(name: str) -> None:
    _kill_all(name, None)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _kill_all(namespace: str, name: str | None, timeout: float = 30) -> int:
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in _pids(namespace) if name is None or _comm(p) == name]
        if not pids:
            return len(killed)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} in network namespace {namespace} outlived SIGKILL")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)  # a killed process is in the list until its parent has reaped it


def _pids(namespace: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    pids = [int(p) for p in done.stdout.split()]
    # a zombie is already dead: it is listed until its parent (maybe this process) reaps it
    return [p for p in pids if _state(p) not in ("Z", "X", None)]


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def listeners(ss_command: Sequence[str] = ("ss", "-ltnpH")) -> list[Listener]:
    """The listening TCP sockets that ``ss_command`` (``ss -ltnpH``, here or in a namespace)
    reports."""
    done = subprocess.run(list(ss_command), capture_output=True, text=True, check=True)
    found = []
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        address, _, port = fields[3].rpartition(":")
        names, pids = re.findall(r'\("([^"]+)"', line), re.findall(r"pid=(\d+)", line)
        found.append(Listener(address.strip("[]"), int(port), tuple(names), tuple(map(int, pids))))
    return found

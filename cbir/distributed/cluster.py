"""Connecting to Ray, for cbir's distributed engines.

Ray's servers accept anyone who can reach them unless token authentication is on (Ray 2.52+,
the default for local clusters since 2.59), so a cluster cbir starts itself listens on the
loopback interface alone; reaching other machines takes a cluster started on purpose
(``ray start``), joined with an address and, where it has one, its token."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from cbir.errors import CbirError, CbirWarning, UsageError

log = logging.getLogger(__name__)
RAY_MISSING = "the Ray engine needs Ray, which is not installed: pip install 'cbir[ray]'"
# On Linux Ray binds its servers to the address of the default route; on macOS and Windows to
# the loopback address. This switch selects the latter: ray reads it when imported, the
# processes ray.init starts read it from their environment.
_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray's token authentication: the mode, and where a driver finds the token (in this order).
_AUTH_MODE, _TOKEN, _TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
_BACKEND_LOG_LEVEL = "RAY_BACKEND_LOG_LEVEL"


def import_ray():
    """The ray module, or a one-line error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


@contextmanager
def connected(address: str | None = None, *, num_cpus: int | None = None) -> Iterator:
    """Ray for the duration of the block. When this process is already connected (a notebook,
    a test), that connection is used and kept. Else ``address``: ``auto`` joins the cluster
    running on this machine, ``ray://HOST:PORT`` a remote one through Ray Client, ``HOST:PORT``
    a cluster's head; None starts a private cluster on this machine (``num_cpus``: its size,
    default all cores) that listens on 127.0.0.1 only and stops afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    loopback = address is None or _is_loopback(address)
    held = _Held()
    # Ray's workers' output and its cluster events ("a worker died", a node's raylet logs) go
    # to this terminal only with --debug: cbir says in one line what they meant for the run.
    shown = log.isEnabledFor(logging.INFO)
    with _token_mode(address is not None and _token_available(loopback)), _ray_output(shown):
        try:
            if address is None:
                # (the token file's warning before stderr is held, so that it shows)
                with _loopback_only(), _token_file_checked(token_file(loopback=True)), _stderr_held(held):
                    ray.init(
                        address="local",
                        num_cpus=num_cpus,
                        include_dashboard=False,
                        logging_level=logging.WARNING,
                        log_to_driver=shown,
                    )
                _check_loopback(ray)
            else:
                _check_answers(address)
                # a driver finds its node by its own address: on a loopback-only cluster, loopback
                with (
                    _token_file_checked(token_file(loopback)),
                    _loopback_only() if loopback else nullcontext(),
                    _stderr_held(held),
                ):
                    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=shown)
            if shown:
                sys.stderr.write(held.text)
            elif held.text.strip():
                log.info("Ray, while connecting:\n%s", held.text)
        except CbirError:
            raise
        except Exception as e:  # ConnectionError, ValueError (bad address), RuntimeError, ...
            log.info("Ray, while connecting:\n%s", held.text)  # shown with --debug
            raise CbirError(_connect_error(address, e)) from e
        try:
            yield ray
        finally:
            ray.shutdown()


class _Held:
    text = ""


@contextmanager
def _ray_output(shown: bool) -> Iterator[None]:
    """Unless ``shown``, the cluster events Ray's driver prints to stdout (its error listener
    thread calls ``print_to_stdstream``, whatever ``log_to_driver`` says) go to cbir's log
    instead, which --debug shows."""
    from ray._private import worker

    printing = worker.print_to_stdstream
    if not shown:
        worker.print_to_stdstream = lambda data, ignore_prefix: log.info("Ray: %s", " ".join(data.get("lines", [])))
    # The driver's C++ core worker logs errors it recovers from ("attempting to recover 1 lost
    # objects ...") straight to file descriptor 2; its level is read once, as ray.init starts it.
    quiet = not shown and _BACKEND_LOG_LEVEL not in os.environ
    try:
        with environment(_BACKEND_LOG_LEVEL, "fatal") if quiet else nullcontext():
            yield
    finally:
        worker.print_to_stdstream = printing


@contextmanager
def _stderr_held(held: _Held) -> Iterator[None]:
    """What is written to file descriptor 2 while the block runs, kept instead of shown. Ray's
    C++ client logs every failed attempt to reach a cluster there, 20 lines in 20 s, before
    ray.init gives up; the one-line error says what they mean; and the driver's core worker
    says where it sets its log level. Only for connecting (the servers a private cluster starts
    write to log files of their own)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as file:
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            file.seek(0)
            held.text = file.read().decode(errors="replace")


def _token_available(loopback: bool) -> bool:
    """A token to present: one given in the environment, or, for a cluster on this machine, the
    default token file that ``ray start`` and ``ray get-auth-token --generate`` write. (That
    file is not sent to other machines' clusters: it may be another cluster's secret.)"""
    if os.environ.get(_TOKEN) or os.environ.get(_TOKEN_PATH):
        return True
    return loopback and _default_token_file().is_file()


def _default_token_file() -> Path:
    return Path.home() / ".ray" / "auth_token"


def token_file(loopback: bool) -> Path | None:
    """The file Ray reads this connection's token from, if any: ``RAY_AUTH_TOKEN_PATH``'s, else
    for a cluster on this machine the default one; none when the token is in the environment."""
    if os.environ.get(_TOKEN):
        return None
    if os.environ.get(_TOKEN_PATH):
        return Path(os.environ[_TOKEN_PATH]).expanduser()
    return _default_token_file() if loopback else None


_warned_token_files: set[Path] = set()


@contextmanager
def _token_file_checked(path: Path | None) -> Iterator[None]:
    """Around ray.init. The token lets whoever holds it run code on the cluster, and
    ``ray start`` and ``ray get-auth-token --generate`` write it readable by every user of the
    machine: a token file others can read is warned about in one line, once a process. A file
    this ray.init writes (a private cluster's, when the user has none: Ray writes
    ~/.ray/auth_token readable by all) is made the user's alone."""
    existed = path is not None and path.exists()
    if path is not None and existed and path not in _warned_token_files:
        problem = token_file_problem(path)
        if problem:
            _warned_token_files.add(path)
            warnings.warn(problem, CbirWarning, stacklevel=2)
    try:
        yield
    finally:
        if path is not None and not existed and path.is_file():
            try:
                path.chmod(0o600)
            except OSError as e:  # not ours after all (another user's RAY_AUTH_TOKEN_PATH)
                log.debug("cannot make the Ray token file %s private: %s", path, e)


def token_file_problem(path: Path) -> str | None:
    """The one-line warning when users other than its owner can read the token file ``path``."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if not mode & (stat.S_IRGRP | stat.S_IROTH):
        return None
    return (
        f"the Ray token file {path} can be read by other users of this machine (mode {stat.S_IMODE(mode):o}), "
        f"and the token lets whoever holds it run code on the cluster: chmod 600 {path}"
    )


@contextmanager
def _token_mode(on: bool) -> Iterator[None]:
    """Token authentication switched on for this process while the block runs, when ``on`` and
    the user has not chosen a mode (``RAY_AUTH_MODE``). ray.init does this by itself only for a
    cluster found with ``auto``; a head given by address would refuse the connection."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication
        yield
        return
    # Ray keeps the first token it read for the process's life: another cluster's, when this
    # process ran one before (cbir bench, a notebook)
    AuthenticationTokenLoader.instance().reset_cache()
    if not on or _AUTH_MODE in os.environ:
        yield
        return
    try:
        with environment(_AUTH_MODE, "token"):
            Config.initialize("")  # Ray caches its configuration, the mode with it
            yield
    finally:
        Config.initialize("")  # the mode as it was


def _connect_error(address: str | None, error: Exception) -> str:
    where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
    causes, cause = [], error
    while cause is not None:
        causes.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    if not any("InvalidAuthToken" in c or "no authentication token was found" in c for c in causes):
        return f"cannot connect to {where}: {' '.join(str(error).split())}"
    given = _TOKEN if os.environ.get(_TOKEN) else _TOKEN_PATH if os.environ.get(_TOKEN_PATH) else None
    problem = f"it refused the token given in {given}" if given else "it requires a token"
    return f"cannot connect to {where}: {problem}: set {_TOKEN} to what `ray get-auth-token` prints on its head node"


@contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """The environment variable ``name`` set to ``value`` while the block runs, as it was after."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


@contextmanager
def _loopback_only():
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with environment(_LOOPBACK_SWITCH, "0"):
            yield
    finally:  # later connections to real clusters need this process's real address
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _check_answers(address: str, timeout: float = 10.0) -> None:
    """One line at once when nothing answers at the head's address: ray.init retries for
    minutes without a word (measured: still retrying after 150 s)."""
    if address == "auto":
        return  # the cluster this machine runs, found by ray.init, which says when there is none
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # not HOST:PORT: ray.init's own error says so
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise CbirError(
            f"cannot connect to the Ray cluster at {address}: nothing answers at {host}:{port} ({why}); "
            "is its head running (`ray start --head`), and the port open to this machine?"
        ) from None


def _is_loopback(address: str) -> bool:
    """``address`` (auto: the cluster running on this machine) is a head on 127.0.0.1."""
    if address.startswith("ray://"):
        return False  # Ray Client: the driver runs on the cluster
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            address = canonicalize_bootstrap_address("auto") or ""
        except Exception:
            return False  # none running: ray.init says so
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check_loopback(ray) -> None:
    """Refuse to go on with a private cluster reachable from the network (a Ray version whose
    switch above no longer works)."""
    host = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0].strip("[]")
    if not ipaddress.ip_address(host).is_loopback:
        ray.shutdown()
        raise CbirError(
            f"the local Ray cluster would listen on {host}, not only on 127.0.0.1, and Ray lets "
            "anyone who reaches it run code: start a cluster yourself and pass its --address"
        )


def loopback_only(ray) -> bool:
    """Every node of the connected cluster listens on a loopback address."""
    return all(ipaddress.ip_address(n["NodeManagerAddress"]).is_loopback for n in ray.nodes() if n["Alive"])


@dataclass(frozen=True)
class Capacity:
    """What the cluster's live nodes hold."""

    nodes: dict[str, str]  # node id -> its address
    cpus: float
    gpus: float

    def describe(self) -> str:
        n = len(self.nodes)
        gpus = f", {self.gpus:g} GPUs" if self.gpus else ""
        return f"{n} live node{'s' if n != 1 else ''} ({self.cpus:g} CPUs{gpus})"


def live_capacity(ray) -> Capacity:
    """From the nodes that are alive: ``ray.cluster_resources()`` counts a dead node's CPUs until
    the cluster notices it is gone, and plans made from it wait for CPUs that never come."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return Capacity(
        {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in alive},
        sum(n.get("Resources", {}).get("CPU", 0.0) for n in alive),
        sum(n.get("Resources", {}).get("GPU", 0.0) for n in alive),
    )

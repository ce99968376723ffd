"""Connecting to Ray, for cbir's distributed engines.

Ray's servers accept anyone who can reach them (token authentication exists only in recent Ray
and only where it is switched on), so a cluster cbir starts itself listens on the loopback
interface alone; reaching other machines takes a cluster started on purpose (``ray start``),
joined with an address."""

from __future__ import annotations

import ipaddress
import logging
import os
from contextlib import contextmanager
from typing import Iterator

from cbir.errors import CbirError, UsageError

RAY_MISSING = "the Ray engine needs Ray, which is not installed: pip install 'cbir[ray]'"
# On Linux Ray binds its servers to the address of the default route; on macOS and Windows to
# the loopback address. This switch selects the latter: ray reads it when imported, the
# processes ray.init starts read it from their environment.
_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray():
    """The ray module, or a one-line error naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the ingest pipeline needs Ray Data, not only Ray core)
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
    try:
        if address is None:
            with _loopback_only():
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
            _check_loopback(ray)
        elif _is_loopback(address):
            # a driver finds its node by its own address: on a loopback-only cluster, loopback
            with _loopback_only():
                ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except CbirError:
        raise
    except Exception as e:  # ConnectionError, ValueError (bad address), RuntimeError, ...
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise CbirError(f"cannot connect to {where}: {' '.join(str(e).split())}") from e
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _loopback_only():
    from ray._private import ray_constants

    saved_env, saved = os.environ.get(_LOOPBACK_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:  # later connections to real clusters need this process's real address
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(_LOOPBACK_SWITCH, None)
        else:
            os.environ[_LOOPBACK_SWITCH] = saved_env


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

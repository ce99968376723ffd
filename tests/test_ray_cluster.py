"""Joining a Ray cluster cbir did not start: a head and two worker nodes started with
``ray start`` (each its own raylet and object store), token authentication on, as a user
starts one on several machines. cbir's commands run against it in subprocesses, as users run
them, and give what the local engine gives."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cbir.config import resolve_settings
from cbir.library import Library
from tests.conftest import need_ray, run_cbir
from tests.test_ray_ingest import make_folder, snapshot

# a Ray cluster of three nodes: the long suite (.ci/run), not the README's fast tier
pytestmark = pytest.mark.slow


def _env(home, **extra) -> dict:
    """No Ray settings of this test process (its own Ray sets RAY_AUTH_MODE), ``home`` as HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), **extra}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need_ray()
    from cbir.bench.ray_cluster import started_ray_cluster

    with started_ray_cluster(tmp_path_factory.mktemp("ray-nodes"), nodes=2, cpus_per_node=1) as started:
        yield started


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("ray-cluster-photos"))


@pytest.fixture(scope="module")
def local_library(photos, tmp_path_factory):
    """The photos ingested by the local engine on cbir-tiny, sharded in two by folder."""
    path = tmp_path_factory.mktemp("ray-cluster-local") / "lib"
    with Library.open(resolve_settings(library=path, model="cbir-tiny", device="cpu", env={}), create=True) as lib:
        lib.ingest(photos)
        lib.shard_index(2, "folder")
    return path


def test_search_on_the_cluster_equals_local_search(cluster, local_library, tmp_path):
    args = ["search", "a red circle", "-k", "8", "--json", "--library", str(local_library)]
    local = run_cbir(*args, env=_env(tmp_path), cwd=tmp_path)
    # the token given as a user of a remote cluster gives it, in the environment
    on_ray = run_cbir(
        *args,
        "--engine",
        "ray",
        "--address",
        cluster.address,
        env=_env(tmp_path, RAY_AUTH_TOKEN=cluster.token),
        cwd=tmp_path,
    )
    assert local.returncode == 0 and on_ray.returncode == 0, on_ray.stderr
    rows = [[(r["id"], r["score"]) for r in map(json.loads, out.stdout.splitlines())] for out in (local, on_ray)]
    assert rows[0] == rows[1] and len(rows[0]) == 8


def test_ingest_on_two_nodes_equals_the_local_engine(cluster, photos, local_library, tmp_path):
    # on the head's machine: the token file that `ray start` leaves there is found by itself
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(cluster.token)
    library = tmp_path / "lib"
    done = run_cbir(
        "ingest",
        str(photos),
        "--library",
        str(library),
        "--model",
        "cbir-tiny",
        "--engine",
        "ray",
        "--address",
        cluster.address,
        env=_env(tmp_path),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    meta, vectors, skipped = snapshot(library)
    want_meta, want_vectors, want_skipped = snapshot(local_library)
    assert meta == want_meta and skipped == want_skipped
    for path, vector in want_vectors.items():
        np.testing.assert_allclose(vectors[path], vector, atol=1e-5)


@pytest.mark.parametrize(
    "token, says",
    [
        (None, "it requires a token: set RAY_AUTH_TOKEN to what `ray get-auth-token` prints on its head node"),
        ("not-the-token", "it refused the token given in RAY_AUTH_TOKEN: set RAY_AUTH_TOKEN to"),
    ],
)
def test_a_missing_or_wrong_token_is_one_line(cluster, local_library, tmp_path, token, says):
    extra = {"RAY_AUTH_TOKEN": token} if token else {}  # and HOME holds no token file
    extra["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray's retries, 20 s by default
    done = run_cbir(
        "search",
        "a red circle",
        "--library",
        str(local_library),
        "--engine",
        "ray",
        "--address",
        cluster.address,
        env=_env(tmp_path, **extra),
        cwd=tmp_path,
    )
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()  # not Ray's twenty retry warnings
    assert line.startswith(f"Error: cannot connect to the Ray cluster at {cluster.address}: {says}")

"""cbir ingest --engine ray when a node of the cluster dies mid-run, as users meet it: a head and
two worker nodes started with ``ray start``, a worker node killed (SIGKILL to its raylet and
workers) while `cbir ingest` runs in a subprocess. The run finishes on the node that is left,
says in one line what it survived, shows none of Ray's own lines, and stores what the local
engine stores; a run started right after the loss plans from the live node and never hangs."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time

import pytest

from cbir.config import resolve_settings
from cbir.errors import UsageError
from cbir.library import Library
from cbir.synthetic import make_gallery
from tests.conftest import cbir_env, need_ray, run_cbir
from tests.test_ray_ingest import assert_same

# Ray clusters of several nodes: the long suite (.ci/run), not the README's fast tier
pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path_factory):
    """A head without CPUs and two worker nodes of 2 CPUs each."""
    need_ray()
    from cbir.bench.ray_cluster import started_ray_cluster

    with started_ray_cluster(tmp_path_factory.mktemp("ray-nodes"), nodes=2, cpus_per_node=2) as started:
        yield started


def _env(cluster, home) -> dict:
    env = {k: v for k, v in cbir_env().items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), "RAY_AUTH_TOKEN": cluster.token, "CBIR_BATCH_SIZE": "8"}


def _count(db) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as c:
            return c.execute("select count(*) from images").fetchone()[0]
    except sqlite3.Error:
        return 0


def _ingest(photos, library, cluster, home) -> subprocess.Popen:
    args = [sys.executable, "-m", "cbir", "ingest", str(photos), "--library", str(library), "--model", "cbir-tiny"]
    args += ["--engine", "ray", "--address", cluster.address]
    return subprocess.Popen(
        args, env=_env(cluster, home), cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_commits(run: subprocess.Popen, db, count: int, timeout: float) -> int:
    """Images committed once ``run`` (an ingest) has committed ``count`` of them, or ``timeout``
    seconds passed; fails with its output when it ended first (a node is to be killed mid-run)."""
    deadline = time.monotonic() + timeout
    while run.poll() is None and _count(db) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    if run.poll() is not None:
        out, err = run.communicate()
        pytest.fail(f"the ingest ended (exit {run.returncode}) before a node could be killed:\n{out}\n{err}")
    return _count(db)


def assert_survived(out: str, err: str, node: str) -> str:
    """After the summary, one line says what the run survived (``node``: the lost node's address,
    a pattern), then the library line; nothing of Ray's own (raylet logs, worker deaths)."""
    lines = out.strip().splitlines()
    [survived] = [line for line in lines if line.startswith("Ray: ")]
    # (Ray marks the node dead after its health checks: a run that ends sooner knows its actors'
    # loss; a node that held only decode tasks costs no actor: its batches are sent again; and
    # until the node is marked dead, an actor started anew may be placed there and lost again)
    assert re.fullmatch(
        rf"Ray: (lost 1 node \({node}\), )?(lost \d encode workers? \(\d started anew\), )?"
        r"sent \d+ batch(es)? again; "
        r"finished on (2 live nodes \(2 CPUs\)|3 live nodes \(4 CPUs\))",
        survived,
    ), survived
    assert "lost 1 node" in survived or "encode worker" in survived, survived
    assert len(lines) == 3 and lines[2].startswith("Library "), out
    assert [line for line in err.splitlines() if not line.startswith("Note: cbir-tiny knows")] == [], err
    return survived


def test_ingest_rides_through_a_dead_node_and_the_next_run_does_not_hang(cluster, tmp_path):
    photos = tmp_path / "photos"
    make_gallery(photos, 400, seed=7)
    library = tmp_path / "lib"
    run = _ingest(photos, library, cluster, tmp_path)
    committed = wait_for_commits(run, library / "library.db", 16, timeout=120)
    cluster.kill_node(2)
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    assert committed < 400
    print(out)  # (pytest -s shows what the user saw)
    lines = out.strip().splitlines()
    assert lines[0].endswith("s)") and "400 new" in lines[0], out
    assert_survived(out, err, node=r"[0-9.]+")

    local = run_cbir("ingest", str(photos), "--library", str(tmp_path / "local"), "--model", "cbir-tiny", "-q")
    assert local.returncode == 0, local.stderr
    assert_same(tmp_path / "local", library)

    # right after the loss: planned from the live node (1 encoder, 1 CPU to decode), done
    make_gallery(photos / "more", 40, seed=8)
    again = _ingest(photos, library, cluster, tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "40 new" in out and "Ray:" not in out, out


def test_a_layout_that_cannot_make_progress_is_refused_at_once(ray_local, tmp_path):
    """--ray-workers 2 on a 2-CPU cluster used to hang: two encoders held both CPUs and no
    decode task could ever run."""
    make_gallery(tmp_path / "photos", 4, seed=1)
    settings = resolve_settings(library=tmp_path / "lib", model="cbir-tiny", env={})
    with Library.open(settings, create=True) as lib:
        started = time.monotonic()
        with pytest.raises(UsageError) as refused:
            lib.ingest(tmp_path / "photos", engine="ray", ray_workers=2)
        assert time.monotonic() - started < 30
        assert lib.catalog.count_images() == 0
    assert str(refused.value) == (
        "--ray-workers 2 cannot run on 1 live node (2 CPUs): each encode worker holds a CPU and "
        "decoding needs one CPU more; use --ray-workers 1 or fewer"
    )


def test_the_watchdog_stops_a_run_that_cannot_progress(ray_local, tmp_path, monkeypatch):
    """A run whose work can never be placed (here: decode tasks asking for a resource no node
    has) stops after the stall timeout with one line that says what waits, keeping nothing
    half-done."""
    from cbir.distributed import ingest as ray_ingest

    monkeypatch.setenv("CBIR_RAY_STALL_TIMEOUT", "3")  # (600 s by default)
    real_remote = ray_local.remote

    def unplaceable(**options):
        if options.get("max_retries") == ray_ingest.RETRIES:  # the decode task
            options["resources"] = {"no-such-node": 1}
        return real_remote(**options)

    monkeypatch.setattr(ray_local, "remote", unplaceable)
    make_gallery(tmp_path / "photos", 4, seed=1)
    settings = resolve_settings(library=tmp_path / "lib", model="cbir-tiny", env={})
    with Library.open(settings, create=True) as lib:
        with pytest.raises(Exception) as stalled:
            lib.ingest(tmp_path / "photos", engine="ray")
        assert lib.catalog.count_images() == 0
    message = str(stalled.value)
    assert message.startswith("the Ray ingest made no progress for 3 s: 1 batch of files waits"), message
    assert "1 live node (2 CPUs)" in message and "run the same command again" in message
    assert os.linesep not in message

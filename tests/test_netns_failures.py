"""Machines dying under cbir, on hosts simulated with network namespaces (cbir.bench.netns): a Ray
head without CPUs and two worker hosts of 2 CPUs each, a PostgreSQL host, each with an address
of its own. What users meet when a machine goes down:

- a worker host's raylet killed during `cbir ingest --engine ray`: the run finishes on the host
  that is left, says in one line what it survived, and stores what the local engine stores;
- a worker host killed and started again under `cbir serve --engine ray`, during a soak of 200
  searches and then while the server is idle: every answer is HTTP 200 with the same top 10,
  and once the host is back the lost shard actors are replaced and answer again;
- PostgreSQL killed on its host during `cbir ingest --db`: one line that says to run again, and
  the same command then finishes with every photo once.

The same failures on one host are tests/test_ray_node_loss.py, tests/test_ray_search.py and
tests/test_postgres.py; the harness itself is tested in tests/test_netns_cluster.py."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cbir.config import resolve_settings
from cbir.errors import CbirError
from cbir.library import Library
from cbir.synthetic import make_gallery
from tests.conftest import cbir_env, run_cbir, tiny_ingest_command
from tests.netns_hosts import network_or_skip
from tests.test_ray_ingest import assert_same
from tests.test_ray_node_loss import assert_survived, wait_for_commits

# three Ray nodes and a PostgreSQL server on simulated hosts: the long suite (.ci/run)
pytestmark = pytest.mark.slow

PHOTOS = 400  # enough that an ingest in batches of 8 is still running when a node dies
PG_PHOTOS = 300  # enough that PostgreSQL dies mid-ingest, batches of 4 as in the kill tests
SERVE_PORT = 8000  # inside the head's namespace, where nothing else listens


@pytest.fixture(scope="module")
def net():
    with network_or_skip() as network:
        yield network


@pytest.fixture(scope="module")
def cluster(net, tmp_path_factory, onnx_cache):
    """Worker hosts of 2 CPUs: the one left after a loss still holds an encoder and a decode."""
    from cbir.bench.netns_ray import cluster

    env = {"CBIR_CACHE_DIR": str(onnx_cache)}
    with cluster(net, tmp_path_factory.mktemp("netns-ray"), cpus_per_worker=2, env=env) as started:
        yield started


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    photos = tmp_path_factory.mktemp("netns-gallery") / "photos"
    make_gallery(photos, PHOTOS, seed=7)
    return photos


@pytest.fixture(scope="module")
def local_library(gallery, tmp_path_factory, onnx_cache) -> Path:
    """The gallery ingested by the local engine in this process: what every engine must store."""
    library = tmp_path_factory.mktemp("netns-local") / "lib"
    settings = resolve_settings(library=library, model="cbir-tiny", device="cpu", env={})
    with pytest.MonkeyPatch.context() as patch:  # the session's ONNX cache (isolated_env is per test)
        patch.setenv("CBIR_CACHE_DIR", str(onnx_cache))
        with Library.open(settings, create=True) as lib:
            lib.ingest(gallery)
    return library


def _rejoined(cluster, net) -> None:
    """Every host's node alive (a test before may have left w2 dead)."""
    everyone = {net.ip(h) for h in ("head", "w1", "w2")}
    try:
        cluster.nodes(alive=everyone, timeout=10)
    except CbirError:
        cluster.restart("w2")
        cluster.nodes(alive=everyone)


# -- 1. a worker host's raylet killed during a Ray ingest -------------------------------------
def test_ingest_rides_through_a_worker_hosts_raylet_killed(cluster, net, gallery, local_library, tmp_path):
    _rejoined(cluster, net)
    library = tmp_path / "lib"
    args = [sys.executable, "-m", "cbir", "ingest", str(gallery), "--library", str(library), "--model", "cbir-tiny"]
    args += ["--engine", "ray", "--address", cluster.address]
    env = {**cluster.env, "CBIR_BATCH_SIZE": "8"}
    started = time.monotonic()
    run = net.popen("head", args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        committed = wait_for_commits(run, library / "library.db", 16, timeout=300)
        assert cluster.kill_raylet("w2") == 1
        killed = time.monotonic()
        out, err = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    ended = time.monotonic()
    print(
        f"\nray ingest on the hosts: w2's raylet killed at {committed} of {PHOTOS} images, "
        f"{killed - started:.1f} s in; finished {ended - killed:.1f} s later ({ended - started:.1f} s in all)"
    )
    assert run.returncode == 0, err
    assert 16 <= committed < PHOTOS
    lines = out.strip().splitlines()
    assert lines[0].endswith("s)") and f"{PHOTOS} new" in lines[0], out
    print(assert_survived(out, err, node=re.escape(net.ip("w2"))))

    assert_same(local_library, library)
    with sqlite3.connect(library / "library.db") as c:
        assert c.execute("select count(*), count(distinct path) from images").fetchone() == (PHOTOS, PHOTOS)

    # the host's node started again joins the cluster as a new node
    head, w1 = net.ip("head"), net.ip("w1")
    t = time.monotonic()
    cluster.restart("w2")
    cluster.nodes(alive={head, w1, net.ip("w2")})
    print(f"w2 rejoined {time.monotonic() - t:.1f} s after its restart began")


# -- 2. serve answers while a worker host dies and rejoins -------------------------------------
# Run on the head host: reads commands from stdin, one a line, and answers each with one JSON
# line: "ready" (once the server answers /api/status), "status", or "search QUERY".
_CLIENT = """
import json, sys, time, urllib.error, urllib.parse, urllib.request
base = sys.argv[1]

def get(path, timeout=120):
    started = time.monotonic()
    try:
        with urllib.request.urlopen(base + path, timeout=timeout) as answer:
            status, body, retry = answer.status, answer.read(), None
    except urllib.error.HTTPError as e:
        status, body, retry = e.code, e.read(), e.headers.get("Retry-After")
    except OSError as e:
        status, body, retry = None, str(e).encode(), None
    return {"status": status, "seconds": time.monotonic() - started, "retry_after": retry,
            "body": body.decode(errors="replace")}

for line in sys.stdin:
    command, _, query = line.rstrip("\\n").partition(" ")
    if command == "ready":
        deadline = time.monotonic() + 300
        while (answer := get("/api/status", timeout=30))["status"] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
    elif command == "status":
        answer = get("/api/status")
    else:
        answer = get("/api/search?" + urllib.parse.urlencode({"q": query, "k": 10}))
        if answer["status"] == 200:
            answer["ids"] = [hit["id"] for hit in json.loads(answer.pop("body"))["hits"]]
    print(json.dumps(answer), flush=True)
"""

QUERIES = ("a red circle", "a blue square", "green stripes", "a yellow triangle", "dark night sky")
SEARCHES, KILL_AFTER, RESTART_AFTER = 200, 30, 120


class _Client:
    """Searches from the head host, where the server listens on 127.0.0.1 (no other host reaches
    it there, so it needs no token)."""

    def __init__(self, net, env):
        command = [sys.executable, "-c", _CLIENT, f"http://127.0.0.1:{SERVE_PORT}"]
        self.process = net.popen("head", command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.expected: dict[str, list[int]] = {}  # each query's top 10 before any host died

    def ask(self, command: str) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the client on the head host ended"
        return json.loads(line)

    def search(self, query: str) -> dict:
        return {**self.ask(f"search {query}"), "query": query, "at": time.monotonic()}

    def engine(self) -> dict:
        answer = self.ask("status")
        assert answer["status"] == 200, answer
        return json.loads(answer["body"])["engine"]

    def searching(self, seconds: float = 0, until: Callable[[], bool] = lambda: True) -> int:
        """Rounds of the queries, each answer checked at once, for ``seconds`` and then until
        ``until()`` is true (at most 120 s more); returns how many searches."""
        done, end = 0, time.monotonic() + seconds
        while time.monotonic() < end or not until():
            assert time.monotonic() < end + 120, "gave up waiting"
            for query in QUERIES:
                answer = self.search(query)
                assert answer["status"] == 200 and answer["ids"] == self.expected[query], answer
                done += 1
            time.sleep(0.5)
        return done

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def test_serve_answers_while_a_worker_host_dies_and_rejoins(cluster, net, local_library, tmp_path):
    from cbir.distributed.search import RECOVER_EVERY, RayOptions

    _rejoined(cluster, net)
    library = tmp_path / "lib"
    shutil.copytree(local_library, library)
    sharded = run_cbir("index", "shard", "--shards", "4", "--by", "hash", "--library", str(library))
    assert sharded.returncode == 0, sharded.stderr
    serve = [sys.executable, "-m", "cbir", "serve", "--library", str(library), "--device", "cpu"]
    serve += ["--port", str(SERVE_PORT), "--engine", "ray", "--address", cluster.address]
    with (tmp_path / "serve.log").open("w") as log:
        server = net.popen("head", serve, env=cluster.env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    client = _Client(net, cluster.env)
    head, w1, w2 = (net.ip(h) for h in ("head", "w1", "w2"))

    def answering() -> bool:
        """Every shard actor on a live node and answering (none down: answered for here)."""
        actors = client.engine()["actors"]
        return len(actors) == 4 and all(a["node"] and not a["down"] for a in actors)

    def recovered() -> int:
        """Searches until every actor answers again, and then a few more: a replacement that
        was given no shards would be down again after them."""
        done = client.searching(until=answering)
        done += client.searching(2)
        assert answering(), client.engine()
        return done

    # long enough for a round of replacing lost actors to fail (no CPU for them) and start again
    retried = RECOVER_EVERY + RayOptions().deadline
    try:
        ready = client.ask("ready")
        assert ready["status"] == 200, (tmp_path / "serve.log").read_text()[-3000:]
        before = client.engine()
        # one actor a shard, as many as the live CPUs hold: 4 over w1 and w2
        assert before["shards"] == 4 and len(before["actors"]) == 4, before
        assert {a["node"] for a in before["actors"]} == {w1, w2}, before

        # the soak: searches in sequence; w2's host killed after 30, started again after 120
        answers = []
        killed = restarted = 0.0
        restarting: list[BaseException | None] = []
        rejoin = threading.Thread(target=lambda: restarting.append(_restart(cluster)), daemon=True)
        for i in range(SEARCHES):
            if i == KILL_AFTER:
                assert cluster.kill_host("w2") > 0
                killed = time.monotonic()
            if i == RESTART_AFTER:
                restarted = time.monotonic()
                rejoin.start()  # searches go on while the host starts again and rejoins
            answer = client.search(QUERIES[i % len(QUERIES)])
            answers.append(answer)
            if i < KILL_AFTER and answer["status"] == 200:
                client.expected.setdefault(answer["query"], answer["ids"])
            time.sleep(0.1)
        rejoin.join(timeout=300)
        assert restarting == [None], f"w2 did not start again: {restarting}"
        rejoined = time.monotonic()

        latencies = [a["seconds"] for a in answers]
        around = [f"{a['seconds']:.2f}" for a in answers[KILL_AFTER : KILL_AFTER + 6]]
        slow = [f"{a['at'] - killed:.1f}" for a in answers[KILL_AFTER:] if a["seconds"] > 1.0]
        print(
            f"\nserve on Ray, {SEARCHES} searches: max {max(latencies):.2f} s, median "
            f"{statistics.median(latencies) * 1000:.0f} ms; the 6 after w2's host was killed took "
            f"{', '.join(around)} s; {len(slow)} took over 1 s (ending {', '.join(slow)} s after the kill); "
            f"w2 restarted {restarted - killed:.1f} s after the kill and rejoined {rejoined - restarted:.1f} s later"
        )
        # every answer a 200 with the top 10 it had before the kill: no 500, no 503 while the head lives
        bad = [(a["status"], a.get("body", "")[:300]) for a in answers if a["status"] != 200]
        assert bad == [], bad
        assert set(client.expected) == set(QUERIES) and all(len(ids) == 10 for ids in client.expected.values())
        changed = [n for n, a in enumerate(answers) if a["ids"] != client.expected[a["query"]]]
        assert changed == [], changed

        # the lost actors are replaced on the live nodes (w2 is back) while searches go on
        more = recovered()
        print(
            f"every shard actor answering again {time.monotonic() - rejoined:.1f} s after the rejoin, {more} searches later"
        )

        # w2 lost while the server is idle: the head knows it dead before a search reaches its
        # actors, so their replacements wait for CPUs while the driver answers for them
        assert cluster.kill_host("w2") > 0
        cluster.nodes(alive={head, w1})
        more = client.searching(retried)
        assert not answering()  # w2's actors are down, their replacements wait for a CPU
        cluster.restart("w2")
        rejoined = time.monotonic()
        more += recovered()
        print(
            f"lost while idle: every shard actor answering again {time.monotonic() - rejoined:.1f} s after the "
            f"rejoin; {more} searches since the loss"
        )
    finally:
        client.close()
        server.kill()
        server.wait()


def _restart(cluster) -> BaseException | None:
    try:
        cluster.restart("w2")
        return None
    except BaseException as e:  # noqa: BLE001 - reported by the test's thread
        return e


# -- 3. PostgreSQL killed on its host during an ingest -----------------------------------------
@pytest.fixture(scope="module")
def pg(net):
    from tests.netns_hosts import server_or_skip

    with server_or_skip(net) as started:
        yield started


def _images(url: str) -> tuple[int, int]:
    """(rows, distinct paths) of the catalogue's images; zeros while it cannot be read."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return tuple(c.execute(text("select count(*), count(distinct path) from images")).one())
    except Exception:
        return 0, 0
    finally:
        engine.dispose()


def test_postgresql_killed_on_its_host_mid_ingest_then_the_same_command_finishes(net, pg, tmp_path):
    photos = tmp_path / "photos"
    make_gallery(photos, PG_PHOTOS, seed=11)
    url = pg.database("killed")
    admin = pg.admin_url.replace("/postgres?", "/killed?")  # the same database, from this process
    command = tiny_ingest_command(photos, tmp_path / "lib", "--db", url)  # the local engine
    env = {**cbir_env(), "HOME": str(tmp_path)}
    ingest = net.popen("head", command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while _images(admin)[0] < 8 and ingest.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        committed = _images(admin)[0]
        pg.kill_postmaster()
        killed = time.monotonic()
        out, err = ingest.communicate(timeout=120)
    finally:
        if ingest.poll() is None:
            ingest.kill()
            ingest.communicate()
    print(
        f"\nPostgreSQL killed at {committed} of {PG_PHOTOS} images; the ingest stopped {time.monotonic() - killed:.1f} s later"
    )
    assert 8 <= committed < PG_PHOTOS, "the kill did not land mid-ingest"
    assert ingest.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "pg_advisory" not in err, err
    assert lines[0].startswith("Error: lost the connection to the catalogue "), err
    assert "everything committed so far is kept: run the same command again" in lines[0], err
    assert out == ""
    pg.restart()
    again = net.run("head", command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _images(admin) == (PG_PHOTOS, PG_PHOTOS)  # every photo once

"""`cbir serve` as a process: start-up, refusals, Ctrl-C, and searching while an ingest runs."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from cbir.bench.serve import running_server
from cbir.synthetic import make_gallery
from tests.conftest import run_cbir

TOKEN = "a-long-enough-secret-token"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    base = tmp_path_factory.mktemp("served")
    make_gallery(base / "photos" / "first", 16, seed=11)
    result = run_cbir(
        "ingest", str(base / "photos"), "--library", str(base / "lib"), "--model", "cbir-tiny", "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr
    return base


def test_serve_answers_and_stops_on_ctrl_c(library):
    with running_server(library / "lib", env={"CBIR_DEVICE": "cpu"}) as (url, process):
        page = httpx.get(url)
        assert page.status_code == 200 and "<html" in page.text.lower()
        hits = httpx.get(url + "api/search", params={"q": "a red circle", "k": 3}).json()["hits"]
        assert len(hits) == 3 and httpx.get(url.rstrip("/") + hits[0]["thumbnail"]).status_code == 200
        assert httpx.get(url + "openapi.json").status_code == 200
        process.send_signal(2)  # SIGINT, as Ctrl-C
        assert process.wait(30) == 0


def test_refuses_to_expose_a_library_without_a_token(library):
    started = time.monotonic()
    result = run_cbir("serve", "--library", str(library / "lib"), "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2 and "--token" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    weak = run_cbir("serve", "--library", str(library / "lib"), "--host", "0.0.0.0", "--token", "1234")
    assert weak.returncode == 2 and "at least 16" in weak.stderr
    assert time.monotonic() - started < 60  # refused before any model or index is loaded


def test_a_busy_port_is_one_line(library):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cbir("serve", "--library", str(library / "lib"), "--port", str(port))
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    missing = run_cbir("serve", "--library", str(library / "nothing-here"), "--port", "0")
    assert missing.returncode != 0 and "no cbir library" in missing.stderr and "Traceback" not in missing.stderr


def test_token_server_on_all_addresses(library):
    with running_server(library / "lib", "--host", "0.0.0.0", env={"CBIR_TOKEN": TOKEN, "CBIR_DEVICE": "cpu"}) as (
        url,
        _,
    ):
        assert httpx.get(url + "api/status").status_code == 401
        assert httpx.get(url + "api/status", headers={"Authorization": "Bearer " + "x" * 26}).status_code == 401
        assert httpx.get(url + "api/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        with httpx.Client() as browser:  # the printed URL with the token, as a browser opens it
            assert browser.get(url + f"?token={TOKEN}", follow_redirects=True).status_code == 200
            assert browser.get(url + "api/status").status_code == 200


@pytest.mark.slow  # a concurrency loop
def test_searching_goes_on_while_an_ingest_runs(library, tmp_path):
    """Clients search in a loop while another process ingests more photos: every request
    succeeds, and the new photos are found once the ingest has saved its index."""
    photos = library / "photos"
    make_gallery(photos / "second", 24, seed=12)
    failures, answered = [], []
    stop = threading.Event()

    def client(url):
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                response = http.get(url + "api/search", params={"q": "a blue square", "k": 100})
                if response.status_code != 200:
                    failures.append(response.text)
                answered.append(len(response.json().get("hits", [])))

    with running_server(library / "lib", env={"CBIR_DEVICE": "cpu"}) as (url, _):
        threads = [threading.Thread(target=client, args=(url,)) for _ in range(3)]
        for t in threads:
            t.start()
        ingest = run_cbir("ingest", str(photos), "--library", str(library / "lib"), "--batch-size", "4", "-q")
        time.sleep(1.0)  # a few more searches after the ingest saved its index
        stop.set()
        for t in threads:
            t.join(60)
        after = httpx.get(url + "api/search", params={"q": "a blue square", "k": 100}).json()
    assert ingest.returncode == 0, ingest.stderr
    assert not failures and len(answered) > 10
    assert answered[0] == 16 and after["count"] == 40  # every image, old and new

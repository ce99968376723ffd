"""Load on `cbir serve`: N concurrent clients for M seconds against a real server on 127.0.0.1,
reporting requests/s, p50/p99 latency and errors, for text searches, "similar" searches and
thumbnails. Bounded in time and in requests; it never talks to anything but loopback.

The clients run in this process and share its cores with the server, so on a small machine
the figures are a floor: what matters is the ratio across client counts (does one model shared
by many request threads keep up?) and that errors stay at zero.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from urllib.parse import urlencode, urlsplit

MAX_REQUESTS = 20_000  # per measurement, whatever the duration
QUERIES = [
    f"a {c} {s} on a {b} background"
    for c in ("red", "blue", "green", "yellow")
    for s in ("circle", "square", "star", "triangle")
    for b in ("gray", "white", "cyan", "pink")
]
_URL_LINE = re.compile(r"open (http://\S+?/)")


@contextmanager
def running_server(library: Path, *args: str, env: dict | None = None, timeout: float = 300):
    """Yield (base URL, process) of `cbir serve --library LIBRARY --port 0 ARGS` on 127.0.0.1
    once it answers; stopped with SIGINT (Ctrl-C) afterwards."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CBIR_")}
    full_env.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "cbir", "serve", "--library", str(library), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
    )
    try:
        url = _printed_url(process, timeout)
        threading.Thread(target=process.stdout.read, daemon=True).start()  # a full pipe would stall it
        _wait_until_answering(url + "api/status", process, timeout, (env or {}).get("CBIR_TOKEN"))
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _printed_url(process, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"cbir serve exited ({process.wait()}): {''.join(seen).strip()}")
        seen.append(line)
        if match := _URL_LINE.search(line):
            return match.group(1)
    raise TimeoutError(f"cbir serve printed no URL in {timeout:.0f} s")


def _wait_until_answering(url: str, process, timeout: float, token: str | None) -> None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"cbir serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


class _Client:
    """One keep-alive HTTP connection to the server (the standard library's, so the bench needs
    nothing a plain install lacks); it reconnects after a failed request."""

    def __init__(self, url: str, timeout: float = 60):
        parts = urlsplit(url)
        self.host, self.port, self.base, self.timeout = parts.hostname, parts.port, parts.path, timeout
        self.connection = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def get(self, path: str, params: dict | None = None) -> tuple[int, bytes]:
        """(status, body) of GET base + path?params."""
        if self.connection is None:
            self.connection = HTTPConnection(self.host, self.port, timeout=self.timeout)
        target = self.base + path + (f"?{urlencode(params)}" if params else "")
        try:
            self.connection.request("GET", target)
            response = self.connection.getresponse()
            return response.status, response.read()
        except (OSError, HTTPException):
            self.close()
            raise

    def get_ok(self, path: str, params: dict | None = None) -> bytes:
        status, body = self.get(path, params)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:100].decode('utf-8', 'replace')}")
        return body


def serve_benchmark(
    model: str, device: str, work: Path, images: int, clients: tuple[int, ...], seconds: float, say
) -> dict:
    """Build a library of ``images`` generated photos with ``model``, serve it, and load it."""
    from cbir.config import resolve_settings
    from cbir.library import Library
    from cbir.synthetic import make_gallery

    say(f"serve: building a library of {images} photos")
    make_gallery(work / "serve-photos", images, seed=3)
    settings = resolve_settings(library=work / "serve-lib", model=model, device=device, env={})
    with Library.open(settings, create=True) as lib:
        lib.ingest(work / "serve-photos")
        ids = sorted(lib.catalog.images(range(1, images + 1)))
    rows = []
    with running_server(work / "serve-lib", env={"CBIR_DEVICE": device}) as (url, _):
        with _Client(url) as warm:  # model and first thumbnails off the clock
            warm.get_ok("api/search", {"q": QUERIES[0]})
            for image_id in ids[:64]:
                warm.get_ok(f"api/images/{image_id}/thumbnail")
        workloads = {
            "text search": lambda n: ("api/search", {"q": QUERIES[n % len(QUERIES)], "k": 20}),
            "similar": lambda n: (f"api/images/{ids[n % len(ids)]}/similar", {"k": 20}),
            "thumbnail": lambda n: (f"api/images/{ids[n % 64]}/thumbnail", {}),
        }
        for name, request in workloads.items():
            for count in clients:
                say(f"serve: {name}, {count} client{'s' if count > 1 else ''} for {seconds:g} s")
                before = _batches(url)
                row = _load(url, request, count, seconds)
                after = _batches(url)
                calls = sum(after.values()) - sum(before.values())
                texts = sum(int(k) * v for k, v in after.items()) - sum(int(k) * v for k, v in before.items())
                rows.append(
                    {
                        "workload": name,
                        "clients": count,
                        **row,
                        "texts_per_model_call": texts / calls if calls else None,
                    }
                )
    return {"images": images, "model": model, "device": device, "seconds_each": seconds, "rows": rows}


def _batches(url: str) -> dict:
    import json

    with _Client(url) as http:
        return json.loads(http.get_ok("api/status"))["server"]["text_batches"]


def _load(url: str, request, clients: int, seconds: float) -> dict:
    """``clients`` threads, each with its own keep-alive connection, sending ``request(n)`` in
    a loop until ``seconds`` pass or MAX_REQUESTS are sent in all."""
    import numpy as np

    latencies: list[float] = []
    errors: list[str] = []
    sent = iter(range(MAX_REQUESTS))
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client():
        with _Client(url) as http:
            while time.perf_counter() < stop_at:
                with lock:
                    n = next(sent, None)
                if n is None:
                    return
                path, params = request(n)
                start = time.perf_counter()
                try:
                    status, body = http.get(path, params)
                    ok = status == 200
                    problem = f"{status} {body[:100].decode('utf-8', 'replace')}"
                except (OSError, HTTPException) as e:
                    ok, problem = False, f"{type(e).__name__}: {e}"
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed) if ok else errors.append(problem)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    done = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "qps": len(latencies) / wall,
        "p50_ms": 1000 * float(np.median(done)),
        "p99_ms": 1000 * float(np.percentile(done, 99)),
    }


def serve_table(report: dict) -> str:
    from cbir.bench.search import markdown_table

    base = {}
    cells = []
    for r in report["rows"]:
        base.setdefault(r["workload"], r["qps"])
        batch = "-" if r["texts_per_model_call"] is None else f"{r['texts_per_model_call']:.1f}"
        cells.append(
            [
                r["workload"],
                str(r["clients"]),
                str(r["requests"]),
                f"{r['qps']:.0f}",
                f"{r['qps'] / base[r['workload']]:.2f}x",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                str(r["errors"]),
                batch,
            ]
        )
    columns = [
        ("workload", "<"),
        ("clients", ">"),
        ("requests", ">"),
        ("req/s", ">"),
        ("vs 1 client", ">"),
        ("p50 ms", ">"),
        ("p99 ms", ">"),
        ("errors", ">"),
        ("texts per model call", ">"),
    ]
    return markdown_table(columns, cells)

"""`cbir serve` against web pages and memory pumps: cross-origin requests are refused, and the
requests that decode images share a small bounded pool (503 + Retry-After beyond it)."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cbir.config import resolve_settings
from cbir.errors import UsageError
from cbir.library import Library
from cbir.serve import create_app, open_for_serving
from cbir.serve.gate import DecodeGate, ServerBusy
from cbir.synthetic import make_gallery
from tests.conftest import run_cbir

TOKEN = "correct-horse-battery-staple"
OWN = "http://127.0.0.1:8765"
EVIL = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}
WAIT = 60  # seconds a test waits for another thread before giving up (a hang, not a timing check)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    base = tmp_path_factory.mktemp("hardening")
    make_gallery(base / "photos", 6, seed=3)
    writer = Library.open(resolve_settings(library=base / "lib", model="cbir-tiny", device="cpu", env={}), create=True)
    writer.ingest(base / "photos")
    writer.close()
    library = open_for_serving(resolve_settings(library=base / "lib", device="cpu", env={}))
    yield library
    library.close()


def _client(lib, **options) -> TestClient:
    return TestClient(create_app(lib, **options), base_url=OWN)


def _upload(client, headers=None, **options):
    return client.post(
        "/api/search/image",
        params={"k": 2},
        files={"file": ("q.jpg", _jpeg(), "image/jpeg")},
        headers=headers or {},
        **options,
    )


def _refused(response) -> bool:
    """403 in the server's one JSON error shape, on one line."""
    if response.status_code != 403:
        return False
    body = response.json()
    return body["type"] == "Forbidden" and "cross-origin" in body["error"] and "\n" not in body["error"]


# -- cross-origin requests -----------------------------------------------------------------------------
def test_a_page_of_another_origin_cannot_use_the_api(lib):
    client = _client(lib)
    thumbnails = len(list(lib.path.rglob("*.webp")))
    assert _refused(_upload(client, {"Origin": "http://evil.example"}))  # an old browser: Origin only
    assert _refused(_upload(client, {"Sec-Fetch-Site": "cross-site"}))
    assert _refused(_upload(client, EVIL))
    # another app on this machine: same site (ports do not count), another origin
    other_port = {"Host": "localhost:8765", "Origin": "http://localhost:8000", "Sec-Fetch-Site": "same-site"}
    assert _refused(_upload(client, other_port))
    assert _refused(_upload(client, {"Origin": "http://localhost:8000"}))
    assert _refused(_upload(client, {"Origin": "null"}))  # a sandboxed frame or a local file
    image = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    assert _refused(client.get("/api/images/1/thumbnail", headers=image))  # <img src> on that page
    assert _refused(client.get("/api/search", params={"q": "a red circle"}, headers=EVIL))
    navigation = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}
    assert _refused(client.get("/api/images/1/original", headers=navigation))
    assert len(list(lib.path.rglob("*.webp"))) == thumbnails  # nothing was decoded for them


def test_its_own_page_programs_and_links_are_answered(lib):
    client = _client(lib)
    assert _upload(client).status_code == 200  # curl, scripts: no Origin, no Sec-Fetch-*
    same = {"Origin": OWN, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
    assert _upload(client, same).status_code == 200
    assert _upload(client, {"Host": "localhost:8765", "Origin": "http://localhost:8765"}).status_code == 200
    assert _upload(client, {"Host": "[::1]:8765", "Origin": "http://[::1]:8765"}).status_code == 200
    default_port = TestClient(create_app(lib), base_url="http://127.0.0.1")
    assert _upload(default_port, {"Origin": "http://127.0.0.1"}).status_code == 200
    typed = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}  # a bookmark, an address typed
    assert client.get("/api/status", headers=typed).status_code == 200
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    page = client.get("/", headers=link)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_a_token_presented_by_the_caller_allows_another_origin(lib):
    client = TestClient(create_app(lib, token=TOKEN, host="0.0.0.0"), base_url="http://192.0.2.10:8000")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert _upload(client, {**EVIL, **bearer}).status_code == 200
    assert client.get(f"/api/status?token={TOKEN}", headers=EVIL).status_code == 200
    assert _upload(client, EVIL).status_code == 401  # no token at all: as before
    assert client.get(f"/?token={TOKEN}", follow_redirects=False).status_code == 303  # the cookie is set
    assert client.cookies.get("cbir_token")
    assert _upload(client).status_code == 200  # the page's own requests carry the cookie
    assert _refused(_upload(client, EVIL))  # ...and so would another site's: it does not count
    assert _refused(_upload(client, {"Origin": "http://192.0.2.10:9000", "Sec-Fetch-Site": "same-site"}))
    wrong = {**EVIL, "Authorization": "Bearer wrong-token-wrong-token"}
    assert _upload(client, wrong).status_code == 401


# -- the decode pool -----------------------------------------------------------------------------------
def test_a_full_decode_pool_answers_503_with_retry_after(lib):
    guard = create_app(lib, decode_slots=1, decode_queue=0)
    client = TestClient(guard, base_url=OWN)
    gate = guard.app.state.decode_gate
    assert client.get("/api/images/2/thumbnail", params={"size": 160}).status_code == 200  # now cached
    with gate.slot():  # every slot taken, no queue
        busy = _upload(client)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["type"] == "ServerBusy" and "\n" not in busy.json()["error"]
        thumb = client.get("/api/images/2/thumbnail", params={"size": 1280})  # made from the original
        assert thumb.status_code == 503 and thumb.headers["retry-after"] == "1"
        cached = client.get("/api/images/2/thumbnail", params={"size": 160})  # no decode needed
        assert cached.status_code == 200
        assert client.get("/api/search", params={"q": "a red circle"}).status_code == 200
    assert _upload(client).status_code == 200
    assert client.get("/api/images/2/thumbnail", params={"size": 1280}).status_code == 200
    status = client.get("/api/status").json()["server"]
    assert status["decode_slots"] == 1 and status["decode_queue"] == 0


def test_a_thumbnail_being_made_holds_its_slot(lib, monkeypatch):
    """A request decoding holds the slot until it is done: an upload meanwhile gets 503."""
    import cbir.ingest.decode as decode

    inside, release = threading.Event(), threading.Event()
    real = decode.display_image

    def slow_display(*args, **kwargs):
        inside.set()
        release.wait(WAIT)
        return real(*args, **kwargs)

    monkeypatch.setattr(decode, "display_image", slow_display)
    client = _client(lib, decode_slots=1, decode_queue=0)
    with ThreadPoolExecutor(1) as pool:
        making = pool.submit(client.get, "/api/images/3/thumbnail", params={"size": 640})
        assert inside.wait(WAIT)
        busy = _upload(client)
        release.set()
        assert making.result(WAIT).status_code == 200
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"


def test_the_gate_queues_up_to_its_limit_then_refuses():
    gate = DecodeGate(slots=1, queue=1)
    order = []

    def second():
        with gate.slot():
            order.append("second")

    with ThreadPoolExecutor(1) as pool:
        with gate.slot():
            waiting = pool.submit(second)
            _until(lambda: gate.admitted == 2)
            with pytest.raises(ServerBusy, match="busy"):
                with gate.slot():
                    pass
            order.append("first")
        waiting.result(WAIT)
    assert order == ["first", "second"]
    for slots, queue in ((0, 4), (2, -1)):
        with pytest.raises(UsageError):
            DecodeGate(slots, queue)


# -- crafted PNGs, eight at once, against a real server ---------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("side", [13000, 12000], ids=["refused-by-its-header", "decoded"])
def test_eight_crafted_uploads_at_once_stay_under_2_gb(tmp_path, side):
    """The issue's 329 KB PNG declaring 13000x13000 16-bit grey pixels (refused from its header:
    over the decode memory bound), and a 12000x12000 one just under that bound (288 MB decoded):
    eight at once, the server's peak resident memory stays under 2 GB, every answer is a result,
    a refusal or a 503, and it answers afterwards."""
    from cbir.bench.serve import running_server

    make_gallery(tmp_path / "photos", 4, seed=5)
    ingest = run_cbir(
        "ingest",
        str(tmp_path / "photos"),
        "--library",
        str(tmp_path / "lib"),
        "--model",
        "cbir-tiny",
        "--device",
        "cpu",
    )
    assert ingest.returncode == 0, ingest.stderr
    png = _grey16_png(side)
    assert len(png) < 400_000
    with running_server(tmp_path / "lib", env={"CBIR_DEVICE": "cpu"}) as (url, process):

        def post(_):
            with httpx.Client(timeout=600) as http:
                return http.post(url + "api/search/image", files={"file": ("crafted.png", png, "image/png")})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
        alive = httpx.get(url + "api/status", timeout=60)
        peak = _peak_rss(process.pid)
    statuses = [a.status_code for a in answers]
    assert all(s == 200 or 400 <= s < 500 or s == 503 for s in statuses), [a.text for a in answers]
    assert all(a.headers.get("retry-after") for a in answers if a.status_code == 503)
    if side == 12000:  # decoded for real, so it is the pool that bounds the memory
        assert 200 in statuses, [a.text for a in answers]
    assert alive.status_code == 200
    assert peak < 2 * 1024**3, f"peak resident memory {peak / 1024**3:.2f} GiB; answers {statuses}"


# -- helpers -------------------------------------------------------------------------------------------
def _until(condition) -> None:
    for _ in range(WAIT * 100):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("the condition never held")


def _peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM), from Linux's /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def _jpeg(side: int = 48) -> bytes:
    out = io.BytesIO()
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def _grey16_png(side: int) -> bytes:
    """A valid PNG of side x side 16-bit grey pixels, all black: a few hundred KB compressed,
    side * side * 2 bytes decoded (written row by row, never held whole here)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + 2 * side)  # filter byte, then the row's pixels
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")

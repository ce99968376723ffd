"""`cbir serve`'s HTTP API: the real app on cbir-tiny and a generated library, in process."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cbir.config import resolve_settings
from cbir.library import Library
from cbir.query.filters import Filters
from cbir.serve import create_app, open_for_serving
from cbir.serve.batcher import BatchingEncoder
from cbir.serve.files import THUMB_DIR
from cbir.synthetic import make_gallery

TOKEN = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(library folder, photos folder, opened Library, client): 24 photos in a/ and b/, dated
    2019 and 2021 through their file times, two with captions, one WebDataset tar."""
    base = tmp_path_factory.mktemp("serve")
    photos = base / "photos"
    for folder, seed, year in (("a", 5, 2019), ("b", 6, 2021)):
        for path, _ in make_gallery(photos / folder, 12, seed=seed):
            stamp = datetime(year, 6, 1).timestamp()
            os.utime(path, (stamp, stamp))
    (photos / "a" / "img_00000.txt").write_text("a lighthouse on a rocky coast at dusk")
    (photos / "b" / "img_00001.txt").write_text("birthday cake with candles")
    _write_tar(photos / "shards" / "000.tar", seed=7)
    lib = Library.open(resolve_settings(library=base / "lib", model="cbir-tiny", device="cpu", env={}), create=True)
    lib.ingest(photos)
    lib.ingest(photos / "shards" / "000.tar")
    lib.close()
    lib = open_for_serving(resolve_settings(library=base / "lib", device="cpu", env={}))
    client = TestClient(create_app(lib, upload_limit=2_000_000), base_url="http://127.0.0.1")
    yield base / "lib", photos, lib, client
    lib.close()


def _write_tar(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = make_gallery(path.parent / "members", 3, seed=seed)
    with tarfile.open(path, "w") as tar:
        for n, (picture, _) in enumerate(pictures):
            tar.add(picture, arcname=f"sample{n:03d}.jpg")
            caption = f"tar caption {n}".encode()
            info = tarfile.TarInfo(f"sample{n:03d}.txt")
            info.size = len(caption)
            tar.addfile(info, io.BytesIO(caption))
    for picture, _ in pictures:
        picture.unlink()
    (path.parent / "members").rmdir()


def ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["hits"]]


def test_text_search_matches_the_library_search(served):
    _, _, lib, client = served
    response = client.get("/api/search", params={"q": "a red circle", "k": 5, "explain": "true"})
    body = response.json()
    assert ids(response) == [h.id for h in lib.search("a red circle", k=5)]
    assert body["count"] == 5 and body["took_ms"] > 0 and body["query"] == {"text": "a red circle"}
    assert body["plan"]["strategy"] and body["plan"]["reason"] and body["plan"]["returned"] == 5
    first = body["hits"][0]
    assert first["rank"] == 1 and first["score"] >= body["hits"][-1]["score"]
    assert first["thumbnail"] == f"/api/images/{first['id']}/thumbnail"
    assert "plan" not in client.get("/api/search", params={"q": "a red circle"}).json()


@pytest.mark.parametrize(
    "params, filters",
    [
        ({"folder": "a"}, Filters(folders=("a",))),
        ({"after": "2021"}, Filters(after=datetime(2021, 1, 1))),
        ({"before": "2020", "format": "jpeg,png"}, Filters(before=datetime(2020, 1, 1), formats=("jpeg", "png"))),
        ({"where": "folder = b and width >= 10"}, Filters(where="folder = b and width >= 10")),
    ],
)
def test_filters_are_the_cli_filters(served, params, filters):
    _, photos, lib, client = served
    response = client.get("/api/search", params={"q": "a blue square", "k": 8, **params})
    assert ids(response) == [h.id for h in lib.search("a blue square", k=8, filters=filters)]
    paths = [hit["path"] for hit in response.json()["hits"]]
    if "folder" in params:
        assert paths and all(p.startswith(str(photos / "a")) for p in paths)


def test_repeated_parameters_and_paging(served):
    _, _, lib, client = served
    both = client.get(
        "/api/search", params=[("q", "a green triangle"), ("folder", "a"), ("folder", "b"), ("k", "4"), ("offset", "4")]
    )
    expected = lib.search("a green triangle", k=4, offset=4, filters=Filters(folders=("a", "b")))
    assert ids(both) == [h.id for h in expected]
    assert [h["rank"] for h in both.json()["hits"]] == [5, 6, 7, 8]


def test_text_to_text_and_keyword_mode(served):
    _, _, _, client = served
    response = client.get("/api/search", params={"q": "lighthouse", "target": "text", "mode": "keyword"})
    hits = response.json()["hits"]
    assert response.status_code == 200 and hits[0]["text"] == "a lighthouse on a rocky coast at dusk"
    assert hits[0]["path"].endswith("a/img_00000.jpg")


def test_upload_finds_the_same_image_first(served):
    _, photos, _, client = served
    picture = photos / "b" / "img_00004.jpg"
    response = client.post(
        "/api/search/image", params={"k": 3}, files={"file": ("mine.jpg", picture.read_bytes(), "image/jpeg")}
    )
    assert response.json()["hits"][0]["path"] == str(picture)
    assert response.json()["query"] == {"image": "mine.jpg"}
    with_text = client.post(
        "/api/search/image",
        params={"q": "a red circle", "k": 3},
        files={"file": ("mine.jpg", picture.read_bytes(), "image/jpeg")},
    )
    assert with_text.status_code == 200 and with_text.json()["query"] == {"image": "mine.jpg", "text": "a red circle"}


def test_similar_by_id_is_search_like(served):
    _, photos, lib, client = served
    picture = photos / "a" / "img_00003.jpg"
    image_id = lib.catalog.image_at(picture)
    response = client.get(f"/api/images/{image_id}/similar", params={"k": 4})
    assert ids(response) == [h.id for h in lib.search(like=picture, k=4)]
    assert ids(response)[0] == image_id


def test_image_metadata_with_texts(served):
    _, photos, lib, client = served
    image_id = lib.catalog.image_at(photos / "a" / "img_00000.jpg")
    body = client.get(f"/api/images/{image_id}").json()
    assert body["id"] == image_id and body["width"] > 0 and body["taken"].startswith("2019-06-01")
    assert {"source": "sidecar", "text": "a lighthouse on a rocky coast at dusk"} in body["texts"]


def test_thumbnails_are_webp_cached_and_revalidated(served):
    library, photos, lib, client = served
    image_id = lib.catalog.image_at(photos / "a" / "img_00002.jpg")
    response = client.get(f"/api/images/{image_id}/thumbnail", params={"size": 100})
    assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
    thumb = Image.open(io.BytesIO(response.content))
    assert thumb.format == "WEBP" and max(thumb.size) <= 160
    assert "max-age" in response.headers["cache-control"]
    assert list((library / THUMB_DIR / "160").rglob("*.webp"))
    again = client.get(
        f"/api/images/{image_id}/thumbnail", params={"size": 160}, headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304 and not again.content


def test_original_bytes_and_tar_members(served):
    _, photos, lib, client = served
    picture = photos / "b" / "img_00005.jpg"
    response = client.get(f"/api/images/{lib.catalog.image_at(picture)}/original")
    assert response.content == picture.read_bytes() and response.headers["content-type"] == "image/jpeg"
    member = lib.catalog.image_at(photos / "shards" / "000.tar" / "sample001.jpg")
    assert member is not None
    served_member = client.get(f"/api/images/{member}/original")
    with tarfile.open(photos / "shards" / "000.tar") as tar:
        assert served_member.content == tar.extractfile("sample001.jpg").read()
    assert client.get(f"/api/images/{member}/thumbnail").headers["content-type"] == "image/webp"


def test_a_changed_file_is_served_but_not_cached(served, tmp_path):
    library, photos, lib, client = served
    picture = photos / "b" / "img_00009.jpg"
    image_id = lib.catalog.image_at(picture)
    kept = picture.read_bytes()
    try:
        Image.new("RGB", (40, 30), "purple").save(picture, "JPEG")
        response = client.get(f"/api/images/{image_id}/thumbnail", params={"size": 1280})
        assert response.status_code == 200 and response.headers["cache-control"] == "no-cache"
        assert not list((library / THUMB_DIR / "1280").rglob("*.webp"))
        picture.unlink()
        gone = client.get(f"/api/images/{image_id}/original")
        assert gone.status_code == 404 and "run cbir ingest again" in gone.json()["error"]
    finally:
        picture.write_bytes(kept)


def test_a_file_replaced_by_a_fifo_is_refused_not_waited_for(served):
    """The server reads a library file as ingest does: a FIFO put in its place would block a
    request thread for good (a plain read_bytes waits for a writer that never comes)."""
    _library, photos, lib, client = served
    picture = photos / "b" / "img_00010.jpg"
    image_id = lib.catalog.image_at(picture)
    kept = picture.read_bytes()
    try:
        picture.unlink()
        os.mkfifo(picture)
        for what in ("original", "thumbnail?size=160"):
            answer = client.get(f"/api/images/{image_id}/{what}")
            assert answer.status_code == 404
            assert (
                answer.json()["error"] == f"image {image_id} cannot be shown: not a regular file: a FIFO (named pipe)"
            )
    finally:
        picture.unlink()
        picture.write_bytes(kept)


@pytest.mark.parametrize(
    "path",
    [
        "/api/images/..%2F..%2F..%2Fetc%2Fpasswd/original",
        "/api/images/1%2F..%2F..%2Fetc%2Fpasswd/original",
        "/api/images/%2Fetc%2Fpasswd/thumbnail",
        "/api/images/-1/original",
        "/api/images/99999999999999999999999/original",
        "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/../../../../etc/passwd",
        "/api/images/1e3/original",
    ],
)
def test_no_path_reaches_a_file_outside_the_library(served, path):
    _, _, _, client = served
    response = client.get(path)
    assert response.status_code in (400, 404)
    assert b"root:" not in response.content


def test_bad_uploads_are_refused_with_one_line(served):
    _, _, _, client = served
    cases = {
        "not an image": b"hello, I am text",
        "empty": b"",
        "truncated": _jpeg()[:200],
    }
    for name, data in cases.items():
        response = client.post("/api/search/image", files={"file": ("x.jpg", data, "image/jpeg")})
        assert response.status_code == 400, name
        assert response.json()["type"] == "UsageError" and "\n" not in response.json()["error"]
    bomb = client.post("/api/search/image", files={"file": ("bomb.png", _bomb_png(), "image/png")})
    assert bomb.status_code == 400 and "decompression bomb" in bomb.json()["error"]
    psd = client.post(
        "/api/search/image", files={"file": ("x.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n", "application/postscript")}
    )
    assert psd.status_code == 400 and "not an image" in psd.json()["error"]


def test_oversized_uploads_get_413(served):
    _, _, _, client = served
    big = b"\xff\xd8\xff" + b"\0" * 2_100_000
    response = client.post("/api/search/image", files={"file": ("big.jpg", big, "image/jpeg")})
    assert response.status_code == 413 and "limit" in response.json()["error"]
    app = create_app(served[2], upload_limit=1000)
    small_limit = TestClient(app, base_url="http://127.0.0.1")
    just_over = small_limit.post("/api/search/image", files={"file": ("x.jpg", _jpeg(), "image/jpeg")})
    assert len(_jpeg()) > 1000 and just_over.status_code == 413
    malformed = client.post(
        "/api/search/image", content=b"--zz\r\nnot a form", headers={"content-type": "multipart/form-data; boundary=zz"}
    )
    assert malformed.status_code == 400


@pytest.mark.parametrize(
    "params, message",
    [
        ({"q": "x", "k": 0}, "k:"),
        ({"q": "x", "k": "many"}, "k:"),
        ({"q": "x", "target": "sounds"}, "target:"),
        ({"q": "x", "after": "2019-13"}, "invalid date"),
        ({"q": "x", "where": "taken >>> 3"}, "where: unexpected"),
        ({"q": "x" * 3000}, "at most 2000"),
        ({"q": "x\x00y"}, None),
        ({}, "give a query text"),
        ({"q": "x", "after": "2021", "before": "2020"}, "is not before"),
        ({"q": "x", "mode": "keyword", "min_score": 0.5}, "keyword mode"),
    ],
)
def test_malformed_queries_are_400_with_one_line(served, params, message):
    _, _, _, client = served
    response = client.get("/api/search", params=params)
    if message is None:  # a NUL in a query text is just a character: a result or a clear error
        assert response.status_code in (200, 400)
        return
    assert response.status_code == 400, response.text
    assert message in response.json()["error"] and "\n" not in response.json()["error"]


def test_status(served):
    _, _, lib, client = served
    body = client.get("/api/status").json()
    assert body["images"] == lib.catalog.count_images() == 27
    assert body["model"] == "cbir-tiny" and body["index_current"] is True
    assert body["server"]["token_required"] is False and body["server"]["upload_limit_bytes"] == 2_000_000
    assert body["engine"] == {"engine": "local"}  # no Ray actors answer here


def test_page_and_docs(served):
    _, _, _, client = served
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    schema = client.get("/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/api/images/{image_id}/similar", "/api/status"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_a_streamed_upload_over_the_limit_is_cut_off_with_413(served):
    _, _, lib, _ = served
    client = TestClient(create_app(lib, upload_limit=100_000), base_url="http://127.0.0.1")

    def chunks():  # no Content-Length: the size shows only while reading
        boundary = b'--zz\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
        yield boundary
        for _ in range(100):
            yield b"\xff" * 10_000

    response = client.post(
        "/api/search/image", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"}
    )
    assert response.status_code == 413 and response.json()["type"] == "TooLarge"


def test_unknown_paths_and_methods_answer_in_the_same_error_shape(served):
    _, _, _, client = served
    missing = client.get("/api/nothing")
    assert missing.status_code == 404 and missing.json()["type"] == "NotFound"
    head = client.head("/api/images/1/thumbnail")
    assert head.status_code == 200 and head.headers["content-type"] == "image/webp" and not head.content
    assert client.head("/").status_code == 200


def test_read_only_api(served):
    _, _, _, client = served
    for method in ("put", "delete", "patch"):
        assert getattr(client, method)("/api/images/1").status_code == 405
    assert client.post("/api/search", params={"q": "x"}).status_code == 405


# -- who may ask -----------------------------------------------------------------------------------
def test_loopback_server_answers_only_its_own_host_names(served):
    _, _, lib, _ = served
    client = TestClient(create_app(lib), base_url="http://127.0.0.1:8000")
    assert client.get("/api/status").status_code == 200
    assert client.get("/api/status", headers={"Host": "localhost:8000"}).status_code == 200
    assert client.get("/api/status", headers={"Host": "[::1]:8000"}).status_code == 200
    rebinding = client.get("/api/status", headers={"Host": "attacker.example:8000"})
    assert rebinding.status_code == 400 and "Host" in rebinding.json()["error"]


def test_token_is_checked_on_every_request(served):
    _, _, lib, _ = served
    client = TestClient(create_app(lib, token=TOKEN, host="0.0.0.0"), base_url="http://192.0.2.10:8000")
    for path in (
        "/api/status",
        "/api/search?q=x",
        "/api/images/1/thumbnail",
        "/api/images/1/original",
        "/",
        "/docs",
        "/openapi.json",
        "/static/app.js",
    ):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401, path
        assert client.get(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401, path
    assert client.post("/api/search/image", files={"file": ("x.jpg", _jpeg(), "image/jpeg")}).status_code == 401
    assert client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # the page opened from the printed URL: the token becomes a cookie and leaves the address bar
    opened = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    assert (
        "httponly" in opened.headers["set-cookie"].lower() and "samesite=strict" in opened.headers["set-cookie"].lower()
    )
    assert client.get("/api/images/1/thumbnail").status_code == 200  # the cookie now rides along
    assert client.get(f"/?token={TOKEN}&q=red", follow_redirects=False).headers["location"] == "/?q=red"
    client.cookies.clear()
    assert client.get(f"/?token={TOKEN}x", follow_redirects=False).status_code == 401
    in_a_browser = client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert (
        in_a_browser.status_code == 401
        and "?token=" in in_a_browser.text
        and "text/html" in in_a_browser.headers["content-type"]
    )
    assert client.get("/api/images/1/thumbnail").status_code == 401


def test_binding_beyond_loopback_needs_a_strong_token():
    from cbir.errors import UsageError
    from cbir.serve import check_binding

    check_binding("127.0.0.1", None)
    check_binding("::1", None)
    check_binding("localhost", None)
    check_binding("0.0.0.0", TOKEN)
    for host in ("0.0.0.0", "::", "192.168.1.5", "my-laptop.local"):
        with pytest.raises(UsageError, match="token"):
            check_binding(host, None)
    with pytest.raises(UsageError, match="at least 16"):
        check_binding("0.0.0.0", "short")


# -- one model, many threads -------------------------------------------------------------------------
class SlowEncoder:
    """Counts model calls; each takes a while, as a real forward pass does."""

    def __init__(self):
        self.calls = []

    def encode_texts(self, texts):
        self.calls.append(len(texts))
        time.sleep(0.05)
        return np.asarray([[len(t), 1.0] for t in texts], np.float32)

    def encode_images(self, pixels):
        self.calls.append(-len(pixels))
        return np.ones((len(pixels), 2), np.float32)


def test_concurrent_text_encodes_are_batched():
    inner = SlowEncoder()
    encoder = BatchingEncoder(inner)
    texts = [f"query number {'x' * n}" for n in range(16)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda t: encoder.encode_texts([t]), texts))
    for text, result in zip(texts, results):
        assert result.shape == (1, 2) and result[0, 0] == len(text)  # each caller gets its own row
    assert sum(inner.calls) == 16 and len(inner.calls) < 16  # fewer model calls than queries
    assert encoder.encode_images(np.zeros((3, 4, 4, 3), np.uint8)).shape == (3, 2)


def test_a_failing_encode_fails_only_its_callers():
    class Broken(SlowEncoder):
        def encode_texts(self, texts):
            if any("bad" in t for t in texts):
                raise RuntimeError("model exploded")
            return super().encode_texts(texts)

    encoder = BatchingEncoder(Broken(), window=0)
    with pytest.raises(RuntimeError, match="exploded"):
        encoder.encode_texts(["bad"])
    assert encoder.encode_texts(["good"]).shape == (1, 2)  # the worker lives on


def test_concurrent_requests_all_succeed_and_agree(served):
    _, _, lib, client = served
    queries = ["a red circle", "a blue square", "a yellow star", "a green triangle"] * 4
    expected = {q: [h.id for h in lib.search(q, k=5)] for q in set(queries)}
    errors = []

    def ask(q):
        response = client.get("/api/search", params={"q": q, "k": 5})
        if response.status_code != 200:
            errors.append(response.text)
        return q, ids(response)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, queries))
    assert not errors
    assert all(found == expected[q] for q, found in answers)


def test_an_empty_library_answers_status_and_409(tmp_path):
    Library.open(resolve_settings(library=tmp_path / "empty", model="cbir-tiny", env={}), create=True).close()
    lib = open_for_serving(resolve_settings(library=tmp_path / "empty", env={}))
    client = TestClient(create_app(lib), base_url="http://127.0.0.1")
    assert client.get("/api/status").json()["images"] == 0
    response = client.get("/api/search", params={"q": "anything"})
    assert response.status_code == 409 and "cbir ingest" in response.json()["error"]
    lib.close()


def test_searches_follow_an_ingest_in_another_library_handle(tmp_path):
    """The server's library picks up what a writer saves, without being reopened, and keeps
    answering (from the last saved index) while the writer holds the library."""
    from cbir.fsutil import writer_lock

    make_gallery(tmp_path / "photos" / "first", 10, seed=1)
    settings = resolve_settings(library=tmp_path / "lib", model="cbir-tiny", device="cpu", env={})
    writer = Library.open(settings, create=True)
    writer.ingest(tmp_path / "photos")
    reader = open_for_serving(settings)
    assert len(reader.search("a red circle", k=50)) == 10
    make_gallery(tmp_path / "photos" / "second", 10, seed=2)
    writer.ingest(tmp_path / "photos")
    assert len(reader.search("a red circle", k=50)) == 20  # the new generation, picked up
    # a writer mid-ingest: rows committed, index not saved yet -> the last saved index answers
    make_gallery(tmp_path / "photos" / "third", 5, seed=3)
    from cbir.index.manager import LibraryIndexes

    saved = LibraryIndexes.save_changed
    LibraryIndexes.save_changed = lambda self, indexes: None
    try:
        writer.ingest(tmp_path / "photos")
    finally:
        LibraryIndexes.save_changed = saved
    done = threading.Event()
    with writer_lock(tmp_path / "lib"):
        assert len(reader.search("a red circle", k=50)) == 20
        done.set()
    # the writer is gone without saving: the reader rebuilds from the stored vectors
    assert done.is_set() and len(reader.search("a red circle", k=50)) == 25
    writer.rebuild_index("hnsw")  # same vectors, another kind: followed too
    assert len(reader.search("a red circle", k=50)) == 25
    assert reader.indexes.get("images").kind == "hnsw"
    writer.close()
    reader.close()


def _jpeg(side: int = 64) -> bytes:
    out = io.BytesIO()
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def _bomb_png() -> bytes:
    """A valid PNG header claiming 60000 x 60000 pixels (3.6 gigapixels)."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )

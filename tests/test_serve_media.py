"""PDF pages and video frames in `cbir serve`'s API: their thumbnails drawn from the file in place,
their originals streamed whole in byte ranges, and their hits naming the page or moment. A library
on the fake encoder holds a generated three-page PDF (red, blue, green pages) and a 7 s video of
three scenes (red, blue, green); these tests need the media extra (pypdfium2, PyAV) and are
skipped without it, failed with CBIR_REQUIRE_MEDIA=1."""

from __future__ import annotations

import io
import os
import shutil

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cbir.serve import create_app, ranges
from cbir.serve.files import THUMB_DIR
from cbir.serve.ranges import Unsatisfiable, requested_range
from tests.conftest import media_module, write_image
from tests.test_video import COLOURS, colour_of, near, scene_frames, write_video

PAGE_COLOURS = [(220, 30, 30), (30, 60, 210), (30, 170, 60)]


def write_pdf(path, colours=PAGE_COLOURS) -> None:
    """A PDF of one page per colour, each 300 x 400 points, with a white band at the top."""
    pages = []
    for colour in colours:
        page = Image.new("RGB", (300, 400), colour)
        page.paste((255, 255, 255), (0, 0, 300, 40))
        pages.append(page)
    pages[0].save(path, "PDF", save_all=True, append_images=pages[1:], resolution=72)


def page_colour(image) -> tuple[int, int, int]:
    """The colour of a page below its white band."""
    return image.convert("RGB").getpixel((image.width // 2, image.height * 2 // 3))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """(client, lib, folder, {item path: id}): a PDF, a video and a photo ingested on the fake
    encoder, the app served in process."""
    media_module("pypdfium2")
    av = media_module("av")
    from cbir.config import resolve_settings
    from cbir.library import Library
    from tests.conftest import FakeEncoder

    base = tmp_path_factory.mktemp("serve-media")
    folder = base / "media"
    folder.mkdir()
    write_pdf(folder / "report.pdf")
    write_video(av, folder / "clip.mp4", scene_frames([2, 2, 3]))
    write_image(folder / "photo.jpg")
    lib = Library.open(resolve_settings(library=base / "lib", workers=1, env={}), create=True, encoder=FakeEncoder())
    lib.ingest(folder)
    ids = {}
    for image_id, info in lib.catalog.images(range(1, 100)).items():
        ids[os.path.basename(str(info.path))] = image_id
    client = TestClient(create_app(lib), base_url="http://127.0.0.1")
    yield client, lib, folder, ids
    lib.close()


def thumbnail(client, image_id: int, size: int = 320) -> Image.Image:
    response = client.get(f"/api/images/{image_id}/thumbnail", params={"size": size})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    return Image.open(io.BytesIO(response.content))


def test_the_library_holds_three_pages_three_frames_and_a_photo(media):
    _, _, _, ids = media
    assert set(ids) == {
        "report.pdf#page=1",
        "report.pdf#page=2",
        "report.pdf#page=3",
        "clip.mp4#t=0",
        "clip.mp4#t=2",
        "clip.mp4#t=4",
        "photo.jpg",
    }


@pytest.mark.parametrize("page", [1, 2, 3])
def test_a_pages_thumbnail_is_that_page(media, page):
    client, _, _, ids = media
    image = thumbnail(client, ids[f"report.pdf#page={page}"])
    assert image.size == (240, 320)  # the page's longest side at the thumbnail size, its shape kept
    assert near(page_colour(image), PAGE_COLOURS[page - 1], 25), page_colour(image)
    assert near(image.convert("RGB").getpixel((120, 5)), (255, 255, 255), 25)  # the page's top band


@pytest.mark.parametrize("seconds", [0, 2, 4])
def test_a_frames_thumbnail_is_that_frames_scene(media, seconds):
    client, _, _, ids = media
    image = thumbnail(client, ids[f"clip.mp4#t={seconds}"], 160)
    assert image.size == (160, 90)
    assert near(colour_of(image.convert("RGB")), COLOURS[seconds // 2]), colour_of(image.convert("RGB"))


def test_item_thumbnails_are_cached_under_their_own_hash(media):
    client, lib, _, ids = media
    image_id = ids["report.pdf#page=2"]
    first = client.get(f"/api/images/{image_id}/thumbnail", params={"size": 640})
    stored = lib.catalog.image_file(image_id)
    cached = lib.path / THUMB_DIR / "640" / stored.content_hash[:2] / f"{stored.content_hash}.webp"
    assert first.headers["cache-control"] == "private, max-age=86400" and cached.read_bytes() == first.content
    again = client.get(
        f"/api/images/{image_id}/thumbnail", params={"size": 640}, headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304


@pytest.mark.parametrize("name, media_type", [("report.pdf#page=3", "application/pdf"), ("clip.mp4#t=2", "video/mp4")])
def test_an_items_original_is_its_whole_file(media, name, media_type):
    client, _, folder, ids = media
    whole = (folder / name.split("#")[0]).read_bytes()
    response = client.get(f"/api/images/{ids[name]}/original")
    assert response.status_code == 200 and response.content == whole
    assert response.headers["content-type"] == media_type
    assert response.headers["accept-ranges"] == "bytes" and response.headers["content-length"] == str(len(whole))
    head = client.head(f"/api/images/{ids[name]}/original")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(whole))


def test_a_range_request_gets_206_and_those_bytes(media, monkeypatch):
    client, _, folder, ids = media
    url = f"/api/images/{ids['clip.mp4#t=4']}/original"
    whole = (folder / "clip.mp4").read_bytes()
    size = len(whole)
    monkeypatch.setattr(ranges, "CHUNK", 1000)  # ranges across several reads
    assert size > 10 * ranges.CHUNK
    for asked, (start, end) in [
        ("bytes=100-1099", (100, 1100)),
        ("bytes=999-3500", (999, 3501)),
        ("bytes=1000-", (1000, size)),
        ("bytes=-500", (size - 500, size)),
        (f"bytes=0-{size * 2}", (0, size)),
    ]:
        response = client.get(url, headers={"Range": asked})
        assert response.status_code == 206, asked
        assert response.content == whole[start:end], asked
        assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
        assert response.headers["content-length"] == str(end - start)
    past = client.get(url, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert past.json()["type"] == "RangeNotSatisfiable"
    several = client.get(url, headers={"Range": "bytes=0-9,20-29"})  # a server may send it all instead
    assert several.status_code == 200 and several.content == whole
    etag = several.headers["etag"]
    assert client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}).status_code == 206
    stale = client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"another"'})  # changed since: all of it
    assert stale.status_code == 200 and stale.content == whole


def test_requested_range_reads_one_range():
    assert requested_range(None, 10) is None
    assert requested_range("bytes=2-4", 10) == (2, 5)
    assert requested_range("bytes=2-", 10) == (2, 10)
    assert requested_range("bytes=-3", 10) == (7, 10)
    assert requested_range("bytes=-30", 10) == (0, 10)
    assert requested_range("bytes=5-2", 10) is None
    assert requested_range("items=1-2", 10) is None
    assert requested_range("bytes=0-1,3-4", 10) is None
    for past in ("bytes=10-", "bytes=-0"):
        with pytest.raises(Unsatisfiable):
            requested_range(past, 10)


def test_originals_keep_the_pages_policy_which_lets_its_video_play_them(media):
    client, _, _, ids = media
    page_policy = client.get("/").headers["content-security-policy"]
    for name in ("report.pdf#page=1", "clip.mp4#t=0"):
        original = client.get(f"/api/images/{ids[name]}/original")
        assert original.headers["content-security-policy"] == page_policy
        assert original.headers["x-content-type-options"] == "nosniff"
    # the page's <video> plays a same-origin original: no media-src narrows default-src 'self'
    assert "default-src 'self'" in page_policy and "media-src" not in page_policy


def test_hits_and_details_name_the_file_and_the_page_or_moment(media):
    client, _, folder, ids = media
    hits = client.get("/api/search", params={"q": "anything", "k": 20, "frames": "true"}).json()["hits"]
    by_path = {os.path.basename(h["path"]): h for h in hits}
    assert set(by_path) == set(ids)
    page = by_path["report.pdf#page=3"]
    assert page["file"] == str(folder / "report.pdf") and page["page"] == 3 and "time" not in page
    assert page["original"] == f"/api/images/{page['id']}/original#page=3"
    assert page["thumbnail"] == f"/api/images/{page['id']}/thumbnail" and page["missing"] is False
    frame = by_path["clip.mp4#t=2"]
    assert frame["file"] == str(folder / "clip.mp4") and frame["time"] == 2.0 and "page" not in frame
    assert frame["duration"] == pytest.approx(7.0, abs=0.1) and frame["format"] == "mp4"
    assert frame["original"] == f"/api/images/{frame['id']}/original#t=2"
    photo = by_path["photo.jpg"]
    assert photo["original"] == f"/api/images/{photo['id']}/original" and "file" not in photo

    details = client.get(f"/api/images/{frame['id']}").json()
    assert details["time"] == 2.0 and details["file"] == frame["file"] and details["missing"] is False
    assert details["duration"] == frame["duration"] and details["original"].endswith("#t=2")
    assert client.get(f"/api/images/{page['id']}").json()["page"] == 3

    best = client.get("/api/search", params={"q": "anything", "k": 20}).json()["hits"]
    assert sum(h["path"].startswith(str(folder / "clip.mp4")) for h in best) == 1  # one frame per video

    similar = client.get(f"/api/images/{frame['id']}/similar", params={"k": 3, "frames": "true"})
    assert similar.status_code == 200 and similar.json()["hits"][0]["id"] == frame["id"]


def _replace(path, make, tmp_path):
    """Move ``path`` aside (returned), then ``make(path)``."""
    kept = tmp_path / path.name
    shutil.move(path, kept)
    make(path)
    return kept


def test_a_changed_file_is_drawn_as_it_is_now_and_not_cached(media, tmp_path):
    client, lib, folder, ids = media
    image_id = ids["report.pdf#page=1"]
    kept = _replace(folder / "report.pdf", lambda p: write_pdf(p, [(240, 200, 40)]), tmp_path)
    try:
        response = client.get(f"/api/images/{image_id}/thumbnail", params={"size": 1280})
        assert response.status_code == 200 and response.headers["cache-control"] == "no-cache"
        assert near(page_colour(Image.open(io.BytesIO(response.content))), (240, 200, 40), 25)
        assert not list((lib.path / THUMB_DIR / "1280").rglob("*.webp"))
        stored = lib.catalog.image_file(image_id)
        assert response.headers["etag"] != f'"{stored.content_hash}-1280"'  # not the ingested page's validator
        original = client.get(f"/api/images/{image_id}/original")
        assert original.headers["cache-control"] == "no-cache"
        assert original.content == (folder / "report.pdf").read_bytes()
        missing = client.get(f"/api/images/{ids['report.pdf#page=3']}/thumbnail")  # the new file has one page
        assert missing.status_code == 404 and "no page 3" in missing.json()["error"]
    finally:
        shutil.move(kept, folder / "report.pdf")
    assert client.get(f"/api/images/{image_id}/thumbnail", params={"size": 1280}).headers["cache-control"] == (
        "private, max-age=86400"
    )


@pytest.mark.parametrize("name", ["report.pdf#page=2", "clip.mp4#t=2"])
def test_a_file_replaced_by_a_fifo_or_deleted_is_refused_as_for_images(media, tmp_path, name):
    client, _, folder, ids = media
    path = folder / name.split("#")[0]
    image_id = ids[name]
    kept = _replace(path, os.mkfifo, tmp_path)
    try:
        for what in ("original", "thumbnail?size=1280"):
            answer = client.get(f"/api/images/{image_id}/{what}")
            assert answer.status_code == 404
            assert (
                answer.json()["error"] == f"image {image_id} cannot be shown: not a regular file: a FIFO (named pipe)"
            )
        path.unlink()
        for what in ("original", "thumbnail?size=1280"):
            gone = client.get(f"/api/images/{image_id}/{what}")
            assert gone.status_code == 404 and gone.json() == {
                "error": f"image {image_id}'s file is gone from {path}; run cbir ingest again",
                "type": "ImageGone",
            }
        hit = next(
            h
            for h in client.get("/api/search", params={"q": "x", "k": 20, "frames": "true"}).json()["hits"]
            if h["id"] == image_id
        )
        assert hit["missing"] is True and client.get(f"/api/images/{image_id}").json()["missing"] is True
    finally:
        if path.exists() or path.is_symlink():
            path.unlink()
        shutil.move(kept, path)

"""The page of `cbir serve` in a real browser (Chromium driven by Playwright) against a real server.

A module-scoped fixture ingests a generated gallery with the bundled cbir-tiny model and starts
`python -m cbir serve --port 0` as a user would; every test then drives the page and checks what
it shows against the JSON API for the same query. Needs `pip install playwright` and a Chromium
(`apt-get install chromium`, or CBIR_CHROMIUM=/path/to/chrome); skipped without them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from cbir.bench.serve import running_server

# a real browser: the long suite (.ci/run), not the README's fast tier
pytestmark = pytest.mark.slow

# read at import: the autouse isolated_env fixture of conftest.py removes CBIR_* before each test
CHROMIUM = os.environ.get("CBIR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = os.environ.get("CBIR_SCREENSHOTS")


def _unavailable(reason: str) -> None:
    if os.environ.get("CBIR_REQUIRE_BROWSER"):  # set by .ci/run: there a missing browser fails
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:
    _unavailable("playwright is not installed: pip install playwright (and apt-get install chromium)")
if not CHROMIUM or not os.access(CHROMIUM, os.X_OK):
    _unavailable(
        f"no Chromium found{f' at {CHROMIUM}' if CHROMIUM else ''}: apt-get install chromium, or set "
        "CBIR_CHROMIUM to a Chrome/Chromium binary"
    )

PAGE = 24  # results per request in app.js
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 15_000
RED_CIRCLE = "a red circle"
BLUE_SQUARE = "a blue square"
CAPTION = "Holiday snapshot for the browser test"


# ---------------------------------------------------------------- the server and the browser


class Server:
    def __init__(self, url: str, photos: Path):
        self.url = url
        self.photos = photos

    def api(self, path: str, data: bytes | None = None, headers: dict | None = None, **params) -> dict:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        request = urllib.request.Request(
            self.url.rstrip("/") + path + (f"?{query}" if query else ""), data=data, headers=headers or {}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def search_by_file(self, path: Path, **params) -> dict:
        """POST /api/search/image with the file, as multipart/form-data."""
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return self.api(
            "/api/search/image",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            **params,
        )

    def ids(self, path: str, **params) -> list[int]:
        return [hit["id"] for hit in self.api(path, k=PAGE, **params)["hits"]]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from cbir.config import resolve_settings
    from cbir.library import Library
    from cbir.synthetic import make_gallery

    base = tmp_path_factory.mktemp("serve-browser")
    photos = base / "photos"
    make_gallery(photos / "a", 30, seed=5)
    make_gallery(photos / "b", 30, seed=6)
    (photos / "a" / "img_00000.jpg.txt").write_text(CAPTION)  # a caption, shown in the detail view
    library = Library.open(resolve_settings(library=base / "lib", model="cbir-tiny", device="cpu", env={}), create=True)
    try:
        library.ingest(photos)
    finally:
        library.close()

    with running_server(base / "lib", env={"CBIR_DEVICE": "cpu"}) as (url, _):
        yield Server(url, photos)


@pytest.fixture(scope="module")
def browser():
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    except PlaywrightError as e:
        playwright.stop()
        pytest.skip(f"cannot start Chromium at {CHROMIUM} (apt-get install chromium): {e}")
    yield browser
    browser.close()
    playwright.stop()


def open_page(browser, **context_options):
    context = browser.new_context(**{"viewport": DESKTOP, **context_options})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.problems = []  # uncaught errors and Content-Security-Policy violations fail the test
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on(
        "console", lambda m: page.problems.append(f"console: {m.text}") if "Content Security Policy" in m.text else None
    )
    return context, page


@pytest.fixture
def page(browser):
    context, page = open_page(browser)
    yield page
    problems = page.problems
    context.close()
    assert not problems, problems


# ---------------------------------------------------------------- helpers

CARD_IDS = "() => [...document.querySelectorAll('#grid .card')].map(c => Number(c.dataset.id))"


def dom_ids(page) -> list[int]:
    return page.evaluate(CARD_IDS)


def wait_ids(page, expected: list[int]) -> None:
    """Wait until the grid shows exactly these image ids, in this order."""
    try:
        page.wait_for_function(
            f"exp => {{ const ids = ({CARD_IDS})(); return ids.length === exp.length && ids.every((id, i) => id === exp[i]); }}",
            arg=expected,
        )
    except PlaywrightTimeout:
        assert dom_ids(page) == expected  # fails with both lists shown


def wait_images_loaded(page, selector: str = "#grid .card img") -> list[int]:
    """Wait until every <img> matched has loaded; returns their natural widths."""
    page.wait_for_function(
        "sel => { const imgs = [...document.querySelectorAll(sel)]; return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        arg=selector,
    )
    return page.eval_on_selector_all(selector, "imgs => imgs.map(i => i.naturalWidth)")


def wait_results(page) -> None:
    page.wait_for_selector("#results[data-state=done]")


def search(page, text: str) -> None:
    page.locator("#q").fill(text)
    page.locator("#q").press("Enter")


def file_of(server, image_id: int) -> Path:
    return Path(server.api(f"/api/images/{image_id}")["path"])


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------- tests


def test_typing_searches_and_shows_scores_plan_and_latency(server, page):
    requests = []
    page.on("request", lambda r: requests.append(r.url) if "/api/search" in r.url else None)
    page.goto(server.url)
    expect_header = page.locator("#library")
    page.wait_for_function("() => document.querySelector('#library').textContent.includes('60 images')")
    assert "cbir-tiny" in expect_header.inner_text()
    assert "60 images" in page.locator("#empty").inner_text()  # the start: a hint, no grid

    page.locator("#q").press_sequentially(RED_CIRCLE, delay=15)  # a live search, no Enter
    expected = server.api("/api/search", q=RED_CIRCLE, k=PAGE, explain="true")
    wait_ids(page, [h["id"] for h in expected["hits"]])
    assert len(expected["hits"]) == PAGE
    assert 1 <= len(requests) <= 3, f"typing was not debounced: {requests}"
    assert "q=a+red+circle" in requests[-1] or "q=a%20red%20circle" in requests[-1]

    widths = wait_images_loaded(page)
    assert len(widths) == PAGE and all(w > 0 for w in widths)
    assert page.locator("#grid .card img").first.get_attribute("loading") == "lazy"
    scores = page.locator("#grid .score").all_inner_texts()
    assert len(scores) == PAGE
    assert all(abs(float(shown) - h["score"]) <= 0.005 + 1e-9 for shown, h in zip(scores, expected["hits"])), scores
    assert page.locator("#grid .card img").first.get_attribute("alt") == Path(expected["hits"][0]["path"]).name

    assert page.locator("#plan-strategy").inner_text() == expected["plan"]["strategy"]
    assert page.locator("#plan-reason").inner_text() == expected["plan"]["reason"]
    assert re.fullmatch(r"[\d.]+ m?s server · [\d.]+ m?s round trip", page.locator("#latency").inner_text())
    assert page.locator("#summary").inner_text() == f"Top {PAGE}"
    assert "q=a+red+circle" in page.url  # reload and Back keep the query

    page.locator("#plan summary").click()  # the plan's numbers, on demand
    assert "examined" in page.locator("#plan-details").inner_text()

    page.locator("#more").click()  # the next page comes from offset=PAGE
    rest = server.ids("/api/search", q=RED_CIRCLE, offset=PAGE)
    wait_ids(page, [h["id"] for h in expected["hits"]] + rest)
    page.locator("#more").click()
    page.wait_for_selector("#more", state="hidden")  # 60 images: the third page is the last
    assert len(dom_ids(page)) == 60 and len(set(dom_ids(page))) == 60
    assert page.locator("#summary").inner_text() == "60 results"


def test_a_slow_older_response_never_replaces_a_newer_one(server, page):
    held = []

    def hold_red(route):
        if "red" in route.request.url:
            held.append(route)
        else:
            route.continue_()

    page.goto(server.url)
    page.route("**/api/search?*", hold_red)
    with page.expect_request(lambda r: "red" in r.url):
        search(page, RED_CIRCLE)
    blue = server.ids("/api/search", q=BLUE_SQUARE)
    search(page, BLUE_SQUARE)
    wait_ids(page, blue)
    red = server.api("/api/search", q=RED_CIRCLE, k=PAGE, explain="true")
    try:  # answer the old request now (the page aborted it: this may be refused)
        held[0].fulfill(status=200, content_type="application/json", body=json.dumps(red))
    except PlaywrightError:
        pass
    page.evaluate("() => fetch('/api/status').then(r => r.json())")  # let the page run its callbacks
    page.wait_for_timeout(150)  # a negative check: nothing to wait for but time
    assert dom_ids(page) == blue
    assert page.locator("#q").input_value() == BLUE_SQUARE


def test_clicking_a_result_searches_similar_images(server, page):
    page.goto(server.url + "?" + urllib.parse.urlencode({"q": RED_CIRCLE}))  # the query from the URL
    text_ids = server.ids("/api/search", q=RED_CIRCLE)
    wait_ids(page, text_ids)
    clicked = text_ids[2]
    page.locator("#grid .card .thumb").nth(2).click()

    wait_ids(page, server.ids(f"/api/images/{clicked}/similar"))
    assert dom_ids(page)[0] == clicked  # the image itself is the most similar
    chip = page.locator("#query-image")
    assert chip.is_visible()
    assert file_of(server, clicked).name in chip.inner_text()
    wait_images_loaded(page, "#query-image-preview")
    assert page.locator("#q").input_value() == ""
    assert f"like={clicked}" in page.url

    page.go_back()  # the text search again, from the URL
    wait_ids(page, text_ids)
    assert not chip.is_visible() and page.locator("#q").input_value() == RED_CIRCLE
    page.go_forward()
    wait_ids(page, server.ids(f"/api/images/{clicked}/similar"))

    page.locator("#query-image-remove").click()  # removing the image goes back to the text
    wait_ids(page, text_ids)
    assert not chip.is_visible() and page.locator("#q").input_value() == RED_CIRCLE

    # the detail view: the large thumbnail, metadata, texts and the original
    shown = text_ids[1]
    page.locator("#grid .card").nth(1).hover()
    page.locator("#grid .card .info").nth(1).click()
    dialog = page.locator("#detail")
    assert dialog.is_visible()
    path = file_of(server, shown)
    assert page.locator("#detail-title").inner_text() == path.name
    meta = page.locator("#detail-meta").inner_text()
    assert str(path.parent) in meta and "jpeg" in meta and str(shown) in meta
    assert page.locator("#detail-original").get_attribute("href") == f"/api/images/{shown}/original"
    assert "size=1280" in page.locator("#detail-img").get_attribute("src")
    wait_images_loaded(page, "#detail-img")
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")
    assert dom_ids(page) == text_ids  # closing the view changes nothing else

    captioned = next(
        h["id"] for h in server.api("/api/search", q=RED_CIRCLE, k=60)["hits"] if h["path"].endswith("a/img_00000.jpg")
    )
    page.goto(server.url + f"?like={captioned}")  # a shared link to a similar-images query
    wait_ids(page, server.ids(f"/api/images/{captioned}/similar"))
    page.wait_for_function("() => document.querySelector('#query-image-label').textContent.includes('img_00000.jpg')")
    page.locator("#grid .card .info").first.click()
    texts = page.locator("#detail-texts")
    texts.get_by_text(CAPTION).wait_for()
    source = server.api(f"/api/images/{captioned}")["texts"][0]["source"]
    assert texts.locator(".pill").first.inner_text() == source


def test_searching_by_an_uploaded_dropped_or_pasted_image(server, page):
    page.goto(server.url)
    own = server.photos / "a" / "img_00007.jpg"
    page.set_input_files("#file", str(own))
    expected = [h["id"] for h in server.search_by_file(own, k=PAGE)["hits"]]
    wait_ids(page, expected)
    assert page.locator("#grid .card").first.get_attribute("data-path") == str(own)  # its own file ranks first
    assert page.locator("#query-image").is_visible() and own.name in page.locator("#query-image").inner_text()
    assert page.locator("#query-image-preview").get_attribute("src").startswith("blob:")
    wait_images_loaded(page, "#query-image-preview")

    page.locator("#q").fill(BLUE_SQUARE)  # text typed now is added to the image
    page.locator("#q").press("Enter")
    wait_ids(page, [h["id"] for h in server.search_by_file(own, q=BLUE_SQUARE, k=PAGE)["hits"]])

    dropped = server.photos / "b" / "img_00003.jpg"
    dropped_id = next(
        h["id"] for h in server.api("/api/search", q=RED_CIRCLE, k=60)["hits"] if h["path"] == str(dropped)
    )
    page.locator("#q").fill("")
    overlay_seen = page.evaluate(
        """async id => {
            const blob = await (await fetch(`/api/images/${id}/original`)).blob();
            const data = new DataTransfer();
            data.items.add(new File([blob], 'dropped.jpg', {type: 'image/jpeg'}));
            const fire = type => document.body.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: data}));
            fire('dragenter'); fire('dragover');
            const seen = !document.querySelector('#drop-overlay').hidden;
            fire('drop');
            return seen;
        }""",
        dropped_id,
    )
    assert overlay_seen
    wait_ids(page, [h["id"] for h in server.search_by_file(dropped, k=PAGE)["hits"]])
    assert dom_ids(page)[0] == dropped_id
    assert page.locator("#drop-overlay").is_hidden()
    assert "dropped.jpg" in page.locator("#query-image").inner_text()

    pasted = server.photos / "a" / "img_00011.jpg"
    pasted_id = next(h["id"] for h in server.api("/api/search", q=RED_CIRCLE, k=60)["hits"] if h["path"] == str(pasted))
    page.evaluate(
        """async id => {
            const blob = await (await fetch(`/api/images/${id}/original`)).blob();
            const data = new DataTransfer();
            data.items.add(new File([blob], 'image.png', {type: 'image/jpeg'}));
            document.querySelector('#q').dispatchEvent(new ClipboardEvent('paste', {bubbles: true, cancelable: true, clipboardData: data}));
        }""",
        pasted_id,
    )
    wait_ids(page, [h["id"] for h in server.search_by_file(pasted, k=PAGE)["hits"]])
    assert dom_ids(page)[0] == pasted_id
    assert "pasted image" in page.locator("#query-image").inner_text()

    page.locator("#query-image-remove").click()  # nothing typed before the image: back to the start
    page.wait_for_selector("#results[data-state=idle]")
    assert dom_ids(page) == []

    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}])
    error = page.locator("#error")
    error.wait_for()
    assert "not an image" in error.inner_text() and "\n" not in error.inner_text()


def test_marking_results_more_or_less_like_this_and_searching_again(server, page):
    page.goto(server.url + "?" + urllib.parse.urlencode({"q": RED_CIRCLE}))
    text_ids = server.ids("/api/search", q=RED_CIRCLE)
    wait_ids(page, text_ids)
    assert page.locator("#feedback").is_hidden()
    liked = text_ids[5]
    more = page.locator(f'#grid .card[data-id="{liked}"] .fb.more')
    more.click()
    assert more.get_attribute("aria-pressed") == "true"
    assert page.locator("#feedback").is_visible() and page.locator("#feedback-apply").is_enabled()
    assert dom_ids(page) == text_ids  # a mark alone searches nothing
    with page.expect_request(lambda r: "/api/search?" in r.url) as sent:
        page.locator("#feedback-apply").click()
    assert f"like={liked}" in sent.value.url
    expected = server.ids("/api/search", q=RED_CIRCLE, like=liked)
    wait_ids(page, expected)
    # the liked image moves up among the first (a near-duplicate of it may rank above it)
    assert expected.index(liked) < min(3, text_ids.index(liked))
    assert f"like={liked}" in page.url and "q=a+red+circle" in page.url
    assert more.get_attribute("aria-pressed") == "true" and page.locator("#feedback-apply").is_disabled()

    page.reload()  # the marks live in the URL
    wait_ids(page, expected)
    assert page.locator(f'#grid .card[data-id="{liked}"] .fb.more').get_attribute("aria-pressed") == "true"

    unliked = next(i for i in expected if i != liked)
    card = page.locator(f'#grid .card[data-id="{unliked}"]')
    card.locator(".thumb").focus()
    page.keyboard.press("-")  # the key marks the selected result
    assert card.locator(".fb.less").get_attribute("aria-pressed") == "true"
    with page.expect_request(lambda r: "/api/search?" in r.url) as sent:
        page.locator("#feedback-apply").click()
    assert f"unlike={unliked}" in sent.value.url and f"like={liked}" in sent.value.url
    both = server.ids("/api/search", q=RED_CIRCLE, like=liked, unlike=unliked)
    wait_ids(page, both)
    scores = [
        {h["id"]: h["score"] for h in server.api("/api/search", q=RED_CIRCLE, k=60, **feedback)["hits"]}
        for feedback in ({"like": liked}, {"like": liked, "unlike": unliked})
    ]
    assert scores[1][unliked] < scores[0][unliked]  # it moves away (gamma is small: maybe not down)
    assert "Less like this" in card.locator(".fb.less").get_attribute("aria-label")

    page.locator("#feedback-clear").click()  # back to the text alone
    wait_ids(page, text_ids)
    assert "like=" not in page.url and page.locator("#feedback").is_hidden()
    page.go_back()
    wait_ids(page, both)


def test_drawing_a_box_on_an_uploaded_image_searches_by_it(server, page, tmp_path):
    import numpy as np
    from PIL import Image

    from cbir.synthetic import Scene, render

    rng = np.random.default_rng(11)  # a red circle on the left, a blue square on the right
    picture = Image.new("RGB", (256, 128))
    picture.paste(render(Scene("red", "circle", "gray"), rng, (128, 128)), (0, 0))
    picture.paste(render(Scene("blue", "square", "gray"), rng, (128, 128)), (128, 0))
    query = tmp_path / "two.png"
    picture.save(query)
    whole = [h["id"] for h in server.search_by_file(query, k=PAGE)["hits"]]
    # the form fields of each upload (Playwright does not show a multipart body made from a Blob)
    page.add_init_script(
        """const send = window.fetch;
        window.sentCrops = [];
        window.fetch = (url, init) => {
            if (init && init.body instanceof FormData) window.sentCrops.push(init.body.get("crop"));
            return send(url, init);
        };"""
    )
    page.goto(server.url)
    page.set_input_files("#file", str(query))
    wait_ids(page, whole)
    wait_images_loaded(page, "#crop-img")
    assert page.locator("#crop-panel").is_visible() and page.locator("#crop-box").is_hidden()

    box = page.locator("#crop-img").bounding_box()
    with page.expect_request(lambda r: "/api/search/image" in r.url):
        page.mouse.move(box["x"] + box["width"] * 0.5 + 1, box["y"] + 1)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.5, steps=4)
        page.mouse.move(box["x"] + box["width"] - 1, box["y"] + box["height"] - 1, steps=4)
        page.mouse.up()
    sent = page.evaluate("() => window.sentCrops")
    assert sent[0] is None and len(sent) == 2, sent  # the whole picture, then the box
    x, y, w, h = (float(v) for v in sent[1].split(","))
    assert 0.5 <= x < 0.52 and y < 0.02 and 0.47 < w <= 0.5 and 0.97 < h <= 1 and x + w <= 1
    cropped = [h["id"] for h in server.search_by_file(query, k=PAGE, crop=sent[1])["hits"]]
    assert cropped != whole
    wait_ids(page, cropped)
    assert page.locator("#crop-box").is_visible() and page.locator("#crop-clear").is_visible()

    with page.expect_request(lambda r: "/api/search/image" in r.url):
        page.locator("#crop-clear").click()  # the whole picture again
    assert page.evaluate("() => window.sentCrops")[2:] == [None]
    wait_ids(page, whole)
    assert page.locator("#crop-box").is_hidden()
    page.locator("#query-image-remove").click()
    assert page.locator("#crop-panel").is_hidden()


def test_filters_apply_to_every_kind_of_search(server, page):
    page.goto(server.url)
    assert page.locator("#filters").is_visible()  # open on a wide screen
    page.locator("#f-folder").fill("a")
    search(page, RED_CIRCLE)
    expected = server.api("/api/search", q=RED_CIRCLE, folder="a", k=PAGE, explain="true")
    wait_ids(page, [h["id"] for h in expected["hits"]])
    paths = page.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.dataset.path)")
    assert paths and all(Path(p).parent == server.photos / "a" for p in paths)
    assert page.locator("#plan-strategy").inner_text() == expected["plan"]["strategy"]
    assert "30 of 60" in page.locator("#plan-reason").inner_text()
    assert page.locator("#filters-count").inner_text() == "1"
    page.wait_for_function("() => location.search.includes('folder=a')")

    first = dom_ids(page)[0]  # similar images, still in folder a
    page.locator("#grid .card .thumb").first.click()
    wait_ids(page, server.ids(f"/api/images/{first}/similar", folder="a"))
    paths = page.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.dataset.path)")
    assert all(Path(p).parent == server.photos / "a" for p in paths)
    page.locator("#query-image-remove").click()
    wait_ids(page, [h["id"] for h in expected["hits"]])

    page.locator("#f-after").fill("2019-13")  # the API's own error, on one line
    error = page.locator("#error")
    error.wait_for()
    assert "invalid date '2019-13'" in error.inner_text()
    page.locator("#f-after").fill("")
    page.locator("#f-camera").fill("NoSuchCamera")
    page.wait_for_selector("#results[data-state=empty]")
    assert "No results" in page.locator("#empty").inner_text()
    assert dom_ids(page) == [] and page.locator("#error").is_hidden()

    page.locator("#filters-clear").click()
    wait_ids(page, server.ids("/api/search", q=RED_CIRCLE))


def test_keyboard(server, page):
    page.goto(server.url)
    page.evaluate("() => document.activeElement.blur()")
    page.keyboard.press("/")
    assert page.evaluate("() => document.activeElement.id") == "q"
    page.keyboard.type(RED_CIRCLE)
    page.keyboard.press("Enter")
    ids = server.ids("/api/search", q=RED_CIRCLE)
    wait_ids(page, ids)
    selected = "() => Number(document.querySelector('#grid .card.selected')?.dataset.id ?? -1)"

    page.keyboard.press("ArrowDown")  # from the box into the grid
    assert page.evaluate(selected) == ids[0]
    page.keyboard.press("ArrowRight")
    assert page.evaluate(selected) == ids[1]
    columns = page.evaluate(
        "() => { const cs = [...document.querySelectorAll('#grid .card')]; return cs.filter(c => c.offsetTop === cs[0].offsetTop).length; }"
    )
    assert columns > 1
    page.keyboard.press("ArrowDown")
    assert page.evaluate(selected) == ids[1 + columns]
    page.keyboard.press("ArrowUp")
    assert page.evaluate(selected) == ids[1]
    assert page.evaluate("() => document.activeElement.closest('.card')?.dataset.id") == str(ids[1])  # focus follows

    page.keyboard.press("i")  # details of the selection
    page.wait_for_selector("#detail", state="visible")
    assert page.locator("#detail-title").inner_text() == file_of(server, ids[1]).name
    page.keyboard.press("ArrowRight")  # the next result, in the open view
    page.wait_for_function(
        "name => document.querySelector('#detail-title').textContent === name", arg=file_of(server, ids[2]).name
    )
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")
    assert page.evaluate(selected) == ids[2]

    page.keyboard.press("Enter")  # similar to the selection
    wait_ids(page, server.ids(f"/api/images/{ids[2]}/similar"))
    assert page.locator("#query-image").is_visible()
    page.keyboard.press("Escape")  # drops the image query: back to the text
    wait_ids(page, ids)
    assert page.locator("#query-image").is_hidden()


def test_phone_screen(server, browser):
    context, page = open_page(browser, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        page.goto(server.url + "?" + urllib.parse.urlencode({"q": RED_CIRCLE}))
        wait_ids(page, server.ids("/api/search", q=RED_CIRCLE))
        wait_images_loaded(page)
        overflow = "() => document.documentElement.scrollWidth - window.innerWidth"
        assert page.evaluate(overflow) <= 0
        boxes = [page.locator("#grid .card").nth(i).bounding_box() for i in range(4)]
        assert all(b["x"] >= 0 and b["x"] + b["width"] <= PHONE["width"] and b["width"] >= 90 for b in boxes)
        assert boxes[0]["y"] + boxes[0]["height"] < PHONE["height"]  # results above the fold
        assert boxes[0]["y"] == boxes[1]["y"] == boxes[2]["y"] and boxes[3]["y"] > boxes[0]["y"]  # three columns

        assert page.locator("#filters").is_hidden()  # collapsed, behind a button
        page.locator("#filters-toggle").tap()
        assert page.locator("#f-folder").is_visible()
        assert page.evaluate(overflow) <= 0
        page.locator("#filters-toggle").tap()

        page.locator("#grid .card .info").first.tap()  # the detail view fits the screen
        page.wait_for_selector("#detail", state="visible")
        box = page.locator("#detail").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        assert page.locator("#detail-similar").is_visible()
        assert not page.problems, page.problems
    finally:
        context.close()


def test_screenshots(server, browser, tmp_path):
    shots = []
    for name, options in [
        ("desktop", {"viewport": DESKTOP}),
        ("phone", {"viewport": PHONE, "device_scale_factor": 2, "is_mobile": True}),
    ]:
        context, page = open_page(browser, **options)
        try:
            page.goto(server.url + "?" + urllib.parse.urlencode({"q": RED_CIRCLE}))
            wait_results(page)
            wait_images_loaded(page)
            page.locator("#grid .card .thumb").first.focus()  # a visible selection, as after the arrow keys
            path = tmp_path / f"cbir-serve-{name}.png"
            page.screenshot(path=str(path), scale="css")
            assert not page.problems, page.problems
        finally:
            context.close()
        assert png_size(path) == (options["viewport"]["width"], options["viewport"]["height"])
        assert path.stat().st_size > 10_000  # a picture, not a blank page
        shots.append(path)
    if SCREENSHOTS:
        folder = Path(SCREENSHOTS)
        folder.mkdir(parents=True, exist_ok=True)
        for path in shots:
            shutil.copy(path, folder / path.name)


def test_error_and_empty_states(server, browser):
    context, page = open_page(browser)
    try:  # a server started with --token, opened without it
        page.route(
            "**/api/**",
            lambda route: route.fulfill(
                status=401,
                content_type="application/json",
                body=json.dumps(
                    {
                        "error": "this server needs a token: send Authorization: Bearer TOKEN, or open /?token=TOKEN",
                        "type": "Unauthorized",
                    }
                ),
            ),
        )
        page.goto(server.url + "?q=cat")
        error = page.locator("#error")
        error.wait_for()
        assert "needs its token" in error.inner_text() and "open the URL cbir serve printed" in error.inner_text()

        page.unroute("**/api/**")  # a library nothing was ingested into
        status = server.api("/api/status")
        page.route(
            "**/api/status",
            lambda route: route.fulfill(
                status=200,
                content_type="application/json",
                body=json.dumps({**status, "images": 0, "model": "(none yet)"}),
            ),
        )
        page.route(
            "**/api/search?*",
            lambda route: route.fulfill(
                status=409,
                content_type="application/json",
                body=json.dumps(
                    {
                        "error": "the library at /x has no images yet; add some with `cbir ingest PATH`",
                        "type": "EmptyLibrary",
                    }
                ),
            ),
        )
        page.goto(server.url)
        page.wait_for_function("() => document.querySelector('#library').textContent.includes('0 images')")
        assert "library is empty: run cbir ingest" in page.locator("#empty").inner_text()
        search(page, "cat")
        error.wait_for()
        assert "no images yet" in error.inner_text()
        assert "library is empty" in page.locator("#empty").inner_text()
        assert not page.problems, page.problems
    finally:
        context.close()


# ---------------------------------------------------------------- PDF pages and video frames


@pytest.fixture(scope="module")
def media_server(tmp_path_factory):
    """A server of a library holding a three-page PDF and a 7 s VP8 video of three scenes (WebM:
    Playwright's Chromium plays no H.264). Needs the media extra (pypdfium2, PyAV)."""
    from tests.conftest import media_module

    media_module("pypdfium2")
    av = media_module("av")
    from cbir.config import resolve_settings
    from cbir.library import Library
    from tests.test_serve_media import write_pdf
    from tests.test_video import scene_frames, write_video

    base = tmp_path_factory.mktemp("serve-browser-media")
    media = base / "media"
    media.mkdir()
    write_pdf(media / "report.pdf")
    write_video(av, media / "clip.webm", scene_frames([2, 2, 3]), codec="libvpx")
    library = Library.open(resolve_settings(library=base / "lib", model="cbir-tiny", device="cpu", env={}), create=True)
    try:
        library.ingest(media)
    finally:
        library.close()
    with running_server(base / "lib", env={"CBIR_DEVICE": "cpu"}) as (url, _):
        yield Server(url, media)


PDF_VIEWER = "chrome-extension://mhjfbmdgcfjbbpaeojofohoefgiehjai/"  # Chromium's built-in PDF viewer


def card_of(page, image_id: int):
    return page.locator(f"#grid .card[data-id='{image_id}']")


def test_a_video_frame_card_names_its_moment_and_plays_from_it(media_server, page):
    frames = media_server.api("/api/search", q=RED_CIRCLE, k=PAGE, frames="true")["hits"]
    frame = next(h for h in frames if h.get("time") == 4.0)  # the third scene
    page.goto(media_server.url + "?" + urllib.parse.urlencode({"q": RED_CIRCLE}))
    wait_ids(page, media_server.ids("/api/search", q=RED_CIRCLE))  # one frame of the video
    shown = [h for h in media_server.api("/api/search", q=RED_CIRCLE, k=PAGE)["hits"] if "time" in h]
    assert len(shown) == 1

    page.locator("#f-frames").check()  # every frame
    wait_ids(page, [h["id"] for h in frames])
    assert "frames=true" in page.url
    card = card_of(page, frame["id"])
    assert card.locator(".kind-tag").inner_text() == "▶ 0:04"
    assert card.locator("img").get_attribute("alt") == "clip.webm · 0:04"
    wait_images_loaded(page)

    card.hover()
    card.locator(".info").click()
    page.wait_for_selector("#detail", state="visible")
    assert page.locator("#detail-title").inner_text() == "clip.webm · 0:04"
    assert page.locator("#detail-img").is_hidden()
    video = page.locator("#detail-video")
    assert video.is_visible() and video.get_attribute("controls") is not None
    assert video.get_attribute("src") == f"/api/images/{frame['id']}/original#t=4"
    page.wait_for_function("() => document.querySelector('#detail-video').readyState >= 1")
    at = page.evaluate("() => document.querySelector('#detail-video').currentTime")
    assert abs(at - 4.0) <= 0.5, at
    duration = page.evaluate("() => document.querySelector('#detail-video').duration")
    assert abs(duration - 7.0) <= 0.5, duration
    meta = page.locator("#detail-meta").inner_text()
    assert "0:04 of 0:07" in meta and str(media_server.photos) in meta
    assert page.locator("#detail-original").inner_text() == "Open the video at 0:04"

    page.keyboard.press("Escape")  # closing stops the video and lets go of the file
    page.wait_for_selector("#detail", state="hidden")
    assert page.evaluate("() => document.querySelector('#detail-video').hasAttribute('src')") is False


def test_a_pdf_page_card_names_its_page_and_opens_the_pdf_there(media_server, page):
    hits = media_server.api("/api/search", q=BLUE_SQUARE, k=PAGE)["hits"]
    pdf_page = next(h for h in hits if h.get("page") == 2)
    page.goto(media_server.url + "?" + urllib.parse.urlencode({"q": BLUE_SQUARE}))
    wait_ids(page, [h["id"] for h in hits])
    card = card_of(page, pdf_page["id"])
    assert card.locator(".kind-tag").inner_text() == "PDF · p. 2"
    assert card.locator("img").get_attribute("alt") == "report.pdf · p. 2"
    wait_images_loaded(page)

    card.hover()
    card.locator(".info").click()
    page.wait_for_selector("#detail", state="visible")
    assert page.locator("#detail-title").inner_text() == "report.pdf · p. 2"
    link = page.locator("#detail-original")
    assert link.get_attribute("href") == f"/api/images/{pdf_page['id']}/original#page=2"
    assert link.inner_text() == "Open the PDF at page 2"
    assert page.locator("#detail-video").is_hidden()
    assert "size=1280" in page.locator("#detail-img").get_attribute("src")
    wait_images_loaded(page, "#detail-img")
    assert "300 × 400 pt" in page.locator("#detail-meta").inner_text()

    # the link opens the PDF in Chromium's own viewer under the server's Content-Security-Policy
    # (a violation would fail the test through page.problems)
    with page.context.expect_page() as opened:
        link.click()
    viewer = opened.value
    viewer.on("console", lambda m: page.problems.append(f"console: {m.text}") if "Content Security" in m.text else None)
    viewer.wait_for_load_state()
    assert viewer.url.endswith(f"/api/images/{pdf_page['id']}/original#page=2")
    deadline = time.monotonic() + WAIT_MS / 1000
    while not any(f.url.startswith(PDF_VIEWER) for f in viewer.frames) and time.monotonic() < deadline:
        viewer.wait_for_timeout(100)
    assert any(f.url.startswith(PDF_VIEWER) for f in viewer.frames), [f.url for f in viewer.frames]

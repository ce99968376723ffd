"""Relevance feedback (--like/--unlike: a Rocchio update of the query) and query crops (--crop):
the arithmetic and its --explain line on the fake encoder, the CLI's forms and errors, and what
they find on cbir-tiny and a generated gallery, through the Library, the CLI and the HTTP API."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from cbir.cli import cli
from cbir.config import resolve_settings
from cbir.errors import UsageError
from cbir.library import Library
from cbir.query import Crop, Query
from cbir.query.batch import parse_batch
from cbir.query.expression import Term
from cbir.query.request import command_line_queries
from cbir.serve import create_app, open_for_serving
from cbir.synthetic import Scene, render

# ---------------------------------------------------------------- the arithmetic


def weights(query: Query) -> list[tuple[float, str]]:
    return [(round(t.weight, 6), t.text or t.like or str(t.image)) for t in query.expression().terms]


def test_rocchio_weights_follow_the_smart_defaults():
    query = Query(text="red car", like=["a.jpg", "b.jpg"], unlike=["c.jpg"])
    assert weights(query) == [(1.0, "red car"), (0.375, "a.jpg"), (0.375, "b.jpg"), (-0.25, "c.jpg")]
    expression = query.expression()
    assert expression.describe() == '1.00 "red car" + 0.38 like:a.jpg + 0.38 like:b.jpg - 0.25 like:c.jpg'
    # the query's own terms share alpha = 1 by their positive weights; subtractions keep their ratio
    own = Query(text='"cat":2 + sofa - dog', image="x.jpg", like="a.jpg", unlike=["c.jpg", "d.jpg"])
    assert weights(own) == [
        (0.25, "x.jpg"),
        (0.5, "cat"),
        (0.25, "sofa"),
        (-0.25, "dog"),
        (0.75, "a.jpg"),
        (-0.125, "c.jpg"),
        (-0.125, "d.jpg"),
    ]
    # no query of its own: the likes carry the whole positive weight
    assert weights(Query(like=["a.jpg", "b.jpg"], unlike="c.jpg")) == [(0.5, "a.jpg"), (0.5, "b.jpg"), (-0.25, "c.jpg")]
    assert weights(Query(text="- indoors", like=["a.jpg", "b.jpg"])) == [
        (-1.0, "indoors"),
        (0.5, "a.jpg"),
        (0.5, "b.jpg"),
    ]
    # a path given twice counts once
    assert weights(Query(like=["a.jpg", "a.jpg", "b.jpg"])) == [(0.5, "a.jpg"), (0.5, "b.jpg")]


def test_forms_without_feedback_are_unchanged():
    """Without --like and --unlike, or with one --like alone, the expression is what it always
    was, term for term."""
    assert Query(like="a.jpg").expression().terms == (Term(like="a.jpg"),)
    assert Query(text="+ in winter", like="a.jpg").expression().terms == (Term(like="a.jpg"), Term(text="in winter"))
    assert Query(text="dog", like=["a.jpg"]).expression().describe() == '1.00 like:a.jpg + 1.00 "dog"'
    assert Query(text='"dog" + "snow" - "indoors"').expression().describe() == (
        '1.00 "dog" + 1.00 "snow" - 1.00 "indoors"'
    )
    assert Query(text="+ in winter", image="a.jpg").expression().terms == (Term(image="a.jpg"), Term(text="in winter"))
    cropped = Query(image="my photo.jpg", crop="0.5,0,0.5,1").expression()
    assert cropped.describe() == '1.00 image:"my photo.jpg"[crop 0.5,0,0.5,1]'
    assert cropped.terms[0].crop == Crop(0.5, 0.0, 0.5, 1.0)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (lambda: Query(unlike="c.jpg"), "give a query or --like too"),
        (lambda: Query(text="dog", like="a.jpg", unlike="a.jpg"), "a.jpg is given as both --like and --unlike"),
        (lambda: Query(text="- dog", unlike="c.jpg").expression(), "nothing to search for"),
        (lambda: Query(text="dog", crop="0,0,1,1"), "--crop is a box of the query image: give --image with it"),
    ],
)
def test_feedback_errors(query, message):
    with pytest.raises(UsageError, match=message):
        query()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.5,0,0.5", "expected four numbers x,y,w,h"),
        ("a,b,c,d", "expected four numbers"),
        ("0.5,0,0.6,1", "runs off the image"),
        ("1,0,0.5,0.5", "x and y are fractions of the image, from 0 to below 1"),
        ("-0.1,0,0.5,0.5", "x and y"),
        ("0,0,0,1", "w and h are fractions of the image, above 0 and at most 1"),
        ("nan,0,1,1", "must be finite"),
    ],
)
def test_bad_crops_are_one_line_errors(text, message):
    with pytest.raises(UsageError, match=message) as caught:
        Crop.parse(text)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("--crop ")


def test_a_crop_reaching_the_edge_is_accepted():
    assert Crop.parse(" 0.1 , 0.2,0.9,0.8 ") == Crop(0.1, 0.2, 0.9, 0.8)  # 0.1 + 0.9 is 1.0000000000000002
    assert str(Crop.parse("0.25,0,0.333333333,1")) == "0.25,0,0.3333,1"


def test_command_line_forms():
    [(echo, query)] = command_line_queries(["red", "car"], None, ["a.jpg", "b.jpg"], None, unlike=["c.jpg"])
    assert echo == {"like": ["a.jpg", "b.jpg"], "unlike": ["c.jpg"], "text": "red car"}
    assert query.like == ("a.jpg", "b.jpg") and query.unlike == ("c.jpg",)
    [(echo, query)] = command_line_queries(["+", "in winter"], None, ["a.jpg"], None)  # as before
    assert echo == {"like": "a.jpg", "text": '+ "in winter"'}
    [(echo, query)] = command_line_queries([], "x.jpg", [], None, crop="0.5,0,0.5,1")
    assert echo == {"image": "x.jpg", "crop": "0.5,0,0.5,1"} and query.crop == Crop(0.5, 0, 0.5, 1)
    with pytest.raises(UsageError, match="--crop is a box of the query image"):
        command_line_queries(["dog"], None, [], None, crop="0,0,1,1")
    with pytest.raises(UsageError, match="give no QUERY, --image, --like or --unlike"):
        command_line_queries([], None, [], io.StringIO("dog\n"), unlike=["c.jpg"])
    lines = ['{"text": "red car", "like": ["a.jpg", "b.jpg"], "unlike": "c.jpg"}', '{"like": "a.jpg"}']
    (_, first), (_, second) = parse_batch(lines)
    assert weights(first) == [(1.0, "red car"), (0.375, "a.jpg"), (0.375, "b.jpg"), (-0.25, "c.jpg")]
    assert weights(second) == [(1.0, "a.jpg")]
    with pytest.raises(UsageError, match="batch line 1: like and unlike must be a path or a list of paths"):
        parse_batch(['{"like": [1, 2]}'])


# ---------------------------------------------------------------- on the fake encoder


def test_the_query_vector_is_the_normalised_rocchio_sum(fake_library, photos):
    lib = fake_library()
    lib.ingest(photos)
    a, b, c = (photos / "a" / f"img{i:02d}.jpg" for i in (1, 3, 5))
    ids = [lib.catalog.image_at(p.resolve()) for p in (a, b, c)]
    _, (va, vb, vc) = lib._index("images").vectors(np.asarray(ids))
    [text] = lib.encoder.encode_texts(["red car"])
    unit = [v / np.linalg.norm(v) for v in (text, va, vb, vc)]
    expected = unit[0] + 0.375 * unit[1] + 0.375 * unit[2] - 0.25 * unit[3]
    expected /= np.linalg.norm(expected)
    [hits] = lib.search_many([Query(text="red car", like=[a, b], unlike=[c])], k=20)
    _, vectors = lib._index("images").vectors(np.asarray([h.id for h in hits]))
    assert [h.score for h in hits] == pytest.approx([float(v @ expected) for v in vectors], abs=1e-5)
    [without] = lib.search_many([Query(text="red car", like=[a, b])], k=20)
    score_of = lambda results, path: next(h.score for h in results if h.path == path)  # noqa: E731
    assert score_of(hits, c) < score_of(without, c)  # the unliked image moves down
    assert hits.plan.query == f'1.00 "red car" + 0.38 like:{a} + 0.38 like:{b} - 0.25 like:{c}'
    assert f"query     {hits.plan.query}" in hits.plan.describe()
    with pytest.raises(UsageError, match=r"^--unlike .*nope.jpg: not an image of this library"):
        lib.search_many([Query(text="red car", unlike=[photos / "nope.jpg"])])
    lib.close()


def test_cli_like_unlike_and_explain(fake_library, photos):
    lib = fake_library()
    lib.ingest(photos)
    library = ["--library", str(lib.path)]
    lib.close()
    a, b, c = (str(photos / "a" / f"img{i:02d}.jpg") for i in (1, 3, 5))

    def cbir(*args):
        return CliRunner().invoke(cli, ["search", *args, *library])

    alone = cbir("--like", a, "--json", "-k", "20")  # as always: the image itself first, no model
    assert alone.exit_code == 0, alone.output
    rows = [json.loads(line) for line in alone.output.splitlines()]
    assert rows[0]["path"] == a and rows[0]["query"] == {"like": a}
    both = cbir("--like", a, "--like", b, "--unlike", c, "--explain", "-k", "20")
    assert both.exit_code == 0, both.output
    assert f"query     0.50 like:{a} + 0.50 like:{b} - 0.25 like:{c}" in both.output.splitlines()
    table = [line.split()[-1] for line in both.output.splitlines() if line.strip()[:1].isdigit()]
    assert set(table[:2]) == {a, b}  # each liked image is the nearest to half the query
    as_json = cbir("--like", a, "--unlike", c, "--explain", "--json")
    plan = json.loads(as_json.output.splitlines()[0])
    assert plan["query"] == {"like": a, "unlike": [c]}
    assert plan["plan"]["query"] == f"1.00 like:{a} - 0.25 like:{c}"
    missing = cbir("--like", a, "--like", str(photos / "nope.jpg"))
    assert missing.exit_code == 2 and "--like" in missing.output and "not an image of this library" in missing.output
    for args, message in (
        (("--crop", "0,0,1,1", "dog"), "--crop is a box of the query image"),
        (("--image", a, "--crop", "0,0,2,1"), "w and h are fractions"),
        (("--unlike", c), "give a query or --like too"),
        (("dog", "--like", a, "--unlike", a), "is given as both --like and --unlike"),
    ):
        out = cbir(*args)
        assert out.exit_code == 2 and message in out.output, (args, out.output)


# ---------------------------------------------------------------- on cbir-tiny

RED_CIRCLE = Scene("red", "circle", "gray")
BLUE_SQUARE = Scene("blue", "square", "gray")
OTHERS = (Scene("yellow", "triangle", "pink"), Scene("green", "star", "cyan"))


def two_scenes(seed: int = 99) -> Image.Image:
    """A red circle on the left half, a blue square on the right."""
    rng = np.random.default_rng(seed)
    picture = Image.new("RGB", (256, 128))
    picture.paste(render(RED_CIRCLE, rng, (128, 128)), (0, 0))
    picture.paste(render(BLUE_SQUARE, rng, (128, 128)), (128, 0))
    return picture


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(photos, library folder, scene of each photo's name): 6 photos of each of 4 scenes."""
    base = tmp_path_factory.mktemp("feedback")
    photos = base / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    scenes = {}
    for n in range(6):
        for scene in (RED_CIRCLE, BLUE_SQUARE, *OTHERS):
            name = f"{scene.colour}-{scene.shape}-{n}.png"
            render(scene, rng, (96, 96)).save(photos / name)
            scenes[name] = scene
    two_scenes().save(base / "query.png")
    settings = resolve_settings(library=base / "lib", model="cbir-tiny", device="cpu", env={})
    lib = Library.open(settings, create=True)
    lib.ingest(photos)
    lib.close()
    return photos, base, scenes


def scenes_of(hits, scenes) -> list[Scene]:
    return [scenes[h.path.name if hasattr(h, "path") else h] for h in hits]


def test_a_crop_finds_the_scene_inside_it(tiny):
    photos, base, scenes = tiny
    lib = Library.open(resolve_settings(library=base / "lib", device="cpu", env={}))
    query = base / "query.png"
    [right, left, whole] = lib.search_many(
        [Query(image=query, crop="0.5,0,0.5,1"), Query(image=query, crop=(0, 0, 0.5, 1)), Query(image=query)], k=6
    )
    assert scenes_of(right, scenes) == [BLUE_SQUARE] * 6
    assert scenes_of(left, scenes) == [RED_CIRCLE] * 6
    assert right.plan.query.endswith("[crop 0.5,0,0.5,1]")
    # a box is the same as the picture cut to it and searched whole
    cut = base / "right-half.png"
    Image.open(query).crop((128, 0, 256, 128)).save(cut)
    [direct] = lib.search_many([Query(image=cut)], k=6)
    assert [h.id for h in direct] == [h.id for h in right]
    assert [h.score for h in direct] == pytest.approx([h.score for h in right], abs=1e-4)
    assert [h.id for h in whole] != [h.id for h in right]
    lib.close()


def test_the_api_takes_like_unlike_and_crop(tiny):
    photos, base, scenes = tiny
    lib = open_for_serving(resolve_settings(library=base / "lib", device="cpu", env={}))
    client = TestClient(create_app(lib), base_url="http://127.0.0.1")

    def get(path, **params):
        response = client.get(path, params={"k": 24, **params})
        assert response.status_code == 200, response.text
        return response.json()

    text = get("/api/search", q="a red circle")
    ranks = {h["id"]: n for n, h in enumerate(text["hits"])}
    liked = next(h["id"] for h in reversed(text["hits"]) if h["path"].endswith(".png") and "blue-square" in h["path"])
    unliked = text["hits"][0]["id"]
    moved = get("/api/search", q="a red circle", like=[liked], unlike=[unliked], explain="true")
    new_ranks = {h["id"]: n for n, h in enumerate(moved["hits"])}
    assert new_ranks[liked] < ranks[liked] and new_ranks[unliked] > ranks[unliked]
    assert moved["query"] == {"text": "a red circle", "like": [liked], "unlike": [unliked]}
    assert (
        moved["plan"]["query"].startswith('1.00 "a red circle" + 0.75 like:')
        and " - 0.25 like:" in moved["plan"]["query"]
    )
    # pure "more like these": like alone is the similar-images search of that image
    alone = get("/api/search", like=[liked])
    assert [h["id"] for h in alone["hits"]] == [h["id"] for h in get(f"/api/images/{liked}/similar")["hits"]]
    assert alone["hits"][0]["id"] == liked
    similar = get(f"/api/images/{liked}/similar", unlike=[unliked])
    assert similar["query"] == {"like": [liked], "unlike": [unliked]}

    for params, status, message in (
        ({"q": "x", "like": 10**9}, 404, "no image 1000000000 in this library"),
        ({"q": "x", "like": [liked], "unlike": [liked]}, 400, f"image {liked} is in both like and unlike"),
        ({"unlike": [liked]}, 400, "give a query text or a liked image"),
        ({"q": "x", "like": "abc"}, 400, "like"),
    ):
        response = client.get("/api/search", params=params)
        assert response.status_code == status and message in response.json()["error"], response.text

    data = (base / "query.png").read_bytes()
    files = {"file": ("query.png", data, "image/png")}
    by_param = client.post("/api/search/image", params={"k": 6, "crop": "0.5,0,0.5,1"}, files=files)
    by_field = client.post("/api/search/image", params={"k": 6}, data={"crop": "0.5,0,0.5,1"}, files=files)
    assert by_param.status_code == by_field.status_code == 200, by_param.text + by_field.text
    hits = by_param.json()["hits"]
    assert [scenes[h["path"].rsplit("/", 1)[-1]] for h in hits] == [BLUE_SQUARE] * 6
    assert [h["id"] for h in by_field.json()["hits"]] == [h["id"] for h in hits]
    assert by_param.json()["query"] == {"image": "query.png", "crop": "0.5,0,0.5,1"}
    bad = client.post("/api/search/image", params={"crop": "0.5,0,0.6,1"}, files=files)
    assert bad.status_code == 400 and bad.json()["error"].startswith("crop 0.5,0,0.6,1: the box runs off the image")
    lib.close()

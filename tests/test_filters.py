"""Metadata filters: the --where language and the SQL it becomes, on a real library database."""

from __future__ import annotations

import fnmatch
import json
import random
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select

from cbir.errors import UsageError
from cbir.query.filter_sql import image_condition
from cbir.query.filter_values import normalise_format, parse_date
from cbir.query.filters import Filters
from cbir.query.where import And, Compare, Not, Or, parse_where
from cbir.store.db import create_db_engine, for_writing, migrate
from cbir.store.models import Image, ImageText, Root
from cbir.units import parse_bytes

ADDED = datetime(2026, 11, 2)


@dataclass
class Row:
    """One image's metadata and its texts ((source, content) pairs)."""

    id: int
    root_id: int
    path: str
    size: int = 1000
    width: int = 640
    height: int = 480
    format: str = "jpeg"
    taken: datetime | None = datetime(2019, 1, 1)
    camera: str | None = None
    added_at: datetime = ADDED
    texts: tuple[tuple[str, str], ...] = ()
    extra: dict | None = None  # a dataset row's other columns


def make_library(directory: Path, roots: dict[int, Path], rows: list[Row], database_url=None):
    engine = create_db_engine(database_url or directory / "library.db")
    migrate(engine)
    with for_writing(engine).begin() as c:
        c.execute(insert(Root), [{"id": i, "path": str(p)} for i, p in roots.items()])
        c.execute(
            insert(Image),
            [
                {
                    "id": r.id,
                    "root_id": r.root_id,
                    "path": r.path,
                    "size": r.size,
                    "mtime_ns": 0,
                    "content_hash": f"{r.id:064x}",
                    "width": r.width,
                    "height": r.height,
                    "format": r.format,
                    "taken_at": None,
                    "taken": r.taken,
                    "camera": r.camera,
                    "added_at": r.added_at,
                    "extra": json.dumps(r.extra) if r.extra else None,
                }
                for r in rows
            ],
        )
        texts = [
            {"image_id": r.id, "source": s, "content": t, "vector": b"", "added_at": ADDED}
            for r in rows
            for s, t in r.texts
        ]
        if texts:
            c.execute(insert(ImageText), texts)
    return engine


def matching(engine, filters: Filters, roots, cwd: Path) -> set[int]:
    condition = image_condition(filters, roots, cwd)
    query = select(Image.id) if condition is None else select(Image.id).where(condition)
    with engine.connect() as c:
        return set(c.scalars(query))


# -- a small hand-made library, with its folders on disk ----------------------------------------

SMALL = [
    Row(
        1,
        1,
        "2019/beach/img1.jpg",
        1_500_000,
        4000,
        3000,
        "jpeg",
        datetime(2019, 6, 15, 10, 30),
        "Google Pixel 7",
        ADDED,
        (("label", "dog"), ("sidecar", "Sunset at the beach")),
    ),
    Row(
        2,
        1,
        "2019/beach/sub/IMG_0002.png",
        3_000_000,
        1920,
        1080,
        "png",
        datetime(2019, 5, 31, 23, 59, 59),
        "Apple iPhone 12",
        datetime(2026, 10, 30),
        (("tag", "Golden Retriever"),),
    ),
    Row(3, 1, "a[1]/pic.webp", 2_097_152, 800, 600, "webp", datetime(2020, 1, 1), None),
    Row(4, 1, "a1/pic.jpg", 500_000, 640, 480, "jpeg", datetime(2018, 12, 31, 23, 59), "Canon 100%_zoom"),
    Row(
        5,
        2,
        "trips/beach/x.tiff",
        10_000_000,
        6000,
        4000,
        "tiff",
        datetime(2021, 3, 1),
        "Nikon D750",
        ADDED,
        (("embedded", "sunset over hills"),),
    ),
    Row(6, 2, "top.gif", 1000, 100, 100, "gif", datetime(2019, 6, 1), "Pixel_Cam"),
    Row(7, 1, "2019/beachball/y.jpg", 2_000_000, 1920, 1080, "jpeg", datetime(2019, 12, 31, 23, 59, 59), "Sony\\A7"),
    Row(8, 1, "x/2019/beach/z.jpg", 2_000_001, 1921, 1081, "jpeg", datetime(2019, 6, 1, 10, 30, 30), "PIXEL"),
]
ALL = {r.id for r in SMALL}


@pytest.fixture(scope="module")
def small(tmp_path_factory, new_database):
    base = tmp_path_factory.mktemp("small")
    roots = {1: base / "photos", 2: base / "more"}
    for r in SMALL:
        (roots[r.root_id] / r.path).parent.mkdir(parents=True, exist_ok=True)
    (base / "elsewhere").mkdir()
    engine = make_library(base, roots, SMALL, new_database())
    yield base, roots, engine
    engine.dispose()


@pytest.fixture
def where(small):
    """The ids matching a --where expression (folder names never name a directory here)."""
    base, roots, engine = small
    return lambda text: matching(engine, Filters(where=text), roots, base / "elsewhere")


@pytest.mark.parametrize(
    "text, expected",
    [
        ('taken >= 2019-06-01 and camera ~ "Pixel"', {1, 6, 8}),
        ("(format = jpeg or format = png) and width >= 1920", {1, 2, 7, 8}),
        ('not camera ~ iphone and folder = "2019/beach"', {1, 8}),
        ('tag = dog or tag = "golden retriever"', {1, 2}),
        ("taken = 2019", {1, 2, 6, 7, 8}),
        ("taken < 2019-06", {2, 4}),
        ("added >= 2026-11-01", ALL - {2}),
        ("format in (jpeg, png, webp)", {1, 2, 3, 4, 7, 8}),
        ("camera is null", {3}),
        ("camera is not null", ALL - {3}),
        ("size > 2MB", {2, 3, 5, 8}),
        ("height <= 1080", {2, 3, 4, 6, 7}),
        ('path ~ "IMG_"', {2}),
        ('text ~ "sunset"', {1, 5}),
    ],
)
def test_examples(where, text, expected):
    assert where(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        # date periods: = inside, != outside, < before the start, <= before the end, > after the end
        ("taken = 2019-06", {1, 6, 8}),
        ("taken != 2019-06", ALL - {1, 6, 8}),
        ("taken = 2019-06-01", {6, 8}),
        ("taken <= 2019-06-01", {2, 4, 6, 8}),
        ("taken > 2019-06-01", {1, 3, 5, 7}),
        ("taken >= 2019-06-01T10:30", {1, 3, 5, 7, 8}),
        ("taken = 2019-06-01T10:30", {8}),
        ('taken = "2019-06-01 10:30:30"', {8}),
        ("taken = 2019-06-01T10:30:29", set()),
        ("taken > 2019", {3, 5}),
        ("taken <= 2018", {4}),
        ("taken in (2018, 2021)", {4, 5}),
        ("added < 2026-11", {2}),
        # numbers and sizes
        ("width = 1920", {2, 7}),
        ("width != 1920", ALL - {2, 7}),
        ("width in (100, 640)", {4, 6}),
        ("width > 1920 and height < 3000", {8}),
        ("size = 2MiB", {3}),
        ("size = 2mib", {3}),
        ("size = 2mb", {7}),
        ("size >= 1.5M", {1, 2, 3, 5, 7, 8}),
        ("size < 1k", set()),
        ("size <= 1KB", {6}),
        ("size < 2000KiB", {1, 4, 6, 7, 8}),
        ("size > 0.009GB", {5}),
        ('size = "2 MB"', {7}),
        # formats are normalised like --format
        ("format = JPG", {1, 4, 7, 8}),
        ("format = tif", {5}),
        ("format != jpeg", {2, 3, 5, 6}),
        # camera: case-insensitive; a missing camera matches only != and "not"
        ('camera = "pixel"', {8}),
        ('camera != "pixel"', ALL - {8}),
        ("camera in (pixel, nikon)", {8}),
        ("not camera ~ iphone", ALL - {2}),
        ("camera ~ pixel", {1, 6, 8}),
        # LIKE wildcards are plain characters
        ('camera ~ "100%"', {4}),
        ('camera ~ "%"', {4}),
        ('camera ~ "_"', {4, 6}),
        ('camera ~ "l_7"', set()),
        ('camera ~ "y\\\\a"', {7}),
        ('camera ~ "\\\\"', {7}),
        # path and text
        ('path ~ "img_"', {2}),
        ('path = "top.gif"', {6}),
        ('path = "TOP.GIF"', set()),
        ('path in ("top.gif", "a1/pic.jpg")', {4, 6}),
        ('path != "top.gif"', ALL - {6}),
        ('text = "SUNSET AT THE BEACH"', {1}),
        ('text = "sunset"', set()),
        ('text != "dog"', ALL - {1}),
        ('text in (dog, "sunset over hills")', {1, 5}),
        # tags are labels and tags only, compared whole and case-insensitively
        ("tag = DOG", {1}),
        ("tag = sunset", set()),
        ('tag = "golden"', set()),
        ("tag != dog", ALL - {1}),
        ('tag in (dog, "Golden Retriever")', {1, 2}),
        # the language itself
        ("NOT Width == 1920 AND Format = JPEG", {1, 4, 8}),
        ("width = 100 or width = 640 and height = 3000", {6}),
        ("(width = 100 or width = 640) and height = 480", {4}),
        ("not not width = 100", {6}),
        ("camera = null", set()),
    ],
)
def test_fields_and_operators(where, text, expected):
    assert where(text) == expected


@pytest.mark.parametrize(
    "folder, expected",
    [
        ("beach", {1, 2, 5, 8}),  # whole folder names, at any depth: not "beachball"
        ("beach/", {1, 2, 5, 8}),
        ("2019/beach", {1, 2, 8}),
        ("./2019/beach", {1, 2, 8}),
        ("sub", {2}),
        ("Beach", set()),
        ("img1.jpg", set()),  # a file is not a folder
        ("beach*", {1, 2, 5, 7, 8}),  # wildcards are a glob ...
        ("a[1]", {3, 4}),  # ... and the name literally too
        ("*", ALL - {6}),
    ],
)
def test_folder_names(small, where, folder, expected):
    base, roots, engine = small
    assert where(f"folder = {json.dumps(folder)}") == expected
    assert matching(engine, Filters(folders=(folder,)), roots, base / "elsewhere") == expected


def test_folder_contains_and_not(where):
    assert where('folder ~ "EACH"') == {1, 2, 5, 7, 8}
    assert where('folder ~ "pic"') == set()  # only in file names
    assert where('folder ~ "9/b"') == {1, 2, 7, 8}
    assert where('folder ~ "a[1"') == {3}
    assert where("folder != beach") == {3, 4, 6, 7}


@pytest.mark.parametrize(
    "folder, cwd, expected",
    [
        ("photos/2019", "", {1, 2, 7}),
        ("photos/2019/beach/", "", {1, 2}),
        ("photos/a[1]", "", {3}),  # a directory's path is escaped, never a glob
        ("photos", "", ALL - {5, 6}),
        (".", "photos", ALL - {5, 6}),
        ("..", "photos", ALL),  # above both library folders
        ("2019/beach", "photos", {1, 2}),  # a directory here, not every "2019/beach"
        ("beach", "more/trips", {5}),
    ],
)
def test_folders_that_exist(small, folder, cwd, expected):
    base, roots, engine = small
    for filters in Filters(folders=(folder,)), Filters(where=f"folder = {json.dumps(folder)}"):
        assert matching(engine, filters, roots, base / cwd) == expected


def test_absolute_and_home_folders(small, monkeypatch):
    base, roots, engine = small
    monkeypatch.setenv("HOME", str(base))
    home = Filters(folders=("~/photos/2019/beach",))
    assert matching(engine, home, roots, base / "elsewhere") == {1, 2}
    assert matching(engine, Filters(folders=(str(base / "more"),)), roots, base) == {5, 6}
    several = Filters(folders=(str(base / "more"), "sub"))  # any of them
    assert matching(engine, several, roots, base / "elsewhere") == {2, 5, 6}


def test_folders_outside_the_library(small):
    base, roots, engine = small
    with pytest.raises(UsageError, match=r"^--folder elsewhere: no library folder is under or above it"):
        matching(engine, Filters(folders=("elsewhere",)), roots, base)
    with pytest.raises(UsageError, match=r"^--where: folder 'elsewhere': no library folder"):
        matching(engine, Filters(where="folder = elsewhere"), roots, base)
    with pytest.raises(UsageError, match="no such folder"):
        matching(engine, Filters(folders=(str(base / "missing"),)), roots, base)


def test_option_filters(small):
    base, roots, engine = small

    def ids(**options):
        return matching(engine, Filters(**options), roots, base / "elsewhere")

    assert ids() == ALL
    assert ids(after=parse_date("2019-06")[0]) == {1, 3, 5, 6, 7, 8}
    assert ids(before=parse_date("2019")[0]) == {4}
    assert ids(after=datetime(2019, 6, 1), before=datetime(2019, 6, 2)) == {6, 8}
    assert ids(cameras=("pixel", "NIKON")) == {1, 5, 6, 8}  # any of them
    assert ids(cameras=("100%",)) == {4}
    assert ids(min_width=1920, min_height=1081) == {1, 5, 8}
    assert ids(formats=("JPG", ".tif")) == {1, 4, 5, 7, 8}
    assert ids(tags=("dog",)) == {1}
    assert ids(tags=("dog", "golden retriever")) == set()  # every tag
    assert ids(cameras=("pixel",), where="width < 4000") == {6, 8}


def test_filters_object():
    assert Filters().is_empty() and image_condition(Filters(), {}) is None
    assert not Filters(tags=("x",)).is_empty()
    filters = Filters(
        after=datetime(2019, 6, 1),
        before=datetime(2020, 1, 1, 10, 30),
        cameras=("Pixel",),
        formats=("jpg", "PNG"),
        folders=("a", "b"),
        tags=("dog",),
        min_width=100,
        where="width < 5 or height < 5",
    )
    assert filters.formats == ("jpeg", "png")
    assert filters.describe() == (
        'taken >= 2019-06-01 and taken < 2020-01-01T10:30 and (folder = "a" or folder = "b") '
        'and camera ~ "Pixel" and width >= 100 and format in (jpeg, png) and tag = "dog" '
        "and (width < 5 or height < 5)"
    )
    assert Filters(where="width < 5 and height < 5", min_height=3).describe() == (
        "height >= 3 and width < 5 and height < 5"
    )
    assert Filters(formats=("jpg",)).describe() == "format = jpeg"
    assert Filters().describe() == ""
    data = json.loads(json.dumps(filters.as_dict()))
    assert data["after"] == "2019-06-01T00:00:00" and data["formats"] == ["jpeg", "png"]
    assert data["where"] == "width < 5 or height < 5" and data["min_height"] is None
    with pytest.raises(UsageError, match="--after 2020-01-01 is not before --before 2019-06-01"):
        Filters(after=datetime(2020, 1, 1), before=datetime(2019, 6, 1))
    with pytest.raises(UsageError, match="--where"):
        Filters(where="width >")  # checked when made, before anything is loaded


# -- values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, start, end",
    [
        ("2019", datetime(2019, 1, 1), datetime(2020, 1, 1)),
        ("2019-12", datetime(2019, 12, 1), datetime(2020, 1, 1)),
        ("2019-02", datetime(2019, 2, 1), datetime(2019, 3, 1)),
        ("2020-02-28", datetime(2020, 2, 28), datetime(2020, 2, 29)),
        ("2019-06-01T10:30", datetime(2019, 6, 1, 10, 30), datetime(2019, 6, 1, 10, 31)),
        ("2019-06-01 23:59:59", datetime(2019, 6, 1, 23, 59, 59), datetime(2019, 6, 2)),
        (" 2019-06-01 ", datetime(2019, 6, 1), datetime(2019, 6, 2)),
        ("9999", datetime(9999, 1, 1), datetime.max),
    ],
)
def test_parse_date(text, start, end):
    assert parse_date(text) == (start, end)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "19",
        "2019-6",
        "2019/06/01",
        "2019-13",
        "2019-02-30",
        "0000",
        "2019-06-01T25:00",
        "2019-06-01T10",
        "yesterday",
        "2019-06-01Z",
    ],
)
def test_parse_date_rejects(text):
    with pytest.raises(UsageError, match=r"YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM\[:SS\]"):
        parse_date(text)


def test_sizes_and_formats():
    assert [parse_bytes(s) for s in ("1500", "2MB", "2m", "500k", "1.5GiB", "1KiB", "3 GB", "7b")] == [
        1500,
        2_000_000,
        2_000_000,
        500_000,
        1_610_612_736,
        1024,
        3_000_000_000,
        7,
    ]
    for bad in ("", "MB", "2XB", "-1", "1e3", "9" * 5000):
        with pytest.raises(UsageError):
            parse_bytes(bad)
    assert [normalise_format(f) for f in ("JPG", "jpe", "tif", ".PNG", "webp")] == [
        "jpeg",
        "jpeg",
        "tiff",
        "png",
        "webp",
    ]
    with pytest.raises(UsageError):
        normalise_format(" ")


# -- errors ------------------------------------------------------------------------------------------


def where_error(text: str) -> str:
    with pytest.raises(UsageError) as info:
        parse_where(text)
    return str(info.value)


def test_syntax_error_points_at_the_column():
    assert where_error('taken >= 2019-06-01 andd camera ~ "Pixel"') == (
        "--where: unexpected 'andd' at column 21 (expected and, or, or the end)\n"
        '  taken >= 2019-06-01 andd camera ~ "Pixel"\n'
        "                      ^"
    )
    first_lines = {
        "(width = 1": "unexpected end at column 11 (expected and, or, or ')')",
        "width = 1)": "unexpected ')' at column 10 (expected and, or, or the end)",
        "width": "unexpected end at column 6 (expected an operator (= != < <= > >= ~), in, or is)",
        'camera = "abc': 'unclosed quote " at column 10',
        "2019 = taken": "unexpected '2019' at column 1 (expected a field, not, or '(')",
        "format in ()": "unexpected ')' at column 12 (expected a value)",
        "tag in (a b)": "unexpected 'b' at column 11 (expected ',' or ')')",
        "camera is nul": "unexpected 'nul' at column 11 (expected not or null)",
    }
    for text, message in first_lines.items():
        assert where_error(text).splitlines()[0] == "--where: " + message
    assert where_error("width =\t\n1 1").splitlines()[1:] == ["  width =  1 1", "  " + " " * 11 + "^"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("width > abc", "bad value 'abc' for width at column 9 (expected a whole number"),
        ("taken > hello", "bad value 'hello' for taken at column 9 (expected a date: YYYY"),
        ("size > 2XB", "bad value '2XB' for size at column 8"),
        ("format < png", "format does not take '<' at column 8 (format takes =, !=, in)"),
        ("taken ~ 2019", "taken does not take '~' at column 7"),
        ("folder < x", "folder does not take '<'"),
        ("tag ~ x", "tag does not take '~'"),
        ("width is null", "width does not take 'is null' at column 7"),
        (
            "colour = red",
            "unknown field 'colour' at column 1 (fields: taken, added, width, height, size, duration, "
            "format, camera, folder, path, tag, text, extra.COLUMN)",
        ),
        ('folder = ""', "bad value '' for folder"),
        ("width = 99999999999999999999", "bad value '99999999999999999999' for width"),
    ],
)
def test_type_errors(text, message):
    assert where_error(text).startswith("--where: " + message)


def test_empty_and_oversized_expressions():
    for text in ("", "   ", "\n"):
        assert where_error(text) == "--where: empty expression"
    assert "nested more than" in where_error("not " * 40 + "width = 1")
    assert "nested more than" in where_error("(width = 1 or " * 40 + "width = 1" + ")" * 40)
    assert parse_where("(" * 40 + "width = 1" + ")" * 40)  # parentheses alone nest nothing
    assert "too long" in where_error(" or ".join(["width = 1"] * 201))
    assert parse_where(" or ".join(["width = 1"] * 200))


EXTRAS = [
    Row(1, 1, "d/1.jpg", extra={"split": "Val", "score": 0.25, "n": 9, "flag": True, "label": "cat"}),
    Row(2, 1, "d/2.jpg", extra={"split": "val", "score": 0.5, "n": 10, "flag": False, "label": "dog"}),
    Row(3, 1, "d/3.jpg", extra={"split": "train", "score": 1.5, "n": 100, "label": None}),
    Row(4, 1, "d/4.jpg"),
]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("extra.split = val", {1, 2}),  # text ignoring case
        ("extra.split = val and extra.score >= 0.3", {2}),  # numbers as numbers
        ("extra.n > 9", {2, 3}),  # 10 > 9, though "10" < "9" as text
        ("extra.n = 100", {3}),
        ("extra.flag = true", {1}),
        ("extra.flag = false", {2}),
        ("extra.label ~ a", {1}),
        ("extra.label is null", {3, 4}),  # a JSON null is no value
        ("extra.label is not null", {1, 2}),
        ("not extra.split = val", {3, 4}),
        ("extra.missing = x", set()),
    ],
)
def test_extra_columns(tmp_path, database_url, text, expected):
    roots = {1: tmp_path / "photos"}
    engine = make_library(tmp_path, roots, EXTRAS, database_url)
    try:
        assert matching(engine, Filters(where=text), roots, tmp_path) == expected
    finally:
        engine.dispose()


def test_injection_is_just_a_value(small):
    base, roots, engine = small
    for text in [
        'camera = "x\'); drop table images; --"',
        "camera ~ 'x\" or 1=1 --'",
        'folder = "x\'; drop table images; --"',
        'text ~ "\'); delete from texts; --"',
    ]:
        assert matching(engine, Filters(where=text), roots, base / "elsewhere") == set()
    with engine.connect() as c:
        assert c.scalar(select(func.count()).select_from(Image)) == len(SMALL)
        assert c.scalar(select(func.count()).select_from(ImageText)) == 4


def test_canonical_text():
    text = "NOT (Width==1 AND camera~\"a\\\"b\") OR tag IN ('it\\'s', x) and camera IS NOT null"
    node = parse_where(text)
    assert node == Or(
        (
            Not(And((Compare("width", "=", ("1",)), Compare("camera", "~", ('a"b',))))),
            And((Compare("tag", "in", ("it's", "x")), Compare("camera", "is not null"))),
        )
    )
    assert str(node) == ('not (width = 1 and camera ~ "a\\"b") or tag in ("it\'s", "x") and camera is not null')
    assert parse_where('path = "C:\\Photos\\\\x"') == Compare("path", "=", ("C:\\Photos\\x",))


# -- property tests: SQL against a Python reading of the same expression ----------------------------

FOLDER_NAMES = ["2019", "2020", "beach", "Beach", "a[1]", "a1", "x_y", "100%", "sub dir", "é", "beachball"]
CAMERAS = [None, "Google Pixel 7", "Apple iPhone 12", "Canon 100%_zoom", "Sony\\A7", "PIXEL", "Nikon", "Ünï Cam"]
TEXTS = [
    ("label", "dog"),
    ("tag", "Golden Retriever"),
    ("sidecar", "Sunset at the beach"),
    ("embedded", "dog"),
    ("tag", "DOG"),
    ("label", "50% off_"),
    ("sidecar", "a 'quoted' \"text\""),
]
MOMENTS = [
    datetime(2019, 1, 1),
    datetime(2019, 6, 1),
    datetime(2019, 12, 31, 23, 59, 59),
    datetime(2019, 6, 1, 10, 30),
    datetime(2020, 2, 29, 12),
]


def random_rows(count: int = 200, seed: int = 7) -> list[Row]:
    rng = random.Random(seed)
    rows = []
    for i in range(1, count + 1):
        folders = "".join(rng.choice(FOLDER_NAMES) + "/" for _ in range(rng.randrange(4)))
        name = rng.choice(["IMG_", "pic", "a_b%", "Sunset"]) + f"{i}." + rng.choice(["jpg", "png"])
        if rng.random() < 0.1:
            taken = None
        elif rng.random() < 0.3:
            taken = rng.choice(MOMENTS)
        else:
            taken = datetime(2018, 1, 1) + timedelta(seconds=rng.randrange(4 * 365 * 86400))
        rows.append(
            Row(
                id=i,
                root_id=rng.choice([1, 2]),
                path=folders + name,
                size=rng.choice([0, 999, 1000, 1024, 2_000_000, 2_097_152, rng.randrange(10**8)]),
                width=rng.choice([100, 640, 1080, 1920, rng.randrange(5000)]),
                height=rng.choice([100, 480, 1080, rng.randrange(5000)]),
                format=rng.choice(["jpeg", "png", "webp", "tiff", "gif"]),
                taken=taken,
                camera=rng.choice(CAMERAS),
                added_at=datetime(2026, 1, 1) + timedelta(minutes=rng.randrange(365 * 1440)),
                texts=tuple(set(rng.sample(TEXTS, rng.randrange(4)))),
            )
        )
    return rows


ROWS = random_rows()


@pytest.fixture(scope="module")
def rand(tmp_path_factory, new_database):
    base = tmp_path_factory.mktemp("random")
    (base / "cwd").mkdir()  # empty: no folder value names a directory here
    roots = {1: base / "r1", 2: base / "r2"}
    engine = make_library(base, roots, ROWS, new_database())
    yield lambda text: matching(engine, Filters(where=text), roots, base / "cwd")
    engine.dispose()


ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold(text: str) -> str:
    return text.translate(ASCII_LOWER)  # SQLite's lower() folds ASCII only


def evaluate(node, row: Row) -> bool:
    """What an expression means, in plain Python."""
    match node:
        case Not(operand):
            return not evaluate(operand, row)
        case And(operands):
            return all(evaluate(o, row) for o in operands)
        case Or(operands):
            return any(evaluate(o, row) for o in operands)
    field, op, values = node.field, node.op, node.values
    if op == "!=":
        return not evaluate(Compare(field, "=", values), row)
    if op == "in":
        return any(evaluate(Compare(field, "=", (v,)), row) for v in values)
    if op in ("is null", "is not null"):
        return (row.camera is None) == (op == "is null")
    value = values[0]
    if field in ("taken", "added"):
        moment = row.taken if field == "taken" else row.added_at
        start, end = parse_date(value)
        if moment is None:
            return False
        return {
            "=": start <= moment < end,
            "<": moment < start,
            "<=": moment < end,
            ">": moment >= end,
            ">=": moment >= start,
        }[op]
    if field in ("width", "height", "size"):
        number = parse_bytes(value) if field == "size" else int(value)
        actual = getattr(row, field)
        return {
            "=": actual == number,
            "<": actual < number,
            "<=": actual <= number,
            ">": actual > number,
            ">=": actual >= number,
        }[op]
    if field == "format":
        return row.format == normalise_format(value)
    if field == "camera":
        return row.camera is not None and (
            fold(row.camera) == fold(value) if op == "=" else fold(value) in fold(row.camera)
        )
    if field == "folder":
        if op == "~":
            return "/" in row.path and fold(value) in fold(row.path[: row.path.rindex("/")])
        name, folders = value.rstrip("/"), row.path.split("/")[:-1]
        if any(folders[i : i + len(name.split("/"))] == name.split("/") for i in range(len(folders))):
            return True
        return any(c in name for c in "*?[") and any(
            fnmatch.fnmatchcase(row.path, p) for p in (f"{name}/*", f"*/{name}/*")
        )
    if field == "path":
        return row.path == value if op == "=" else fold(value) in fold(row.path)
    texts = [t for s, t in row.texts if field == "text" or s in ("label", "tag")]
    if op == "~":
        return any(fold(value) in fold(t) for t in texts)
    return any(fold(t) == fold(value) for t in texts)


some_text = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=5)
sample_text = st.sampled_from(["a", "%", "_", "\\", "'", '"', "beach", "PIXEL", "dog", "é", "ü", " "])
date_literal = st.builds(
    lambda moment, form: moment.strftime(form),
    st.datetimes(datetime(2017, 1, 1), datetime(2027, 12, 31)),
    st.sampled_from(["%Y", "%Y-%m", "%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S"]),
) | st.sampled_from(["2019", "2019-06", "2019-06-01", "2019-06-01T10:30", "2019-12-31T23:59:59", "2026-07"])
number = st.integers(0, 5000).map(str) | st.sampled_from(["100", "480", "640", "1080", "1920"])
size = st.integers(0, 10**8).map(str) | st.sampled_from(["1000", "1K", "1KiB", "2MB", "2mib", "1.5M", "0", "999"])
ORDERED = ["=", "!=", "<", "<=", ">", ">="]


def comparisons(fields, ops, values):
    single = st.builds(lambda f, o, v: Compare(f, o, (v,)), st.sampled_from(fields), st.sampled_from(ops), values)
    if "in" not in ops:
        return single
    listed = st.builds(
        lambda f, vs: Compare(f, "in", tuple(vs)), st.sampled_from(fields), st.lists(values, min_size=1, max_size=3)
    )
    return single | listed


leaves = st.one_of(
    comparisons(["taken", "added"], ORDERED + ["in"], date_literal),
    comparisons(["width", "height"], ORDERED + ["in"], number),
    comparisons(["size"], ORDERED, size),
    comparisons(["format"], ["=", "!=", "in"], st.sampled_from(["jpeg", "JPG", "png", "tif", "webp", "gif", "bmp"])),
    comparisons(
        ["camera"], ["=", "!=", "~", "in"], st.sampled_from([c for c in CAMERAS if c]) | sample_text | some_text
    ),
    st.sampled_from([Compare("camera", "is null"), Compare("camera", "is not null")]),
    comparisons(["folder"], ["=", "!="], st.sampled_from(FOLDER_NAMES + ["2019/beach", "beach/", "beach*", "a/b"])),
    comparisons(["folder"], ["~"], (sample_text | some_text).filter(str.strip)),
    comparisons(["path"], ["=", "!=", "in"], st.sampled_from([r.path for r in ROWS[:20]]) | some_text),
    comparisons(["path", "text"], ["~"], sample_text | some_text),
    comparisons(
        ["tag", "text"], ["=", "!=", "in"], st.sampled_from([t for _, t in TEXTS] + ["golden retriever"]) | some_text
    ),
)
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        children.map(Not),
        st.lists(children, min_size=2, max_size=3).map(lambda c: And(tuple(c))),
        st.lists(children, min_size=2, max_size=3).map(lambda c: Or(tuple(c))),
    ),
    max_leaves=8,
)
# The autouse fixture of conftest is function-scoped; these tests do not depend on it.
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(node=trees)
def test_sql_agrees_with_python(rand, node):
    expected = {row.id for row in ROWS if evaluate(node, row)}
    assert rand(str(node)) == expected


@PROPERTY
@given(node=trees)
def test_canonical_text_round_trips(node):
    assert parse_where(str(node)) == node
    assert str(parse_where(str(node))) == str(node)


TOKENS = [
    "taken",
    "added",
    "width",
    "height",
    "size",
    "format",
    "camera",
    "folder",
    "path",
    "tag",
    "text",
    "colour",
    "and",
    "OR",
    "not",
    "in",
    "is",
    "null",
    "(",
    ")",
    ",",
    "=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "~",
    "2019",
    "2019-06-01",
    "2019-06-01T10:30",
    "2MB",
    "jpeg",
    '"x y"',
    "'y'",
    "abc",
    '"',
    "'",
    "\\",
    "-1",
    "1.5",
    "/",
    ".",
    "*",
    "a[1]",
    ";",
    "--",
    "%",
    "_",
    "é",
]


def check_fuzz(rand, text: str):
    try:
        parse_where(text)
    except UsageError as e:
        assert str(e).startswith("--where: ") and "Token(" not in str(e) and "Unexpected" not in str(e)
        return
    try:
        rand(text)  # SQLite takes whatever parses
    except UsageError as e:
        assert "folder" in str(e)  # "." or ".." name directories outside the library


@PROPERTY
@given(text=st.text(max_size=60))
def test_fuzz_text(rand, text):
    check_fuzz(rand, text)


@PROPERTY
@given(tokens=st.lists(st.sampled_from(TOKENS), max_size=12), glue=st.sampled_from([" ", ""]))
def test_fuzz_token_soup(rand, tokens, glue):
    check_fuzz(rand, glue.join(tokens))

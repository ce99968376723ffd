"""Property-based fuzzing of what users type: queries, --where expressions, -k and odd strings
(NUL bytes, huge texts) give a result or a typed one-line error, never an unexpected exception.
Also libraries in bad states: a corrupt database file, one from a newer cbir."""

from __future__ import annotations

import sqlite3

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbir.cli import cli
from cbir.demo import make_demo_photos
from tests.conftest import run_cbir

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
WORDS = [
    "taken",
    "width",
    "camera",
    "folder",
    "path",
    "text",
    "tag",
    "extra.score",
    "extra.a b",
    ">=",
    "<",
    "=",
    "!=",
    "~",
    "in",
    "is",
    "not",
    "null",
    "and",
    "or",
    "(",
    ")",
    ",",
    '"x"',
    "'y",
    "2019",
    "2019-13-40",
    "1e999",
    "-5",
    "99999999999999999999999",
    "\x00",
    "é",
    "\\",
    '"',
    "+",
    "-",
    ":2",
    "",
    " ",
]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    make_demo_photos(base / "photos", 24)
    library = str(base / "lib")
    assert run_cbir("ingest", str(base / "photos"), "--library", library, "--model", "cbir-tiny", "-q").returncode == 0
    return library


def _search(library: str, *args: str):
    result = CliRunner().invoke(cli, ["search", *args, "--library", library], catch_exceptions=False)
    assert "Error: unexpected " not in result.output, result.output  # the catch-all for untyped errors
    assert result.exit_code in (0, 2), (args, result.exit_code, result.output)
    if result.exit_code:
        assert result.output.count("\n") <= 4  # one line, or a caret diagram under the text
    return result


@FUZZ
@given(text=st.text(max_size=300))
def test_any_query_text(library, text):
    _search(library, text, "-k", "3")


@FUZZ
@given(words=st.lists(st.sampled_from(WORDS), max_size=12), tail=st.text(max_size=20))
def test_any_where_expression(library, words, tail):
    _search(library, "a red circle", "--where", " ".join(words) + tail, "-k", "3")


@FUZZ
@given(k=st.one_of(st.integers(-10, 10**15).map(str), st.text(max_size=8)), offset=st.integers(-3, 10**12).map(str))
def test_any_k_and_offset(library, k, offset):
    _search(library, "star", "-k", k, "--offset", offset)


def test_huge_and_nul_strings(library):
    _search(library, "dog " * 50_000)
    _search(library, "a\x00b")
    _search(library, "x", "--where", "camera = " + "\x00" * 10)
    _search(library, "--image", "no/such/file.jpg")
    _search(library, "--like", "\x00")


def test_a_corrupt_database_and_a_newer_library_are_one_line_errors(library, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "library.db").write_bytes(b"SQLite format 3\x00" + b"\x13" * 5000)
    out = run_cbir("status", "--library", str(corrupt))
    assert out.returncode != 0 and len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr
    assert "not a readable cbir library" in out.stderr

    import shutil

    newer = tmp_path / "newer"
    shutil.copytree(library, newer)
    with sqlite3.connect(newer / "library.db") as c:
        c.execute("update alembic_version set version_num = '9999'")
    out = run_cbir("search", "x", "--library", str(newer))
    assert out.returncode != 0 and len(out.stderr.splitlines()) == 1
    assert "newer cbir" in out.stderr

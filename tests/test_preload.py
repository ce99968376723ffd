"""A cold text search loads its model on a thread from the start of the command (cbir.preload,
read through cbir.store.hint); the catalogue, opened properly, has the last word."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cbir.background import Background
from cbir.config import resolve_settings
from cbir.encode.fake import FakeEncoder
from cbir.library import Library
from cbir.preload import start_loading
from cbir.store.hint import model_fingerprint_hint
from tests.conftest import REPO, run_cbir, stored_vector_library, write_image


def test_the_hint_is_the_catalogues_fingerprint_or_none(tmp_path):
    lib, encoder = stored_vector_library(tmp_path, [], [])
    assert model_fingerprint_hint(lib.path) == lib.fingerprint  # as JSON holds it: lists, not tuples
    assert model_fingerprint_hint(tmp_path / "nowhere") is None
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "library.db").write_bytes(b"not a database" * 100)
    assert model_fingerprint_hint(garbage) is None


def test_a_model_loaded_ahead_is_used_only_when_it_is_the_librarys(tmp_path):
    lib, encoder = stored_vector_library(tmp_path, [], [])
    lib.close()
    settings = resolve_settings(library=lib.path, env={})
    same = FakeEncoder()
    opened = Library.open(settings, loading=Background(lambda: same, name="test"))
    assert opened.encoder is same
    opened.close()
    other = FakeEncoder(seed=5)  # a stale hint: another model than the catalogue records
    opened = Library.open(settings, loading=Background(lambda: other, name="test"))
    opened._encoder = None
    try:
        opened.encoder  # noqa: B018 - the load the stale one forces: the fake model is not loadable by name
    except Exception as e:  # the library's own model ("fake") loaded by name: not a real model
        assert "fake" in str(e)
    else:
        raise AssertionError("the stale preloaded model was used")


def test_no_preload_where_the_catalogue_must_decide(tmp_path):
    lib, _ = stored_vector_library(tmp_path, [], [])
    base = {"library": lib.path, "env": {}}
    assert start_loading(resolve_settings(**base, database_url="postgresql+psycopg://h/db"), True) is None
    assert start_loading(resolve_settings(**base, model="ViT-B-32:none"), True) is None  # refused by the library
    assert start_loading(resolve_settings(library=tmp_path / "new", env={}), True) is None


def test_a_cold_text_search_starts_the_model_before_sqlalchemy(tmp_path, onnx_cache):
    """The model thread starts before the Library's imports: SQLAlchemy is not yet loaded then."""
    code = (
        "import sys, threading, cbir.preload as p\n"
        "real = p.start_loading\n"
        "def spy(*a, **k):\n"
        "    print('sqlalchemy loaded at start:', 'sqlalchemy' in sys.modules, file=sys.stderr)\n"
        "    started = real(*a, **k)\n"
        "    print('started:', started is not None, file=sys.stderr)\n"
        "    return started\n"
        "p.start_loading = spy\n"
        "from cbir.cli import main\n"
        "sys.argv = ['cbir', 'search', 'a red circle on a gray background', '--json', '-k', '2']\n"
        "main()\n"
    )
    for i in range(4):
        write_image(tmp_path / "photos" / f"img{i}.jpg", seed=i)
    library = tmp_path / "lib"
    out = run_cbir("ingest", str(tmp_path / "photos"), "--library", str(library), "--model", "cbir-tiny", "-q")
    assert out.returncode == 0, out.stderr
    env = {**os.environ, "CBIR_LIBRARY": str(library), "CBIR_CACHE_DIR": str(onnx_cache)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "sqlalchemy loaded at start: False" in done.stderr and "started: True" in done.stderr
    hits = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(hits) == 2 and all(hit["path"].endswith(".jpg") for hit in hits)

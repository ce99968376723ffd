from __future__ import annotations

import importlib
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.config import resolve_settings
from cbir.encode.fake import FakeEncoder
from cbir.library import Library
from tests import postgres

REPO = Path(__file__).resolve().parents[1]
# CI sets this so that the Ray tests fail, rather than skip, when ray is not installed.
REQUIRE_RAY = os.environ.get("CBIR_REQUIRE_RAY") == "1"


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    """One cache of exported ONNX graphs for the session, never the user's own."""
    return tmp_path_factory.mktemp("cbir-cache")


# Read at import: isolated_env removes every CBIR_* variable before a test (and its
# function-scoped fixtures) runs. Set in .ci/run, where a missing extra fails its tests.
REQUIRE_MEDIA = os.environ.get("CBIR_REQUIRE_MEDIA") == "1"


def media_module(name: str):
    """A module of the media extra (rawpy, pypdfium2, av): the test skips without it, and fails
    under CBIR_REQUIRE_MEDIA=1."""
    if REQUIRE_MEDIA:
        return importlib.import_module(name)  # an ImportError here fails the test
    return pytest.importorskip(name, reason=f"the media extra ({name}) is not installed: pip install 'cbir[media]'")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path, onnx_cache):
    """No test sees the developer's CBIR_* settings or writes into the checkout's indexes/ or
    the user's cache."""
    for var in list(os.environ):
        if var.startswith("CBIR_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("CBIR_CACHE_DIR", str(onnx_cache))
    monkeypatch.chdir(tmp_path)


def write_image(path: Path, seed: int = 0, size=(64, 48), fmt: str | None = None, **save) -> Path:
    """A random-pixel image (each seed a different picture)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, fmt, **save)
    return path


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the session (started here, or CBIR_TEST_DATABASE_URL's): its
    admin URL. Skips when PostgreSQL is not installed, unless CBIR_REQUIRE_POSTGRES=1 (CI)."""
    reason = postgres.unavailable_reason()
    if reason:
        if postgres.REQUIRED:
            pytest.fail(f"CBIR_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    with postgres.server() as url:
        yield url


def _databases(request):
    """A function giving a new database URL at each call, all dropped at the end (None each
    time for SQLite, whose database is the library folder's file)."""
    if request.param == "sqlite":
        yield lambda: None
        return
    server = request.getfixturevalue("postgres_server")
    with ExitStack() as stack:
        yield lambda: stack.enter_context(postgres.fresh_database(server))


# The PostgreSQL runs of the storage and planner suites start a server: they belong to the long
# suite (.ci/run), not the README's fast tier.
ON_BOTH_DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]


@pytest.fixture(params=ON_BOTH_DATABASES)
def database_url(request):
    """Each test twice: None (SQLite in the library folder), then a new PostgreSQL database."""
    for new in _databases(request):
        yield new()


@pytest.fixture(scope="module", params=ON_BOTH_DATABASES)
def new_database(request):
    """For module-scoped libraries: each test of the module twice, SQLite then PostgreSQL;
    a call gives a library its own database (None: SQLite)."""
    yield from _databases(request)


@pytest.fixture
def photos(tmp_path) -> Path:
    """20 distinct small images in nested folders."""
    root = tmp_path / "photos"
    for i in range(20):
        write_image(root / ("a" if i % 2 else "b/c") / f"img{i:02d}.jpg", seed=i)
    return root


@pytest.fixture
def fake_library(tmp_path):
    """A new library on the deterministic fake encoder (no model, no torch)."""

    def make(name: str = "lib", encoder: FakeEncoder | None = None, **options) -> Library:
        settings = resolve_settings(library=tmp_path / name, workers=1, **options)
        return Library.open(settings, create=True, encoder=encoder or FakeEncoder())

    return make


def stored_vector_library(folder: Path, records: list, vectors: list, dim: int = 32):
    """A library (and its FakeEncoder) whose images are ``records`` with ``vectors``, stored
    straight in the catalog under ``folder``: no images to decode."""
    import json

    from cbir.store.catalog import MODEL, Changes

    encoder = FakeEncoder(dim=dim)
    lib = Library.open(resolve_settings(library=folder / "lib", env={}), create=True, encoder=encoder)
    lib.catalog.set_meta(MODEL, json.dumps(encoder.fingerprint()))
    lib.catalog.dim = dim
    root_id, _ = lib.catalog.root_for(folder / "photos")
    changes = Changes(root_id)
    changes.added.extend(zip(records, vectors))
    lib.catalog.apply(changes)
    return lib, encoder


def count_images(db) -> int:
    """Images in a library database, read as another process would (0 before it exists)."""
    import sqlite3

    try:
        with sqlite3.connect(db, timeout=30) as c:
            return c.execute("select count(*) from images").fetchone()[0]
    except sqlite3.Error:
        return 0


def cbir_env() -> dict[str, str]:
    """The environment for a cbir subprocess: none of the developer's CBIR_* settings, but the
    session's ONNX cache (CBIR_CACHE_DIR, set by isolated_env), never the user's own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CBIR_") or k == "CBIR_CACHE_DIR"}


def tiny_ingest_command(photos: Path, library: Path, *options: str) -> list[str]:
    """`python -m cbir ingest PHOTOS` into LIBRARY as the kill tests run it: cbir-tiny in batches
    of 4 with one decode worker (so that a kill lands mid-run), quiet; ``options`` are added."""
    return [
        *(sys.executable, "-m", "cbir", "ingest", str(photos), "--library", str(library)),
        *("--model", "cbir-tiny", "--batch-size", "4", "--workers", "1", "-q", *options),
    ]


def ctrl_c_as_in_a_terminal() -> None:
    """A child's ``preexec_fn``: SIGINT at its default, as for a command typed in a terminal. A
    test run started in the background by a non-interactive shell inherits SIGINT ignored, and
    Python then installs no KeyboardInterrupt handler: a "Ctrl-C" test would see nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cbir(*args: str, env: dict | None = None, input: str | None = None, cwd=None, timeout=300):
    """The real console entry point in a subprocess, as a user runs it."""
    full_env = cbir_env()
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cbir", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input,
        cwd=cwd,
        timeout=timeout,
    )


def need_ray() -> None:
    """Skip the test when ray is not installed, unless CBIR_REQUIRE_RAY=1 (CI): a failure there."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if REQUIRE_RAY:
            pytest.fail("CBIR_REQUIRE_RAY=1 but ray is not installed: pip install 'cbir[ray]'")
        pytest.skip("ray is not installed (pip install 'cbir[ray]')")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster (2 CPUs, no dashboard, bound to 127.0.0.1) shared by every Ray
    test of the session: starting one takes seconds. Skips when ray is not installed, unless
    CBIR_REQUIRE_RAY=1 (CI), where that is a failure."""
    need_ray()
    from cbir.distributed.cluster import connected

    with connected(None, num_cpus=2) as ray:  # cbir's own private cluster: new, on 127.0.0.1
        yield ray

"""`cbir demo`, the README's first command: it builds its library and searches it, and builds it
again when a cbir release changed the bundled model's weights, without touching other libraries."""

from __future__ import annotations

import json

import pytest

from cbir.errors import ModelMismatch
from cbir.library import open_library
from cbir.store.catalog import MODEL
from tests.conftest import run_cbir

OLD_WEIGHTS = "sha256:0123456789abcdef"


def demo(library, *args):
    return run_cbir("demo", "--library", str(library), "--images", "24", "-k", "3", *args)


def pretend_built_with_other_weights(library) -> None:
    with open_library(library=library) as lib:
        lib.catalog.set_meta(MODEL, json.dumps({**lib.fingerprint, "weights": OLD_WEIGHTS}))


def test_the_demo_builds_its_library_and_builds_it_again_after_the_model_changed(tmp_path):
    library = tmp_path / "demo"
    out = demo(library)
    assert out.returncode == 0, out.stderr
    assert 'cbir search "a red circle on a gray background"' in out.stdout
    assert "Text search found" in out.stdout and out.stderr == ""

    pretend_built_with_other_weights(library)
    with open_library(library=library) as lib:
        with pytest.raises(ModelMismatch, match="built with other weights of cbir-tiny .sha256:0123456789abcdef. than"):
            lib.encoder  # noqa: B018 (what any command meets)
    out = demo(library)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"The demo library at {library} was built with an earlier cbir-tiny: building it")
    assert "24 new, 0 unchanged" in out.stdout
    with open_library(library=library) as lib:
        assert lib.fingerprint["weights"] != OLD_WEIGHTS
        assert lib.search("a red circle on a gray background", k=1)


def test_a_library_of_other_photos_is_never_cleared(tmp_path):
    """--library pointing at the user's own cbir-tiny library: the usual one-line refusal."""
    photos, library = tmp_path / "mine", tmp_path / "lib"
    assert run_cbir("demo", "--library", str(tmp_path / "scratch"), "--images", "12").returncode == 0
    (tmp_path / "scratch" / "photos").rename(photos)
    assert run_cbir("ingest", str(photos), "--library", str(library), "--model", "cbir-tiny", "-q").returncode == 0
    with open_library(library=library) as lib:
        images = lib.status().images
    pretend_built_with_other_weights(library)
    out = demo(library)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "built with other weights of cbir-tiny" in out.stderr
    with open_library(library=library) as lib:
        assert lib.fingerprint["weights"] == OLD_WEIGHTS and lib.status().images == images > 0

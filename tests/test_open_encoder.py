"""cbir.library.open_encoder: the one model-choice policy of the commands that work on image files
(cbir classify, cbir locate) rather than on a library."""

import pytest

import cbir.encode
from cbir.config import DEFAULT_MODEL
from cbir.encode.fake import FakeEncoder
from cbir.errors import LibraryNotFound, ModelMismatch
from cbir.library import open_encoder


@pytest.fixture
def loads(monkeypatch):
    """The models loaded on their own (not through a library), as (spec, device)."""
    loaded = []

    def load(spec, device="auto", backend="auto", precision="fp32"):
        loaded.append((spec, device))
        return FakeEncoder()

    monkeypatch.setattr(cbir.encode, "load_encoder", load)
    return loaded


def test_without_a_library_the_requested_or_default_model_is_loaded(loads):
    open_encoder(device="cpu")
    open_encoder(model="cbir-tiny", device="cpu")
    assert loads == [(DEFAULT_MODEL, "cpu"), ("cbir-tiny", "cpu")]


def test_a_named_library_must_exist(tmp_path, loads, monkeypatch):
    with pytest.raises(LibraryNotFound):
        open_encoder(library=str(tmp_path / "nolib"))
    monkeypatch.setenv("CBIR_LIBRARY", str(tmp_path / "nolib"))
    with pytest.raises(LibraryNotFound):
        open_encoder(model="cbir-tiny")
    assert loads == []


def test_a_library_without_a_model_yet_gives_the_model_for_a_new_library(fake_library, tmp_path, loads):
    fake_library("empty").close()
    open_encoder(library=str(tmp_path / "empty"), model="cbir-tiny")
    assert loads == [("cbir-tiny", "auto")]


def test_a_library_named_or_found_by_default_gives_its_own_model(fake_library, photos, tmp_path, loads):
    for name in ("lib", "indexes/default"):  # indexes/ in the working folder: the default library's home
        with fake_library(name) as lib:
            lib.ingest(photos)
    open_encoder(library=str(tmp_path / "lib"), device="cpu")
    open_encoder(device="cpu")  # nothing named, no --model: the default library's
    assert [(spec.arch, device) for spec, device in loads] == [("fake", "cpu"), ("fake", "cpu")]
    with pytest.raises(ModelMismatch):
        open_encoder(library=str(tmp_path / "lib"), model="cbir-tiny")
    open_encoder(model="cbir-tiny")  # a --model without a named library is loaded on its own
    assert loads[2:] == [("cbir-tiny", "auto")]

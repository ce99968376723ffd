"""`cbir models check`: int8 measured against fp32 on a library's own images (cbir-tiny), and the
switch it gates: recorded in the library's fingerprint when it passes, nothing changed when not."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest
from click.testing import CliRunner

from cbir.cli import cli
from cbir.config import resolve_settings
from cbir.library import Library
from cbir.precision_check import Thresholds, check_precision, switch_precision
from cbir.store.catalog import MODEL
from cbir.synthetic import make_gallery
from tests.conftest import write_image

IMAGES = 40


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One ONNX cache for the module: cbir-tiny is exported (and quantised) once."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(autouse=True)
def cache_dir(monkeypatch, cache):
    monkeypatch.setenv("CBIR_CACHE_DIR", str(cache))


@pytest.fixture(scope="module")
def built(tmp_path_factory, cache):
    """A cbir-tiny library of captioned images, ingested once; tests use copies of it."""
    base = tmp_path_factory.mktemp("precision")
    for path, scene in make_gallery(base / "photos", IMAGES, seed=11):
        path.with_name(path.name + ".txt").write_text(scene.caption)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("CBIR_CACHE_DIR", str(cache))
        with Library.open(resolve_settings(library=base / "lib", model="cbir-tiny", env={}), create=True) as lib:
            assert lib.ingest(base / "photos").added == IMAGES
    return base / "lib"


@pytest.fixture
def library(built, tmp_path):
    folder = tmp_path / "lib"
    shutil.copytree(built, folder)
    return folder


def open_library(folder) -> Library:
    return Library.open(resolve_settings(library=folder, env={}))


def stored_fingerprint(folder) -> str:
    with open_library(folder) as lib:
        return lib.catalog.get_meta(MODEL)


def check(folder, *args):
    return CliRunner().invoke(cli, ["models", "check", "--library", str(folder), *args])


def test_the_measurement_is_sane_and_passes(library):
    with open_library(library) as lib:
        measured = check_precision(lib, "int8", sample=200)
    assert (measured.sampled, measured.unreadable) == (IMAGES, 0)  # every image, when fewer than asked
    assert 0.99 <= measured.min_cosine <= measured.mean_cosine <= 1 + 1e-6
    assert measured.min_cosine < 1  # int8 does change the vectors
    images, texts = measured.image_queries, measured.text_queries
    assert (images.queries, images.k) == (IMAGES, 10)
    assert texts is not None and (texts.queries, texts.k) == (IMAGES, 10)  # one caption per image
    for overlap in (images, texts):
        assert 0 <= overlap.worst <= overlap.mean <= 1
    assert measured.passed and measured.failures() == []


def test_switch_records_int8_and_a_second_open_uses_it(library):
    result = check(library, "--switch")
    assert result.exit_code == 0, result.output
    assert "passed" in result.stdout and "switched the library to int8" in result.stdout
    with open_library(library) as lib:
        assert lib.fingerprint["precision"] == "int8"
        assert lib.encoder.fingerprint()["precision"] == "int8"  # new images are encoded at int8
        assert lib.search("a red circle on a gray background", k=3)  # the stored vectors still serve
    again = check(library, "--switch")
    assert again.exit_code == 0 and "at int8 already; nothing changed" in again.stdout
    back = check(library, "--switch", "--precision", "fp32")
    assert back.exit_code == 0, back.output
    assert "cosine" not in back.stdout  # fp32 is the reference: nothing to measure
    with open_library(library) as lib:
        assert "precision" not in lib.fingerprint
        assert "precision" not in lib.encoder.fingerprint()


def test_below_the_thresholds_it_refuses_with_one_line_and_changes_nothing(library):
    with open_library(library) as lib:
        measured = check_precision(lib, "int8")
    before = stored_fingerprint(library)
    stricter = f"{measured.min_cosine + 1e-6:.9f}"  # just above what this library reaches
    result = check(library, "--switch", "--min-cosine", stricter)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: int8 is below the thresholds")
    assert "min cosine" in result.stderr and "switched" not in result.stdout
    assert stored_fingerprint(library) == before
    with open_library(library) as lib:  # the Python API refuses the same way
        strict = check_precision(lib, "int8", thresholds=Thresholds(mean_overlap=1.01))
        with pytest.raises(Exception, match="below the thresholds"):
            switch_precision(lib, "int8", strict)
    assert stored_fingerprint(library) == before
    without_switch = check(library, "--min-overlap", "1.01")  # the check alone exits 1 too
    assert without_switch.exit_code == 1 and "overlap" in without_switch.stderr


def test_json_fields(library):
    result = check(library, "--json", "--sample", "10")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {
        "precision",
        "reference",
        "sampled",
        "unreadable",
        "min_cosine",
        "mean_cosine",
        "image_queries",
        "text_queries",
        "thresholds",
        "passed",
        "switched",
        "library_precision",
    }
    assert (report["precision"], report["reference"], report["sampled"]) == ("int8", "fp32", 10)
    assert set(report["image_queries"]) == {"queries", "k", "mean", "worst"}
    assert report["image_queries"]["k"] == 9  # the other sampled images
    assert report["thresholds"] == {"min_cosine": 0.995, "mean_overlap": 0.9}
    assert (report["passed"], report["switched"], report["library_precision"]) == (True, False, "fp32")


def test_thresholds_can_only_be_raised_and_fp32_is_no_check(library):
    lowered = check(library, "--switch", "--min-cosine", "0.5")
    assert lowered.exit_code == 2 and "can only be raised" in lowered.stderr
    reference = check(library, "--precision", "fp32")
    assert reference.exit_code == 2 and "--switch --precision fp32" in reference.stderr
    assert "precision" not in json.loads(stored_fingerprint(library))


def test_unreadable_images_are_left_out_and_counted(tmp_path):
    photos = tmp_path / "photos"
    for i in range(5):
        write_image(photos / f"{i}.png", seed=i)
    with Library.open(resolve_settings(library=tmp_path / "lib", model="cbir-tiny", env={}), create=True) as lib:
        lib.ingest(photos)
        (photos / "0.png").unlink()
        (photos / "1.png").write_bytes(b"no longer an image")
        measured = check_precision(lib, "int8")
    assert (measured.sampled, measured.unreadable) == (3, 2)
    assert measured.text_queries is None  # no captions: image queries only
    assert measured.image_queries.k == 2


def test_images_inside_webdataset_tars_are_read_from_the_tars(tmp_path):
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(4):
            data = write_image(tmp_path / "src" / f"{i}.jpg", seed=i).read_bytes()
            info = tarfile.TarInfo(f"{i:05d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with Library.open(resolve_settings(library=tmp_path / "lib", model="cbir-tiny", env={}), create=True) as lib:
        assert lib.ingest(shard).added == 4
        measured = check_precision(lib, "int8")
    assert (measured.sampled, measured.unreadable) == (4, 0)

"""Choosing the backend (torch or ONNX Runtime) and the precision: settings, the choice, the
fallback to torch, libraries searched across backends, the cold text query without torch, int8."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cbir.config import resolve_settings
from cbir.encode import load_encoder, onnx_export
from cbir.encode.choice import backend_to_use
from cbir.encode.clip import OpenClipEncoder
from cbir.encode.onnx_runtime import OnnxEncoder, cache_root, entry_key
from cbir.encode.spec import parse_model_spec
from cbir.errors import ModelMismatch, UsageError
from cbir.library import open_library
from tests.conftest import cbir_env, run_cbir, write_image

QUERY = "a red circle on a gray background"
HEAVY = ("torch", "torchvision", "open_clip")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gallery")
    for i in range(24):
        write_image(root / f"img{i:02d}.jpg", seed=i)
    return root


@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory, gallery, onnx_cache) -> Path:
    """A cbir-tiny library ingested on torch."""
    folder = tmp_path_factory.mktemp("lib") / "lib"
    out = run_cbir(
        "ingest", str(gallery), "--library", str(folder), "--model", "cbir-tiny", "--backend", "torch", "-q",
        env={"CBIR_CACHE_DIR": str(onnx_cache)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return folder


def one_line_error(out) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    return lines[0]


# -- settings ----------------------------------------------------------------------------------
def test_settings_default_to_auto_and_the_librarys_precision():
    settings = resolve_settings(library="lib", env={})
    assert (settings.backend, settings.precision) == ("auto", None)


def test_settings_come_from_the_environment_and_options_win():
    env = {"CBIR_BACKEND": "ONNX", "CBIR_PRECISION": "int8"}
    assert (resolve_settings(library="l", env=env).backend, resolve_settings(library="l", env=env).precision) == (
        "onnx",
        "int8",
    )
    settings = resolve_settings(library="l", backend="torch", precision="fp32", env=env)
    assert (settings.backend, settings.precision) == ("torch", "fp32")


@pytest.mark.parametrize(
    "options, message",
    [({"backend": "tensorrt"}, "unknown backend 'tensorrt'"), ({"precision": "fp16"}, "unknown precision 'fp16'")],
)
def test_unknown_settings_are_one_line_errors(options, message):
    with pytest.raises(UsageError, match=message):
        resolve_settings(library="l", env={}, **options)


def test_the_cli_checks_the_flags_and_the_environment(tmp_path):
    out = run_cbir("status", "--library", str(tmp_path / "l"), "--backend", "tpu")
    assert "unknown backend 'tpu'" in one_line_error(out)
    out = run_cbir("status", "--library", str(tmp_path / "l"), env={"CBIR_PRECISION": "half"})
    assert "unknown precision 'half'" in one_line_error(out)
    help_text = " ".join(run_cbir("search", "--help").stdout.split())
    assert "[env: CBIR_BACKEND]" in help_text and "[env: CBIR_PRECISION]" in help_text


# -- the choice --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "backend, device, precision, chosen",
    [
        ("auto", "cpu", "fp32", "onnx"),
        ("auto", "cuda", "fp32", "torch"),
        ("auto", "cuda:1", "fp32", "torch"),
        ("torch", "cpu", "fp32", "torch"),
        ("onnx", "auto", "fp32", "onnx"),
        ("auto", "auto", "int8", "onnx"),
    ],
)
def test_the_backend_follows_the_device(backend, device, precision, chosen):
    assert backend_to_use(backend, device, precision) == chosen


def test_auto_on_auto_asks_about_cuda(monkeypatch):
    from cbir.encode import choice

    monkeypatch.setattr(choice, "cuda_present", lambda: True)
    assert backend_to_use("auto", "auto") == "torch"
    monkeypatch.setattr(choice, "cuda_present", lambda: False)
    assert backend_to_use("auto", "auto") == "onnx"


@pytest.mark.parametrize(
    "backend, device, precision, message",
    [
        ("onnx", "cuda", "fp32", "--backend onnx runs on the CPU only"),
        ("auto", "cuda", "int8", "int8 precision runs on the CPU only"),
        ("torch", "cpu", "int8", "int8 precision runs on ONNX Runtime only"),
    ],
)
def test_impossible_combinations_are_refused(backend, device, precision, message):
    with pytest.raises(UsageError, match=message):
        backend_to_use(backend, device, precision)


def test_without_an_nvidia_driver_auto_does_not_import_torch():
    if Path("/proc/driver/nvidia/version").exists() or sys.platform == "win32":
        pytest.skip("this machine has an NVIDIA driver")
    code = (
        "import sys; from cbir.encode.choice import backend_to_use; "
        "print(backend_to_use('auto', 'auto'), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["onnx", "False"], out.stderr


def test_auto_loads_onnx_runtime_on_this_cpu_and_torch_when_asked():
    assert isinstance(load_encoder("cbir-tiny", "cpu"), OnnxEncoder)
    assert isinstance(load_encoder("cbir-tiny", "cpu", backend="torch"), OpenClipEncoder)


# -- one library, both backends ----------------------------------------------------------------
def test_a_library_ingested_on_torch_searches_the_same_on_onnx(tiny_library):
    results = {}
    for backend in ("torch", "onnx"):
        with open_library(library=tiny_library, backend=backend) as lib:
            hits = lib.search(QUERY, k=10)
            results[backend] = ([hit.id for hit in hits], np.array([hit.score for hit in hits]))
            assert type(lib.encoder) is {"torch": OpenClipEncoder, "onnx": OnnxEncoder}[backend]
    assert results["torch"][0] == results["onnx"][0]
    np.testing.assert_allclose(results["torch"][1], results["onnx"][1], atol=1e-4)


def test_a_library_ingested_on_onnx_searches_the_same_on_torch(tmp_path, gallery):
    folder = tmp_path / "lib"
    with open_library(library=folder, model="cbir-tiny", backend="onnx", workers=1, create=True) as lib:
        lib.ingest(gallery)
        assert isinstance(lib.encoder, OnnxEncoder)
        onnx_hits = lib.search(QUERY, k=10)
    with open_library(library=folder, backend="torch") as lib:
        torch_hits = lib.search(QUERY, k=10)
    assert [h.id for h in onnx_hits] == [h.id for h in torch_hits]
    np.testing.assert_allclose([h.score for h in onnx_hits], [h.score for h in torch_hits], atol=1e-4)


# -- the cold text query -----------------------------------------------------------------------
def test_a_text_search_imports_neither_torch_nor_open_clip(tmp_path, gallery):
    """The first run on a new cache exports the graphs (with torch); the next ones need none."""
    env = {"CBIR_CACHE_DIR": str(tmp_path / "cache")}
    folder = tmp_path / "lib"
    out = run_cbir("ingest", str(gallery), "--library", str(folder), "--model", "cbir-tiny", "-q", env=env)
    assert out.returncode == 0, out.stderr
    full_env = cbir_env() | env
    for _ in ("exports", "finds the graphs cached"):
        hits, loaded = _cbir_in_process(["search", QUERY, "--library", str(folder), "--json"], full_env)
        assert len(hits) == 10 and json.loads(hits[0])["rank"] == 1
    assert loaded == []
    # classify's prompt templates come from open_clip's lists, read without importing open_clip
    image = str(next(gallery.glob("*.jpg")))
    lines, loaded = _cbir_in_process(["classify", image, "--labels", "red,blue", "--library", str(folder)], full_env)
    assert len(lines) == 3 and loaded == []


def _cbir_in_process(args: list[str], env: dict) -> tuple[list[str], list[str]]:
    """The output lines of `cbir ARGS` and which of torch, torchvision, open_clip it imported."""
    code = (
        "import json, runpy, sys\n"
        "sys.argv = ['cbir', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('cbir', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    *lines, loaded = run.stdout.strip().splitlines()
    return lines, json.loads(loaded)


# -- a model that does not run on ONNX Runtime -------------------------------------------------
def refuse_export(cache: Path, model: str = "cbir-tiny") -> None:
    """The note onnx_export leaves for a model it refused, as if it had refused this one."""
    entry = cache_root(cache) / entry_key(parse_model_spec(model))
    entry.parent.mkdir(parents=True, exist_ok=True)
    note = {"reason": "cbir-tiny runs on torch only: a refusal for the test", "versions": onnx_export._versions()}
    (entry.parent / f"{entry.name}.export.refused").write_text(json.dumps(note), encoding="utf-8")


def test_a_refused_export_falls_back_to_torch_in_one_line_under_auto(tmp_path, tiny_library):
    refuse_export(tmp_path / "cache")
    env = {"CBIR_CACHE_DIR": str(tmp_path / "cache")}
    out = run_cbir("search", QUERY, "--library", str(tiny_library), "-k", "3", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines() == [
        "Warning: using torch, not ONNX Runtime: cbir-tiny runs on torch only: a refusal for the test"
    ]
    assert len(out.stdout.strip().splitlines()) == 4  # a header and three hits
    out = run_cbir("search", QUERY, "--library", str(tiny_library), "--backend", "onnx", env=env)
    assert "--backend onnx: cbir-tiny runs on torch only: a refusal for the test" in one_line_error(out)


# -- int8 --------------------------------------------------------------------------------------
def test_an_int8_library_records_its_precision_and_keeps_it(tmp_path, gallery):
    folder = tmp_path / "lib8"
    out = run_cbir("ingest", str(gallery), "--library", str(folder), "--model", "cbir-tiny", "--precision", "int8")
    assert out.returncode == 0, out.stderr
    with open_library(library=folder) as lib:
        assert lib.fingerprint["precision"] == "int8"
        assert isinstance(lib.encoder, OnnxEncoder) and lib.encoder.precision == "int8"
        assert len(lib.search(QUERY, k=5)) == 5
    with pytest.raises(ModelMismatch, match="built at int8 precision, not fp32"):
        open_library(library=folder, precision="fp32")
    out = run_cbir("search", QUERY, "--library", str(folder), "--precision", "fp32")
    assert "built at int8 precision, not fp32; use --precision int8" in one_line_error(out)
    out = run_cbir("search", QUERY, "--library", str(folder), "--backend", "torch")
    assert "int8 precision runs on ONNX Runtime only" in one_line_error(out)


def test_an_fp32_library_refuses_int8(tiny_library):
    out = run_cbir("search", QUERY, "--library", str(tiny_library), "--precision", "int8")
    assert "built at fp32 precision, not int8" in one_line_error(out)

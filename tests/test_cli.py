"""The cbir command end to end, as a user runs it, with the bundled cbir-tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cbir.synthetic import make_gallery
from tests.conftest import run_cbir

GALLERY_SEED = 4242  # not a training or evaluation seed


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A gallery with one broken file, ingested once through the CLI."""
    base = tmp_path_factory.mktemp("cli")
    photos = base / "photos"
    pairs = make_gallery(photos / "set", 48, seed=GALLERY_SEED, formats=("jpg", "png", "webp"))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    library = base / "lib"
    result = run_cbir("ingest", str(photos), "--library", str(library), "--model", "cbir-tiny")
    assert result.returncode == 0, result.stderr
    return base, photos, library, pairs, result


def test_ingest_prints_a_summary_with_skips(built):
    *_, result = built
    assert "48 new" in result.stdout and "1 skipped" in result.stdout
    assert "cbir status --skipped" in result.stdout
    assert "Traceback" not in result.stderr


def test_status(built):
    _, photos, library, *_ = built
    out = run_cbir("status", "--json", "--library", str(library))
    status = json.loads(out.stdout)
    assert (status["images"], status["skipped"]) == (48, 1)
    assert [s["path"] for s in status["skipped_files"]] == [str(photos / "broken.jpg")]
    assert status["skipped_files"][0]["reason"].startswith("corrupt or truncated image")
    assert status["model"] == "cbir-tiny" and status["index_current"]
    assert status["index_type"] == "flat" and status["index_bytes"] > 0
    listed = run_cbir("status", "--skipped", "--library", str(library)).stdout
    assert str(photos / "broken.jpg") in listed


def test_search_json_lines(built):
    _, photos, library, pairs, _ = built
    out = run_cbir("search", "a", "red", "circle", "--json", "-k", "3", "--library", str(library))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["query"] == "a red circle" for r in rows)
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
    assert all(r["path"].startswith(str(photos)) for r in rows)


def test_search_by_image_and_table(built):
    _, photos, library, pairs, _ = built
    query = pairs[5][0]
    out = run_cbir("search", "--image", str(query), "-k", "2", "--library", str(library))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "path"]
    assert lines[1].split()[0] == "1" and lines[1].endswith(str(query))


def test_batch_from_stdin_with_one_model_load(built):
    _, photos, library, pairs, _ = built
    image = str(pairs[0][0])
    batch = f"a blue star on a pink background\n\n{json.dumps({'image': image})}\n"
    out = run_cbir("search", "--batch", "-", "--json", "-k", "2", "--library", str(library), input=batch)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["query"] for r in rows] == ["a blue star on a pink background"] * 2 + [{"image": image}] * 2
    assert rows[2]["path"] == image


def test_errors_are_one_line_with_nonzero_exit(built, tmp_path):
    _, photos, library, *_ = built
    cases = [
        (["search", "x", "--library", str(tmp_path / "missing")], "no cbir library at"),
        (["search", "--library", str(library)], "give a QUERY text, --image PATH"),
        (["search", "--image", str(tmp_path / "nope.jpg"), "--library", str(library)], "query image not found"),
        (["search", "--batch", "-", "--library", str(library)], "line 2: invalid JSON"),
        (["search", "x", "--model", "ViT-B-32:none", "--library", str(library)], "was built with cbir-tiny"),
        (["ingest", str(tmp_path / "nowhere"), "--library", str(library)], "no such file or folder"),
        (["search", "x", "--device", "tpu", "--library", str(library)], "unknown device"),
    ]
    for args, message in cases:
        out = run_cbir(*args, input="ok\n{broken\n")
        assert out.returncode != 0, args
        assert message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_mismatch_message_names_both_models_and_the_fix(built):
    _, _, library, *_ = built
    err = run_cbir("search", "x", "--model", "ViT-B-32:none", "--library", str(library)).stderr
    assert "cbir-tiny" in err and "ViT-B-32:none" in err and "--library NEW_LIBRARY" in err


def test_empty_library_and_debug_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    lib = str(tmp_path / "lib")
    assert run_cbir("ingest", str(tmp_path / "empty"), "--library", lib, "--model", "cbir-tiny").returncode == 0
    out = run_cbir("search", "x", "--library", lib)
    assert out.returncode == 1 and "has no images yet" in out.stderr
    out = run_cbir("search", "x", "--library", lib, "--debug")
    assert "Traceback" in out.stderr and "EmptyLibrary" in out.stderr


def test_cuda_without_gpu_is_an_error_not_a_fallback(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "p").mkdir()
    out = run_cbir(
        "ingest", str(tmp_path / "p"), "--library", str(tmp_path / "l"), "--model", "cbir-tiny", "--device", "cuda"
    )
    assert out.returncode == 1 and "no CUDA GPU is available" in out.stderr


def test_help_and_import_do_not_load_torch_or_faiss():
    code = (
        "import sys; import cbir, cbir.cli; from click.testing import CliRunner; "
        "r = CliRunner().invoke(cbir.cli.cli, ['search', '--help']); assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('torch', 'faiss', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

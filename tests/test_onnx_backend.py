"""The ONNX Runtime backend: export and check against torch, vectors interchangeable with torch's,
the cache (reused without torch, whole after kill -9, one export under concurrent first use),
refusals, int8."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cbir.encode import onnx_export
from cbir.encode.onnx_runtime import cache_root, entry_key, onnx_encoder
from cbir.encode.spec import parse_model_spec
from cbir.errors import OnnxUnavailable
from cbir.ingest.pixels import to_model_pixels
from cbir.synthetic import all_scenes, iter_gallery
from tests.conftest import REPO

TEXTS = ["a red circle on a gray background", "", "Ünïcödé 🐶 &amp; 日本語", "word " * 50]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return onnx_export.cosine_rows(a, b)


@pytest.fixture(scope="module")
def tiny_torch():
    from cbir.encode.clip import OpenClipEncoder

    return OpenClipEncoder(parse_model_spec("cbir-tiny"), "cpu")


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A cache folder holding cbir-tiny's export, made once for the module."""
    cache = tmp_path_factory.mktemp("cache")
    onnx_encoder("cbir-tiny", cache_dir=cache)
    return cache


@pytest.fixture(scope="module")
def tiny_onnx(tiny_cache):
    return onnx_encoder("cbir-tiny", cache_dir=tiny_cache)


def synthetic_pixels(n: int, preprocess) -> np.ndarray:
    return np.stack([to_model_pixels(image, preprocess) for image, _ in iter_gallery(n, seed=7)])


def run_python(code: str, *args: str, env: dict | None = None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_export_passes_its_check_and_describes_the_model(tiny_onnx, tiny_torch):
    meta = tiny_onnx.meta
    assert meta["check"]["image_min_cosine"] >= 0.9999 and meta["check"]["text_min_cosine"] >= 0.9999
    assert meta["tokenizer"] == "clip-bpe" and meta["context_length"] == 32
    assert set(meta["versions"]) >= {"torch", "open_clip_torch", "onnx", "onnxruntime"}
    assert tiny_onnx.fingerprint() == tiny_torch.fingerprint()  # one library may mix their vectors
    assert (tiny_onnx.dim, tiny_onnx.preprocess, tiny_onnx.device) == (tiny_torch.dim, tiny_torch.preprocess, "cpu")
    assert tiny_onnx.logit_scale == pytest.approx(tiny_torch.logit_scale)


def test_the_text_graph_reads_tokens_up_to_the_last_end_token(tiny_onnx, tiny_torch):
    """open_clip's causal text tower exports for any length: a short query runs on its own
    tokens, not on the context length of padding, and gives torch's vector."""
    assert tiny_onnx.meta["text_length"] == "any"
    session = tiny_onnx._session("text")
    assert session.get_inputs()[0].shape == ["batch", "length"]
    tokens = tiny_torch.tokenizer(TEXTS).numpy()
    expected = tiny_torch.encode_texts(TEXTS)
    for row in range(len(TEXTS)):
        end = int(np.flatnonzero(tokens[row])[-1]) + 1
        got = session.run(None, {"tokens": tokens[row : row + 1, :end]})[0]
        assert cosines(got, expected[row : row + 1]).min() >= 0.9999, TEXTS[row]
    # the torch model the graph was traced from keeps its own attention modules
    import torch

    assert all(type(b.attn) is torch.nn.MultiheadAttention for b in tiny_torch.model.transformer.resblocks)


def test_a_text_tower_of_another_kind_exports_at_its_full_length(tmp_path, tiny_torch, monkeypatch):
    monkeypatch.setattr(onnx_export, "any_length_text", lambda model: False)
    fixed = onnx_encoder("cbir-tiny", cache_dir=tmp_path)
    assert fixed.meta["text_length"] == "fixed"
    assert fixed._session("text").get_inputs()[0].shape == ["batch", 32]
    assert cosines(fixed.encode_texts(TEXTS), tiny_torch.encode_texts(TEXTS)).min() >= 0.9999


def test_vectors_match_torch(tiny_onnx, tiny_torch):
    pixels = synthetic_pixels(17, tiny_onnx.preprocess)  # an odd batch, then a batch of one
    for batch in (pixels, pixels[:1]):
        got = tiny_onnx.encode_images(batch)
        assert got.dtype == np.float32 and got.shape == (len(batch), 64)
        assert cosines(got, tiny_torch.encode_images(batch)).min() >= 0.9999
    texts = [scene.caption for scene in all_scenes()[:40]] + TEXTS
    got = tiny_onnx.encode_texts(texts)
    assert got.dtype == np.float32 and got.shape == (len(texts), 64)
    assert cosines(got, tiny_torch.encode_texts(texts)).min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert tiny_onnx.encode_images(pixels[:0]).shape == (0, 64) and tiny_onnx.encode_texts([]).shape == (0, 64)


def test_a_cached_model_encodes_text_without_torch_and_without_the_image_graph(tiny_cache, tiny_torch):
    code = (
        "import json, sys\n"
        "from cbir.encode.onnx_runtime import onnx_encoder\n"
        "encoder = onnx_encoder('cbir-tiny')\n"
        "vector = encoder.encode_texts([sys.argv[1]])[0]\n"
        "heavy = ('torch', 'torchvision', 'open_clip', 'cbir.encode.onnx_export')\n"
        "print(json.dumps({'loaded': [m for m in heavy if m in sys.modules],\n"
        "                  'towers': sorted(encoder._sessions), 'vector': vector.tolist()}))\n"
    )
    env = {**os.environ, "CBIR_CACHE_DIR": str(tiny_cache)}  # the cache found through the environment
    out, err = run_python(code, TEXTS[0], env=env).communicate(timeout=120)
    assert not err.strip(), err
    result = json.loads(out)
    assert result["loaded"] == [] and result["towers"] == ["text"]
    assert cosines(np.array([result["vector"]]), tiny_torch.encode_texts(TEXTS[:1]))[0] >= 0.9999


def test_kill_9_during_the_first_export_leaves_a_cache_the_next_call_completes(tmp_path, tiny_torch):
    code = (
        "import sys\nfrom cbir.encode.onnx_runtime import onnx_encoder\n"
        "onnx_encoder('cbir-tiny', cache_dir=sys.argv[1])\n"
    )
    process = run_python(code, str(tmp_path))
    entry = cache_root(tmp_path) / entry_key(parse_model_spec("cbir-tiny"))
    deadline = time.monotonic() + 180
    partial = []
    while not partial and process.poll() is None and time.monotonic() < deadline:
        partial = [p for p in entry.parent.glob(f"{entry.name}.tmp*") if (p / "image.onnx").exists()]
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # mid-export: the image graph written, the entry not yet
    process.communicate()
    assert partial, "the export finished before it could be killed"
    assert not entry.exists() and partial[0].exists()

    encoder = onnx_encoder("cbir-tiny", cache_dir=tmp_path)
    assert not partial[0].exists()  # the killed export's leftovers are gone
    pixels = synthetic_pixels(3, encoder.preprocess)
    assert cosines(encoder.encode_images(pixels), tiny_torch.encode_images(pixels)).min() >= 0.9999


def test_two_processes_at_first_use_export_once(tmp_path):
    code = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from cbir.encode import onnx_export\n"
        "from cbir.encode.onnx_runtime import onnx_encoder\n"
        "export = onnx_export._export\n"
        "def counted(spec, entry):\n"
        "    with open(sys.argv[1], 'a') as f:\n"
        "        f.write('export\\n')\n"
        "    export(spec, entry)\n"
        "onnx_export._export = counted\n"
        "while not Path(sys.argv[3]).exists():\n"  # both start together, imports done
        "    time.sleep(0.01)\n"
        "encoder = onnx_encoder('cbir-tiny', cache_dir=sys.argv[2])\n"
        "print(json.dumps(encoder.encode_texts(['a red star']).tolist()))\n"
    )
    exports, cache, go = tmp_path / "exports.log", tmp_path / "cache", tmp_path / "go"
    processes = [run_python(code, str(exports), str(cache), str(go)) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert exports.read_text().splitlines() == ["export"]
    first, second = (np.array(json.loads(out)) for out, _ in outputs)
    assert np.array_equal(first, second)


def test_a_refused_export_is_remembered_until_the_packages_change(tmp_path, monkeypatch):
    attempts = []

    def refuse(spec, entry):
        attempts.append(spec.name)
        raise OnnxUnavailable(f"{spec.name} does not export: some operator")

    monkeypatch.setattr(onnx_export, "_export", refuse)
    for _ in range(2):
        with pytest.raises(OnnxUnavailable, match="^cbir-tiny does not export: some operator$"):
            onnx_encoder("cbir-tiny", cache_dir=tmp_path)
    assert attempts == ["cbir-tiny"]  # the second call read the note
    versions = onnx_export._versions()
    monkeypatch.setattr(onnx_export, "_versions", lambda: {**versions, "torch": "99.0"})
    with pytest.raises(OnnxUnavailable):
        onnx_encoder("cbir-tiny", cache_dir=tmp_path)
    assert attempts == ["cbir-tiny"] * 2


def test_a_graph_that_differs_from_torch_is_refused_in_one_line(tiny_onnx, tiny_torch, monkeypatch):
    monkeypatch.setattr(onnx_export, "MIN_COSINE", 1.5)
    refusal = r"^cbir-tiny's image tower on ONNX Runtime differs from torch \(cosine 1\.0"
    with pytest.raises(OnnxUnavailable, match=refusal):
        onnx_export._check(tiny_torch, tiny_onnx.entry, 32, True)


def test_only_open_clips_default_tokenizer_has_the_torch_free_port():
    from open_clip.tokenizer import SimpleTokenizer

    class HFTokenizer:
        pass

    assert onnx_export.tokenizer_refusal(SimpleTokenizer(context_length=77)) is None
    assert "has options" in onnx_export.tokenizer_refusal(SimpleTokenizer(clean="canonicalize"))
    assert onnx_export.tokenizer_refusal(HFTokenizer()) == "its tokenizer (HFTokenizer) has no torch-free port"


def test_int8_quantises_the_image_tower_only(tiny_cache, tiny_onnx):
    int8 = onnx_encoder("cbir-tiny", "int8", cache_dir=tiny_cache)
    assert int8.fingerprint() == {**tiny_onnx.fingerprint(), "precision": "int8"}
    check = json.loads((int8.entry / "image.int8.json").read_text())
    assert check["min_cosine_vs_fp32"] >= onnx_export.INT8_MIN_COSINE
    pixels = synthetic_pixels(8, int8.preprocess)
    assert cosines(int8.encode_images(pixels), tiny_onnx.encode_images(pixels)).min() >= 0.99
    assert np.array_equal(int8.encode_texts(TEXTS), tiny_onnx.encode_texts(TEXTS))


def test_a_damaged_entry_fails_in_one_line_that_says_what_to_remove(tiny_cache, tmp_path):
    shutil.copytree(tiny_cache, tmp_path / "cache")
    encoder = onnx_encoder("cbir-tiny", cache_dir=tmp_path / "cache")
    (encoder.entry / "text.onnx.data").write_bytes(b"x")
    with pytest.raises(OnnxUnavailable, match=f"^cannot load .*text.onnx .*; remove {encoder.entry} and") as raised:
        encoder.encode_texts(TEXTS)
    assert "\n" not in str(raised.value)


def test_cache_location(tmp_path, monkeypatch):
    assert cache_root(tmp_path) == tmp_path / "onnx"
    assert cache_root(env={"CBIR_CACHE_DIR": str(tmp_path / "c")}) == tmp_path / "c" / "onnx"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root(env={}) == tmp_path / "xdg" / "cbir" / "onnx"


@pytest.mark.slow
def test_vit_b_32_exports_and_passes_its_check(tmp_path):
    encoder = onnx_encoder("ViT-B-32:none", cache_dir=tmp_path)
    assert min(encoder.meta["check"]["image_min_cosine"], encoder.meta["check"]["text_min_cosine"]) >= 0.9999
    assert encoder.meta["context_length"] == 77 and encoder.preprocess.size == 224
    pixels = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    for vectors, n in ((encoder.encode_images(pixels), 3), (encoder.encode_texts(TEXTS), len(TEXTS))):
        assert vectors.shape == (n, 512) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_the_text_tower_loads_for_a_quick_start_unless_asked_for_throughput(tiny_cache, tiny_onnx):
    """One query per process (cbir search) skips ONNX Runtime's weight prepacking; cbir serve
    asks for it (for_many_queries). Either way the vectors are the same."""

    def prepacked(session) -> bool:
        try:
            return session.get_session_options().get_session_config_entry("session.disable_prepacking") != "1"
        except RuntimeError:  # not set: the default, prepacked
            return True

    encoder = onnx_encoder("cbir-tiny", cache_dir=tiny_cache)
    quick = encoder.encode_texts(TEXTS)
    encoder.encode_images(synthetic_pixels(2, encoder.preprocess))
    assert not prepacked(encoder._session("text")) and prepacked(encoder._session("image"))
    encoder.for_many_queries()
    assert np.allclose(encoder.encode_texts(TEXTS), quick, atol=1e-5)
    assert prepacked(encoder._session("text"))

from pathlib import Path

import pytest

from cbir.config import DEFAULT_MODEL, resolve_settings
from cbir.encode.spec import BUNDLED, parse_model_spec
from cbir.errors import UsageError


def test_defaults_environment_and_options_in_order(tmp_path):
    env = {"CBIR_LIBRARY": str(tmp_path / "from-env"), "CBIR_MODEL": "cbir-tiny", "CBIR_DEVICE": "cpu"}
    s = resolve_settings(env=env)
    assert (s.library, s.model, s.device) == (tmp_path / "from-env", "cbir-tiny", "cpu")
    s = resolve_settings(library=tmp_path / "opt", model="ViT-B-32", device="auto", env=env)
    assert (s.library, s.model, s.device) == (tmp_path / "opt", "ViT-B-32", "auto")
    s = resolve_settings(env={})
    assert s.model is None and s.model_for_new_library == DEFAULT_MODEL and s.device == "auto"


def test_default_library_is_indexes_in_a_checkout_else_user_data(tmp_path):
    (tmp_path / "checkout" / "indexes").mkdir(parents=True)
    s = resolve_settings(env={}, cwd=tmp_path / "checkout")
    assert s.library == tmp_path / "checkout" / "indexes" / "default"
    s = resolve_settings(env={}, cwd=tmp_path)
    assert "cbir" in s.library.parts and s.library.name == "default"


def test_bad_values_are_usage_errors():
    with pytest.raises(UsageError, match="unknown device"):
        resolve_settings(device="tpu", env={})
    with pytest.raises(UsageError, match="batch size"):
        resolve_settings(env={"CBIR_BATCH_SIZE": "many"})


def test_model_specs(tmp_path):
    assert parse_model_spec("cbir-tiny").pretrained == BUNDLED
    assert parse_model_spec("ViT-B-32").pretrained == "laion2b_s34b_b79k"
    assert parse_model_spec("ViT-B-32:openai").name == "ViT-B-32:openai"
    assert parse_model_spec("ViT-B-32:none").pretrained is None
    spec = parse_model_spec("ViT-B-32:weights/my.pt")
    assert spec.is_file and Path(spec.pretrained).is_absolute()
    with pytest.raises(UsageError, match="checkpoint file not found"):
        spec.weights_id()
    with pytest.raises(UsageError, match="say which weights"):
        parse_model_spec("RN50")

"""Encoders behind one small protocol; models named as data. torch loads only in ``load_encoder``,
and only when the model runs on torch."""

import warnings

from cbir.encode.spec import Encoder, ModelSpec, Preprocess, parse_model_spec
from cbir.errors import CbirWarning, OnnxUnavailable

__all__ = ["Encoder", "ModelSpec", "Preprocess", "parse_model_spec", "load_encoder"]


def load_encoder(
    spec: "ModelSpec | str", device: str = "auto", backend: str = "auto", precision: str = "fp32"
) -> Encoder:
    """The model on the backend chosen by cbir.encode.choice.backend_to_use. A model that cannot
    run on ONNX Runtime falls back to torch with a one-line warning under auto; with
    ``backend="onnx"`` or int8 (which torch cannot run) it is an error."""
    from cbir.encode.choice import backend_to_use

    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    if backend_to_use(backend, device, precision) == "onnx":
        try:
            return _onnx_encoder(spec, precision)
        except OnnxUnavailable as e:
            if backend == "onnx":
                raise OnnxUnavailable(f"--backend onnx: {e}") from e
            if precision != "fp32":
                raise OnnxUnavailable(f"{precision} precision needs ONNX Runtime: {e}") from e
            warnings.warn(f"using torch, not ONNX Runtime: {e}", CbirWarning, stacklevel=2)
    from cbir.encode.clip import OpenClipEncoder

    return OpenClipEncoder(spec, device)


def _onnx_encoder(spec: ModelSpec, precision: str) -> Encoder:
    try:
        from cbir.encode.onnx_runtime import onnx_encoder
    except ImportError as e:
        raise OnnxUnavailable(f"onnxruntime is not installed ({e}); pip install onnxruntime") from e
    return onnx_encoder(spec, precision)

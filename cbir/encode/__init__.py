"""Encoders behind one small protocol; models named as data. torch loads only in ``load_encoder``."""

from cbir.encode.spec import Encoder, ModelSpec, Preprocess, parse_model_spec

__all__ = ["Encoder", "ModelSpec", "Preprocess", "parse_model_spec", "load_encoder"]


def load_encoder(spec: "ModelSpec | str", device: str = "auto") -> Encoder:
    from cbir.encode.clip import OpenClipEncoder

    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    return OpenClipEncoder(spec, device)

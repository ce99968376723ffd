"""A library's model, loaded: at once (``load_model``), or on a thread from the moment a command
starts (``start_loading``), so that a cold text search waits for the longer of the model load and
its own imports and index load rather than for their sum. Imports neither SQLAlchemy nor FAISS:
the library's model is read through cbir.store.hint.

ViT-B-32 on ONNX Runtime, cold `cbir search` on 2 cores: the text graph's session (0.2 s) and
the tokenizer load beside SQLAlchemy's and FAISS's imports."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from cbir.background import Background
from cbir.config import Settings
from cbir.encode.choice import check_requested_model, model_to_load, precision_to_use
from cbir.encode.spec import Encoder
from cbir.errors import CbirError
from cbir.store.hint import model_fingerprint_hint


def load_model(settings: Settings, stored: dict | None, warm_text: bool = False) -> Encoder:
    """The model for a library whose fingerprint is ``stored`` (None: a new library), on the
    backend and at the precision the settings and the library ask for; ``warm_text`` runs its
    text tower once (its session and tokenizer load on first use)."""
    from cbir.encode import load_encoder

    encoder = load_encoder(
        model_to_load(settings, stored),
        settings.device,
        settings.backend,
        precision_to_use(settings.precision, stored, Path(settings.library)),
    )
    if warm_text:
        encoder.encode_texts([""])
    return encoder


def start_loading(settings: Settings, warm_text: bool) -> Background[Encoder] | None:
    """The library's model loading on a thread, or None where that cannot start before the
    catalogue is open: a PostgreSQL catalogue, no SQLite library yet, or a requested model or
    precision the library will refuse (the catalogue then says so)."""
    if settings.database_url:
        return None
    stored = model_fingerprint_hint(Path(settings.library))
    if stored is None:
        return None
    try:
        check_requested_model(settings.model, stored, Path(settings.library))
        precision_to_use(settings.precision, stored, Path(settings.library))
    except (CbirError, KeyError):
        return None
    return Background(partial(load_model, settings, stored, warm_text), name="cbir-model")

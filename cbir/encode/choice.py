"""Which model a library uses: the one requested, else the one it was built with, else the default
for a new library; a requested model that is not the library's is refused before anything loads."""

from __future__ import annotations

from pathlib import Path

from cbir.config import Settings
from cbir.encode.spec import ModelSpec, parse_model_spec
from cbir.errors import ModelMismatch


def model_to_load(settings: Settings, stored: dict | None) -> ModelSpec:
    """The model to load for a library whose model fingerprint is ``stored`` (None: a new one)."""
    if settings.model:
        return parse_model_spec(settings.model)
    if stored:
        return parse_model_spec(stored["spec"])
    return parse_model_spec(settings.model_for_new_library)


def check_requested_model(requested: str | None, stored: dict, library: Path) -> None:
    """Refuse before loading anything when the requested model is not the library's."""
    if not requested:
        return
    spec = parse_model_spec(requested)
    if (spec.arch, spec.weights_id()) != (stored["model"], stored["weights"]):
        raise mismatch(library, stored, spec.name)


def mismatch(library: Path, stored: dict, requested: str) -> ModelMismatch:
    return ModelMismatch(
        f"the library at {library} was built with {stored['spec']} "
        f"({stored['weights']}, {stored['dim']}-d), not {requested}; use --model "
        f"{stored['spec']} (or leave --model out), or index your photos into a new library "
        f"for {requested}: cbir ingest PHOTOS --library NEW_LIBRARY --model {requested}"
    )

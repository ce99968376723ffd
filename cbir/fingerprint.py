"""Comparing model fingerprints: a leaf, so the index (which must not know models) can check that
saved vectors and the library share one embedding space without importing cbir.encode."""

from __future__ import annotations


def same_model(a: dict, b: dict) -> bool:
    """Two fingerprints describe vectors in the same space (the spec text may differ)."""
    keys = ("model", "weights", "dim", "preprocess")
    return all(_normalise(a.get(k)) == _normalise(b.get(k)) for k in keys)


def _normalise(value):
    # A fingerprint read back from JSON has lists where the one just made has tuples.
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value

"""A deterministic stand-in encoder for tests and benchmarks of everything but the model.

Image vectors are a fixed random projection of a 4x4 thumbnail, so similar pictures get similar
vectors (a resized copy finds its original); text vectors come from a hash of the text."""

from __future__ import annotations

import hashlib
import os
from functools import partial
from typing import Any

import numpy as np

from cbir.encode.spec import ModelSpec, Preprocess, make_fingerprint


class FakeEncoder:
    """``crash_marker``: a file whose existence makes the process die (``os._exit``) once, when
    it has encoded ``crash_after`` images, removing the file first: fault injection for the
    distributed engine's tests."""

    def __init__(
        self, dim: int = 32, size: int = 32, seed: int = 0, crash_marker: str | None = None, crash_after: int = 0
    ):
        self._config: dict[str, Any] = dict(
            dim=dim, size=size, seed=seed, crash_marker=crash_marker, crash_after=crash_after
        )
        self.spec = ModelSpec("fake", f"seed{seed}")
        self.preprocess = Preprocess(size=size)
        self.dim = dim
        self.device = "cpu"
        self._projection = np.random.default_rng(seed).standard_normal((4 * 4 * 3, dim))
        self.images_encoded = 0

    def fingerprint(self) -> dict:
        return make_fingerprint(self.spec, self.dim, self.preprocess)

    def recipe(self):
        """How another process (a Ray worker) builds the same encoder: ``recipe()(device)``."""
        return partial(_rebuild, self._config)

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        marker = self._config["crash_marker"]
        if marker and self.images_encoded >= self._config["crash_after"]:
            try:
                os.remove(marker)
            except FileNotFoundError:
                pass  # crashed once already
            else:
                os._exit(70)
        pixels = np.asarray(pixels.cpu() if hasattr(pixels, "cpu") else pixels)  # a CPU tensor too
        n, s = pixels.shape[0], pixels.shape[1]
        thumbs = pixels.reshape(n, 4, s // 4, 4, s // 4, 3).mean(axis=(2, 4)).reshape(n, -1)
        self.images_encoded += n
        return _unit((thumbs / 255.0 - 0.5) @ self._projection)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        rows = [
            np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")).standard_normal(
                self.dim
            )
            for t in texts
        ]
        return _unit(np.stack(rows))


def _rebuild(config: dict, device: str) -> FakeEncoder:
    return FakeEncoder(**config)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

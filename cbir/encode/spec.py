"""Model names, preprocessing and fingerprints, without importing torch."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from cbir.errors import UsageError
from cbir.fingerprint import same_model  # noqa: F401  (moved to a leaf; still importable here)

BUNDLED = "bundled"  # pretrained value of the models shipped inside cbir
TEXT_BATCH = 256  # texts per text-encoder call
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes model input: the same arithmetic as open_clip's eval transform,
    split so decode workers produce uint8 pixels (no torch) and the device normalises them."""

    size: int
    resize_mode: str = "shortest"  # shortest | longest | squash
    interpolation: str = "bicubic"  # bicubic | bilinear
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    fill_color: int = 0
    # A library's masks (cbir ingest --mask): rectangles (x, y, w, h) relative to the image as
    # displayed, covered before the model sees it. Not part of the model's fingerprint: a
    # setting of the library (cbir.ingest.mask_setting), applied to whatever model it holds.
    masks: tuple[tuple[float, float, float, float], ...] = ()


def rgb(values) -> tuple[float, float, float]:
    """A mean or std of open_clip's preprocessing config as Preprocess holds it: three floats."""
    r, g, b = (float(v) for v in values)
    return r, g, b


@dataclass(frozen=True)
class ModelSpec:
    """``ARCH[:PRETRAINED]``: an open_clip architecture and a pretrained tag or checkpoint file."""

    arch: str
    pretrained: str | None  # a tag, a local file path, BUNDLED, or None (random weights)

    @property
    def is_file(self) -> bool:
        return self.pretrained not in (None, BUNDLED) and _looks_like_path(self.pretrained)

    @property
    def name(self) -> str:
        if self.arch.startswith("hf-hub:") or self.pretrained == BUNDLED:
            return self.arch
        return f"{self.arch}:{self.pretrained or 'none'}"

    def weights_id(self) -> str:
        """What identifies the weights: the tag, or the checkpoint file's content hash."""
        if self.pretrained is None:
            return "none" if not self.arch.startswith("hf-hub:") else "hf-hub"
        if self.pretrained == BUNDLED:
            from cbir.encode.registry import bundled_weights

            return "sha256:" + file_sha256(bundled_weights(self.arch))
        if self.is_file:
            path = Path(self.pretrained).expanduser()
            if not path.is_file():
                raise UsageError(f"checkpoint file not found: {self.pretrained}")
            return "sha256:" + file_sha256(path)
        return self.pretrained


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.lower().endswith(CHECKPOINT_SUFFIXES)


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256 (cached per path, size and mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()[:16]
    return _HASH_CACHE[key]


def parse_model_spec(text: str) -> ModelSpec:
    """``cbir-tiny``, ``ViT-B-32`` (its default weights), ``ViT-B-32:laion2b_s34b_b79k``,
    ``ViT-B-32:path/to/weights.pt``, ``ViT-B-32:none`` (random weights), ``hf-hub:org/repo``."""
    from cbir.encode.registry import BUNDLED_MODELS, default_pretrained

    text = (text or "").strip()
    if not text:
        raise UsageError("empty model name; see `cbir models`")
    if text.startswith("hf-hub:"):
        return ModelSpec(text, None)
    arch, sep, pretrained = text.partition(":")
    if pretrained.lower() == "none":
        return ModelSpec(arch, None)
    if arch in BUNDLED_MODELS:
        if sep and pretrained not in ("", BUNDLED):  # e.g. a fine-tuned checkpoint of it
            return ModelSpec(arch, str(Path(pretrained).expanduser().absolute()))
        return ModelSpec(arch, BUNDLED)
    if not sep or not pretrained:
        return ModelSpec(arch, default_pretrained(arch))
    if _looks_like_path(pretrained):  # absolute, so the library finds it from any directory
        pretrained = str(Path(pretrained).expanduser().absolute())
    return ModelSpec(arch, pretrained)


class Encoder(Protocol):
    """What ingest and search need from a model."""

    spec: ModelSpec
    preprocess: Preprocess
    dim: int
    device: str

    def fingerprint(self) -> dict: ...

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] from ``cbir.ingest.decode`` -> float32 [N, dim], L2-normalised."""
        ...

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """-> float32 [N, dim], L2-normalised."""
        ...


def encode_texts_batched(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """Texts encoded TEXT_BATCH at a time (bounded memory on the device), as one matrix."""
    return np.concatenate([encoder.encode_texts(texts[i : i + TEXT_BATCH]) for i in range(0, len(texts), TEXT_BATCH)])


def make_fingerprint(spec: ModelSpec, dim: int, preprocess: Preprocess) -> dict:
    return {
        "model": spec.arch,
        "weights": spec.weights_id(),
        "spec": spec.name,
        "dim": dim,
        "preprocess": {k: v for k, v in asdict(preprocess).items() if k != "masks"},
    }

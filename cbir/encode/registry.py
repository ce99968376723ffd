"""Named models as data: the models bundled with cbir, and default weights per architecture."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cbir.errors import UsageError


@dataclass(frozen=True)
class BundledModel:
    config_dir: Path  # holds ARCH.json, an open_clip model config
    weights: Path
    description: str


def _tiny() -> BundledModel:
    from cbir.encode import tiny

    return BundledModel(
        tiny.CONFIG_DIR,
        tiny.WEIGHTS,
        "tiny CLIP trained by cbir on synthetic shapes (tests, demo); knows only "
        "'a {colour} {shape} on a {background} background'",
    )


BUNDLED_MODELS = {"cbir-tiny": _tiny}

# The weights used when only an architecture is named.
DEFAULT_PRETRAINED = {
    "ViT-B-32": "laion2b_s34b_b79k",
    "ViT-B-16": "laion2b_s34b_b88k",
    "ViT-L-14": "laion2b_s32b_b82k",
}


def bundled(arch: str) -> BundledModel:
    return BUNDLED_MODELS[arch]()


def bundled_weights(arch: str) -> Path:
    return bundled(arch).weights


def default_pretrained(arch: str) -> str:
    if arch in DEFAULT_PRETRAINED:
        return DEFAULT_PRETRAINED[arch]
    raise UsageError(
        f"say which weights to use with {arch}: {arch}:TAG (`cbir models` lists the tags), "
        f"{arch}:path/to/checkpoint.pt, or {arch}:none for random weights"
    )


def list_models() -> list[tuple[str, str]]:
    """(name, description) for every model cbir can load by name."""
    import open_clip

    rows = [(name, bundled(name).description) for name in BUNDLED_MODELS]
    for arch, tag in open_clip.list_pretrained():
        note = "default" if DEFAULT_PRETRAINED.get(arch) == tag else ""
        rows.append((f"{arch}:{tag}", note))
    return rows

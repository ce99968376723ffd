"""open_clip models on CPU or CUDA (fp16 autocast on CUDA)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from cbir.encode.hub import hub_access, unreachable_hint
from cbir.encode.registry import BUNDLED_MODELS, bundled
from cbir.encode.spec import BUNDLED, ModelSpec, Preprocess, make_fingerprint, rgb
from cbir.errors import DeviceError, ModelLoadError, UsageError


def resolve_device(requested: str) -> str:
    """auto: CUDA when present, else CPU. Asking for CUDA without one is an error, never a
    silent fallback to the CPU."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {requested} was requested but no CUDA GPU is available "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                "use --device cpu or --device auto"
            )
        index = int(requested.split(":", 1)[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) present")
        return requested
    if requested == "cpu":
        return "cpu"
    raise UsageError(f"unknown device {requested!r}: use auto, cpu or cuda")


def _register_bundled_configs() -> None:
    import open_clip

    for arch in BUNDLED_MODELS:
        if arch not in open_clip.list_models():
            open_clip.add_model_config(bundled(arch).config_dir)


class OpenClipEncoder:
    def __init__(self, spec: ModelSpec, device: str = "auto"):
        import open_clip

        self.spec = spec
        self.device = resolve_device(device)
        _register_bundled_configs()
        pretrained = spec.pretrained
        if pretrained == BUNDLED:
            pretrained = str(bundled(spec.arch).weights)
        if spec.arch not in open_clip.list_models() and not spec.arch.startswith("hf-hub:"):
            raise ModelLoadError(f"unknown model architecture {spec.arch!r}; `cbir models` lists them")
        with hub_access(spec) as unreachable:
            try:
                model, _, _ = open_clip.create_model_and_transforms(
                    spec.arch, pretrained=pretrained, device=self.device
                )
                self.tokenizer = open_clip.get_tokenizer(spec.arch)  # hf-hub: models fetch theirs
            except Exception as e:  # open_clip raises many kinds (RuntimeError, OSError, HF errors)
                raise ModelLoadError(_load_hint(spec, e, unreachable)) from e
        model.eval()
        self.model = model
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"]
        size = size[0] if isinstance(size, (tuple, list)) else size
        self.preprocess = Preprocess(
            size=int(size),
            resize_mode=cfg.get("resize_mode", "shortest"),
            interpolation=cfg.get("interpolation", "bicubic"),
            mean=rgb(cfg["mean"]),
            std=rgb(cfg["std"]),
            fill_color=int(cfg.get("fill_color", 0)),
        )
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer(["x"]).to(self.device)).shape[-1])
        self._mean = torch.tensor(self.preprocess.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocess.std, device=self.device).view(1, 3, 1, 1)

    def fingerprint(self) -> dict:
        return make_fingerprint(self.spec, self.dim, self.preprocess)

    @property
    def logit_scale(self) -> float | None:
        """CLIP's learned temperature, exp(logit_scale): zero-shot probabilities are the
        softmax of the cosine similarities times it (None for a model without one)."""
        parameter = getattr(self.model, "logit_scale", None)
        return None if parameter is None else float(parameter.detach().float().exp().cpu())

    def autocast(self):
        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode_images(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 [n, S, S, 3] model pixels (numpy, or a tensor already on the device when JPEGs
        were decoded there) -> L2-normalised embeddings."""
        if isinstance(pixels, torch.Tensor):
            batch = pixels.to(self.device)
        else:
            batch = torch.from_numpy(np.require(pixels, np.uint8, ["C", "W"]))
            if self.device.startswith("cuda"):
                batch = batch.pin_memory().to(self.device, non_blocking=True)
        # uint8 NHWC -> normalised float NCHW, on the device (4x less to copy than floats)
        batch = batch.permute(0, 3, 1, 2).float().div_(255).sub_(self._mean).div_(self._std)
        with self.autocast():
            features = self.model.encode_image(batch)
        return _normalise(features)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self.autocast():
            features = self.model.encode_text(tokens)
        return _normalise(features)


def _normalise(features: torch.Tensor) -> np.ndarray:
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy().astype(np.float32, copy=False)


def _load_hint(spec: ModelSpec, error: Exception, unreachable: bool = False) -> str:
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if spec.is_file:
        return f"cannot load checkpoint {spec.pretrained} into {spec.arch}: {detail}"
    if unreachable:  # the library's detail would only say the cache lacks a file
        return unreachable_hint(spec)
    return (
        f"cannot load {spec.name} ({detail}); weights come from the Hugging Face hub on first use, "
        f"so check the network, or pass a local file with --model {spec.arch}:path/to/weights.pt, "
        "or use the bundled --model cbir-tiny"
    )

"""The contrastive training loop shared by ``cbir finetune`` (:mod:`cbir.finetune`, a user's
manifest) and the cbir-tiny trainer (:mod:`cbir.training.tiny`, synthetic scenes, from scratch).

The symmetric CLIP loss (pairs with the same caption, or the same image, count as positives:
soft targets; with distinct pairs it is exactly open_clip's ``ClipLoss``), AdamW with
open_clip's no-decay split (gains, biases, logit_scale), linear warmup then cosine decay to zero,
logit scale clamped to 100, fp16 autocast with a gradient scaler on CUDA. :class:`Trainer` holds
the optimizer and takes one step (``optimize`` steps on any loss: image-only fine-tuning's
:func:`nt_xent`, cbir.training.images); :func:`fit` runs epochs of batches the caller supplies; the
training state (``Trainer.state_dict``, :func:`rng_state`) round-trips through
:func:`save_atomic` so a resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cbir.fsutil import atomic_write

MAX_LOGIT_SCALE = math.log(100)


# -- the loss, the schedule, the optimizer ---------------------------------------------------------
def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor,
    image_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric CLIP cross-entropy over the image-text similarity matrix.

    Features are L2-normalised; ``logit_scale`` is already exponentiated. Pairs with the same
    ``labels`` (e.g. the same caption), or the same ``image_ids``, count as positives (soft
    targets); with all-distinct labels this is exactly the standard CLIP loss.
    """
    logits = logit_scale * image_features @ text_features.T
    same = labels[:, None] == labels[None, :]
    if image_ids is not None:
        same = same | (image_ids[:, None] == image_ids[None, :])
    same = same.float()
    targets = same / same.sum(dim=1, keepdim=True)
    loss_i = torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
    loss_t = torch.sum(-targets * F.log_softmax(logits.T, dim=1), dim=1).mean()
    return (loss_i + loss_t) / 2


def nt_xent(features: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalized temperature-scaled cross entropy over 2N L2-normalised features, rows
    ``i`` and ``i + N`` two views of one image: each view's positive is its other view, its
    negatives the other 2N-2 views of the batch."""
    n2 = features.shape[0]
    if n2 % 2 or n2 < 4:
        raise ValueError(f"nt_xent needs two views of at least 2 images, got {n2} rows")
    n = n2 // 2
    logits = features @ features.T / temperature
    logits = logits.masked_fill(torch.eye(n2, dtype=torch.bool, device=features.device), float("-inf"))
    targets = torch.cat([torch.arange(n, n2), torch.arange(0, n)]).to(features.device)
    return F.cross_entropy(logits, targets)


def lr_at(step: int, steps: int, warmup: int, base_lr: float) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) * base_lr


def param_groups(model: torch.nn.Module, weight_decay: float, text_lr_scale: float = 1.0) -> list[dict]:
    """open_clip's split: no weight decay for gains, biases and logit_scale. With
    ``text_lr_scale`` other than 1, the text tower's parameters (all but the image tower and the
    logit scale) form groups of their own, stepped at that fraction of the learning rate."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        text = text_lr_scale != 1.0 and not name.startswith("visual.") and name != "logit_scale"
        groups.setdefault((no_decay, text), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": text_lr_scale if text else 1.0,
        }
        for (no_decay, text), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
    ]


@dataclass
class TrainConfig:
    total_steps: int
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup: int = 0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    text_lr_scale: float = 1.0  # the text tower's learning rate, as a fraction of ``lr``


class Trainer:
    """Optimizer, schedule and one training step; its state round-trips through
    ``state_dict``/``load_state_dict`` (with the model's)."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig, device: str = "cpu"):
        self.model, self.config, self.device = model, config, device
        self.optimizer = torch.optim.AdamW(
            param_groups(model, config.weight_decay, config.text_lr_scale),
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
        )
        self.cuda = device.startswith("cuda")
        self.scaler = torch.amp.GradScaler("cuda") if self.cuda else None
        self.step = 0  # optimizer steps taken (the schedule's position)

    def autocast(self):
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def lr(self) -> float:
        return lr_at(self.step, self.config.total_steps, self.config.warmup, self.config.lr)

    def train_step(
        self, images: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor, image_ids: torch.Tensor | None = None
    ) -> tuple[float, float]:
        """One optimizer step on a batch; returns (loss, logit scale)."""
        scale = []

        def loss_of(model):
            with self.autocast():
                image_features, text_features, logit_scale = clip_outputs(model(images, tokens))
            if self.cuda:  # the loss in fp32 (autocast gives fp16 features)
                image_features, text_features = image_features.float(), text_features.float()
                logit_scale = logit_scale.float()
            scale.append(logit_scale)
            return clip_loss(image_features, text_features, logit_scale, labels, image_ids)

        loss = self.optimize(loss_of)
        return loss, scale[0].item()

    def optimize(self, loss_of: Callable[[torch.nn.Module], torch.Tensor]) -> float:
        """One optimizer step on the loss ``loss_of(model)`` computes (under the schedule's
        learning rate, the gradient scaler on CUDA, the logit scale clamped); returns the loss.
        Other objectives (image-only fine-tuning's NT-Xent) share the step this way."""
        model, optimizer = self.model, self.optimizer
        model.train()
        lr = self.lr()
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss = loss_of(model)
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            _logit_scale_param(model).clamp_(0, MAX_LOGIT_SCALE)
        self.step += 1
        return loss.item()

    def skip_step(self) -> None:
        """A batch left with nothing to contrast (bad images): the schedule still moves on."""
        self.step += 1

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])


def clip_outputs(out):
    """(image features, text features, logit scale) from an open_clip model's output, a dict or
    a tuple."""
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


def _logit_scale_param(model) -> torch.Tensor:
    return model.logit_scale


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
    return path


def fit(
    trainer: Trainer,
    batches: Callable[[int], Iterable],
    *,
    epochs: int,
    steps_per_epoch: int,
    start_epoch: int = 0,
    on_epoch_end: Callable[[int], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    postfix: Callable[[dict], dict] | None = None,
) -> float:
    """Epochs ``start_epoch..epochs-1``; ``batches(epoch)`` yields ``(images, tokens, labels)``
    or ``(images, tokens, labels, image_ids)`` already on the device (``None`` for a batch
    with nothing left to train on). Returns the last loss."""
    from tqdm import tqdm

    last = float("nan")
    bar = tqdm(
        total=epochs * steps_per_epoch,
        initial=start_epoch * steps_per_epoch,
        desc=desc,
        disable=None if progress else True,
        dynamic_ncols=True,
        unit="step",
    )
    try:
        for epoch in range(start_epoch, epochs):
            for batch in batches(epoch):
                if batch is None:
                    trainer.skip_step()
                else:
                    last, scale = trainer.train_step(*batch)
                    info = {
                        "epoch": epoch + 1,
                        "loss": f"{last:.3f}",
                        "scale": f"{scale:.1f}",
                        "lr": f"{trainer.optimizer.param_groups[0]['lr']:.2e}",
                    }
                    bar.set_postfix(postfix(info) if postfix else info)
                bar.update(1)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    finally:
        bar.close()
    return last

"""Contrastive fine-tuning of a CLIP model on image-caption pairs (``cbir finetune``).

One training loop, :class:`Trainer`, used both by ``cbir finetune`` (a user's manifest) and by
``cbir/training/tiny.py`` (the bundled ``cbir-tiny``, trained from scratch on synthetic
scenes): the symmetric CLIP loss (pairs with the same caption, or the same image, count as
positives: soft targets; with distinct pairs it is exactly open_clip's ``ClipLoss``), AdamW with
open_clip's no-decay split (gains, biases, logit_scale), linear warmup then cosine decay to zero,
logit scale clamped to 100, fp16 autocast with a gradient scaler on CUDA.

Checkpoints: after every epoch the whole training state (model, optimizer, scheduler step,
gradient scaler, epoch, RNG states, the run's settings and its "before" evaluation) is written
atomically to ``<out stem>.train.pt``; ``--resume`` continues from it and ends with the same
weights as an uninterrupted run (batch order depends only on the seed and the epoch). The final
checkpoint ``--out`` is a plain open_clip state dict: ``--model ARCH:path/to/out.pt`` loads it.

Data: the manifest is read with cbir's dataset readers (bad rows are counted and skipped); the
images are decoded in DataLoader worker processes with cbir's decoder and model preprocessing
(``open_image``: what ingest feeds the model), undecodable images are dropped from their batch
and counted. A deterministic held-out split (``holdout`` of the images, by seed) is evaluated
before and after training: the CLIP loss, and text->image / image->text recall with
``cbir.evaluate.retrieval_metrics``, from embeddings computed by cbir's own encoder.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from cbir.errors import UsageError

MAX_LOGIT_SCALE = math.log(100)


# -- the loss, the schedule, the optimizer ---------------------------------------------------------
def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor, labels: torch.Tensor,
              image_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric CLIP cross-entropy over the image-text similarity matrix.

    Features are L2-normalised; ``logit_scale`` is already exponentiated. Pairs with the same
    ``labels`` (e.g. the same caption), or the same ``image_ids``, count as positives (soft
    targets); with all-distinct labels this is exactly the standard CLIP loss.
    """
    logits = logit_scale * image_features @ text_features.T
    same = (labels[:, None] == labels[None, :])
    if image_ids is not None:
        same = same | (image_ids[:, None] == image_ids[None, :])
    same = same.float()
    targets = same / same.sum(dim=1, keepdim=True)
    loss_i = torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
    loss_t = torch.sum(-targets * F.log_softmax(logits.T, dim=1), dim=1).mean()
    return (loss_i + loss_t) / 2


def lr_at(step: int, steps: int, warmup: int, base_lr: float) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) * base_lr


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's split: no weight decay for gains, biases and logit_scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


@dataclass
class TrainConfig:
    total_steps: int
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup: int = 0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6


class Trainer:
    """Optimizer, schedule and one training step; its state round-trips through
    ``state_dict``/``load_state_dict`` (with the model's)."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig, device: str = "cpu"):
        self.model, self.config, self.device = model, config, device
        self.optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr,
                                           betas=config.betas, eps=config.eps)
        self.cuda = device.startswith("cuda")
        self.scaler = torch.amp.GradScaler("cuda") if self.cuda else None
        self.step = 0  # optimizer steps taken (the schedule's position)

    def autocast(self):
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def lr(self) -> float:
        return lr_at(self.step, self.config.total_steps, self.config.warmup, self.config.lr)

    def train_step(self, images: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor,
                   image_ids: torch.Tensor | None = None) -> tuple[float, float]:
        """One optimizer step on a batch; returns (loss, logit scale)."""
        model, optimizer = self.model, self.optimizer
        model.train()
        lr = self.lr()
        for group in optimizer.param_groups:
            group["lr"] = lr
        with self.autocast():
            image_features, text_features, logit_scale = _features(model(images, tokens))
        if self.cuda:  # the loss in fp32 (autocast gives fp16 features)
            image_features, text_features = image_features.float(), text_features.float()
            logit_scale = logit_scale.float()
        loss = clip_loss(image_features, text_features, logit_scale, labels, image_ids)
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
        return loss.item(), logit_scale.item()

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


def _features(out):
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
    from cbir.fsutil import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
    return path


def fit(trainer: Trainer, batches: Callable[[int], Iterable], *, epochs: int, steps_per_epoch: int,
        start_epoch: int = 0, on_epoch_end: Callable[[int], None] | None = None,
        progress: bool = True, desc: str = "train", postfix: Callable[[dict], dict] | None = None
        ) -> float:
    """Epochs ``start_epoch..epochs-1``; ``batches(epoch)`` yields ``(images, tokens, labels)``
    or ``(images, tokens, labels, image_ids)`` already on the device (``None`` for a batch
    with nothing left to train on). Returns the last loss."""
    from tqdm import tqdm

    last = float("nan")
    bar = tqdm(total=epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, desc=desc,
               disable=None if progress else True, dynamic_ncols=True, unit="step")
    try:
        for epoch in range(start_epoch, epochs):
            for batch in batches(epoch):
                if batch is None:
                    trainer.skip_step()
                else:
                    last, scale = trainer.train_step(*batch)
                    info = {"epoch": epoch + 1, "loss": f"{last:.3f}", "scale": f"{scale:.1f}",
                            "lr": f"{trainer.optimizer.param_groups[0]['lr']:.2e}"}
                    bar.set_postfix(postfix(info) if postfix else info)
                bar.update(1)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    finally:
        bar.close()
    return last


# -- cbir finetune on a manifest -------------------------------------------------------------------
@dataclass
class FinetuneSettings:
    dataset: str
    model: str
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup: int | None = None  # steps; None: 10% of all steps
    seed: int = 0
    holdout: float = 0.1
    image_column: str | None = None
    caption_column: str | None = None

    # what a resumed run must agree on (the rest may not change either: all are compared)
    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Pairs:
    """Image-caption pairs from a manifest: ``images[i]`` paths, ``pairs`` (image row, caption)."""

    images: list[str]
    pairs: list[tuple[int, str]]
    bad_rows: int = 0
    no_caption: int = 0
    missing: int = 0
    reasons: list[str] = field(default_factory=list)


def read_pairs(dataset: str, image_column: str | None = None, caption_column: str | None = None) -> Pairs:
    """Every (image, caption) pair of a manifest; a row with several captions gives several."""
    from cbir.ingest.datasets import BadRow, MANIFEST_FORMATS, detect_format, read_manifest

    fmt = detect_format(str(dataset))
    if fmt not in MANIFEST_FORMATS:
        raise UsageError(
            f"--dataset {dataset}: give a manifest (.csv, .tsv, .jsonl or .parquet) with image and "
            "caption columns")
    out = Pairs([], [])
    rows = {}
    caption_seen = False
    for item in read_manifest(Path(dataset), fmt, image_column=image_column, caption_column=caption_column):
        if isinstance(item, BadRow):
            out.bad_rows += 1
            if len(out.reasons) < 3:
                out.reasons.append(f"row {item.row}: {item.reason}")
            continue
        if not item.captions:
            out.no_caption += 1
            continue
        caption_seen = True
        if not item.image.is_file():
            out.missing += 1
            if len(out.reasons) < 3:
                out.reasons.append(f"row {item.row}: {item.raw}: no such file")
            continue
        key = str(item.image)
        if key not in rows:
            rows[key] = len(out.images)
            out.images.append(key)
        out.pairs.extend((rows[key], c) for c in item.captions if c.strip())
    if not out.images and not out.bad_rows and not out.missing and not out.no_caption:
        raise UsageError(f"no rows in {dataset}: nothing to fine-tune on")
    if not caption_seen and not out.pairs:
        raise UsageError(
            f"no captions in {dataset}: fine-tuning needs a caption column (caption, text, ...; "
            "or name it with --caption-column)")
    return out


def split_images(n_images: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train image rows, held-out image rows), deterministic for the seed."""
    order = np.random.default_rng([0x5EED, seed]).permutation(n_images)
    n_held = max(2, int(round(holdout * n_images))) if holdout > 0 else 0
    if n_images - n_held < 2:
        raise UsageError(
            f"only {n_images} usable images: fine-tuning needs at least 2 to train on "
            f"besides the {n_held} held out (--holdout)")
    return np.sort(order[n_held:]), np.sort(order[:n_held])


class PairDataset(torch.utils.data.Dataset):
    """Decodes one pair's image with cbir's decoder (model pixels, uint8 [S, S, 3]) in a worker;
    None for an image that cannot be decoded."""

    def __init__(self, images: list[str], pairs: list[tuple[int, str]], preprocess):
        self.images, self.pairs, self.preprocess = images, pairs, preprocess

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        from cbir.ingest.decode import BadImage, open_image

        row, caption = self.pairs[i]
        try:
            with open(self.images[row], "rb") as f:
                pixels = open_image(f.read(), self.preprocess)[0]
        except (OSError, BadImage):
            return i, row, caption, None
        return i, row, caption, pixels


def _collate(items):
    good = [it for it in items if it[3] is not None]
    bad = [it[0] for it in items if it[3] is None]
    pixels = torch.from_numpy(np.stack([it[3] for it in good])) if good else None
    return pixels, [it[2] for it in good], torch.tensor([it[1] for it in good], dtype=torch.long), bad


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of an epoch: a permutation fixed by (seed, epoch), cut into batch_size runs
    (a last run of fewer than 2 pairs, nothing to contrast, is dropped)."""
    order = np.random.default_rng([0xC11B, seed, epoch]).permutation(n).tolist()
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if batches and len(batches[-1]) < 2:
        batches.pop()
    return batches


class _Data:
    """Decoded batches on the device, for training and for evaluation."""

    def __init__(self, encoder, images, pairs, workers: int):
        self.encoder, self.images, self.pairs = encoder, images, pairs
        self.dataset = PairDataset(images, pairs, encoder.preprocess)
        self.workers = workers
        self.bad: set[int] = set()
        captions = sorted({c for _, c in pairs})
        self.caption_id = {c: i for i, c in enumerate(captions)}
        dev = encoder.device
        self.mean = torch.tensor(encoder.preprocess.mean, device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(encoder.preprocess.std, device=dev).view(1, 3, 1, 1)

    def loader(self, batches: list[list[int]]):
        from torch.utils.data import DataLoader

        return DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers,
                          collate_fn=_collate, pin_memory=self.encoder.device.startswith("cuda"),
                          generator=torch.Generator().manual_seed(0),
                          persistent_workers=False)

    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW on the device, as cbir's encoder does."""
        batch = pixels.to(self.encoder.device, non_blocking=True)
        return batch.permute(0, 3, 1, 2).float().div_(255).sub_(self.mean).div_(self.std)

    def batches(self, batches: list[list[int]]):
        tokenizer = self.encoder._tokenizer
        dev = self.encoder.device
        for pixels, captions, rows, bad in self.loader(batches):
            self.bad.update(bad)
            if pixels is None or len(captions) < 2:
                yield None
                continue
            labels = torch.tensor([self.caption_id[c] for c in captions], device=dev)
            yield self.to_input(pixels), tokenizer(captions).to(dev), labels, rows.to(dev)


def evaluate(encoder, trainer: Trainer, data: _Data, batch_size: int) -> dict:
    """Held-out CLIP loss and retrieval metrics (cbir's encoder and ``retrieval_metrics``)."""
    from cbir.evaluate.retrieval import retrieval_metrics

    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        order = list(range(len(data.pairs)))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        losses, weights = [], []
        image_vectors: dict[int, np.ndarray] = {}
        text_vectors, text_rows = [], []
        with torch.inference_mode():
            for pixels, captions, rows, bad in data.loader(batches):
                data.bad.update(bad)
                if pixels is None:
                    continue
                x = data.to_input(pixels)
                with trainer.autocast():
                    img, txt, scale = _features(model(x, encoder._tokenizer(captions).to(encoder.device)))
                if len(captions) >= 2:
                    labels = torch.tensor([data.caption_id[c] for c in captions], device=encoder.device)
                    loss = clip_loss(img.float(), txt.float(), scale.float(), labels, rows.to(encoder.device))
                    losses.append(loss.item())
                    weights.append(len(captions))
                vectors = encoder.encode_images(pixels.numpy())
                for r, v in zip(rows.tolist(), vectors):
                    image_vectors.setdefault(r, v)
                text_vectors.append(encoder.encode_texts(captions))
                text_rows.extend(rows.tolist())
    finally:
        model.train(was_training)
    if not image_vectors:
        raise UsageError("no held-out image could be decoded; check the dataset")
    held = sorted(image_vectors)
    position = {r: i for i, r in enumerate(held)}
    metrics = retrieval_metrics(np.stack([image_vectors[r] for r in held]), np.concatenate(text_vectors),
                                np.asarray([position[r] for r in text_rows]))
    loss = float(np.average(losses, weights=weights)) if losses else float("nan")
    return {"loss": loss, "retrieval": metrics.as_dict()}


def state_path(out: Path) -> Path:
    """Where the training state of a run writing ``out`` lives: ``<out stem>.train.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.train.pt")


def finetune(options: dict, out: Path, *, device: str = "auto", workers: int | None = None,
             resume: bool = False, progress: bool = True, stop_after_epochs: int | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Fine-tune ``options["model"]`` on ``options["dataset"]`` (``options``: the fields of
    :class:`FinetuneSettings` that were given); writes ``out`` (a plain state dict) and returns
    a report (before/after held-out metrics, counts, paths, time; ``encoder``: the trained model
    as a cbir encoder). ``stop_after_epochs`` stops early, as a killed run would."""
    from cbir.encode import load_encoder, parse_model_spec

    out = Path(out)
    if out.suffix.lower() not in (".pt", ".pth", ".bin", ".ckpt"):
        raise UsageError(f"--out {out}: name the checkpoint with a .pt extension, e.g. finetuned.pt")
    options = {k: v for k, v in options.items() if v is not None}
    if "dataset" in options:
        options["dataset"] = str(Path(options["dataset"]).expanduser().absolute())
    state_file = state_path(out)
    state = None
    if resume:
        if not state_file.is_file():
            raise UsageError(f"nothing to resume: no training state {state_file} (from a run with --out {out})")
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=False)
            saved = dict(state["settings"])
        except Exception as e:
            raise UsageError(f"cannot read training state {state_file}: {e}") from None
        for key, value in options.items():
            if key in saved and saved[key] != value:
                raise UsageError(
                    f"--resume: --{key.replace('_', '-')} {value!r} differs from the run being resumed "
                    f"({saved[key]!r}); leave it out or start a new run")
        settings = FinetuneSettings(**saved)
    else:
        for key in ("dataset", "model"):
            if key not in options:
                raise UsageError(f"--{key} is required (unless --resume)")
        settings = FinetuneSettings(**options)
    _check(settings)

    pairs = read_pairs(settings.dataset, settings.image_column, settings.caption_column)
    if len(pairs.images) < 4:
        raise UsageError(
            f"{settings.dataset}: only {len(pairs.images)} usable image-caption rows "
            f"({pairs.bad_rows} bad, {pairs.missing} missing files, {pairs.no_caption} without a "
            "caption); fine-tuning needs at least 4")
    train_rows, held_rows = split_images(len(pairs.images), settings.holdout, settings.seed)
    held_set = set(held_rows.tolist())
    train_pairs = [p for p in pairs.pairs if p[0] not in held_set]
    held_pairs = [p for p in pairs.pairs if p[0] in held_set]
    if len(train_pairs) < 2:
        raise UsageError("fewer than 2 training pairs after the held-out split; add data or lower --holdout")
    batch_size = min(settings.batch_size, len(train_pairs))
    steps_per_epoch = len(epoch_batches(len(train_pairs), batch_size, settings.seed, 0))
    total = settings.epochs * steps_per_epoch
    warmup = settings.warmup if settings.warmup is not None else max(1, total // 10)

    if state is None:
        torch.manual_seed(settings.seed)
    encoder = load_encoder(parse_model_spec(settings.model), device)
    model = encoder._model
    trainer = Trainer(model, TrainConfig(total_steps=total, lr=settings.lr,
                                         weight_decay=settings.weight_decay, warmup=warmup),
                      encoder.device)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    train_data = _Data(encoder, pairs.images, train_pairs, workers)
    held_data = _Data(encoder, pairs.images, held_pairs, workers)
    # both splits' captions share ids, so "same caption" means the same in each
    log(f"{len(pairs.images)} images, {len(pairs.pairs)} pairs: {len(train_pairs)} to train on, "
        f"{len(held_pairs)} held out ({len(held_rows)} images); skipped {pairs.bad_rows} bad rows, "
        f"{pairs.missing} missing files, {pairs.no_caption} rows without a caption")

    start_epoch = 0
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        set_rng_state(state["rng"])
        start_epoch = int(state["epoch"])
        before = state["before"]
        log(f"resuming after epoch {start_epoch} of {settings.epochs} (step {trainer.step})")
    else:
        before = evaluate(encoder, trainer, held_data, batch_size)

    started = time.perf_counter()
    last_epoch = settings.epochs if stop_after_epochs is None else min(settings.epochs, stop_after_epochs)

    def batches(epoch):
        return train_data.batches(epoch_batches(len(train_pairs), batch_size, settings.seed, epoch))

    def checkpoint(epoch):
        save_atomic({"trainer": trainer.state_dict(), "rng": rng_state(), "epoch": epoch + 1,
                     "settings": settings.as_dict(), "before": before}, state_file)

    last_loss = fit(trainer, batches, epochs=last_epoch, steps_per_epoch=steps_per_epoch,
                    start_epoch=start_epoch, on_epoch_end=checkpoint, progress=progress,
                    desc="finetune")
    seconds = time.perf_counter() - started
    report = {"before": before, "epochs_done": last_epoch, "epochs": settings.epochs,
              "steps": trainer.step, "last_train_loss": last_loss, "train_seconds": round(seconds, 2),
              "images": len(pairs.images), "train_pairs": len(train_pairs), "held_out_pairs": len(held_pairs),
              "skipped": {"bad_rows": pairs.bad_rows, "missing_files": pairs.missing,
                          "no_caption": pairs.no_caption,
                          "undecodable_pairs": len(train_data.bad) + len(held_data.bad)},
              "state": str(state_file), "device": encoder.device}
    if last_epoch < settings.epochs:
        report["out"] = None
        return report
    model.eval()
    save_atomic({k: v.detach().cpu() for k, v in model.state_dict().items()}, out)
    after = evaluate(encoder, trainer, held_data, batch_size)
    report.update(after=after, out=str(out), load_with=f"{encoder.spec.arch}:{out}")
    report["encoder"] = encoder
    return report


def _check(s: FinetuneSettings) -> None:
    if s.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    if s.batch_size < 2:
        raise UsageError("--batch-size must be at least 2 (the loss contrasts pairs within a batch)")
    if not s.lr > 0:
        raise UsageError("--lr must be positive")
    if not 0 <= s.holdout < 1:
        raise UsageError("--holdout must be a fraction in [0, 1)")
    if s.holdout == 0:
        raise UsageError("--holdout 0 leaves nothing to evaluate on; use a fraction such as 0.1")

"""Contrastive fine-tuning of a CLIP model on image-caption pairs (``cbir finetune``).

The training loop is :mod:`cbir.training.loop`'s (also the bundled ``cbir-tiny``'s): the
symmetric CLIP loss, AdamW with open_clip's no-decay split, warmup then cosine decay, logit scale
clamped to 100, fp16 autocast on CUDA. This module supplies a user's manifest as batches, the
held-out evaluation and the run's settings and checkpoints.

Checkpoints: after every epoch the whole training state (model, optimizer, scheduler step,
gradient scaler, epoch, RNG states, the run's settings and its "before" evaluation) is written
atomically to ``<out stem>.train.pt``; ``--resume`` continues from it and ends with the same
weights as an uninterrupted run (batch order depends only on the seed and the epoch). The final
checkpoint ``--out`` is a plain open_clip state dict: ``--model ARCH:path/to/out.pt`` loads it.

Data (cbir.training.pairs): the manifest is read with cbir's dataset readers (bad rows are counted and skipped); the
images are decoded in DataLoader worker processes with cbir's decoder and model preprocessing
(``open_image``: what ingest feeds the model), undecodable images are dropped from their batch
and counted. A deterministic held-out split (``holdout`` of the images, by seed) is evaluated
before and after training: the CLIP loss, and text->image / image->text recall with
``cbir.evaluate.retrieval_metrics``, from embeddings computed by cbir's own encoder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cbir.errors import UsageError
from cbir.training.loop import (
    TrainConfig,
    Trainer,
    clip_loss,
    clip_outputs,
    fit,
    rng_state,
    save_atomic,
    set_rng_state,
)
from cbir.training.pairs import PairBatches, Pairs, epoch_batches, read_pairs, split_images

MODE = "pairs"  # the training state's mode (--images-only runs write "images": cbir.finetune_images)


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


def evaluate(encoder, trainer: Trainer, data: PairBatches, batch_size: int) -> dict:
    """Held-out CLIP loss and retrieval metrics (cbir's encoder and ``retrieval_metrics``)."""
    from cbir.evaluate.retrieval import retrieval_metrics

    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        order = list(range(len(data.pairs)))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
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
                    img, txt, scale = clip_outputs(model(x, encoder.tokenizer(captions).to(encoder.device)))
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
    metrics = retrieval_metrics(
        np.stack([image_vectors[r] for r in held]),
        np.concatenate(text_vectors),
        np.asarray([position[r] for r in text_rows]),
    )
    loss = float(np.average(losses, weights=weights)) if losses else float("nan")
    return {"loss": loss, "retrieval": metrics.as_dict()}


def state_path(out: Path) -> Path:
    """Where the training state of a run writing ``out`` lives: ``<out stem>.train.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.train.pt")


def finetune(
    options: dict,
    out: Path,
    *,
    device: str = "auto",
    workers: int | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Fine-tune ``options["model"]`` on ``options["dataset"]`` (``options``: the fields of
    :class:`FinetuneSettings` that were given); writes ``out`` (a plain state dict) and returns
    a report (before/after held-out metrics, counts, paths, time; ``encoder``: the trained model
    as a cbir encoder). ``stop_after_epochs`` stops early, as a killed run would."""
    out = Path(out)
    state_file = state_path(out)
    settings, state = _settings(options, out, state_file if resume else None)
    run = _set_up(settings, state, device, workers)
    log(run.summary())
    if state is not None:
        run.trainer.load_state_dict(state["trainer"])
        set_rng_state(state["rng"])
        start_epoch, before = int(state["epoch"]), state["before"]
        log(f"resuming after epoch {start_epoch} of {settings.epochs} (step {run.trainer.step})")
    else:
        start_epoch, before = 0, evaluate(run.encoder, run.trainer, run.held_data, run.batch_size)

    started = time.perf_counter()
    last_epoch = settings.epochs if stop_after_epochs is None else min(settings.epochs, stop_after_epochs)
    last_loss = _train(run, start_epoch, last_epoch, before, state_file, progress)
    report = run.report(before, last_epoch, last_loss, time.perf_counter() - started, state_file)
    if last_epoch < settings.epochs:
        report["out"] = None
        return report
    return _finish(run, out, report)


def _settings(options: dict, out: Path, resume_from: Path | None) -> tuple[FinetuneSettings, dict | None]:
    """The run's settings and, resuming, the saved training state: a resumed run takes the saved
    settings, and any option given again must agree with them."""
    if out.suffix.lower() not in (".pt", ".pth", ".bin", ".ckpt"):
        raise UsageError(f"--out {out}: name the checkpoint with a .pt extension, e.g. finetuned.pt")
    options = {k: v for k, v in options.items() if v is not None}
    if "dataset" in options:
        options["dataset"] = str(Path(options["dataset"]).expanduser().absolute())
    saved, state = load_state(out, options, resume_from, MODE)
    if state is not None:
        settings = FinetuneSettings(**saved)
    else:
        for key in ("dataset", "model"):
            if key not in options:
                raise UsageError(f"--{key} is required (unless --resume)")
        settings = FinetuneSettings(**options)
    _check(settings)
    return settings, state


def load_state(out: Path, options: dict, resume_from: Path | None, mode: str) -> tuple[dict, dict | None]:
    """(the saved settings, the training state) of the run to resume (``({}, None)`` when not
    resuming). The state must be of a run of ``mode`` (image-caption pairs, or --images-only),
    and any option given again must agree with its saved value."""
    if resume_from is None:
        return {}, None
    if not resume_from.is_file():
        raise UsageError(f"nothing to resume: no training state {resume_from} (from a run with --out {out})")
    try:
        state = torch.load(resume_from, map_location="cpu", weights_only=False)
        saved = dict(state["settings"])
    except Exception as e:
        raise UsageError(f"cannot read training state {resume_from}: {e}") from None
    found = state.get("mode", MODE)
    if found != mode:
        kind, flag = ("an --images-only", "with") if found == "images" else ("an image-caption", "without")
        raise UsageError(f"--resume: {resume_from} is the state of {kind} run; resume it {flag} --images-only")
    for key, value in options.items():
        if key in saved and saved[key] != value:
            raise UsageError(
                f"--resume: --{key.replace('_', '-')} {value!r} differs from the run being resumed "
                f"({saved[key]!r}); leave it out or start a new run"
            )
    return saved, state


@dataclass
class _Split:
    """A manifest's pairs, cut by image into pairs to train on and held-out pairs."""

    pairs: Pairs
    train: list[tuple[int, str]]
    held: list[tuple[int, str]]
    held_images: int


def _split(settings: FinetuneSettings) -> _Split:
    pairs = read_pairs(settings.dataset, settings.image_column, settings.caption_column)
    if len(pairs.images) < 4:
        raise UsageError(
            f"{settings.dataset}: only {len(pairs.images)} usable image-caption rows "
            f"({pairs.bad_rows} bad, {pairs.missing} missing files, {pairs.no_caption} without a "
            "caption); fine-tuning needs at least 4"
        )
    train_rows, held_rows = split_images(len(pairs.images), settings.holdout, settings.seed)
    held_set = set(held_rows.tolist())
    train_pairs = [p for p in pairs.pairs if p[0] not in held_set]
    held_pairs = [p for p in pairs.pairs if p[0] in held_set]
    if len(train_pairs) < 2:
        raise UsageError("fewer than 2 training pairs after the held-out split; add data or lower --holdout")
    return _Split(pairs, train_pairs, held_pairs, len(held_rows))


@dataclass
class _Run:
    """A fine-tuning run once set up: what its steps share."""

    settings: FinetuneSettings
    split: _Split
    encoder: Any
    trainer: Trainer
    train_data: PairBatches
    held_data: PairBatches
    batch_size: int
    steps_per_epoch: int

    def summary(self) -> str:
        pairs, split = self.split.pairs, self.split
        return (
            f"{len(pairs.images)} images, {len(pairs.pairs)} pairs: {len(split.train)} to train on, "
            f"{len(split.held)} held out ({split.held_images} images); skipped {pairs.bad_rows} bad rows, "
            f"{pairs.missing} missing files, {pairs.no_caption} rows without a caption"
        )

    def report(self, before: dict, epochs_done: int, last_loss: float, seconds: float, state_file: Path) -> dict:
        pairs, split = self.split.pairs, self.split
        return {
            "before": before,
            "epochs_done": epochs_done,
            "epochs": self.settings.epochs,
            "steps": self.trainer.step,
            "last_train_loss": last_loss,
            "train_seconds": round(seconds, 2),
            "images": len(pairs.images),
            "train_pairs": len(split.train),
            "held_out_pairs": len(split.held),
            "skipped": {
                "bad_rows": pairs.bad_rows,
                "missing_files": pairs.missing,
                "no_caption": pairs.no_caption,
                "undecodable_pairs": len(self.train_data.bad) + len(self.held_data.bad),
            },
            "state": str(state_file),
            "device": self.encoder.device,
        }


def _set_up(settings: FinetuneSettings, state: dict | None, device: str, workers: int | None) -> _Run:
    """The pairs, the schedule, the model (seeded, unless a resumed state replaces it) and its
    trainer, and the two splits' batches."""
    from cbir.encode import load_encoder, parse_model_spec

    split = _split(settings)
    batch_size = min(settings.batch_size, len(split.train))
    steps_per_epoch = len(epoch_batches(len(split.train), batch_size, settings.seed, 0))
    total = settings.epochs * steps_per_epoch
    warmup = settings.warmup if settings.warmup is not None else max(1, total // 10)
    if state is None:
        torch.manual_seed(settings.seed)
    encoder = load_encoder(parse_model_spec(settings.model), device, backend="torch")  # it trains the torch model
    trainer = Trainer(
        encoder.model,
        TrainConfig(total_steps=total, lr=settings.lr, weight_decay=settings.weight_decay, warmup=warmup),
        encoder.device,
    )
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    # both splits' captions share ids, so "same caption" means the same in each
    train_data = PairBatches(encoder, split.pairs.images, split.train, workers)
    held_data = PairBatches(encoder, split.pairs.images, split.held, workers)
    return _Run(settings, split, encoder, trainer, train_data, held_data, batch_size, steps_per_epoch)


def _train(run: _Run, start_epoch: int, last_epoch: int, before: dict, state_file: Path, progress: bool) -> float:
    """Epochs ``start_epoch..last_epoch-1``, the training state saved after each; the last loss."""
    settings, n_pairs = run.settings, len(run.split.train)

    def batches(epoch):
        return run.train_data.batches(epoch_batches(n_pairs, run.batch_size, settings.seed, epoch))

    def checkpoint(epoch):
        save_atomic(
            {
                "trainer": run.trainer.state_dict(),
                "rng": rng_state(),
                "mode": MODE,
                "epoch": epoch + 1,
                "settings": settings.as_dict(),
                "before": before,
            },
            state_file,
        )

    return fit(
        run.trainer,
        batches,
        epochs=last_epoch,
        steps_per_epoch=run.steps_per_epoch,
        start_epoch=start_epoch,
        on_epoch_end=checkpoint,
        progress=progress,
        desc="finetune",
    )


def _finish(run: _Run, out: Path, report: dict) -> dict:
    """Writes the trained weights to ``out`` and adds the held-out evaluation after training."""
    model = run.trainer.model
    model.eval()
    save_atomic({k: v.detach().cpu() for k, v in model.state_dict().items()}, out)
    after = evaluate(run.encoder, run.trainer, run.held_data, run.batch_size)
    report.update(after=after, out=str(out), load_with=f"{run.encoder.spec.arch}:{out}")
    report["encoder"] = run.encoder
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

"""Image-only fine-tuning (``cbir finetune --images-only``): the image tower trained contrastively
on two augmented views of each image (SimCLR's NT-Xent), for collections without captions.

The images are a library's (its model the default starting point, its Preprocess, masks
included, what both views are brought to model pixels with; ``--where`` picks a subset) or a
manifest's (captions optional). The text tower and the logit scale are frozen, so a text's
embedding stays the original model's; on the images that have captions, ``clip_weight`` (default
0.1, 0 turns it off) times the CLIP loss keeps the image features near the text space. The
training loop, checkpoints, ``--resume`` and fp16 autocast on CUDA are ``cbir finetune``'s
(cbir.finetune, cbir.training.loop); the data and the objective are cbir.training.images'.

Evaluated before and after on a deterministic held-out split of the images, never trained on
(cbir.evaluate.image_retrieval): near-duplicate recovery (each held-out image against a copy made
by a fixed degradation: crop 5% per side, half size, JPEG 50: top-1 and mAP), mAP@10 by label when
the images have labels (a library image's folder, or a manifest column), and text->image recall
over the held-out captioned images when there are at least two, to show what the text side lost.
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
from cbir.finetune import load_state, state_path
from cbir.training.image_sources import ImageSet
from cbir.training.images import HeldOutDataset, ImageTrainer, ViewDataset, freeze_text_tower, loader
from cbir.training.loop import TrainConfig, fit, rng_state, save_atomic, set_rng_state
from cbir.training.pairs import epoch_batches, split_images
from cbir.training.views import Augment

MODE = "images"  # the training state's mode, so that each kind of run resumes only as itself
LABEL_K = 10


@dataclass
class ImageFinetuneSettings:
    model: str | None = None  # None: the library's
    library: str | None = None
    dataset: str | None = None
    where: str | None = None
    image_column: str | None = None
    caption_column: str | None = None
    label_column: str | None = None
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup: int | None = None  # steps; None: 10% of all steps
    seed: int = 0
    holdout: float = 0.1
    temperature: float = 0.1
    clip_weight: float = 0.1
    flip: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def read_images(settings: ImageFinetuneSettings) -> ImageSet:
    """The run's images: the library's (opened, read and closed here) or the manifest's."""
    from cbir.training.image_sources import library_images, manifest_images

    if settings.library is not None:
        from cbir.library import open_library

        with open_library(library=settings.library) as lib:
            return library_images(lib, settings.where, settings.label_column)
    assert settings.dataset is not None
    return manifest_images(settings.dataset, settings.image_column, settings.caption_column, settings.label_column)


def finetune_images(
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
    """Fine-tune the image tower on the images ``options`` name (the fields of
    :class:`ImageFinetuneSettings` that were given); writes ``out`` (a plain state dict) and
    returns the report (before/after held-out metrics, counts, what was frozen; ``encoder``: the
    trained model as a cbir encoder). ``stop_after_epochs`` stops early, as a killed run would."""
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
        start_epoch, before = 0, run.evaluate()
    started = time.perf_counter()
    last_epoch = settings.epochs if stop_after_epochs is None else min(settings.epochs, stop_after_epochs)
    last_loss = _train(run, start_epoch, last_epoch, before, state_file, progress)
    report = run.report(before, last_epoch, last_loss, time.perf_counter() - started, state_file)
    if last_epoch < settings.epochs:
        report["out"] = None
        return report
    model = run.trainer.model
    model.eval()
    save_atomic({k: v.detach().cpu() for k, v in model.state_dict().items()}, out)
    report.update(after=run.evaluate(), out=str(out), load_with=f"{run.encoder.spec.arch}:{out}")
    report["encoder"] = run.encoder
    return report


def _settings(options: dict, out: Path, resume_from: Path | None) -> tuple[ImageFinetuneSettings, dict | None]:
    options = {k: v for k, v in options.items() if v is not None}
    for key in ("dataset", "library"):
        if key in options:
            options[key] = str(Path(options[key]).expanduser().absolute())
    saved, state = load_state(out, options, resume_from, MODE)
    if state is not None:
        settings = ImageFinetuneSettings(**saved)
    else:
        if ("library" in options) == ("dataset" in options):
            raise UsageError("--images-only trains on --library LIBRARY or on --dataset MANIFEST: name one")
        if "library" not in options and "model" not in options:
            raise UsageError("--model is required with --dataset (with --library the library's model is the default)")
        if "where" in options and "library" not in options:
            raise UsageError("--where picks images of a library: use it with --library")
        settings = ImageFinetuneSettings(**options)
    _check(settings)
    return settings, state


def _check(s: ImageFinetuneSettings) -> None:
    if s.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    if s.batch_size < 2:
        raise UsageError("--batch-size must be at least 2 (the loss contrasts images within a batch)")
    if not s.lr > 0:
        raise UsageError("--lr must be positive")
    if not 0 < s.holdout < 1:
        raise UsageError("--holdout must be a fraction in (0, 1): the held-out images are the evaluation")
    if not s.temperature > 0:
        raise UsageError("--temperature must be positive")
    if s.clip_weight < 0:
        raise UsageError("--clip-weight must be 0 (off) or more")


@dataclass
class _Run:
    """An image-only run once set up: what its steps share."""

    settings: ImageFinetuneSettings
    images: ImageSet
    train_rows: list[int]
    held_rows: list[int]
    encoder: Any
    trainer: ImageTrainer
    preprocess: Any
    workers: int
    batch_size: int
    steps_per_epoch: int
    frozen: dict
    caption_id: dict[str, int]
    unreadable: set[int]

    @property
    def captioned_train(self) -> int:
        return sum(1 for r in self.train_rows if self.images.captions[r])

    def summary(self) -> str:
        return (
            f"{len(self.images.refs)} images of the {self.images.source}: {len(self.train_rows)} to train on, "
            f"{len(self.held_rows)} held out; {self.captioned_train} training images have captions "
            f"(CLIP loss weight {self.settings.clip_weight}); text tower frozen"
            + (f"; skipped {self.images.skipped} rows or images that cannot be used" if self.images.skipped else "")
        )

    def batches(self, epoch: int):
        """Epoch ``epoch``'s batches on the device: (2N views, captioned, tokens, labels, ids)."""
        s, dev = self.settings, self.encoder.device
        order = epoch_batches(len(self.train_rows), self.batch_size, s.seed, epoch)
        dataset = ViewDataset(
            self.images.refs,
            self.images.captions,
            self.train_rows,
            self.preprocess,
            Augment(flip=s.flip),
            s.seed,
            epoch,
        )
        for a, b, rows, captions, bad in loader(dataset, order, self.workers, dev.startswith("cuda")):
            self.unreadable.update(bad)
            if a is None or len(rows) < 2:
                yield None
                continue
            views = self.to_input(torch.cat([a, b]))
            captioned = [i for i, c in enumerate(captions) if c is not None]
            if len(captioned) < 2 or s.clip_weight == 0:
                yield views, None, None, None, None
                continue
            texts = [captions[i] for i in captioned]
            yield (
                views,
                torch.tensor(captioned, device=dev),
                self.encoder.tokenizer(texts).to(dev),
                torch.tensor([self.caption_id[t] for t in texts], device=dev),
                torch.tensor([rows[i] for i in captioned], device=dev),
            )

    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW on the device, as cbir's encoder does."""
        dev, pp = self.encoder.device, self.encoder.preprocess
        mean = torch.tensor(pp.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(pp.std, device=dev).view(1, 3, 1, 1)
        return pixels.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)

    def evaluate(self) -> dict:
        """The held-out metrics with the model as it is now (cbir's encoder on its weights)."""
        from cbir.evaluate.image_retrieval import map_at_k_by_label, near_duplicate_metrics
        from cbir.evaluate.retrieval import retrieval_metrics

        model = self.trainer.model
        was_training = model.training
        model.eval()
        originals, copies, rows = [], [], []
        try:
            dataset = HeldOutDataset(self.images.refs, self.held_rows, self.preprocess)
            order = list(range(len(self.held_rows)))
            chunks = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            for a, b, good, _, bad in loader(dataset, chunks, self.workers, self.encoder.device.startswith("cuda")):
                self.unreadable.update(bad)
                if a is not None:
                    originals.append(self.encoder.encode_images(a.numpy()))
                    copies.append(self.encoder.encode_images(b.numpy()))
                    rows.extend(good)
            if len(rows) < 2:
                raise UsageError(f"only {len(rows)} held-out images could be read; the evaluation needs 2")
            a, b = np.concatenate(originals), np.concatenate(copies)
            result: dict[str, Any] = {"images": len(rows), "near_duplicates": near_duplicate_metrics(a, b).as_dict()}
            labelled = [i for i, r in enumerate(rows) if self.images.labels[r] is not None]
            labels = [self.images.labels[rows[i]] for i in labelled]
            shared = len(labels) - len(set(labels))  # > 0: some label has two images
            result["by_label"] = (
                map_at_k_by_label(a[labelled], np.asarray(labels), LABEL_K).as_dict()
                if shared and len(set(labels)) >= 2
                else None
            )
            texts = [(i, c) for i, r in enumerate(rows) for c in self.images.captions[r]]
            if len({i for i, _ in texts}) >= 2:
                from cbir.encode.spec import encode_texts_batched

                vectors = encode_texts_batched(self.encoder, [c for _, c in texts])
                text_image = np.asarray([i for i, _ in texts])
                result["text_to_image"] = retrieval_metrics(a, vectors, text_image).text_to_image
            else:
                result["text_to_image"] = None
        finally:
            model.train(was_training)
        return result

    def report(self, before: dict, epochs_done: int, last_loss: float, seconds: float, state_file: Path) -> dict:
        s = self.settings
        return {
            "mode": "images-only",
            "source": self.images.source,
            "before": before,
            "epochs_done": epochs_done,
            "epochs": s.epochs,
            "steps": self.trainer.step,
            "last_train_loss": last_loss,
            "train_seconds": round(seconds, 2),
            "images": len(self.images.refs),
            "train_images": len(self.train_rows),
            "held_out_images": len(self.held_rows),
            "captioned_train_images": self.captioned_train,
            "clip_weight": s.clip_weight,
            "temperature": s.temperature,
            "flip": s.flip,
            "frozen": {"modules": "text tower and logit scale (everything outside visual.*)", **self.frozen},
            "skipped": {"unusable": self.images.skipped, "unreadable_images": len(self.unreadable)},
            "state": str(state_file),
            "device": self.encoder.device,
        }


def _set_up(settings: ImageFinetuneSettings, state: dict | None, device: str, workers: int | None) -> _Run:
    """The images and their split, the model (seeded, unless a resumed state replaces it) with
    its text tower frozen, and its trainer."""
    from cbir.encode import load_encoder, parse_model_spec

    images = read_images(settings)
    model = settings.model or images.model
    if model is None:
        raise UsageError("--model is required: the model to start from")
    settings.model = model  # saved with the state: a resumed run starts from the same model
    train, held = split_images(len(images.refs), settings.holdout, settings.seed)
    train_rows, held_rows = train.tolist(), held.tolist()
    batch_size = min(settings.batch_size, len(train_rows))
    steps_per_epoch = len(epoch_batches(len(train_rows), batch_size, settings.seed, 0))
    total = settings.epochs * steps_per_epoch
    warmup = settings.warmup if settings.warmup is not None else max(1, total // 10)
    if state is None:
        torch.manual_seed(settings.seed)
    encoder: Any = load_encoder(parse_model_spec(model), device, backend="torch")  # the torch model: .model
    frozen = freeze_text_tower(encoder.model)
    trainer = ImageTrainer(
        encoder.model,
        TrainConfig(total_steps=total, lr=settings.lr, weight_decay=settings.weight_decay, warmup=warmup),
        encoder.device,
        settings.temperature,
        settings.clip_weight,
    )
    preprocess = images.preprocess or encoder.preprocess
    if preprocess.size != encoder.preprocess.size:
        raise UsageError(
            f"--model {model} takes {encoder.preprocess.size}-pixel images but the library's were made "
            f"for {preprocess.size}; start from the library's model or one of its input size"
        )
    captions = sorted({c for r in train_rows for c in images.captions[r]})
    return _Run(
        settings,
        images,
        train_rows,
        held_rows,
        encoder,
        trainer,
        preprocess,
        workers if workers is not None else min(4, os.cpu_count() or 1),
        batch_size,
        steps_per_epoch,
        frozen,
        {c: i for i, c in enumerate(captions)},
        set(),
    )


def _train(run: _Run, start_epoch: int, last_epoch: int, before: dict, state_file: Path, progress: bool) -> float:
    """Epochs ``start_epoch..last_epoch-1``, the training state saved after each; the last loss."""

    def checkpoint(epoch):
        save_atomic(
            {
                "mode": MODE,
                "trainer": run.trainer.state_dict(),
                "rng": rng_state(),
                "epoch": epoch + 1,
                "settings": run.settings.as_dict(),
                "before": before,
            },
            state_file,
        )

    def postfix(info: dict) -> dict:
        clip = info.pop("scale")
        return {**info, "clip": clip} if clip != "nan" else info

    return fit(
        run.trainer,
        run.batches,
        epochs=last_epoch,
        steps_per_epoch=run.steps_per_epoch,
        start_epoch=start_epoch,
        on_epoch_end=checkpoint,
        progress=progress,
        desc="finetune --images-only",
        postfix=postfix,
    )

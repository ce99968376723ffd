"""A user's image-caption pairs for ``cbir finetune``: read from a manifest with cbir's dataset
readers (bad rows counted and skipped), split into train and held-out images by seed, decoded in
DataLoader workers with cbir's decoder and the model's preprocessing (what ingest feeds the
model; undecodable images dropped from their batch and counted), in batches whose order depends
only on the seed and the epoch (so a resumed run sees the same batches)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cbir.errors import UsageError


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
    from cbir.ingest.datasets import MANIFEST_FORMATS, BadRow, detect_format
    from cbir.ingest.manifests import read_manifest

    fmt = detect_format(str(dataset))
    if fmt not in MANIFEST_FORMATS:
        raise UsageError(
            f"--dataset {dataset}: give a manifest (.csv, .tsv, .jsonl or .parquet) with image and caption columns"
        )
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
            "or name it with --caption-column)"
        )
    return out


def split_images(n_images: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train image rows, held-out image rows), deterministic for the seed."""
    order = np.random.default_rng([0x5EED, seed]).permutation(n_images)
    n_held = max(2, int(round(holdout * n_images))) if holdout > 0 else 0
    if n_images - n_held < 2:
        raise UsageError(
            f"only {n_images} usable images: fine-tuning needs at least 2 to train on "
            f"besides the {n_held} held out (--holdout)"
        )
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
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if batches and len(batches[-1]) < 2:
        batches.pop()
    return batches


class PairBatches:
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

        return DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.encoder.device.startswith("cuda"),
            generator=torch.Generator().manual_seed(0),
            persistent_workers=False,
        )

    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW on the device, as cbir's encoder does."""
        batch = pixels.to(self.encoder.device, non_blocking=True)
        return batch.permute(0, 3, 1, 2).float().div_(255).sub_(self.mean).div_(self.std)

    def batches(self, batches: list[list[int]]):
        tokenizer = self.encoder.tokenizer
        dev = self.encoder.device
        for pixels, captions, rows, bad in self.loader(batches):
            self.bad.update(bad)
            if pixels is None or len(captions) < 2:
                yield None
                continue
            labels = torch.tensor([self.caption_id[c] for c in captions], device=dev)
            yield self.to_input(pixels), tokenizer(captions).to(dev), labels, rows.to(dev)

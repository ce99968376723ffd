"""Image-only contrastive training (``cbir finetune --images-only``): images read as ingest reads
them, two augmented views each made in DataLoader workers (cbir.training.views), the image tower
trained with NT-Xent (cbir.training.loop.nt_xent) and, on the images that have captions, a small
weight of the CLIP loss against the frozen text tower.

Only the image tower learns: every parameter outside ``visual`` (the text tower, the logit scale)
gets ``requires_grad=False``, so the optimizer never holds them and the checkpoint keeps them
bit-identical: a text's embedding is the original model's. The image features move, so
text->image search with the tuned checkpoint may get worse; the small CLIP term on captioned images
(when there are some) pulls them back towards the text space.

A view depends only on (seed, epoch, image), so the batches are the same for any number of
workers and after ``--resume``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cbir.encode.spec import Preprocess
from cbir.training.loop import TrainConfig, Trainer, clip_loss, nt_xent
from cbir.training.views import Augment, augment, degrade, view_preprocess, working_preprocess

VIEW_STREAM = 0x51A7  # first entropy word of the views' generators
CAPTION_STREAM = 0xCA97  # of the choice among an image's captions


@dataclass(frozen=True)
class ImageRef:
    """Where an image's bytes are: a file, the ``size`` bytes at ``offset`` of one (a tar
    member), or a PDF page / video frame (``item``: "page=3", "t=12.5") of one."""

    path: str
    offset: int | None = None
    size: int | None = None
    item: str | None = None


def working_image(ref: ImageRef, pp: Preprocess) -> Image.Image:
    """The image as the model sees it at twice its input side (cbir.training.views): decoded by
    ingest's decoder with the library's Preprocess, masks included."""
    from cbir.ingest.decode import open_image
    from cbir.ingest.limits import read_image_file
    from cbir.ingest.pixels import to_model_pixels

    work = working_preprocess(pp)
    if ref.item is not None:
        side = 2 * work.size  # a page or frame up to 2:1 still covers the working side
        if ref.item.startswith("page="):
            from cbir.ingest.pdf import render_page

            picture = render_page(ref.path, int(ref.item[5:]), side)
        else:
            from cbir.ingest.video import frame_at

            picture = frame_at(ref.path, float(ref.item[2:]), side)
        return Image.fromarray(to_model_pixels(picture, work))
    return Image.fromarray(open_image(read_image_file(ref.path, ref.offset, ref.size), work)[0])


def _read(ref: ImageRef, pp: Preprocess) -> Image.Image | None:
    from cbir.ingest.decode import BadImage

    try:
        return working_image(ref, pp)
    except (OSError, BadImage, ValueError):
        return None


class ViewDataset(torch.utils.data.Dataset):
    """Item ``i``: two augmented views (model pixels, uint8 [S, S, 3]) of image ``rows[i]`` and
    one of its captions (or None); None views for an image that cannot be read."""

    def __init__(self, refs, captions, rows, pp: Preprocess, settings: Augment, seed: int, epoch: int):
        self.refs, self.captions, self.rows, self.pp = refs, captions, rows, pp
        self.settings, self.seed, self.epoch = settings, seed, epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from cbir.ingest.pixels import to_model_pixels

        row = self.rows[i]
        captions = self.captions[row]
        caption = None
        if captions:
            pick = np.random.default_rng([CAPTION_STREAM, self.seed, self.epoch, row]).integers(len(captions))
            caption = captions[int(pick)]
        image = _read(self.refs[row], self.pp)
        if image is None:
            return i, row, None, None, caption
        rng = np.random.default_rng([VIEW_STREAM, self.seed, self.epoch, row])
        pp = view_preprocess(self.pp)
        a, b = (to_model_pixels(augment(image, rng, self.settings), pp) for _ in range(2))
        return i, row, a, b, caption


class HeldOutDataset(torch.utils.data.Dataset):
    """Item ``i``: held-out image ``rows[i]`` as the model sees it, and its near-duplicate
    (cbir.training.views.degrade), both model pixels; None for an image that cannot be read."""

    def __init__(self, refs, rows, pp: Preprocess):
        self.refs, self.rows, self.pp = refs, rows, pp

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from cbir.ingest.pixels import to_model_pixels

        row = self.rows[i]
        image = _read(self.refs[row], self.pp)
        if image is None:
            return i, row, None, None, None
        pp = view_preprocess(self.pp)
        return i, row, to_model_pixels(image, pp), to_model_pixels(degrade(image), pp), None


def _collate(items):
    good = [it for it in items if it[2] is not None]
    bad = [it[1] for it in items if it[2] is None]
    if not good:
        return None, None, [], [], bad
    a = torch.from_numpy(np.stack([it[2] for it in good]))
    b = torch.from_numpy(np.stack([it[3] for it in good]))
    return a, b, [it[1] for it in good], [it[4] for it in good], bad


def loader(dataset, batches: list[list[int]], workers: int, cuda: bool):
    """Batches of ``dataset`` in the order given, decoded in ``workers`` processes."""
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=cuda,
        persistent_workers=False,
    )


def freeze_text_tower(model: torch.nn.Module) -> dict:
    """Every parameter outside the image tower (``visual.*``) frozen; returns the counts."""
    trainable = frozen = 0
    for name, p in model.named_parameters():
        if name.startswith("visual."):
            p.requires_grad_(True)
            trainable += p.numel()
        else:
            p.requires_grad_(False)
            frozen += p.numel()
    if not trainable:
        raise ValueError("the model has no image tower (no visual.* parameters) to train")
    return {"trainable_parameters": trainable, "frozen_parameters": frozen}


class ImageTrainer(Trainer):
    """The shared Trainer (schedule, AdamW, gradient scaler) stepping on NT-Xent over two views
    of each image, plus ``clip_weight`` times the CLIP loss of the captioned images' first view
    against their captions (the text tower frozen). Freeze the text tower before creating it:
    the optimizer holds only the parameters that train."""

    def __init__(self, model, config: TrainConfig, device: str, temperature: float, clip_weight: float):
        super().__init__(model, config, device)
        self.temperature, self.clip_weight = temperature, clip_weight

    def train_step(self, views, captioned, tokens, labels, image_ids) -> tuple[float, float]:  # type: ignore[override]
        """One step on ``views`` [2N, 3, S, S] (rows i and i+N: one image); ``captioned``
        (indices < N), ``tokens``, ``labels``, ``image_ids``: the images with a caption, or
        ``tokens`` None. Returns (loss, the CLIP term)."""
        clip_term = []

        def loss_of(model):
            with self.autocast():
                features = model.encode_image(views)
            features = F.normalize(features.float(), dim=-1)
            loss = nt_xent(features, self.temperature)
            if tokens is not None and self.clip_weight > 0:
                with torch.no_grad(), self.autocast():
                    text = model.encode_text(tokens)
                text = F.normalize(text.float(), dim=-1)
                scale = model.logit_scale.exp().float()
                term = clip_loss(features[captioned], text, scale, labels, image_ids)
                clip_term.append(term.item())
                loss = loss + self.clip_weight * term
            return loss

        loss = self.optimize(loss_of)
        return loss, clip_term[0] if clip_term else float("nan")

"""cbir-tiny's training step with instances (cbir.training.tiny.TinyTrainer): the batches it is
given, and what each term of its loss moves."""

from __future__ import annotations

import pytest
import torch

from cbir.training.loop import TrainConfig


@pytest.fixture(scope="module")
def parts():
    from cbir.training.tiny import _SCENES, load

    model, preprocess, tokenizer = load()
    return model, preprocess, tokenizer([s.caption for s in _SCENES])


def test_a_batch_with_copies_renders_each_scene_twice_then_a_copy_of_each_picture(parts):
    from cbir.training.tiny import INSTANCES, make_batch

    _, preprocess, _ = parts
    images, idx = make_batch(seed=0, step=3, batch_size=8, preprocess=preprocess)
    assert images.shape == (16, 3, 64, 64) and idx.shape == (8,)
    assert INSTANCES == 2 and torch.equal(idx[:4], idx[4:])  # each scene twice: hard negatives
    assert not torch.equal(images[0], images[4])  # the same caption, another picture
    again, _ = make_batch(seed=0, step=3, batch_size=8, preprocess=preprocess)
    assert torch.equal(images, again)  # batch `step` depends on (seed, step) only


def _gradients(parts, align_weight: float) -> dict[str, torch.Tensor]:
    """The gradients of one TinyTrainer step's loss, by parameter name (nothing stepped)."""
    from cbir.training.tiny import TinyTrainer, make_batch

    model, preprocess, tokens = parts
    images, idx = make_batch(seed=0, step=0, batch_size=8, preprocess=preprocess)
    trainer = TinyTrainer(model, TrainConfig(total_steps=1), 1.0, 0.1, align_weight)
    model.zero_grad(set_to_none=True)
    trainer.optimize = lambda loss_of: loss_of(model).backward() or 0.0  # gradients only
    trainer.train_step(images, tokens[idx], idx)
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_the_align_term_moves_the_pictures_towards_their_captions_not_the_captions(parts):
    without, with_align = _gradients(parts, 0.0), _gradients(parts, 1.0)
    text = [n for n in without if not n.startswith("visual.") and n != "logit_scale"]
    image = [n for n in without if n.startswith("visual.")]
    assert text and image
    assert all(torch.allclose(without[n], with_align[n], atol=1e-7) for n in text)
    assert any(not torch.allclose(without[n], with_align[n], atol=1e-6) for n in image)

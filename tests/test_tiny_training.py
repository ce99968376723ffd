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


def _gradients(parts, align_weight: float, partial_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """The gradients of one TinyTrainer step's loss, by parameter name (nothing stepped)."""
    import open_clip

    from cbir.training.tiny import _SCENES, MODEL_NAME, TinyTrainer, make_batch, partial_caption

    model, preprocess, tokens = parts
    partial = open_clip.get_tokenizer(MODEL_NAME)([partial_caption(s) for s in _SCENES])
    images, idx = make_batch(seed=0, step=0, batch_size=8, preprocess=preprocess)
    trainer = TinyTrainer(model, TrainConfig(total_steps=1), 1.0, 0.1, align_weight, partial_weight, partial)
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


def test_text_lr_scale_steps_the_text_tower_at_that_fraction_of_the_learning_rate(parts):
    """--text-lr-scale: the text tower (all but visual.* and the logit scale) in groups of its
    own at the scaled rate, weight decay split as before; 1 leaves open_clip's two groups."""
    import copy

    from cbir.training.loop import Trainer

    model = copy.deepcopy(parts[0])  # the step below decays weights: not the shared model
    assert len(Trainer(model, TrainConfig(total_steps=10, lr=1e-3)).optimizer.param_groups) == 2
    trainer = Trainer(model, TrainConfig(total_steps=10, lr=1e-3, text_lr_scale=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    trainer.optimize(lambda m: sum(p.sum() for p in m.parameters()) * 0.0)  # sets each group's rate
    seen = set()
    for group in trainer.optimizer.param_groups:
        text = {not names[id(p)].startswith("visual.") and names[id(p)] != "logit_scale" for p in group["params"]}
        assert len(text) == 1  # a group is all text tower or none of it
        is_text = text.pop()
        assert group["lr"] == pytest.approx(1e-4 if is_text else 1e-3)  # step 0, no warmup: the full rate
        seen.add((is_text, group["weight_decay"] > 0))
    assert seen == {(True, True), (True, False), (False, True), (False, False)}


def test_the_partial_term_pairs_each_picture_with_its_caption_less_the_background(parts):
    """--partial-weight: "a blue triangle" is a positive of every blue triangle of the batch,
    whatever its background; the term moves both towers."""
    from cbir.synthetic import BACKGROUNDS
    from cbir.training.tiny import _SCENES, partial_caption

    assert partial_caption(_SCENES[5]) == f"a {_SCENES[5].colour} {_SCENES[5].shape}"
    same = [i for i in range(len(_SCENES)) if i // len(BACKGROUNDS) == 5 // len(BACKGROUNDS)]
    assert {partial_caption(_SCENES[i]) for i in same} == {partial_caption(_SCENES[5])}
    assert len({_SCENES[i].background for i in same}) == len(BACKGROUNDS)
    without, with_partial = _gradients(parts, 0.0), _gradients(parts, 0.0, 1.0)
    for tower in ("visual.", "transformer."):
        names = [n for n in without if n.startswith(tower)]
        assert any(not torch.allclose(without[n], with_partial[n], atol=1e-6) for n in names), tower


@pytest.mark.parametrize("option", ["--align-weight", "--partial-weight"])
def test_terms_of_the_instance_step_are_refused_without_it(option, capsys):
    from cbir.training.tiny import main

    with pytest.raises(SystemExit) as stopped:
        main([option, "1", "--steps", "1"])
    assert stopped.value.code == 2
    assert "give --instance-weight too" in capsys.readouterr().err

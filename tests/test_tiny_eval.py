"""cbir-tiny's held-out evaluation (cbir/encode/tiny/README.md's figures) on the bundled weights,
at a small size: the measures move with the model, not with the code that computes them."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bundled():
    from cbir.training.tiny import load

    return load()


def test_the_bundled_weights_measure_as_the_readme_says(bundled):
    from cbir.training.tiny_eval import evaluate

    metrics = evaluate(*bundled, n_images=120, seed=99)
    assert metrics["n_images"] == 120 and 0 < metrics["n_queries"] <= 120
    assert metrics["t2i_p1"] >= 0.8 and metrics["i2t_colour"] >= 0.9  # 0.944 and 1.0 here (README: 0.863, 1.0)
    # images sit close enough to their captions to trade one caption for another
    assert metrics["caption_cosine"] > 0.65  # 0.750 here (README: 0.747)
    assert metrics["arithmetic_top1"] >= 0.5  # 0.70 here (README: 0.604); random: about 0.01
    # and close enough to words they were never trained with (what classify and tag use)
    assert metrics["prompt_colour"] >= 0.9  # 1.0 here (README: 0.998); random: 0.125


def test_near_duplicates_are_found_against_their_siblings(bundled):
    from cbir.training.tiny_eval import evaluate_near_duplicates

    model, preprocess, _ = bundled
    found = evaluate_near_duplicates(model, preprocess, per_scene=1)
    assert found["n_images"] == 128
    # one rendering a scene: a copy only has to beat other scenes, which captions already tell apart
    assert found["near_dup_top1"] >= 0.9  # 1.0 here (the captions-only weights: 0.73)
    # three renderings a scene, as issue 22 measures: the copy must also beat its siblings
    found = evaluate_near_duplicates(model, preprocess)
    assert found["n_images"] == 384
    assert found["near_dup_top1"] >= 0.9  # the target; 0.924 here (README: 0.917), captions only: 0.484


def test_galleries_average_what_each_gallery_measures(bundled, capsys):
    """The trainer's report and `python -m cbir.training.tiny_eval`: the mean over galleries of
    seed, seed + 1, ..., each measured as evaluate and evaluate_near_duplicates measure it."""
    import json

    from cbir.training.tiny_eval import evaluate, evaluate_galleries, evaluate_near_duplicates, main

    model, preprocess, tokenizer = bundled
    both = evaluate_galleries(model, preprocess, tokenizer, galleries=2, n_images=60, seed=7)
    each = [evaluate(model, preprocess, tokenizer, 60, seed) for seed in (7, 8)]
    assert both["t2i_p1_per_gallery"] == [e["t2i_p1"] for e in each]
    assert both["t2i_p1"] == pytest.approx(sum(e["t2i_p1"] for e in each) / 2, abs=1e-4)
    assert both["prompt_colour"] == pytest.approx(sum(e["prompt_colour"] for e in each) / 2, abs=1e-4)
    copies = [evaluate_near_duplicates(model, preprocess, seed=seed)["near_dup_top1"] for seed in (7, 8)]
    assert both["near_dup_top1"] == pytest.approx(sum(copies) / 2, abs=1e-4)
    main(["--galleries", "1", "--images", "60", "--seed", "7"])
    assert json.loads(capsys.readouterr().out)["t2i_p1"] == each[0]["t2i_p1"]

"""`cbir finetune --images-only` on cbir-tiny with generated drawings (a library, folders as
families) and a small manifest: the text tower stays bit-identical, resume is exact, --where picks a
subset, held-out metrics come before and after, errors are one line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from cbir.finetune import state_path
from cbir.finetune_images import finetune_images
from cbir.synthetic import iter_gallery
from cbir.synthetic_drawings import make_drawing_gallery
from tests.conftest import run_cbir

OPTIONS = dict(epochs=2, batch_size=16, lr=1e-4, holdout=0.25, seed=1, flip=False)


def _run(out, **options):
    kw = {k: options.pop(k) for k in ("stop_after_epochs", "resume") if k in options}
    return finetune_images(
        {**OPTIONS, **options}, out, device="cpu", workers=0, progress=False, log=lambda _: None, **kw
    )


@pytest.fixture(scope="module")
def drawings(tmp_path_factory):
    """A library of 48 generated drawings (6 families x 8, 128 px), ingested with cbir-tiny."""
    from cbir.library import open_library

    base = tmp_path_factory.mktemp("drawings")
    make_drawing_gallery(base / "pages", 8, seed=5, size=(128, 128))
    with open_library(library=base / "lib", model="cbir-tiny", create=True, device="cpu", backend="torch") as lib:
        lib.ingest(base / "pages")
    return base


@pytest.fixture(scope="module")
def whole_run(drawings, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "tuned.pt"
    return _run(out, library=str(drawings / "lib"))


def test_text_tower_is_bit_identical_and_the_checkpoint_loads(whole_run):
    from cbir.encode import load_encoder

    report = whole_run
    start = load_encoder("cbir-tiny", "cpu", backend="torch").model.state_dict()
    tuned = torch.load(report["out"], weights_only=True)
    assert start.keys() == tuned.keys()
    text = [k for k in start if not k.startswith("visual.")]
    assert text and all(torch.equal(start[k], tuned[k]) for k in text)  # text tower, logit scale
    assert any(not torch.equal(start[k], tuned[k]) for k in start if k.startswith("visual."))
    assert report["frozen"]["trainable_parameters"] > 0 and report["frozen"]["frozen_parameters"] > 0

    loaded = load_encoder(report["load_with"], "cpu", backend="torch")
    pixels = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.encode_images(pixels), report["encoder"].encode_images(pixels), atol=1e-6)
    texts = ["a red star on a gray background", "a drawing of a gear"]
    original = load_encoder("cbir-tiny", "cpu", backend="torch")
    np.testing.assert_array_equal(loaded.encode_texts(texts), original.encode_texts(texts))


def test_report_has_before_and_after_on_the_held_out_images(whole_run):
    report = whole_run
    assert report["images"] == 48 and report["held_out_images"] == 12 and report["train_images"] == 36
    assert report["steps"] == 2 * 3 and report["captioned_train_images"] == 0 and report["clip_weight"] == 0.1
    for when in ("before", "after"):
        metrics = report[when]
        assert metrics["images"] == 12
        assert 0 <= metrics["near_duplicates"]["top1"] <= 1 and metrics["near_duplicates"]["queries"] == 12
        assert metrics["by_label"]["labels"] == 6 and metrics["by_label"]["k"] == 10
        assert metrics["text_to_image"] is None  # no captions


def test_training_moves_the_held_out_image_vectors_only(whole_run):
    # cbir-tiny (64 px, trained on coloured shapes) does not get better at drawings at this size
    # (docs/beyond-search.md has the measured figures); what holds is that the image side moved
    before, after = whole_run["before"], whole_run["after"]
    assert before["near_duplicates"] != after["near_duplicates"] or before["by_label"] != after["by_label"]


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(drawings, whole_run, tmp_path):
    out = tmp_path / "b.pt"
    stopped = _run(out, library=str(drawings / "lib"), stop_after_epochs=1)
    assert stopped["out"] is None and state_path(out).is_file() and not out.exists()
    resumed = finetune_images({}, out, device="cpu", workers=0, progress=False, log=lambda _: None, resume=True)
    assert resumed["steps"] == whole_run["steps"] and resumed["before"] == whole_run["before"]
    a, b = torch.load(whole_run["out"], weights_only=True), torch.load(out, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # exactly: same views, same state
    assert resumed["after"] == whole_run["after"]


def test_where_trains_on_a_subset(drawings, tmp_path):
    report = _run(tmp_path / "w.pt", library=str(drawings / "lib"), where="folder = gear or folder = spring", epochs=1)
    assert report["images"] == 16 and report["held_out_images"] == 4
    assert report["before"]["by_label"]["labels"] <= 2


def test_masking_the_title_block_helps_the_frozen_model():
    # the starting point the docs' table measures: frozen cbir-tiny ranks pages by family better
    # with the title block covered (ingest --mask), whose bold number and filled revision rows,
    # visible at 64 px, otherwise pull pages together or apart regardless of their part
    # (measured on 12 galleries of 8 pages per family at 128 px: masked higher on every one)
    import dataclasses

    from cbir.encode import load_encoder
    from cbir.evaluate.image_retrieval import map_at_k_by_label
    from cbir.ingest.pixels import to_model_pixels
    from cbir.synthetic_drawings import iter_drawings

    encoder = load_encoder("cbir-tiny", "cpu", backend="torch")
    masked = dataclasses.replace(encoder.preprocess, masks=((0.68, 0.78, 0.3, 0.2),))
    for seed in range(3):
        pages = list(iter_drawings(8, seed, (128, 128)))
        families = np.asarray([f for _, f, _ in pages])
        scores = []
        for preprocess in (encoder.preprocess, masked):
            pixels = np.stack([to_model_pixels(page, preprocess) for page, _, _ in pages])
            scores.append(map_at_k_by_label(encoder.encode_images(pixels), families, 10).map_at_k)
        assert scores[1] > scores[0], (seed, scores)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """32 generated scenes; half of them with a caption, the shape as a label column."""
    base = tmp_path_factory.mktemp("scenes")
    rows = []
    for i, (image, scene) in enumerate(iter_gallery(32, 77, size=(96, 96))):
        image.save(base / f"s{i:02d}.png")
        rows.append({"image": f"s{i:02d}.png", "caption": scene.caption if i % 2 else "", "shape": scene.shape})
    with open(base / "scenes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "caption", "shape"])
        writer.writeheader()
        writer.writerows(rows)
    return base / "scenes.csv"


def test_cli_manifest_with_captions_json(manifest, tmp_path):
    args = ["--images-only", "--dataset", str(manifest), "--model", "cbir-tiny", "--label-column", "shape"]
    args += ["--epochs", "1", "--batch-size", "16", "--holdout", "0.25", "--workers", "1", "--device", "cpu"]
    done = run_cbir("finetune", *args, "--out", str(tmp_path / "m.pt"), "--json", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["images"] == 32 and report["captioned_train_images"] > 1
    assert report["before"]["text_to_image"] is not None and report["after"]["by_label"]["labels"] >= 2
    assert (tmp_path / "m.pt").is_file()
    again = run_cbir("finetune", "--out", str(tmp_path / "m.pt"), "--resume", cwd=tmp_path)
    assert again.returncode != 0 and "resume it with --images-only" in again.stderr, again.stderr


def _one_line_error(done, message):
    assert done.returncode != 0
    assert done.stderr.startswith("Error:") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr, done.stderr


def test_errors_are_one_line(drawings, manifest, tmp_path):
    lib = str(drawings / "lib")
    out = ["--out", str(tmp_path / "x.pt"), "--device", "cpu"]
    cases = [
        (["--images-only", "--library", lib, "--where", "folder = nothing"], "no image of the library passes it"),
        (["--images-only", "--library", str(tmp_path / "empty")], "no cbir library"),
        (["--images-only"], "--library LIBRARY or on --dataset MANIFEST"),
        (["--images-only", "--library", lib, "--dataset", str(manifest)], "name one"),
        (["--images-only", "--dataset", str(manifest), "--model", "cbir-tiny", "--where", "folder = a"], "--where"),
        (["--dataset", str(manifest), "--model", "cbir-tiny", "--no-flip"], "only with --images-only"),
        (["--images-only", "--out", str(tmp_path / "never.pt"), "--resume"], "nothing to resume"),
    ]
    empty = tmp_path / "nothing.csv"
    empty.write_text("image,caption\nmissing.png,a\n")
    cases.append((["--images-only", "--dataset", str(empty), "--model", "cbir-tiny"], "no usable images"))
    for args, message in cases:
        _one_line_error(run_cbir("finetune", *args, *out, cwd=tmp_path), message)


@pytest.mark.slow
def test_fine_tuning_on_drawings_raises_retrieval_by_family(tmp_path, capsys):
    """The figures of docs/beyond-search.md at their settings (seeded: CPU training repeats):
    360 steps of image-only fine-tuning raise held-out mAP@10 by family and near-duplicate mAP."""
    import json

    from cbir.drawings_eval import main

    main(["--out", str(tmp_path / "drawings"), "--per-family", "40"])
    report = json.loads(capsys.readouterr().out)
    before, after = report["before"], report["after"]
    print(f"\nmAP@10 by family {before['by_label']['map_at_k']:.3f} -> {after['by_label']['map_at_k']:.3f}")
    # measured (title block seen, the bundled weights of this commit): 0.099 -> 0.272 mAP@10 by
    # family, near-duplicate mAP 0.137 -> 0.338
    assert after["by_label"]["map_at_k"] > before["by_label"]["map_at_k"] * 1.2
    assert after["near_duplicates"]["map"] > before["near_duplicates"]["map"]
    assert report["steps"] == 360

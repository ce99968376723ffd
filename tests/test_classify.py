"""`cbir classify`: zero-shot labels of image files with cbir-tiny on generated scenes whose
colour is known; the probability arithmetic with the deterministic FakeEncoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cbir.classify import (
    DEFAULT_SCALE,
    classify_files,
    logit_scale,
    parse_labels,
    read_labels_file,
    softmax,
)
from cbir.cli import cli
from cbir.encode.fake import FakeEncoder
from cbir.errors import UsageError
from cbir.synthetic import COLOURS, Scene, render
from tests.conftest import run_cbir, write_image

SHAPES = ("circle", "square", "triangle", "star")
BACKGROUNDS = ("gray", "pink", "cyan", "brown")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """One clear image per colour (a large shape), with varied shapes and backgrounds."""
    base = tmp_path_factory.mktemp("classify")
    out = []
    for i, colour in enumerate(COLOURS):
        scene = Scene(colour, SHAPES[i % 4], BACKGROUNDS[(i + 1) % 4])
        if colour == "white" and scene.background == "pink":  # keep the contrast clear
            scene = Scene(colour, scene.shape, "brown")
        path = base / f"{i}_{colour}.png"
        render(scene, np.random.default_rng(100 + i), size=(128, 128)).save(path)
        out.append((path, scene))
    (base / "colours.txt").write_text("# the shape colours of cbir.synthetic\n" + "\n".join(COLOURS) + "\n\n")
    (base / "templates.txt").write_text("a {} shape on a plain background\n")
    return base, out


@pytest.fixture(scope="module")
def tiny():
    from cbir.encode import load_encoder

    return load_encoder("cbir-tiny", "cpu")


def test_the_right_colour_ranks_first(scenes, tiny):
    base, pairs = scenes
    results = classify_files(tiny, [p for p, _ in pairs], list(COLOURS), str(base / "templates.txt"), top=8)
    for (path, scene), result in zip(pairs, results):
        assert result.error is None
        assert result.path == str(path)
        assert result.best == scene.colour, (scene, result.labels)
        probabilities = [p for _, p, _ in result.labels]
        assert len(probabilities) == 8 and abs(sum(probabilities) - 1) < 1e-5
        assert probabilities == sorted(probabilities, reverse=True)
    # the same with the default ensemble of open_clip's templates
    ensemble = classify_files(tiny, [p for p, _ in pairs], list(COLOURS), "ensemble", top=1)
    assert sum(r.best == s.colour for r, (_, s) in zip(ensemble, pairs)) >= 7


def test_logit_scale_is_the_models_own(tiny):
    from cbir.encode import load_encoder

    scale = logit_scale(tiny)
    torch_model = load_encoder("cbir-tiny", "cpu", backend="torch").model
    assert scale == pytest.approx(float(torch_model.logit_scale.detach().exp()), rel=1e-4)
    assert 1 < scale <= 100
    assert logit_scale(FakeEncoder()) == DEFAULT_SCALE


def test_probabilities_are_a_scaled_softmax(tmp_path):
    encoder = FakeEncoder()
    image = write_image(tmp_path / "a.png", seed=3, size=(32, 32))
    [result] = classify_files(encoder, [image], ["dog", "cat", "car"], "single", top=3)
    cosines = {label: s for label, _, s in result.labels}
    logits = np.array([[cosines[x] for x in ("dog", "cat", "car")]]) * DEFAULT_SCALE
    expected = dict(zip(("dog", "cat", "car"), softmax(logits)[0]))
    for label, probability, _ in result.labels:
        assert probability == pytest.approx(expected[label], abs=1e-5)


def test_label_parsing(tmp_path):
    assert parse_labels(" dog, cat ,,car, Dog ") == ["dog", "cat", "car"]
    path = tmp_path / "labels.txt"
    path.write_text("# animals\ndog\n\n  golden   retriever \n#cat\n")
    assert read_labels_file(path) == ["dog", "golden retriever"]
    for bad in (tmp_path / "missing.txt", tmp_path):
        with pytest.raises(UsageError):
            read_labels_file(bad)
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UsageError, match="no labels"):
        read_labels_file(tmp_path / "empty.txt")


def test_cli_json_and_text(scenes):
    base, pairs = scenes
    paths = [str(p) for p, _ in pairs[:3]]
    result = CliRunner().invoke(
        cli,
        [
            "classify",
            *paths,
            "--labels-file",
            str(base / "colours.txt"),
            "--templates",
            str(base / "templates.txt"),
            "--model",
            "cbir-tiny",
            "--device",
            "cpu",
            "--top",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["path"] for r in rows] == paths
    for row, (_, scene) in zip(rows, pairs):
        assert set(row) == {"path", "best", "labels"}
        assert row["best"] == scene.colour == row["labels"][0]["label"]
        assert len(row["labels"]) == 3
        assert set(row["labels"][0]) == {"label", "probability", "similarity"}
    text = CliRunner().invoke(
        cli,
        [
            "classify",
            paths[0],
            "--labels",
            ",".join(COLOURS),
            "--model",
            "cbir-tiny",
            "--device",
            "cpu",
            "--templates",
            str(base / "templates.txt"),
        ],
    )
    assert text.exit_code == 0, text.output
    assert text.output.splitlines()[0] == paths[0]
    assert pairs[0][1].colour in text.output.splitlines()[1]


def test_a_bad_image_among_several_is_reported_and_the_rest_classified(scenes, tmp_path):
    base, pairs = scenes
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    args = [str(pairs[0][0]), str(broken), str(tmp_path / "missing.png"), str(pairs[1][0])]
    result = CliRunner().invoke(
        cli,
        [
            "classify",
            *args,
            "--labels",
            "red,green,blue,yellow,purple,orange,white,black",
            "--templates",
            str(base / "templates.txt"),
            "--model",
            "cbir-tiny",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("best") for r in rows] == [pairs[0][1].colour, None, None, pairs[1][1].colour]
    assert "error" in rows[1] and rows[2]["error"] == "no such file"
    errors = result.stderr.splitlines()
    assert len(errors) == 2 and str(broken) in errors[0] and "missing.png" in errors[1]


def test_errors_are_one_line(scenes, tmp_path):
    base, pairs = scenes
    image = str(pairs[0][0])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG nothing")
    cases = [
        (image, "--labels", "red"),  # one label: nothing to choose
        (image,),  # no labels
        (image, "--labels", "a,b", "--labels-file", str(base / "colours.txt")),
        (image, "--labels-file", str(tmp_path / "none.txt")),
        (image, "--labels", "a,b", "--templates", str(tmp_path / "none.txt")),
        (str(broken), "--labels", "a,b"),
        (str(tmp_path / "missing.jpg"), "--labels", "a,b"),
    ]
    for args in cases:
        out = CliRunner().invoke(cli, ["classify", *args, "--model", "cbir-tiny", "--device", "cpu"])
        assert out.exit_code == 2, (args, out.output)
        assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith("Error: "), (args, out.stderr)
        assert out.stdout == ""
    out = run_cbir("classify", str(broken), "--labels", "a,b", "--model", "cbir-tiny", "--device", "cpu")
    assert out.returncode == 2 and out.stderr.startswith(f"Error: cannot classify {broken}: "), out.stderr
    assert len(out.stderr.splitlines()) == 1
    out = run_cbir("classify", image, "--labels", "a,b", "--library", str(tmp_path / "nolib"))
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr


def test_classify_uses_the_librarys_model(scenes, tmp_path):
    base, pairs = scenes
    library = str(tmp_path / "lib")
    out = run_cbir("ingest", str(pairs[0][0]), "--library", library, "--model", "cbir-tiny", "-q")
    assert out.returncode == 0, out.stderr
    out = run_cbir(
        "classify",
        str(pairs[1][0]),
        "--labels",
        ",".join(COLOURS),
        "--library",
        library,
        "--templates",
        str(base / "templates.txt"),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["best"] == pairs[1][1].colour

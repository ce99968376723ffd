"""`cbir locate` on cbir-tiny: generated scenes whose shape's box is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cbir.locate import box_from_map, iou, locate, parse_windows, window_boxes
from cbir.synthetic import random_scene, render_located
from tests.conftest import run_cbir

CASES = 8


@pytest.fixture(scope="module")
def tiny():
    from cbir.encode import load_encoder

    return load_encoder("cbir-tiny", "cpu")


def test_boxes_found_on_generated_scenes(tiny):
    rng = np.random.default_rng(2024)
    ious, on_shape = [], 0
    for _ in range(CASES):
        scene = random_scene(rng)
        image, truth = render_located(scene, rng, (256, 256), radius=(24, 48))
        result = locate(tiny, image, scene.caption)
        ious.append(iou(result.box, truth))
        cx, cy = (truth[0] + truth[2]) / 2, (truth[1] + truth[3]) / 2
        x0, y0, x1, y1 = result.box
        on_shape += x0 <= cx <= x1 and y0 <= cy <= y1
        assert result.heatmap.shape == (256, 256)
    # Measured: mean IoU 0.33, 2 of 8 at >= 0.5, 5 of 8 boxes hold the shape's centre (the
    # captions-only weights before issue 22 gave 0.41, 3 and 6; on 40 other scenes both give
    # 0.44, so that is these 8 cases' noise). One of its windows at random: 0.03.
    assert np.mean(ious) >= 0.28, ious
    assert on_shape >= 5, ious
    assert sum(v >= 0.5 for v in ious) >= 2, ious


def test_windows_cover_the_image_and_stay_inside():
    boxes = window_boxes(300, 200, (2, 4))
    assert {b[2] - b[0] for b in boxes} == {100, 50}
    assert all(0 <= b[0] and b[2] <= 300 and 0 <= b[1] and b[3] <= 200 for b in boxes)
    assert max(b[2] for b in boxes) == 300 and max(b[3] for b in boxes) == 200


def test_box_from_map_takes_the_largest_region():
    heat = np.zeros((10, 10), np.float32)
    heat[1:3, 1:3] = 1.0
    heat[5:9, 4:9] = 0.9
    assert box_from_map(heat, 0.5) == (4, 5, 9, 9)


def test_parse_windows():
    assert parse_windows(None) == (3, 4, 6, 8)
    assert parse_windows("4,2,2") == (2, 4)


def test_cli_json_png_and_errors(tmp_path):
    rng = np.random.default_rng(7)
    scene = random_scene(rng)
    image, truth = render_located(scene, rng, (200, 160), radius=(24, 40))
    path = tmp_path / "scene.jpg"
    image.save(path, quality=95)
    done = run_cbir(
        "locate",
        str(path),
        scene.caption,
        "--model",
        "cbir-tiny",
        "--device",
        "cpu",
        "--windows",
        "2,3,4",
        "--json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["image_size"] == [200, 160] and out["windows"] > 10
    assert out["out"] == str(tmp_path / "scene.locate.png")
    with Image.open(out["out"]) as png:
        assert png.format == "PNG" and png.size == (200, 160)
    assert path.is_file()
    for args, message in [
        (["missing.jpg", "x"], "image not found"),
        ([str(path), "x", "--windows", "0"], "--windows"),
        ([str(path), "x", "--out", str(path)], "input image"),
        ([str(path), "   "], "give a text"),
    ]:
        bad = run_cbir("locate", *args, "--model", "cbir-tiny", "--device", "cpu", cwd=tmp_path)
        assert bad.returncode != 0
        assert bad.stderr.startswith("Error:") and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert message in bad.stderr, bad.stderr

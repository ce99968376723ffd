import numpy as np
import pytest
from PIL import Image

from cbir.synthetic import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    Scene,
    all_scenes,
    iter_gallery,
    make_gallery,
    random_scene,
    render,
)


def test_all_scenes():
    scenes = all_scenes()
    assert len(scenes) == 128 == len(set(scenes))
    assert scenes == all_scenes()  # fixed order
    assert scenes[0] == Scene("red", "circle", "gray")
    assert {s.colour for s in scenes} == set(COLOURS)
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.background for s in scenes} == set(BACKGROUNDS)


def test_css_colours():
    assert COLOURS["green"] == (0, 128, 0)
    assert COLOURS["purple"] == (128, 0, 128)
    assert COLOURS["orange"] == (255, 165, 0)
    assert BACKGROUNDS["gray"] == (128, 128, 128)
    assert BACKGROUNDS["brown"] == (165, 42, 42)


def test_caption():
    assert Scene("red", "star", "cyan").caption == "a red star on a cyan background"


def test_random_scene_deterministic():
    a = [random_scene(np.random.default_rng(3)) for _ in range(5)]
    b = [random_scene(np.random.default_rng(3)) for _ in range(5)]
    assert a == b and a[0] in all_scenes()


def test_render_deterministic_and_seed_dependent():
    scene = Scene("blue", "triangle", "pink")
    a = np.asarray(render(scene, np.random.default_rng(1)))
    b = np.asarray(render(scene, np.random.default_rng(1)))
    c = np.asarray(render(scene, np.random.default_rng(2), size=a.shape[1::-1]))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("size", [(64, 64), (640, 480), (31, 200)])
def test_render_size_and_mode(size):
    img = render(Scene("yellow", "square", "brown"), np.random.default_rng(0), size=size)
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB" and img.size == size


def test_render_random_size():
    rng = np.random.default_rng(0)
    for scene in all_scenes()[:20]:
        w, h = render(scene, rng).size
        assert 48 <= w <= 256 and 48 <= h <= 256


def test_render_shows_colours():
    # Corners are background, the centre of a big shape is the shape colour.
    arr = np.asarray(render(Scene("green", "circle", "pink"), np.random.default_rng(0), size=(100, 100)), dtype=float)
    corner = arr[:5, :5].reshape(-1, 3).mean(axis=0)
    assert np.abs(corner - BACKGROUNDS["pink"]).max() < 30
    near_green = np.abs(arr - COLOURS["green"]).max(axis=2) < 60
    assert near_green.mean() > 0.05


def test_render_rejects_unknown_scene():
    with pytest.raises(ValueError):
        render(Scene("teal", "circle", "gray"), np.random.default_rng(0))


def test_make_gallery(tmp_path):
    out = make_gallery(tmp_path / "a", 6, seed=5, formats=("jpg", "png"))
    again = make_gallery(tmp_path / "b", 6, seed=5, formats=("jpg", "png"))
    assert [s for _, s in out] == [s for _, s in again] == [s for _, s in iter_gallery(6, 5)]
    assert [p.suffix for p, _ in out] == [".jpg", ".png"] * 3
    for (p, _), (q, _) in zip(out, again):
        assert p.is_file() and p.read_bytes() == q.read_bytes()
        with Image.open(p) as img:
            assert img.mode == "RGB"
    other = make_gallery(tmp_path / "c", 6, seed=6, formats=("jpg", "png"))
    assert [p.read_bytes() for p, _ in other] != [p.read_bytes() for p, _ in out]


def test_make_gallery_fixed_size(tmp_path):
    for p, _ in make_gallery(tmp_path, 2, seed=0, size=(320, 240)):
        with Image.open(p) as img:
            assert img.size == (320, 240)

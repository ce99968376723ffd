"""Image->image metrics (cbir.evaluate.image_retrieval) against hand-computed values and a brute
force, and the views and the fixed degradation they are measured with."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cbir.errors import UsageError
from cbir.evaluate.image_retrieval import map_at_k_by_label, near_duplicate_metrics
from cbir.training.views import Augment, augment, degrade


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_near_duplicates_by_hand():
    originals = _unit([[1, 0], [0, 1], [1, 1]])
    copies = _unit([[1, 0.1], [1, 0.05], [1, 1]])  # copy 1 is nearer original 0 (rank 3)
    m = near_duplicate_metrics(originals, copies)
    assert m.queries == 3 and m.top1 == pytest.approx(2 / 3)
    assert m.map == pytest.approx((1 + 1 / 3 + 1) / 3) and m.mean_rank == pytest.approx(5 / 3)


def test_map_at_k_by_label_by_hand_and_brute_force():
    x = _unit([[1, 0], [0.9, 0.1], [0, 1], [0.8, 0.2]])
    labels = np.array(["a", "b", "a", "a"])
    m = map_at_k_by_label(x, labels, k=2)
    # query 0 ranks 1(b), 3(a): AP@2 = (1/2)/min(2,2); query 2 ranks 3(a), 1(b): 1/2;
    # query 3 ranks 1(b), 0(a): (1/2)/2; query 1 has no other "b": left out
    assert m.queries == 3 and m.k == 2
    assert m.map_at_k == pytest.approx((0.25 + 0.5 + 0.25) / 3)
    assert m.precision_at_1 == pytest.approx(1 / 3)

    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((40, 8)))
    labels = rng.integers(0, 4, 40)
    got = map_at_k_by_label(x, labels, k=10).map_at_k
    aps = []
    for q in range(40):
        others = [i for i in range(40) if i != q]
        order = sorted(others, key=lambda i: -float(x[q] @ x[i]))[:10]
        hits = [labels[i] == labels[q] for i in order]
        relevant = sum(labels[i] == labels[q] for i in others)
        precision = [sum(hits[: r + 1]) / (r + 1) for r in range(10)]
        aps.append(sum(p for p, h in zip(precision, hits) if h) / min(10, relevant))
    assert got == pytest.approx(np.mean(aps))


def test_metric_errors():
    with pytest.raises(UsageError, match="one copy per original"):
        near_duplicate_metrics(_unit([[1, 0]]), _unit([[1, 0], [0, 1]]))
    with pytest.raises(UsageError, match="two images sharing a label"):
        map_at_k_by_label(_unit([[1, 0], [0, 1]]), ["a", "b"])


def test_views_are_deterministic_and_differ():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8))
    a = augment(image, np.random.default_rng([1, 2]))
    b = augment(image, np.random.default_rng([1, 2]))
    c = augment(image, np.random.default_rng([1, 3]))
    assert a.size == image.size and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    # without flips a view of a left-heavy image stays left-heavy
    half = np.zeros((64, 64, 3), np.uint8)
    half[:, :20] = 255
    no_flip = Augment(flip=False, crop_scale=(0.9, 1), jitter_p=0, blur_p=0, jpeg_p=0, erase_p=0)
    for seed in range(8):
        view = np.asarray(augment(Image.fromarray(half), np.random.default_rng(seed), no_flip)).mean(axis=(0, 2))
        assert view[:32].mean() > view[32:].mean()


def test_degrade_is_fixed():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (100, 80, 3), dtype=np.uint8))
    a, b = degrade(image), degrade(image)
    assert a.size == (36, 45)  # 5% off each side (4 and 5 pixels), then half
    assert np.array_equal(np.asarray(a), np.asarray(b))

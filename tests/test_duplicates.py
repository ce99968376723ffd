"""`cbir duplicates`: exact copies, resized/re-encoded copies and near-duplicates among
generated scenes encoded with cbir-tiny, grouped exactly as generated; keepers by the rule
(largest, then oldest, then shortest path); and a 5,000-image library of planted pairs."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cbir.cli import cli
from cbir.config import resolve_settings
from cbir.duplicates import group_rows, similar_pairs
from cbir.encode.fake import FakeEncoder
from cbir.errors import UsageError
from cbir.library import Library
from cbir.store.catalog import MODEL, Changes, ImageRecord
from cbir.synthetic import Scene, render

SEED = 14  # measured with cbir-tiny: copy 0.9999, near 0.963, different scenes at most 0.58
DISTINCT = [
    Scene("yellow", "star", "brown"),
    Scene("purple", "circle", "gray"),
    Scene("orange", "square", "cyan"),
    Scene("black", "triangle", "pink"),
    Scene("white", "star", "gray"),
]


def _stamp(path, year: int) -> None:
    t = datetime(year, 6, 1, 12).timestamp()
    os.utime(path, (t, t))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """exact: the same bytes twice (the copy is older); copy: a 256 px JPEG and its 50% copy
    at quality 60 (the small one older); near: two frames of one scene 24 px apart; five
    images of different scenes."""
    base = tmp_path_factory.mktemp("dups")
    photos = base / "photos"
    (photos / "x").mkdir(parents=True)
    render(Scene("red", "circle", "gray"), np.random.default_rng(SEED), size=(256, 256)).save(
        photos / "exact.jpg", quality=95
    )
    shutil.copyfile(photos / "exact.jpg", photos / "x" / "exact_copy.jpg")
    _stamp(photos / "exact.jpg", 2020)
    _stamp(photos / "x" / "exact_copy.jpg", 2015)
    original = render(Scene("blue", "square", "pink"), np.random.default_rng(SEED + 1), size=(256, 256))
    original.save(photos / "copy.jpg", quality=95)
    original.resize((128, 128), Image.LANCZOS).save(photos / "copy_small.jpg", quality=60)
    _stamp(photos / "copy.jpg", 2021)
    _stamp(photos / "copy_small.jpg", 2010)
    frame = render(Scene("green", "triangle", "cyan"), np.random.default_rng(SEED + 2), size=(288, 256))
    frame.crop((0, 0, 256, 256)).save(photos / "near.jpg", quality=95)
    frame.crop((24, 0, 280, 256)).save(photos / "near_shifted.jpg", quality=95)
    _stamp(photos / "near.jpg", 2018)
    _stamp(photos / "near_shifted.jpg", 2018)  # the same date: the shorter path is kept
    for i, scene in enumerate(DISTINCT):
        render(scene, np.random.default_rng(SEED + 10 + i), size=(256, 256)).save(
            photos / f"distinct_{i}.jpg", quality=95
        )
    lib = Library.open(resolve_settings(library=base / "lib", model="cbir-tiny", device="cpu", env={}), create=True)
    assert lib.ingest(photos).added == 11
    yield photos, lib
    lib.close()


def test_groups_are_exactly_as_generated(folder):
    photos, lib = folder
    report = lib.duplicates()
    groups = {g.kind: g for g in report.groups}
    assert len(report.groups) == 3 and set(groups) == {"exact", "copy", "near"}
    members = {kind: {m.path for m in g.members} for kind, g in groups.items()}
    assert members == {
        "exact": {str(photos / "exact.jpg"), str(photos / "x" / "exact_copy.jpg")},
        "copy": {str(photos / "copy.jpg"), str(photos / "copy_small.jpg")},
        "near": {str(photos / "near.jpg"), str(photos / "near_shifted.jpg")},
    }
    # keepers: same pixels -> the oldest; the largest even though newer; equal -> shortest path
    assert groups["exact"].keeper.path == str(photos / "x" / "exact_copy.jpg")
    assert groups["copy"].keeper.path == str(photos / "copy.jpg")
    assert groups["near"].keeper.path == str(photos / "near.jpg")
    assert groups["exact"].similarity == 1.0 and all(m.exact for m in groups["exact"].members)
    assert groups["copy"].similarity >= 0.98
    assert 0.92 <= groups["near"].similarity < 0.98
    assert [m.keeper for m in groups["copy"].members] == [True, False]
    small = groups["copy"].members[1]
    assert (small.width, small.height, small.exact) == (128, 128, False)
    assert report.images == 11 and report.removable == 3


def test_thresholds_change_the_groups(folder):
    photos, lib = folder
    only_copies = lib.duplicates(copy=0.98, near=0.98)
    assert sorted(g.kind for g in only_copies.groups) == ["copy", "exact"]
    loose = lib.duplicates(copy=0.999, near=0.9)  # the resized copy becomes a near-duplicate
    kinds = sorted(g.kind for g in loose.groups)
    assert kinds in (["exact", "near", "near"], ["copy", "exact", "near"])
    for copy, near in ((0.9, 0.95), (0, 0.9), (1.5, 0.9), (float("nan"), 0.9)):
        with pytest.raises(UsageError):
            lib.duplicates(copy=copy, near=near)


def test_distinct_images_give_no_groups(folder, tmp_path):
    photos, lib = folder
    other = Library.open(
        resolve_settings(library=tmp_path / "distinct", model="cbir-tiny", device="cpu", env={}),
        create=True,
        encoder=lib.encoder,
    )
    for path in photos.glob("distinct_*.jpg"):
        other.ingest(path)
    other.ingest(photos / "near.jpg")
    other.ingest(photos / "copy.jpg")
    assert other.catalog.count_images() == 7
    assert other.duplicates().groups == []
    other.close()


def test_cli_json_and_text(folder):
    photos, lib = folder
    out = CliRunner().invoke(cli, ["duplicates", "--library", str(lib.path), "--json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert [r["kind"] for r in rows] == ["exact", "copy", "near"]
    for row in rows:
        assert set(row) == {"kind", "similarity", "keeper", "images", "members"}
        assert row["members"][0]["path"] == row["keeper"] and row["members"][0]["keeper"]
        assert set(row["members"][0]) == {
            "path",
            "id",
            "bytes",
            "width",
            "height",
            "taken",
            "similarity",
            "exact",
            "keeper",
        }
    text = CliRunner().invoke(cli, ["duplicates", "--library", str(lib.path)])
    assert text.exit_code == 0
    assert text.output.splitlines()[0].startswith("exact: 2 images")
    assert "3 groups among 11 images (1 exact, 1 copies, 1 near-duplicates)" in text.output
    bad = CliRunner().invoke(cli, ["duplicates", "--library", str(lib.path), "--near", "0.99"])
    assert bad.exit_code == 2 and len(bad.stderr.splitlines()) == 1


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _planted(n: int, dim: int, seed: int = 0):
    """Random unit vectors (unrelated: cosines near 0 in 128-d) with planted pairs: rows 0-1
    share a hash, 2-3 at cosine 0.99, 4-5 at 0.95, and a chain 6-7-8 at 0.95 each."""
    rng = np.random.default_rng(seed)
    vectors = _unit(rng.standard_normal((n, dim)))

    def at(cos, base):
        other = rng.standard_normal(dim)
        other -= (other @ base) * base
        return _unit(cos * base + np.sqrt(1 - cos**2) * _unit(other))

    vectors[1] = vectors[0]
    vectors[3] = at(0.99, vectors[2])
    vectors[5] = at(0.95, vectors[4])
    vectors[7] = at(0.95, vectors[6])
    vectors[8] = at(0.95, vectors[7])
    hashes = [f"h{i}" for i in range(n)]
    hashes[1] = hashes[0]
    return vectors, hashes


def test_grouping_arithmetic():
    vectors, hashes = _planted(500, 128)
    found = {tuple(rows): kind for kind, rows, _ in group_rows(vectors, hashes)}
    assert found == {(0, 1): "exact", (2, 3): "copy", (4, 5): "near", (6, 7, 8): "near"}
    a, b, s = similar_pairs(vectors, 0.92)  # 6-8: about 0.95 * 0.95
    assert list(zip(a.tolist(), b.tolist())) == [(0, 1), (2, 3), (4, 5), (6, 7), (7, 8)]
    assert np.all(s >= 0.92)
    assert group_rows(vectors[:1], hashes[:1]) == []


def test_five_thousand_images(fake_library, tmp_path):
    """Direct catalogue inserts: 5,000 random 128-d vectors with planted pairs (measured: about
    0.5 s for lib.duplicates() on 2 shared cores, reading the vectors included; no timed assertion)."""
    n, dim = 5000, 128
    vectors, hashes = _planted(n, dim, seed=1)
    lib = fake_library(encoder=FakeEncoder(dim=dim))
    lib.catalog.set_meta(MODEL, json.dumps(lib.encoder.fingerprint()))
    lib.catalog.dim = dim
    root_id, _ = lib.catalog.root_for(tmp_path / "virtual")
    for start in range(0, n, 1000):
        changes = Changes(root_id)
        for i in range(start, min(n, start + 1000)):
            record = ImageRecord(f"{i:05d}.jpg", 1000 + i, 0, hashes[i], 64, 48, "jpeg")
            changes.added.append((record, vectors[i]))
        lib.catalog.apply(changes)
    started = time.perf_counter()
    report = lib.duplicates()
    elapsed = time.perf_counter() - started
    names = sorted(tuple(sorted(os.path.basename(m.path) for m in g.members)) + (g.kind,) for g in report.groups)
    assert names == [
        ("00000.jpg", "00001.jpg", "exact"),
        ("00002.jpg", "00003.jpg", "copy"),
        ("00004.jpg", "00005.jpg", "near"),
        ("00006.jpg", "00007.jpg", "00008.jpg", "near"),
    ]
    print(f"duplicates over {n} images: {elapsed:.3f} s")

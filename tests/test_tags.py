"""`cbir tag`: zero-shot tags for a whole cbir-tiny library of generated scenes, from the
stored vectors; tags are stored with scores, are --tag filters and library texts, and a new run
replaces the old tags without touching labels."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from click.testing import CliRunner

from cbir.cli import cli
from cbir.config import resolve_settings
from cbir.errors import EmptyLibrary, UsageError
from cbir.library import Library
from cbir.query.filters import Filters
from cbir.store.catalog import LABEL, TAG
from cbir.synthetic import COLOURS, make_gallery
from tests.conftest import run_cbir

N = 96


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    base = tmp_path_factory.mktemp("tags")
    pairs = make_gallery(base / "photos", N, seed=4242, size=(96, 96))
    (base / "colours.txt").write_text("# colours\n" + "\n".join(COLOURS) + "\n")
    (base / "templates.txt").write_text("a {} shape on a plain background\n")
    lib = Library.open(resolve_settings(library=base / "lib", model="cbir-tiny", device="cpu", env={}), create=True)
    assert lib.ingest(base / "photos").added == N
    lib.add_label(pairs[0][0], "my favourite")
    report = lib.tag(list(COLOURS), templates=str(base / "templates.txt"), threshold=0.5, top=1)
    yield base, pairs, lib, report
    lib.close()


def test_tags_agree_with_the_scenes(tagged):
    _, pairs, lib, report = tagged
    assert (report.images, report.vocabulary) == (N, 8)
    assert report.tagged == report.tags <= N  # top 1: at most one tag per image
    correct = 0
    for path, scene in pairs:
        tags = lib.tags_of(path)
        assert len(tags) <= 1
        for word, score in tags:
            assert 0.5 <= score <= 1.0
            correct += word == scene.colour
    # Measured: 96 of 96 images tagged, all with the scene's colour (the captions-only weights
    # before issue 22: 95, 93).
    assert correct >= 0.9 * N, correct
    assert sum(report.counts.values()) == report.tags


def test_tags_are_filters_and_texts(tagged):
    _, pairs, lib, _ = tagged
    for colour in ("red", "blue"):
        truth = {p for p, s in pairs if s.colour == colour}
        hits = lib.search("a shape", filters=Filters(tags=(colour,)), k=N)
        found = {h.path for h in hits}
        assert found and len(found & truth) / len(found) >= 0.9, (colour, len(found), len(truth))
        assert len(found & truth) >= 0.9 * len(truth)
    hits = lib.search("red", target="texts", k=5)
    assert any(h.source == TAG and h.text == "red" for h in hits)
    assert lib.verify_index() == {"images": [], "texts": []}
    assert lib.status().index_current


def test_rerunning_replaces_the_tags_and_keeps_labels(tagged):
    base, pairs, lib, first = tagged
    first_path = pairs[0][0]
    texts_before = lib.catalog.count_texts()
    again = lib.tag(list(COLOURS), templates=str(base / "templates.txt"), threshold=0.5, top=1)
    assert (again.tags, again.replaced) == (first.tags, first.tags)
    assert lib.catalog.count_texts() == texts_before  # replaced, not duplicated
    # a looser run: more tags per image, every old one gone first
    loose = lib.tag(["red", "green", "blue", "animal"], templates="single", threshold=0.0, top=2)
    assert loose.tags == 2 * N and loose.replaced == first.tags
    words = Counter(w for p, _ in pairs for w, _ in lib.tags_of(p))
    assert set(words) <= {"red", "green", "blue", "animal"} and sum(words.values()) == 2 * N
    assert (LABEL, "my favourite") in lib.texts_of(first_path)
    assert lib.catalog.count_texts() == 2 * N + 1
    assert lib.verify_index() == {"images": [], "texts": []}
    assert lib.clear_tags() == 2 * N
    assert lib.texts_of(first_path) == [(LABEL, "my favourite")]
    assert lib.search("favourite", target="texts", k=3)[0].text == "my favourite"
    assert lib.verify_index() == {"images": [], "texts": []}
    # back to the colours, for the CLI test
    lib.tag(list(COLOURS), templates=str(base / "templates.txt"), threshold=0.5, top=1)


def test_cli(tagged):
    base, pairs, lib, _ = tagged
    library = str(lib.path)
    out = CliRunner().invoke(
        cli,
        [
            "tag",
            "--vocabulary",
            str(base / "colours.txt"),
            "--templates",
            str(base / "templates.txt"),
            "--threshold",
            "0.5",
            "--top",
            "1",
            "--library",
            library,
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["images"] == N and summary["tags"] == summary["replaced"] > 0.9 * N
    assert {m["tag"] for m in summary["most_common"]} <= set(COLOURS)
    text = CliRunner().invoke(cli, ["tag", "--vocabulary", str(base / "colours.txt"), "--library", library])
    assert text.exit_code == 0 and text.output.startswith("tagged ") and "most common tags:" in text.output
    shown = CliRunner().invoke(cli, ["tags", str(pairs[1][0]), "--library", library, "--json"])
    assert shown.exit_code == 0, shown.output
    rows = [json.loads(line) for line in shown.output.splitlines()]
    assert rows and rows[0]["tag"] == pairs[1][1].colour and 0 < rows[0]["score"] <= 1
    listed = CliRunner().invoke(cli, ["label", "list", str(pairs[1][0]), "--library", library])
    assert f"tag       {pairs[1][1].colour}" in listed.output


def test_errors(tagged, tmp_path, fake_library, photos):
    base, _, lib, _ = tagged
    library = str(lib.path)
    (tmp_path / "empty.txt").write_text("# none\n")
    for args in (
        [],
        ["--vocabulary", str(tmp_path / "missing.txt")],
        ["--vocabulary", str(tmp_path / "empty.txt")],
        ["--vocabulary", str(base / "colours.txt"), "--threshold", "1.5"],
        ["--vocabulary", str(base / "colours.txt"), "--templates", "nonsense"],
        ["--vocabulary", str(base / "colours.txt"), "--clear"],
    ):
        out = CliRunner().invoke(cli, ["tag", *args, "--library", library])
        assert out.exit_code == 2 and len(out.stderr.splitlines()) == 1, (args, out.output)
    out = run_cbir("tag", "--vocabulary", str(base / "colours.txt"), "--library", str(tmp_path / "nolib"))
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr
    empty = fake_library("empty")
    with pytest.raises(EmptyLibrary):
        empty.tag(["a", "b"])
    with pytest.raises(UsageError):
        empty.tag(["a"], threshold=-0.1)


def test_fake_library_scores_and_migration(fake_library, photos):
    """The score column exists after migration and holds the probabilities; labels have none."""
    lib = fake_library()
    lib.ingest(photos)
    lib.add_label(photos / "a" / "img01.jpg", "mine")
    report = lib.tag(["dog", "cat", "car"], templates="single", threshold=0.0, top=3)
    assert report.tags == 3 * 20
    tags = lib.tags_of(photos / "a" / "img01.jpg")
    assert [w for w, _ in tags] and sum(s for _, s in tags) == pytest.approx(1.0, abs=1e-5)
    assert [s for _, s in tags] == sorted((s for _, s in tags), reverse=True)
    with lib.catalog.engine.connect() as c:
        rows = c.exec_driver_sql("select source, score from texts where source = 'label'").all()
    assert rows == [("label", None)]

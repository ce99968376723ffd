"""Exclusions (cbir.ingest.exclude): the defaults, .cbirignore files, --exclude patterns, folders
not walked, and `cbir ingest --exclude` remembered per folder, removing what it newly covers."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from cbir.cli import cli
from cbir.errors import UsageError
from cbir.ingest import scan as scan_module
from cbir.ingest.exclude import DEFAULT_EXCLUDES, EXCLUDES, Exclusions, check_patterns
from cbir.ingest.scan import scan
from tests.conftest import write_image
from tests.test_ingest import index_matches_db


def found(root, scope: str = "", patterns=()) -> list[str]:
    return sorted(f.path for f in scan(root, scope, Exclusions.for_root(root, patterns)).files)


def touch(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


# -- the rules ----------------------------------------------------------------------------------


def test_defaults_leave_out_hidden_nas_and_temporary_files(tmp_path):
    for name in [
        "keep.jpg",
        "sub/keep.png",
        "._keep.jpg",  # macOS AppleDouble
        ".thumbnails/large/x.png",
        ".Trash-1000/files/x.jpg",
        "@eaDir/keep.jpg/SYNOPHOTO_THUMB_XL.jpg",  # Synology
        "sub/@eaDir/x.jpg",
        "#recycle/old.jpg",
        "~$draft.jpg",
        "sub/.~lock.x.jpg#",
    ]:
        touch(tmp_path / name)
    result = scan(tmp_path)
    assert sorted(f.path for f in result.files) == ["keep.jpg", "sub/keep.png"]
    assert result.problems == []  # excluded files are no skips

    rules = Exclusions.for_root(tmp_path)
    for name in [".DS_Store", "Thumbs.db", "a/Thumbs.db", "x.jpg~", "x.tmp", "x.jpg.part", "x.crdownload"]:
        assert rules.excludes(name, is_dir=False), name
    assert rules.excludes("a/@eaDir", is_dir=True) and not rules.excludes("@eaDir", is_dir=False)  # folders only
    assert not rules.excludes("a/photo.jpg", is_dir=False) and not rules.excludes("recycle", is_dir=True)
    assert ".*" in DEFAULT_EXCLUDES and "@eaDir/" in DEFAULT_EXCLUDES


def test_cbirignore_anchored_anywhere_negated_and_nested(tmp_path):
    (tmp_path / ".cbirignore").write_text(
        "# a comment\n\nraw/\n/top.jpg\nsub/x.jpg\n*.png\n!keep.png\n",
    )
    for name in [
        "top.jpg",  # anchored to the root: only this one
        "a/top.jpg",
        "sub/x.jpg",  # a slash inside: anchored to the root too
        "a/sub/x.jpg",
        "raw/a.jpg",  # a folder pattern matches at any depth
        "a/raw/b.jpg",
        "a/pic.png",
        "a/keep.png",  # re-included
        "n/.cbirignore",
        "n/y.jpg",
        "n/deep/y.jpg",
        "n/deep/z.jpg",
        "y.jpg",  # n/.cbirignore applies below n only
    ]:
        touch(tmp_path / name)
    (tmp_path / "n" / ".cbirignore").write_text("y.jpg\n/deep/z.jpg\n!raw/\n")
    touch(tmp_path / "n" / "raw" / "r.jpg")  # a deeper file re-includes what the root's leaves out
    assert found(tmp_path) == ["a/keep.png", "a/sub/x.jpg", "a/top.jpg", "n/raw/r.jpg", "y.jpg"]
    # a scan of a subfolder reads the .cbirignore files above it
    assert found(tmp_path, "n") == ["n/raw/r.jpg"]
    assert found(tmp_path, "n/deep") == []


def test_exclude_patterns_are_relative_to_the_root_and_win_over_cbirignore(tmp_path):
    (tmp_path / ".cbirignore").write_text("!.wanted/\n!b.jpg\n")
    for name in ["a.jpg", "b.jpg", "c.psd.jpg", "x/a.jpg", "x/y/a.jpg", ".wanted/w.jpg", ".other/o.jpg"]:
        touch(tmp_path / name)
    assert found(tmp_path) == [".wanted/w.jpg", "a.jpg", "b.jpg", "c.psd.jpg", "x/a.jpg", "x/y/a.jpg"]
    patterns = ["b.jpg", "/a.jpg", "x/y/", "*.psd.*"]
    assert found(tmp_path, patterns=patterns) == [".wanted/w.jpg", "x/a.jpg"]
    assert found(tmp_path, patterns=["*.jpg", "!a.jpg"]) == ["a.jpg", "x/a.jpg", "x/y/a.jpg"]


def test_an_excluded_folder_is_not_walked_nor_reincluded(tmp_path, monkeypatch):
    for name in ["keep/a.jpg", "big/a.jpg", "big/deep/b.jpg", "@eaDir/t.jpg", ".git/c.jpg"]:
        touch(tmp_path / name)
    listed = []
    real = os.scandir

    def recording(path):
        listed.append(os.path.relpath(path, tmp_path))
        return real(path)

    monkeypatch.setattr(scan_module.os, "scandir", recording)
    # git's rule: a file cannot be re-included below an excluded folder
    assert found(tmp_path, patterns=["big/", "!big/deep/b.jpg"]) == ["keep/a.jpg"]
    assert sorted(listed) == [".", "keep"]


def test_an_excluded_scope_is_refused_naming_the_rule(tmp_path):
    (tmp_path / ".cbirignore").write_text("private/\n")
    for name in ["private/a.jpg", "raw/a.jpg", ".hidden/a.jpg", "ok/a.jpg"]:
        touch(tmp_path / name)
    rules = Exclusions.for_root(tmp_path, ["raw/"])
    with pytest.raises(UsageError, match=r"private is excluded .* by 'private/' of .*\.cbirignore"):
        scan(tmp_path, "private", rules)
    with pytest.raises(UsageError, match="by --exclude 'raw/' .*--no-exclude"):
        scan(tmp_path, "raw/a.jpg", rules)  # a single file under an excluded folder too
    with pytest.raises(UsageError, match=r"'\.\*' of the defaults"):
        scan(tmp_path, ".hidden", rules)
    assert [f.path for f in scan(tmp_path, "ok", rules).files] == ["ok/a.jpg"]


def test_bad_patterns_are_one_line_usage_errors(tmp_path):
    check_patterns(["raw/", "!keep.jpg", "**/*.psd"])
    with pytest.raises(UsageError, match=r"^--exclude: not a valid gitignore pattern: 'a\\\\'$"):
        check_patterns(["ok/", "a\\"])
    for nothing in ("#recycle/", " ", ""):
        with pytest.raises(UsageError, match="matches nothing"):
            check_patterns([nothing])
    check_patterns(["\\#recycle/"])
    with pytest.raises(UsageError, match="for folders"):
        check_patterns(["ok/"], dataset=True)
    (tmp_path / ".cbirignore").write_text("ok/\n!\n")
    with pytest.raises(UsageError, match=r"\.cbirignore, line 2: not a valid gitignore pattern: '!'"):
        Exclusions.for_root(tmp_path)
    (tmp_path / ".cbirignore").write_bytes(b"\xff\xfe*")
    with pytest.raises(UsageError, match="not UTF-8"):
        Exclusions.for_root(tmp_path)


# -- remembered per folder, through the Library ---------------------------------------------------


def test_newly_excluded_images_are_removed_and_the_patterns_remembered(fake_library, photos, tmp_path):
    lib = fake_library()
    assert lib.ingest(photos).added == 20
    report = lib.ingest(photos, exclude=["b/"])  # the 10 images under b/c
    assert (report.removed, report.unchanged, report.added) == (10, 10, 0)
    assert lib.catalog.count_images() == 10
    index_matches_db(lib)
    assert lib.status().exclusions == [(photos, ("b/",), False)]

    report = lib.ingest(photos)  # remembered
    assert (report.scanned, report.removed, report.added) == (10, 0, 0)


def test_the_remembered_patterns_are_replaced_cleared_and_forgotten(fake_library, photos, tmp_path):
    lib = fake_library()
    lib.ingest(photos, exclude=["b/"])
    with pytest.raises(UsageError, match="excluded from the scanned folder"):
        lib.ingest(photos / "b" / "c")  # the root's patterns apply to its subfolders
    report = lib.ingest(photos, exclude=["a/"])  # replaces "b/"
    assert (report.added, report.removed) == (10, 10)
    assert lib.status().exclusions == [(photos, ("a/",), False)]
    (photos / ".cbirignore").write_text("img0*\n")
    report = lib.ingest(photos, exclude=[])  # clears "a/": the .cbirignore still applies
    assert (report.added, report.removed, lib.catalog.count_images()) == (5, 5, 10)
    assert lib.status().exclusions == [(photos, (), True)]
    assert json.loads(lib.catalog.get_meta(EXCLUDES)) == {}

    lib.ingest(photos, exclude=["a/"])
    lib.forget(photos)
    assert json.loads(lib.catalog.get_meta(EXCLUDES)) == {}  # gone with the folder
    assert lib.ingest(photos).added == 10  # a new start: only the .cbirignore


def test_a_dataset_takes_no_exclusions(fake_library, tmp_path):
    write_image(tmp_path / "data" / "raw" / "a.jpg")
    (tmp_path / "data" / "list.csv").write_text("path,caption\nraw/a.jpg,a picture\n")
    lib = fake_library()
    with pytest.raises(UsageError, match="for folders"):
        lib.ingest(tmp_path / "data" / "list.csv", exclude=["raw/"])
    (tmp_path / "data" / ".cbirignore").write_text("raw/\n")
    assert lib.ingest(tmp_path / "data" / "list.csv").added == 1  # what it lists, excluded or not


# -- the command line, with the bundled model ---------------------------------------------------


def test_cli_remembers_replaces_and_clears_exclusions(photos, tmp_path):
    library = ["--library", str(tmp_path / "lib")]

    def cbir(*args):
        return CliRunner().invoke(cli, [*args, *library])

    def status() -> dict:
        return json.loads(cbir("status", "--json").output)

    first = cbir("ingest", str(photos), "--model", "cbir-tiny", "-q", "--exclude", "b/", "--exclude", "*.psd")
    assert first.exit_code == 0, first.output
    assert f"{photos}: 10 new," in first.output
    assert status()["exclusions"] == [{"path": str(photos), "exclude": ["b/", "*.psd"], "cbirignore": False}]
    assert f"excludes  {photos}: --exclude b/, --exclude '*.psd'" in cbir("status").output

    again = cbir("ingest", str(photos), "-q")
    assert f"{photos}: 0 new, 10 unchanged" in again.output and status()["images"] == 10

    replaced = cbir("ingest", str(photos), "-q", "--exclude", "a/")
    assert f"{photos}: 10 new, 10 removed, 0 unchanged" in replaced.output, replaced.output
    assert status()["images"] == 10 and status()["exclusions"][0]["exclude"] == ["a/"]

    (photos / ".cbirignore").write_text("img00.jpg\n")
    cleared = cbir("ingest", str(photos), "-q", "--no-exclude")
    assert f"{photos}: 10 new, 1 removed, 9 unchanged" in cleared.output, cleared.output
    assert status()["exclusions"] == [{"path": str(photos), "exclude": [], "cbirignore": True}]
    assert f"excludes  {photos}: .cbirignore" in cbir("status").output

    for bad, message in (
        (["--exclude", "a\\"], "--exclude: not a valid gitignore pattern: 'a\\\\'"),
        (["--exclude", "a/", "--no-exclude"], "--exclude and --no-exclude cannot go together"),
    ):
        refused = cbir("ingest", str(photos), "-q", *bad)
        assert refused.exit_code == 2 and refused.output.strip().splitlines() == [f"Error: {message}"]
    assert status()["images"] == 19


def test_the_one_regex_prefilter_decides_as_pathspec_does():
    """_Rules asks pathspec only about paths its combined regex matches: the decisions must be
    exactly pathspec's own, for every kind of pattern."""
    import itertools

    from pathspec import GitIgnoreSpec

    from cbir.ingest.exclude import DEFAULT_EXCLUDES, _Rules

    lines = [
        *DEFAULT_EXCLUDES,
        "raw/",
        "/top.jpg",
        "a/**/b.png",
        "*.psd",
        "!keep.psd",
        "img[0-9].jpg",
        "deep/*/x?.gif",
        "\\#hash.jpg",
        "# a comment",
        "",
    ]
    spec = GitIgnoreSpec.from_lines(lines)
    rules = _Rules("", spec, "test")
    assert rules.any_match is not None
    names = ["top.jpg", "keep.psd", "art.psd", "img3.jpg", "imgx.jpg", "b.png", "x1.gif", "#hash.jpg", "a~", ".h"]
    folders = ["", "raw/", "a/", "a/z/", "deep/q/", "sub/", "@eaDir/", "#recycle/"]
    paths = [f + n for f, n in itertools.product(folders, names)] + [f for f in folders if f]
    for path in paths:
        result = spec.check_file(path)
        expected = None if result.include is None else (result.include, str(spec.patterns[result.index].pattern))
        assert rules.check(path) == expected, path

"""A first-time user's papercuts (issue 18, item 6): checks before slow work, no leftovers from
a failed first ingest, a fast failure without network, metadata junk kept out of the texts,
and one-line errors for options that would otherwise be silently ignored."""

from __future__ import annotations

import ast
import importlib.metadata
import io
import json
import socket
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from cbir.cli import cli
from cbir.errors import ModelLoadError
from tests.conftest import write_image

REPO = Path(__file__).resolve().parents[1]


# -- checks before anything heavy is loaded ------------------------------------------------------
def test_missing_query_and_classify_images_fail_before_the_model_loads(tmp_path):
    """A wrong path costs no model load: the error comes with torch, open_clip and faiss still
    unimported (they took 8 s to say "no such file")."""
    (tmp_path / "folder.jpg").mkdir()
    batch = tmp_path / "batch.jsonl"
    batch.write_text(json.dumps({"image": str(tmp_path / "gone.png")}) + "\n")
    cases = [
        (["search", "--image", "missing.jpg"], "query image not found: missing.jpg"),
        (
            ["search", "--image", "missing.jpg", "+", "in winter", "--library", str(tmp_path / "lib")],
            "query image not found: missing.jpg",
        ),
        (["search", "--image", str(tmp_path / "folder.jpg")], "is a folder, not an image file"),
        (["search", "--batch", str(batch)], "query image not found"),
        (["classify", "missing.jpg", "--labels", "dog,cat"], "cannot classify missing.jpg: no such file"),
        (
            ["classify", "missing.jpg", str(tmp_path / "folder.jpg"), "--labels", "dog,cat", "--templates", "openai"],
            "is a folder, not an image file",
        ),
    ]
    code = (
        "import json, sys; from click.testing import CliRunner; from cbir.cli import cli\n"
        f"for args, _ in {cases!r}:\n"
        "    r = CliRunner().invoke(cli, args)\n"
        "    print(json.dumps([r.exit_code, r.output]))\n"
        "print(json.dumps(sorted(m for m in ('torch', 'open_clip', 'faiss') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    *results, loaded = [json.loads(line) for line in out.stdout.splitlines()]
    for (args, message), (exit_code, output) in zip(cases, results):
        assert exit_code in (1, 2) and message in output, (args, output)
        assert output.startswith("Error: ") and "Traceback" not in output
    assert loaded == []


def test_classify_checks_files_without_the_model(monkeypatch, tmp_path):
    from cbir.classify import file_problem

    (tmp_path / "dir").mkdir()
    image = write_image(tmp_path / "a.jpg")
    assert file_problem(image) is None
    assert file_problem(tmp_path / "nope.jpg") == "no such file"
    assert file_problem(tmp_path / "dir") == "is a folder, not an image file"
    assert file_problem("a\x00b") == "a path cannot contain a NUL byte"
    import cbir.encode

    monkeypatch.setattr(cbir.encode, "load_encoder", lambda *a, **k: pytest.fail("the model was loaded"))
    result = CliRunner().invoke(
        cli, ["classify", str(tmp_path / "x.jpg"), str(tmp_path / "y.jpg"), "--labels", "a,b", "--json"]
    )
    assert result.exit_code == 1
    assert [json.loads(line)["error"] for line in result.stdout.splitlines()] == ["no such file"] * 2


# -- a failed first ingest leaves nothing behind ---------------------------------------------------
def _failing_model(monkeypatch):
    import cbir.encode

    def fail(*_args, **_kwargs):
        raise ModelLoadError("cannot load ViT-B-32:laion2b_s34b_b79k (no network)")

    monkeypatch.setattr(cbir.encode, "load_encoder", fail)


def test_a_failed_first_ingest_leaves_no_library_folder(monkeypatch, tmp_path):
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg")
    new = tmp_path / "libs" / "deep" / "lib"
    out = CliRunner().invoke(cli, ["ingest", str(tmp_path / "nowhere"), "--library", str(new)])
    assert out.exit_code == 2 and "no such file or folder" in out.output
    assert not (tmp_path / "libs").exists()  # nor the parents it created
    _failing_model(monkeypatch)
    out = CliRunner().invoke(cli, ["ingest", str(photos), "--library", str(new)])
    assert out.exit_code == 1 and "cannot load" in out.output
    assert not (tmp_path / "libs").exists()


def test_a_failed_ingest_keeps_folders_that_existed(monkeypatch, tmp_path):
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg")
    mine = tmp_path / "mine"  # a folder the user made for the library, with a note in it
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    library = tmp_path / "lib"
    assert (
        CliRunner()
        .invoke(cli, ["ingest", str(photos), "--library", str(library), "--model", "cbir-tiny", "-q"])
        .exit_code
        == 0
    )
    _failing_model(monkeypatch)
    out = CliRunner().invoke(cli, ["ingest", str(photos), "--library", str(mine)])
    assert out.exit_code == 1
    assert (mine / "notes.txt").read_text() == "keep me"
    out = CliRunner().invoke(cli, ["ingest", str(tmp_path / "nowhere"), "--library", str(library)])
    assert out.exit_code == 2 and (library / "library.db").is_file()


def test_ingest_with_cbir_tiny_names_the_model_for_photos(tmp_path):
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg")
    out = CliRunner().invoke(cli, ["ingest", str(photos), "--library", str(tmp_path / "lib"), "--model", "cbir-tiny"])
    assert out.exit_code == 0, out.output
    notes = [line for line in out.stderr.splitlines() if "cbir-tiny knows only" in line]
    assert len(notes) == 1 and "--model ViT-B-32:laion2b_s34b_b79k" in notes[0]
    quiet = CliRunner().invoke(cli, ["ingest", str(photos), "--library", str(tmp_path / "lib"), "-q"])
    assert quiet.exit_code == 0 and "knows only" not in quiet.stderr


# -- no network: fail in seconds, cached weights still load ---------------------------------------
@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hub"


def test_an_unreachable_hub_fails_at_once_with_one_probe(monkeypatch, empty_hub_cache):
    """No retries, no model built: one connection attempt, then the one-line hint (the hub's
    own retries took 57 s)."""
    import open_clip

    from cbir.encode import load_encoder

    probes = []

    def unreachable(address, *args, **kwargs):
        probes.append(address)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", lambda *a, **k: pytest.fail("model built"))
    with pytest.raises(ModelLoadError) as caught:
        load_encoder("ViT-B-32:laion2b_s34b_b79k", "cpu")
    message = str(caught.value)
    assert "cannot be reached" in message and "--model cbir-tiny" in message and "\n" not in message
    assert probes == [("huggingface.co", 443)]


def test_cached_weights_load_without_the_network(monkeypatch, empty_hub_cache):
    """Weights in the hub cache are read in offline mode: no probe, no request."""
    from huggingface_hub import constants
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    from cbir.encode.hub import hub_access
    from cbir.encode.spec import parse_model_spec

    repo = empty_hub_cache / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("the network was used"))
    spec = parse_model_spec("ViT-B-32:laion2b_s34b_b79k")
    with hub_access(spec) as unreachable:
        assert constants.HF_HUB_OFFLINE and not unreachable
        found = download_pretrained(get_pretrained_cfg(spec.arch, spec.pretrained))
    assert Path(found).read_bytes() == b"weights"
    assert constants.HF_HUB_OFFLINE is False  # only for the load


# -- a plain install runs every command -----------------------------------------------------------
def _distribution_closure(name: str) -> set[str]:
    """The distributions ``name`` needs without extras, itself included (normalised names)."""
    from packaging.requirements import Requirement

    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        key = current.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.requires(current) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def test_cbir_imports_only_what_a_plain_install_has():
    """`cbir bench --quick` failed after 9 minutes on `import httpx`, a test-only dependency.
    Every module cbir imports is the standard library's, a dependency's (of a plain install),
    or an optional extra's that cbir checks for with a one-line error (ray, psycopg, rapidocr, rawpy, pypdfium2,
    av)."""
    # [ray], [postgres], [ocr], [media]; faiss-gpu-cu12 provides faiss too
    optional = {"ray", "psycopg", "faiss", "rapidocr", "rawpy", "pypdfium2", "av"}
    plain = _distribution_closure("cbir")
    owners = importlib.metadata.packages_distributions()
    missing = {}
    for path in (REPO / "cbir").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("cbir", "__future__") or top in optional:
                    continue
                dists = {d.lower().replace("_", "-") for d in owners.get(top, [])}
                if not dists & plain:
                    missing.setdefault(top, str(path.relative_to(REPO)))
    assert missing == {}


# -- metadata junk ---------------------------------------------------------------------------------
REAL = [
    "Sunset over the harbour",
    "Rex, our golden retriever",
    "Grandma's 80th birthday",
    "2019 family trip to Rome",
    "Google headquarters at night",
    "Created by my son at school",
    "Edited by Anna",
    "Photoshop contest winner: a cat in space",
    "東京タワーの夜景",
    "Café de Flore, Paris",
    "a red circle on a gray background",
    "iPhone 12 test shot",
    "O'Brien's pub",
    "beach at dawn (Canon EOS 5D)",
]
JUNK = [
    "File written by Adobe Photoshop? 5.0",
    "cmp3.10.3.2Lq3 0x756ffbf7",
    "Created with GIMP",
    "CREATOR: gd-jpeg v1.0 (using IJG JPEG v62), quality = 90",
    "LEAD Technologies Inc. V1.01",
    "Intel(R) JPEG Library, version 1,5,4,36",
    "Optimized by JPEGmini 3.13.3.15 0x411f0d8d",
    "Processed By eBay with ImageMagick, z1.1.0. ||B2",
    "AppleMark",
    "Adobe Photoshop CS6 (Windows)",
    "GIMP 2.10.30",
    "Picasa",
    "550e8400-e29b-41d4-a716-446655440000",
    "0x756ffbf7",
    "a1b2c3d4e5f6",
    "deadbeefcafebabe",
    "Lavc58.54.100",
    "Microsoft Windows Photo Viewer 6.1.7600.16385",
]


def test_software_signatures_and_ids_are_not_texts():
    from cbir.ingest.texts import embedded_texts

    for text in REAL + JUNK:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, "JPEG", comment=text.encode("utf-8"))
        found = embedded_texts(Image.open(buffer))
        assert found == ([text] if text in REAL else []), text


# -- Pillow's warnings stay inside ---------------------------------------------------------------
def test_corrupt_exif_is_not_printed(tmp_path):
    from cbir.encode.spec import Preprocess
    from cbir.ingest.decode import open_image

    # an IFD that announces 5 entries and holds 1: Pillow warns "Corrupt EXIF data"
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 5) + struct.pack(">HHII", 0x010F, 2, 4, 0x41424300)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, "JPEG", exif=b"Exif\x00\x00" + tiff)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Image.open(io.BytesIO(buffer.getvalue())).getexif()
        assert any("Corrupt EXIF" in str(w.message) for w in caught)  # what the test relies on
        caught.clear()
        _, width, height, *_ = open_image(buffer.getvalue(), Preprocess(size=16))
        _ = open_image(buffer.getvalue(), Preprocess(size=16), pixels=False)
    assert (width, height) == (32, 32) and [str(w.message) for w in caught] == []


# -- labels, index options -----------------------------------------------------------------------
@pytest.fixture
def tiny_library(tmp_path):
    photos = tmp_path / "photos"
    for i in range(6):
        write_image(photos / f"{i}.jpg", seed=i)
    library = str(tmp_path / "lib")
    out = CliRunner().invoke(cli, ["ingest", str(photos), "--library", library, "--model", "cbir-tiny", "-q"])
    assert out.exit_code == 0, out.output
    return photos, library


def test_label_list_without_an_image_lists_every_label(tiny_library):
    photos, library = tiny_library
    out = CliRunner().invoke(cli, ["label", "list", "--library", library])
    assert out.exit_code == 0 and "no labels yet" in out.output
    for image, label in [("0.jpg", "Rex"), ("1.jpg", "Rex"), ("1.jpg", "beach")]:
        assert (
            CliRunner().invoke(cli, ["label", "add", str(photos / image), label, "--library", library]).exit_code == 0
        )
    out = CliRunner().invoke(cli, ["label", "list", "--library", library])
    assert out.exit_code == 0 and [line.split() for line in out.stdout.splitlines()] == [["1", "beach"], ["2", "Rex"]]
    rows = CliRunner().invoke(cli, ["label", "list", "--json", "--library", library]).stdout.splitlines()
    assert [json.loads(r) for r in rows] == [{"label": "beach", "images": 1}, {"label": "Rex", "images": 2}]
    one = CliRunner().invoke(cli, ["label", "list", str(photos / "1.jpg"), "--library", library])
    assert one.exit_code == 0 and [line.split()[-1] for line in one.stdout.splitlines()] == ["Rex", "beach"]


def test_search_parameters_of_another_index_kind_are_an_error(tiny_library):
    _, library = tiny_library
    out = CliRunner().invoke(cli, ["search", "x", "--nprobe", "8", "--library", library])
    assert out.exit_code == 2 and "--nprobe" in out.output and "images index is flat" in out.output
    assert CliRunner().invoke(cli, ["index", "rebuild", "--type", "hnsw", "--library", library]).exit_code == 0
    out = CliRunner().invoke(cli, ["search", "x", "--nprobe", "8", "--library", library])
    assert out.exit_code == 2 and "images index is hnsw" in out.output and "--ef" in out.output
    assert CliRunner().invoke(cli, ["search", "x", "--ef", "32", "-k", "2", "--library", library]).exit_code == 0


def test_more_shards_than_vectors_is_refused_at_once(tiny_library):
    _, library = tiny_library
    for shards in ("7", "1000000000"):  # the second ran for minutes, holding the library's lock
        out = CliRunner().invoke(cli, ["index", "shard", "--shards", shards, "--library", library])
        assert out.exit_code == 2 and f"--shards {shards} is more than the 6 vectors" in out.output
    assert CliRunner().invoke(cli, ["index", "shard", "--shards", "6", "--library", library]).exit_code == 0


def test_verify_names_the_weights_when_only_they_differ(tiny_library):
    """An index built with other weights under the same name said "built with cbir-tiny, not
    cbir-tiny"."""
    from cbir.library import open_library
    from cbir.store.catalog import MODEL

    _, library = tiny_library
    with open_library(library=library) as lib:
        built = lib.fingerprint["weights"]
        lib.catalog.set_meta(MODEL, json.dumps({**lib.fingerprint, "weights": "sha256:0123456789abcdef"}))
        problems = lib.verify_index()["images"]
    assert problems[0] == (
        f"the images index was built with cbir-tiny (weights {built}), not cbir-tiny (weights sha256:0123456789abcdef)"
    )


def test_help_says_what_model_and_image_options_take():
    search_help = " ".join(CliRunner().invoke(cli, ["search", "--help"]).output.split())
    assert "--image PATH" in search_help and "--like PATH" in search_help
    assert "naming another one is an error" in search_help

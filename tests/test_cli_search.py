"""`cbir search` with filters, query arithmetic, texts, --explain and labels, as a user runs it,
on the demo's photo library (dated folders, EXIF cameras, caption files) and cbir-tiny."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from cbir.demo import make_demo_photos, scene_of
from cbir.index import gpu as faiss_gpu
from tests.conftest import cbir_env, run_cbir


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli-search")
    photos = make_demo_photos(base / "photos", 60)
    library = str(base / "lib")
    out = run_cbir("ingest", str(base / "photos"), "--library", library, "--model", "cbir-tiny", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["texts"] == 15  # a caption file beside every fourth photo
    return base, photos, library


def search(library, *args):
    out = run_cbir("search", *args, "--library", library)
    assert out.returncode == 0, out.stderr
    return out


def test_filters_and_the_plan_in_json(demo):
    _, _, library = demo
    out = search(
        library,
        "a",
        "red",
        "circle",
        "--camera",
        "pixel",
        "--after",
        "2019-07",
        "--format",
        "jpeg,webp",
        "--json",
        "--explain",
        "-k",
        "5",
    )
    plan, *rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert plan["query"] == "a red circle" and plan["plan"]["strategy"] in ("exact-subset", "ann-post-filter")
    assert plan["plan"]["matching"] == len(rows) or len(rows) == 5
    for row in rows:
        assert "Pixel" in row["camera"] and row["format"] in ("jpeg", "webp")
        assert datetime.fromisoformat(row["taken"]) >= datetime(2019, 7, 1)


def test_where_expression_and_explain_text(demo):
    _, _, library = demo
    out = search(
        library, "a blue triangle", "--where", "folder = beach or (folder = garden and width >= 800)", "--explain"
    )
    lines = out.stdout.splitlines()
    assert lines[0].startswith("plan      text → image, semantic, strategy ")
    assert lines[1].startswith("why       ") and lines[2].startswith("filters   ")
    paths = [line.split()[-1] for line in lines if line.strip()[:1].isdigit()]
    assert paths and all("/2019/beach/" in p or "/2023/garden/" in p for p in paths)


def test_bad_where_and_bad_query_point_at_the_column(demo):
    _, _, library = demo
    out = run_cbir("search", "x", "--where", "taken >= 2019 andd camera ~ pixel", "--library", library)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    first, expression, caret = out.stderr.splitlines()
    assert "unexpected 'andd' at column 15" in first
    assert caret.index("^") == expression.index("andd")
    out = run_cbir("search", '"dog + snow', "--library", library)
    assert out.returncode == 2 and "unterminated quote at column 1" in out.stderr
    out = run_cbir("search", "x", "--after", "last week", "--library", library)
    assert out.returncode == 2 and "YYYY-MM-DD" in out.stderr


def test_arithmetic_image_plus_text_and_like(demo):
    _, photos, library = demo
    red = str(photos[0].path)  # a red circle on gray
    out = search(
        library,
        "--image",
        red,
        "-",
        "a red circle on a gray background",
        "+",
        "a yellow star on a cyan background",
        "--json",
        "--explain",
        "-k",
        "3",
    )
    plan, *rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert plan["plan"]["kind"] == "image+text → image"
    assert scene_of(__import__("pathlib").Path(rows[0]["path"])) == "yellow-star-on-cyan"
    out = search(library, "--like", red, "-k", "1", "--json")
    assert json.loads(out.stdout)["path"] == red


def test_text_target_modes(demo):
    _, _, library = demo
    out = search(library, "red circle", "--target", "text", "--mode", "keyword", "--json")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows and all("red" in r["text"] or "circle" in r["text"] for r in rows)
    assert rows[0]["source"] == "sidecar" and rows[0]["text_id"] > 0
    table = search(library, "a red circle on a gray background", "--target", "text", "-k", "3").stdout
    header, first, *_ = table.splitlines()
    assert header.split()[:4] == ["rank", "score", "source", "text"]
    assert "a red circle on a gray background" in first


def test_paging_sorting_dedup_and_min_score(demo):
    _, _, library = demo
    full = [json.loads(x) for x in search(library, "a green square", "--json", "-k", "8").stdout.splitlines()]
    page = [
        json.loads(x)
        for x in search(library, "a green square", "--json", "-k", "4", "--offset", "4").stdout.splitlines()
    ]
    assert [r["path"] for r in page] == [r["path"] for r in full[4:]] and page[0]["rank"] == 5
    dated = [
        json.loads(x)
        for x in search(library, "a green square", "--json", "-k", "8", "--sort", "date").stdout.splitlines()
    ]
    assert {r["path"] for r in dated} == {r["path"] for r in full}
    taken = [r["taken"] for r in dated]
    assert taken == sorted(taken)
    threshold = (full[3]["score"] + full[4]["score"]) / 2  # JSON scores are rounded
    cut = [
        json.loads(x)
        for x in search(
            library, "a green square", "--json", "-k", "8", "--min-score", str(threshold)
        ).stdout.splitlines()
    ]
    assert [r["path"] for r in cut] == [r["path"] for r in full[:4]]
    assert search(library, "a green square", "--dedup", "-k", "3").returncode == 0


def test_labels_from_the_command_line(demo):
    _, photos, library = demo
    image = str(photos[5].path)
    out = run_cbir("label", "add", image, "Rex", "golden retriever", "--library", library)
    assert out.returncode == 0 and out.stdout.splitlines() == ["added: Rex", "added: golden retriever"]
    listed = run_cbir("label", "list", image, "--library", library).stdout.splitlines()
    assert listed[-2:] == ["label     Rex", "label     golden retriever"]
    tagged = [json.loads(x) for x in search(library, "anything", "--tag", "rex", "--json").stdout.splitlines()]
    assert [r["path"] for r in tagged] == [image]
    out = run_cbir("label", "remove", image, "--library", library)
    assert out.returncode == 0 and out.stdout.strip() == "removed: all labels"
    out = run_cbir("label", "add", "/nowhere/x.jpg", "x", "--library", library)
    assert out.returncode == 2 and "not an image of this library" in out.stderr


def test_a_reader_that_stops_early_ends_the_search_quietly(demo):
    """`cbir search ... | head -1`: no error message, the shell's exit status for SIGPIPE."""
    import subprocess
    import sys

    _, _, library = demo
    env = cbir_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cbir", "search", "--batch", "-", "-k", "60", "--library", library],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdin.write(b"a red circle\n" * 300)
    proc.stdin.close()
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == b""


@pytest.mark.slow  # every index kind end to end
def test_index_commands(tmp_path):
    make_demo_photos(tmp_path / "photos", 40)
    library = str(tmp_path / "lib")
    assert (
        run_cbir("ingest", str(tmp_path / "photos"), "--library", library, "--model", "cbir-tiny", "-q").returncode == 0
    )
    out = run_cbir("index", "rebuild", "--type", "hnsw", "--json", "--library", library)
    assert out.returncode == 0, out.stderr
    images, texts = [json.loads(line) for line in out.stdout.splitlines()]
    assert (images["name"], images["kind"], images["vectors"]) == ("images", "hnsw", 40)
    assert (texts["kind"], texts["vectors"]) == ("flat", 10)
    info = json.loads(run_cbir("index", "info", "--json", "--library", library).stdout)
    assert info["indexes"]["images"]["spec"]["factory"] == "HNSW32,Flat"
    assert run_cbir("index", "verify", "--library", library).stdout.splitlines() == ["images: ok", "texts: ok"]
    hits = search(library, "a red circle", "--ef", "128", "-k", "3", "--json").stdout.splitlines()
    assert len(hits) == 3
    faiss_file = tmp_path / "lib" / "index" / info["folder"] / "images.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    out = run_cbir("index", "verify", "--library", library)
    assert out.returncode == 1 and "images.faiss does not match its checksum" in out.stdout
    out = run_cbir("index", "repair", "--library", library)
    assert out.returncode == 0 and out.stdout.startswith("images: rebuilt")
    assert run_cbir("index", "verify", "--library", library).returncode == 0
    assert json.loads(run_cbir("status", "--json", "--library", library).stdout)["index_type"] == "hnsw"
    out = run_cbir("index", "shard", "--shards", "2", "--by", "folder", "--json", "--library", library)
    assert out.returncode == 0, out.stderr
    assert sum(json.loads(line)["vectors"] for line in out.stdout.splitlines()) == 40
    assert len(search(library, "a red circle", "-k", "5", "--json").stdout.splitlines()) == 5
    out = run_cbir("index", "rebuild", "--memory", "1KB", "--library", library)
    assert out.returncode == 2 and "needs" in out.stderr and "Traceback" not in out.stderr
    if not faiss_gpu.available():  # asking for the GPU without one: one line, nothing changed
        generation = json.loads(run_cbir("index", "info", "--json", "--library", library).stdout)["generation"]
        for args in (
            ("index", "rebuild", "--gpu"),
            ("index", "shard", "--shards", "2", "--gpu"),
            ("search", "dog", "--gpu"),
        ):
            out = run_cbir(*args, "--library", library)
            assert out.returncode == 2 and out.stderr.startswith("Error: --gpu: "), out.stderr
            assert len(out.stderr.splitlines()) == 1
        assert json.loads(run_cbir("index", "info", "--json", "--library", library).stdout)["generation"] == generation

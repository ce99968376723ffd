"""Ingesting datasets (manifests and WebDataset tars) into a library, updating them, and
exporting the library: real SQLite, real FAISS, the fake encoder."""

from __future__ import annotations

import csv
import io
import json
import tarfile

import numpy as np
import pytest

from cbir.query.filters import Filters
from cbir.store.catalog import CAPTION
from tests.conftest import run_cbir, write_image


def _images(folder, n, start=0):
    return [write_image(folder / f"img{i:02d}.jpg", seed=i) for i in range(start, start + n)]


def _write_csv(path, rows, header=("path", "caption", "split", "score")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def dataset(tmp_path):
    data = tmp_path / "data"
    images = _images(data / "imgs", 8)
    rows = [
        (f"imgs/{p.name}", f"caption number {i}", "train" if i < 6 else "test", i / 2) for i, p in enumerate(images)
    ]
    rows += [
        ("imgs/missing.jpg", "gone", "train", 0),
        ("notes.txt", "not an image", "train", 0),
        ("", "no path", "train", 0),
    ]
    _write_csv(data / "train.csv", rows)
    return data


def _stored_captions(lib):
    return {path.name: text for text, source, path in _captions(lib)}


def _captions(lib):
    ids = lib.catalog.vector_ids("texts")
    texts = lib.catalog.texts(ids)
    images = lib.catalog.images({image for _, _, image in texts.values()})
    return [(content, source, images[image].path) for content, source, image in texts.values() if source == CAPTION]


def test_a_csv_manifest_is_ingested_with_captions_columns_and_bad_rows(fake_library, dataset):
    lib = fake_library()
    report = lib.ingest(dataset / "train.csv")
    assert (report.added, report.skipped, report.texts) == (8, 3, 8)
    assert lib.catalog.count_images() == 8
    assert _stored_captions(lib)["img03.jpg"] == "caption number 3"
    reasons = dict((p.relative_to(dataset).as_posix(), why) for p, why in lib.status(with_skipped=True).skipped_files)
    assert reasons["train.csv/row 9"].endswith("imgs/missing.jpg: no such file")
    assert "not an image" in reasons["train.csv/row 10"]
    assert "row 11" in " ".join(reasons)
    # extra columns filter, numbers as numbers
    hits = lib.search("x", k=20, filters=Filters(where="extra.split = train and extra.score >= 1.5"))
    assert sorted(h.path.name for h in hits) == ["img03.jpg", "img04.jpg", "img05.jpg"]
    # the captions are texts: keyword search finds them
    found = lib.search("number 5", target="texts", mode="keyword", k=3)
    assert found[0].text == "caption number 5"


def test_reingesting_an_edited_manifest_updates_without_reencoding(fake_library, dataset):
    lib = fake_library()
    lib.ingest(dataset / "train.csv")
    encoded = lib.encoder.images_encoded
    again = lib.ingest(dataset / "train.csv")
    assert (again.added, again.updated, again.texts, again.skipped) == (0, 0, 0, 0)
    assert lib.encoder.images_encoded == encoded
    rows = [
        (f"imgs/img{i:02d}.jpg", f"new words {i}" if i == 2 else f"caption number {i}", "val" if i == 1 else "train", i)
        for i in range(7)
    ]  # img07 dropped, bad rows fixed
    _write_csv(dataset / "train.csv", rows)
    report = lib.ingest(dataset / "train.csv")
    assert (report.added, report.removed, report.texts) == (0, 1, 1)
    assert lib.encoder.images_encoded == encoded  # nothing re-encoded
    captions = _stored_captions(lib)
    assert captions["img02.jpg"] == "new words 2" and "img07.jpg" not in captions
    assert [h.path.name for h in lib.search("x", k=9, filters=Filters(where="extra.split = val"))] == ["img01.jpg"]
    assert lib.status(with_skipped=True).skipped_files == []  # the fixed rows' skip records went
    assert lib.verify_index()["images"] == []


def test_a_folder_scan_and_a_dataset_share_a_folder_without_removing_each_other(fake_library, dataset):
    lib = fake_library()
    lib.ingest(dataset / "train.csv")
    extra = write_image(dataset / "other" / "loose.jpg", seed=99)
    report = lib.ingest(dataset)  # the folder holding the manifest's images
    assert (report.added, report.removed) == (1, 0)
    assert lib.catalog.count_images() == 9
    assert lib.ingest(dataset / "train.csv").removed == 0  # the folder's own image is not the dataset's
    extra.unlink()
    assert lib.ingest(dataset).removed == 1 and lib.catalog.count_images() == 8


def test_jsonl_and_parquet_manifests(fake_library, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    images = _images(tmp_path / "set", 4)
    lines = [
        {"image": p.name, "captions": [f"first {i}", f"second {i}"], "label": "cat" if i % 2 else "dog"}
        for i, p in enumerate(images)
    ]
    (tmp_path / "set" / "data.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    lib = fake_library()
    report = lib.ingest(tmp_path / "set" / "data.jsonl", caption_column="captions")
    assert (report.added, report.texts, report.skipped) == (4, 8, 1)
    assert sorted(h.path.name for h in lib.search("x", k=9, filters=Filters(where="extra.label = CAT"))) == [
        "img01.jpg",
        "img03.jpg",
    ]
    table = pa.table(
        {"filepath": [str(p) for p in images], "text": [f"parquet {i}" for i in range(4)], "n": list(range(4))}
    )
    pq.write_table(table, tmp_path / "set.parquet")
    other = fake_library("other")
    assert other.ingest(tmp_path / "set.parquet").added == 4  # absolute paths
    assert sorted(_stored_captions(other).values()) == [f"parquet {i}" for i in range(4)]


def _tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_are_read_straight_from_the_tars(fake_library, tmp_path):
    images = _images(tmp_path / "src", 6)
    shards = tmp_path / "shards"
    shards.mkdir()
    for shard in range(2):
        samples = []
        for i in range(shard * 3, shard * 3 + 3):
            key = f"{i:05d}"
            samples.append((f"{key}.jpg", images[i].read_bytes()))
            samples.append((f"{key}.txt", f"sample {i}".encode()))
            samples.append((f"{key}.json", json.dumps({"similarity": i / 10, "key": key}).encode()))
        samples.append(("99999.txt", b"a caption without its image"))
        _tar(shards / f"{shard:05d}.tar", samples)
    lib = fake_library()
    report = lib.ingest(str(shards / "{00000..00001}.tar"))
    assert (report.added, report.texts, report.skipped) == (6, 6, 2)
    assert not any(p.suffix == ".jpg" for p in shards.rglob("*"))  # nothing unpacked
    paths = {h.path.relative_to(shards).as_posix() for h in lib.search("x", k=10)}
    assert "00000.tar/00000.jpg" in paths and "00001.tar/00004.jpg" in paths
    assert [h.path.name for h in lib.search("x", k=9, filters=Filters(where="extra.similarity > 0.35"))] != []
    # the same image as a file gets the same vector (the bytes are the same)
    files = fake_library("files")
    files.ingest(tmp_path / "src")
    by_caption = {c: p for c, _, p in _captions(lib)}
    tar_id = lib.catalog.image_at(by_caption["sample 4"])
    file_id = files.catalog.image_at(images[4])
    np.testing.assert_array_equal(
        lib.catalog.vectors_of("images", [tar_id])[1], files.catalog.vectors_of("images", [file_id])[1]
    )
    # one shard ingested alone does not remove the other's images
    assert lib.ingest(shards / "00000.tar").removed == 0 and lib.catalog.count_images() == 6


def test_export_parquet_and_npy(fake_library, dataset, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    lib = fake_library()
    lib.ingest(dataset / "train.csv")
    ids, vectors = next(lib.catalog.iter_vectors())
    from cbir.export import export

    assert export(lib.catalog, tmp_path / "out.parquet", "parquet") == 8
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [row["id"] for row in table] == ids.tolist()
    np.testing.assert_array_equal(np.array([row["vector"] for row in table], np.float32), vectors)
    third = table[3]
    assert third["captions"] == ["caption number 3"] and json.loads(third["extra"]) == {"split": "train", "score": 1.5}
    assert third["dataset"] == "manifest:train.csv" and third["path"].endswith("img03.jpg")

    assert export(lib.catalog, tmp_path / "npy", "npy") == 8
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "vectors.npy", mmap_mode="r"), vectors)
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "ids.npy"), ids)
    meta = [json.loads(line) for line in (tmp_path / "npy" / "metadata.jsonl").read_text().splitlines()]
    assert [m["id"] for m in meta] == ids.tolist()
    with pytest.raises(Exception, match="not an empty folder"):
        export(lib.catalog, tmp_path / "npy", "npy")


def test_cli_ingest_a_manifest_and_export(dataset, tmp_path):
    library = str(tmp_path / "lib")
    out = run_cbir("ingest", str(dataset / "train.csv"), "--library", library, "--model", "cbir-tiny", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["added"] == 8
    out = run_cbir("ingest", str(dataset / "train.csv"), "--image-column", "nope", "--library", library)
    assert out.returncode == 2 and "nope" in out.stderr and len(out.stderr.splitlines()) == 1
    out = run_cbir("export", str(tmp_path / "v.parquet"), "--library", library)
    assert out.returncode == 0 and out.stdout.strip() == f"exported 8 images to {tmp_path / 'v.parquet'}"


def test_a_row_per_caption_is_one_image_with_every_caption(fake_library, tmp_path):
    images = _images(tmp_path / "coco", 2)
    rows = [(p.name, f"caption {c} of {p.stem}", "x", 0) for p in images for c in range(3)]
    _write_csv(tmp_path / "coco" / "captions.csv", rows)
    lib = fake_library()
    report = lib.ingest(tmp_path / "coco" / "captions.csv")
    assert (report.added, report.texts) == (2, 6)
    texts = sorted(t for t, _, p in _captions(lib) if p.name == "img01.jpg")
    assert texts == [f"caption {c} of img01" for c in range(3)]


def test_every_bad_sample_of_a_tar_is_recorded(fake_library, tmp_path):
    image = write_image(tmp_path / "a.jpg").read_bytes()
    _tar(tmp_path / "s.tar", [("a.jpg", image), ("b.txt", b"no image"), ("c.txt", b"none either"), ("a.jpg", image)])
    lib = fake_library()
    report = lib.ingest(tmp_path / "s.tar")
    assert (report.added, report.skipped) == (1, 2)
    skipped = sorted(p.name for p, _ in lib.status(with_skipped=True).skipped_files)
    assert skipped == ["sample", "sample (2)"]
    assert lib.ingest(tmp_path / "s.tar").skipped == 0  # recorded, not retried

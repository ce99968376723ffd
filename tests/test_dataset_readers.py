"""The dataset readers: manifests (CSV, TSV, JSON Lines, Parquet) and WebDataset tar shards."""

from __future__ import annotations

import datetime
import gzip
import io
import json
import os
import random
import sys
import tarfile
from pathlib import Path

import pytest

from cbir.errors import UsageError
from cbir.ingest.datasets import FORMATS, BadRow, detect_format
from cbir.ingest.manifests import ManifestRow, read_manifest
from cbir.ingest.webdataset import TarSample, expand_shards, read_member, read_webdataset


def rows_of(items):
    return [i for i in items if isinstance(i, ManifestRow)]


def bad_of(items):
    return [i for i in items if isinstance(i, BadRow)]


def blob(seed: int, size: int) -> bytes:
    """Stand-in image bytes (the readers never decode them)."""
    return random.Random(seed).randbytes(size)


def write_tar(path: Path, members: list[tuple[str, bytes]], mtime: int = 1_700_000_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(prefix: str, n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    members = []
    for i in range(n):
        key = f"{prefix}{i:05d}"
        members.append((f"{key}.jpg", blob(seed * 1000 + i, 700 + 257 * i)))
        members.append((f"{key}.txt", f"caption {prefix}{i}".encode()))
        members.append((f"{key}.json", json.dumps({"key": key, "width": 64}).encode()))
    return members


# -- manifests ------------------------------------------------------------------------------------
def test_csv_autodetected_columns(tmp_path):
    manifest = tmp_path / "data" / "list.csv"
    manifest.parent.mkdir()
    manifest.write_text(
        "File_Path,Caption,width,license\n"
        "imgs/a.jpg,  a red bus  ,640,cc-by\n"
        f"{tmp_path}/elsewhere/b.png,,480,\n"
        '../other/./c.jpg,"quoted, with comma",1,x\n',
        encoding="utf-8",
    )
    got = list(read_manifest(manifest))
    assert [type(r) for r in got] == [ManifestRow] * 3
    a, b, c = got
    assert (a.row, a.raw, a.captions) == (1, "imgs/a.jpg", ("a red bus",))
    assert a.image == manifest.parent / "imgs/a.jpg"
    assert a.extra == {"width": "640", "license": "cc-by"}
    assert b.image == tmp_path / "elsewhere/b.png" and b.captions == ()
    assert c.image == tmp_path / "other/c.jpg" and c.raw == "../other/./c.jpg"
    assert c.captions == ("quoted, with comma",) and c.row == 3


def test_column_preference_order(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("url,title,filepath,caption\nhttp://x/a.jpg,T,a.jpg,C\n")
    (row,) = read_manifest(manifest)
    assert row.raw == "a.jpg" and row.captions == ("C",)
    assert row.extra == {"url": "http://x/a.jpg", "title": "T"}


def test_tsv_forced_columns(tmp_path):
    manifest = tmp_path / "m.tab"
    manifest.write_text("path\tother\tcaption\tnotes\nx.jpg\ty.jpg\tcap\tthe note\n")
    (auto,) = read_manifest(manifest)
    assert auto.raw == "x.jpg" and auto.captions == ("cap",)
    (forced,) = read_manifest(manifest, image_column="OTHER", caption_column="notes")
    assert forced.raw == "y.jpg" and forced.captions == ("the note",)
    assert forced.extra == {"path": "x.jpg", "caption": "cap"}
    # the image column is never the caption column too
    (odd,) = read_manifest(manifest, image_column="caption")
    assert odd.raw == "cap" and odd.captions == () and "caption" not in odd.extra
    # a forced format wins over the suffix
    csv_named = tmp_path / "m.csv"
    csv_named.write_text(manifest.read_text())
    (row,) = read_manifest(csv_named, "tsv")
    assert row.raw == "x.jpg"


def test_csv_long_field(tmp_path):
    long = "word " * 60_000  # 300 KB, above the csv module's default field limit
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image,description\na.jpg,{long}\n")
    (row,) = read_manifest(manifest)
    assert row.captions == (long.strip(),)


def test_csv_bad_rows_are_reported_and_the_rest_read(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(
        b"\xef\xbb\xbfpath,caption\n"  # with a BOM
        b"ok1.jpg,one\n"
        b"too,many,fields\n"
        b",empty image\n"
        b"https://example.com/x.jpg,a url\n"
        b"caf\xe9.jpg,latin-1 bytes\n"
        b"\n"
        b"ok2.jpg,two\n"
    )
    got = list(read_manifest(manifest))
    assert [(r.row, r.raw) for r in rows_of(got)] == [(1, "ok1.jpg"), (7, "ok2.jpg")]
    bad = {b.row: b.reason for b in bad_of(got)}
    assert set(bad) == {2, 3, 4, 5}
    assert "3 fields where the header has 2" in bad[2]
    assert "no image path" in bad[3]
    assert "URLs are not downloaded; download the images first (e.g. img2dataset)" in bad[4]
    assert "not valid UTF-8" in bad[5]
    assert all(b.source == str(manifest) for b in bad_of(got))


def test_missing_image_column(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("name,caption\na.jpg,x\n")
    with pytest.raises(UsageError) as err:
        list(read_manifest(manifest))
    message = str(err.value)
    assert "name, caption" in message and "--image-column" in message and "\n" not in message
    (row,) = read_manifest(manifest, image_column="name")
    assert row.raw == "a.jpg"


def test_forced_column_that_does_not_exist(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.jpg", "caption": "x"}\n')
    with pytest.raises(UsageError, match="--caption-column") as err:
        list(read_manifest(manifest, caption_column="alt"))
    assert "'alt'" in str(err.value) and "path, caption" in str(err.value)
    with pytest.raises(UsageError, match="--image-column"):
        list(read_manifest(manifest, image_column="nope"))


def test_jsonl_list_of_captions(tmp_path):
    manifest = tmp_path / "coco.jsonl"
    lines = [
        {
            "file_name": "val/1.jpg",
            "captions": ["A dog.", " A brown dog. ", "", "A dog.", None],
            "id": 1,
            "meta": {"w": 640, "tags": ["a", "b"]},
            "score": float("nan"),
        },
        {"file_name": 2, "captions": None, "ok": True},
    ]
    manifest.write_text("\ufeff" + "\n".join(json.dumps(line) for line in lines) + "\n")  # BOM
    first, second = read_manifest(manifest)
    assert first.captions == ("A dog.", "A brown dog.")
    assert first.image == tmp_path / "val/1.jpg"
    assert first.extra == {"id": 1, "meta": '{"w": 640, "tags": ["a", "b"]}', "score": None}
    assert second.raw == "2" and second.captions == () and second.extra == {"ok": True}


def test_jsonl_bad_lines(tmp_path):
    manifest = tmp_path / "m.ndjson"
    manifest.write_bytes(
        b'{"image": "a.jpg", "text": "first"}\n'  # line 1
        b'{"image": "b.jpg", \n'  # 2: invalid JSON
        b'["c.jpg"]\n'  # 3: not an object
        b"\n"  # 4: blank, skipped
        b'{"text": "no image"}\n'  # 5
        b'{"image": "caf\xe9.jpg"}\n'  # 6: invalid UTF-8
        b'{"image": "s3://bucket/x.jpg"}\n'  # 7: URL
        b'{"image": {"bytes": "..."}}\n'  # 8: not a path
        b'{"image": "d.jpg", "text": "last"}\n'  # 9
    )
    got = list(read_manifest(manifest))
    assert [(r.row, r.raw, r.captions) for r in rows_of(got)] == [(1, "a.jpg", ("first",)), (9, "d.jpg", ("last",))]
    bad = {b.row: b.reason for b in bad_of(got)}
    assert set(bad) == {2, 3, 5, 6, 7, 8}
    assert bad[2].startswith("invalid JSON")
    assert "not a JSON object" in bad[3] and "array" in bad[3]
    assert "no image path" in bad[5]
    assert "not valid UTF-8" in bad[6]
    assert "URL" in bad[7]
    assert "not an image path" in bad[8]


def test_jsonl_image_key_found_beyond_first_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('not json\n{"path": "a.jpg"}\n')
    got = list(read_manifest(manifest))
    assert isinstance(got[0], BadRow) and got[0].row == 1
    assert got[1].raw == "a.jpg" and got[1].row == 2


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 2500  # several read batches
    table = pa.table(
        {
            "Image": pa.array([f"img/{i}.jpg" for i in range(n)]).dictionary_encode(),
            "caption": [[f"cap {i}", f"alt {i}"] if i % 2 else None for i in range(n)],
            "width": pa.array(range(n), pa.int32()),
            "score": [float("nan") if i == 1 else i / 2 for i in range(n)],
            "taken": [datetime.datetime(2020, 1, 2, 3, 4, 5)] * n,
            "day": [datetime.date(2021, 5, 6)] * n,
            "flag": [i % 3 == 0 for i in range(n)],
            "thumb": [b"\x00\x01"] * n,  # binary: not metadata
        }
    )
    manifest = tmp_path / "m.parquet"
    pq.write_table(table, manifest, row_group_size=700)
    assert pa.types.is_dictionary(pq.read_schema(manifest).field("Image").type)
    got = list(read_manifest(manifest))
    assert len(got) == n and all(isinstance(r, ManifestRow) for r in got)
    assert [r.row for r in got] == list(range(1, n + 1))
    first, second = got[0], got[1]
    assert first.image == tmp_path / "img/0.jpg" and first.captions == ()
    assert second.captions == ("cap 1", "alt 1")
    assert second.extra == {
        "width": 1,
        "score": None,
        "taken": "2020-01-02T03:04:05",
        "day": "2021-05-06",
        "flag": False,
    }
    assert got[-1].raw == f"img/{n - 1}.jpg"
    json.dumps([r.extra for r in got])  # all JSON-serialisable
    (forced,) = list(read_manifest(manifest, image_column="image", caption_column="width"))[:1]
    assert forced.captions == ("0",)


def test_parquet_embedded_images_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    manifest = tmp_path / "hf.parquet"
    table = pa.table({"image": [{"bytes": b"xx", "path": "a.jpg"}], "text": ["t"]})
    pq.write_table(table, manifest)
    with pytest.raises(UsageError, match="not image paths.*--image-column"):
        list(read_manifest(manifest))


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UsageError, match="reading Parquet needs pyarrow: pip install pyarrow"):
        list(read_manifest(manifest))


def test_manifest_errors(tmp_path):
    with pytest.raises(UsageError, match="manifest not found"):
        list(read_manifest(tmp_path / "absent.csv"))
    (tmp_path / "m.csv").write_text("path\n")
    with pytest.raises(UsageError, match="not a manifest"):
        list(read_manifest(tmp_path / "m.csv", "webdataset"))
    with pytest.raises(UsageError, match="unknown dataset format"):
        list(read_manifest(tmp_path / "m.csv", "xml"))
    assert list(read_manifest(tmp_path / "m.csv")) == []  # header only: no rows


# -- WebDataset -----------------------------------------------------------------------------------
def test_single_tar(tmp_path):
    long_dir = "d" * 120  # needs a PAX header: data offsets must still be right
    members = sample_members("s", 3) + [
        (f"{long_dir}/x.PNG", blob(99, 1024)),
        (f"{long_dir}/x.txt", b"long name"),
        ("./sub/k.jpg", b"K"),  # as `tar -cf shard.tar ./` names them
    ]
    shard = write_tar(tmp_path / "shard.tar", members, mtime=1_650_000_000)
    got = list(read_webdataset([shard]))
    assert all(isinstance(s, TarSample) for s in got)
    assert [s.key for s in got] == ["s00000", "s00001", "s00002", f"{long_dir}/x", "sub/k"]
    first = got[0]
    assert (first.tar, first.member, first.mtime) == (shard, "s00000.jpg", 1_650_000_000)
    assert first.captions == ("caption s0",) and first.extra == {"key": "s00000", "width": 64}
    assert first.problems == ()
    assert got[3].member == f"{long_dir}/x.PNG" and got[3].captions == ("long name",)
    with tarfile.open(shard) as tar:
        for sample in got:
            expected = tar.extractfile(sample.member).read()
            assert sample.size == len(expected)
            assert read_member(shard, sample.offset, sample.size) == expected


def test_read_member_short_read(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("a.jpg", b"abc")])
    (sample,) = read_webdataset([shard])
    with pytest.raises(OSError, match="expected"):
        read_member(shard, sample.offset, os.path.getsize(shard))


def test_brace_list_and_glob(tmp_path):
    shards = [write_tar(tmp_path / "shards" / f"{i:05d}.tar", sample_members(f"k{i}_", 2, i)) for i in range(3)]
    (tmp_path / "shards" / "notes.txt").write_text("not a shard")
    assert expand_shards(str(tmp_path / "shards/{00000..00002}.tar")) == shards
    assert expand_shards(str(tmp_path / "shards/*.tar")) == shards
    assert expand_shards(str(tmp_path / "shards/{00002,00000,00002}.tar")) == [shards[0], shards[2]]
    assert expand_shards(str(shards[1])) == [shards[1]]
    found = expand_shards(str(tmp_path / "shards/{00000..00002}.tar"))
    keys = [s.key for s in read_webdataset(found)]
    assert keys == ["k0_00000", "k0_00001", "k1_00000", "k1_00001", "k2_00000", "k2_00001"]


def test_expand_shards_errors(tmp_path):
    write_tar(tmp_path / "00000.tar", [("a.jpg", b"x")])
    with pytest.raises(UsageError, match=r"no shard matches .*\*\.tar"):
        expand_shards(str(tmp_path / "none/*.tar"))
    with pytest.raises(UsageError, match="no shard matches"):
        expand_shards(str(tmp_path / "absent.tar"))
    with pytest.raises(UsageError, match=r"shard not found: .*00001\.tar"):
        expand_shards(str(tmp_path / "{00000..00001}.tar"))


def test_compressed_tar_refused(tmp_path):
    plain = write_tar(tmp_path / "a.tar", [("a.jpg", b"x")])
    tgz = tmp_path / "a.tar.gz"
    tgz.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(UsageError, match="compressed tar shards are not supported.*plain .tar"):
        expand_shards(str(tgz))
    with pytest.raises(UsageError, match="compressed tar shards are not supported"):
        list(read_webdataset([tgz]))
    disguised = tmp_path / "b.tar"
    disguised.write_bytes(tgz.read_bytes())
    (bad,) = read_webdataset([disguised])
    assert isinstance(bad, BadRow) and "compressed" in bad.reason and "gzip" in bad.reason


def test_tar_sample_contents(tmp_path):
    shard = write_tar(
        tmp_path / "s.tar",
        [
            ("a.txt", b"orphan caption"),  # no image
            ("b.jpg", b"B"),
            ("b.json", json.dumps({"caption": "from json", "w": 1}).encode()),
            ("c.jpg", b"C"),
            ("c.txt", b"from txt"),
            ("c.json", b'{"caption": "ignored"}'),
            ("d.jpg", b"D"),
            ("d.txt", b"caf\xe9"),
            ("d.json", b'{"text": "json fallback"}'),
            ("e.jpg", b"E"),
            ("e.txt", b"\xff\xfe bad"),
            ("f.png", b"F1"),
            ("f.jpg", b"F2"),
            ("f.json", b"[1, 2]"),
            ("g.webp", b"G"),
            ("g.json", b"{not json"),
            ("h.jpg", b"H"),
            ("k.v2.jpg", b"K"),
            ("k.txt", b"first"),
            ("k.txt", b"second"),  # first .txt wins
            ("j.jpg", b"J"),
            ("j.txt", b" \n"),
            ("j.json", b'{"caption": "empty txt: json used"}'),
            ("b.jpg", b"B again"),  # the key comes back: another sample
            ("._i.jpg", b"mac junk"),
            ("i.cls", b"3"),
        ],
    )
    got = list(read_webdataset([shard]))
    by_key = {}
    for item in got:
        if isinstance(item, TarSample):
            by_key.setdefault(item.key, []).append(item)
    bad = bad_of(got)
    assert [b.reason for b in bad] == ["no image in sample a", "no image in sample i"]
    assert all(b.source == str(shard) for b in bad)
    (b, b2) = by_key["b"]
    assert b.captions == ("from json",) and b.extra == {"caption": "from json", "w": 1}
    assert b2.captions == () and read_member(shard, b2.offset, b2.size) == b"B again"
    assert by_key["c"][0].captions == ("from txt",)
    (d,) = by_key["d"]
    assert d.captions == ("json fallback",) and "d.txt is not valid UTF-8" in d.problems[0]
    assert read_member(shard, d.offset, d.size) == b"D"
    (e,) = by_key["e"]
    assert e.captions == () and len(e.problems) == 1 and "not valid UTF-8" in e.problems[0]
    (f,) = by_key["f"]
    assert f.member == "f.jpg" and f.extra == {"json": [1, 2]}
    assert f.problems == ("2 images in sample f; using f.jpg",)
    (g,) = by_key["g"]
    assert g.member == "g.webp" and g.extra == {} and "not valid JSON" in g.problems[0]
    assert by_key["h"][0].captions == () and by_key["h"][0].problems == ()
    assert by_key["j"][0].captions == ("empty txt: json used",)
    assert by_key["k"][0].member == "k.v2.jpg" and by_key["k"][0].captions == ("first",)
    assert sorted(by_key) == ["b", "c", "d", "e", "f", "g", "h", "j", "k"]  # ._i.jpg skipped


def test_tar_member_name_not_utf8(tmp_path):
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in [("caf\udce9.jpg", b"X"), ("café.jpg", b"Y")]:
            info = tarfile.TarInfo(name)  # written as the raw byte 0xE9, then as UTF-8
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    bad, good = read_webdataset([shard])
    assert isinstance(bad, BadRow) and "caf\\udce9.jpg is not valid UTF-8" in bad.reason
    assert good.member == "café.jpg" and good.key == "café"


def test_truncated_tar(tmp_path):
    shard = write_tar(tmp_path / "s.tar", sample_members("s", 5))
    with tarfile.open(shard) as tar:
        cut_in_data = tar.getmember("s00003.jpg").offset_data + 100
        cut_at_header = tar.getmember("s00003.jpg").offset  # cut between two members
    data = shard.read_bytes()

    shard.write_bytes(data[:cut_in_data])
    got = list(read_webdataset([shard]))
    assert [s.key for s in got[:-1]] == ["s00000", "s00001", "s00002"]
    assert isinstance(got[-1], BadRow) and got[-1].source == str(shard)
    assert got[-1].reason.startswith("truncated or corrupt tar after 3 samples")
    for sample in got[:-1]:
        expected = dict(sample_members("s", 5))[sample.member]
        assert read_member(shard, sample.offset, sample.size) == expected

    shard.write_bytes(data[: cut_at_header + 300])  # cut inside a header: tarfile stops quietly
    got = list(read_webdataset([shard]))
    assert [type(g) for g in got] == [TarSample] * 3 + [BadRow]
    assert "after 3 samples" in got[-1].reason


def test_truncated_tar_pending_sample(tmp_path):
    members = [
        ("a.jpg", b"A" * 600),
        ("a.txt", b"caption a" * 100),
        ("b.txt", b"cap b"),
        ("b.jpg", b"B" * 600),
    ]
    shard = write_tar(tmp_path / "s.tar", members)
    with tarfile.open(shard) as tar:
        in_a_txt = tar.getmember("a.txt").offset_data + 10
        in_b_jpg_header = tar.getmember("b.jpg").offset + 100
    data = shard.read_bytes()
    # cut in a caption: the sample's image is all there, so it is yielded (without the caption)
    shard.write_bytes(data[:in_a_txt])
    a, bad = read_webdataset([shard])
    assert a.key == "a" and a.captions == () and read_member(shard, a.offset, a.size) == b"A" * 600
    assert "truncated or corrupt tar after 1 samples" in bad.reason
    # cut before b's image: b is not reported as a sample without image, only the tar is
    shard.write_bytes(data[:in_b_jpg_header])
    got = list(read_webdataset([shard]))
    assert [type(g) for g in got] == [TarSample, BadRow]
    assert got[1].reason.startswith("truncated or corrupt tar after 1 samples")


def test_tar_members_are_not_accumulated(tmp_path, monkeypatch):
    shard = write_tar(tmp_path / "s.tar", sample_members("s", 200))
    seen = []
    original = tarfile.TarFile.next

    def next_member(self):
        seen.append(len(self.members))
        return original(self)

    monkeypatch.setattr(tarfile.TarFile, "next", next_member)
    assert len(list(read_webdataset([shard]))) == 200
    assert len(seen) > 600 and max(seen) <= 2


def test_not_a_tar_and_empty_tar(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"hello" * 300)
    empty = write_tar(tmp_path / "empty.tar", [])
    good = write_tar(tmp_path / "good.tar", [("a.jpg", b"A")])
    got = list(read_webdataset([junk, empty, tmp_path / "gone.tar", good]))
    assert [type(g) for g in got] == [BadRow, BadRow, TarSample]
    assert got[0].source == str(junk) and "not a tar file" in got[0].reason
    assert "cannot read shard" in got[1].reason
    assert got[2].key == "a"


# -- format detection -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("list.csv", "csv"),
        ("LIST.CSV", "csv"),
        ("a.tsv", "tsv"),
        ("a.tab", "tsv"),
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.parquet", "parquet"),
        ("a.tar", "webdataset"),
        ("a.tgz", "webdataset"),
        ("shards/{00000..00009}.tar", "webdataset"),
        ("shards/*.tar", "webdataset"),
        ("shards/{a.tar,b.tar}", "webdataset"),
        ("shards/0000?.tar", "webdataset"),
    ],
)
def test_detect_format(target, expected):
    assert detect_format(target) == expected


def test_detect_format_folder_forced_and_errors(tmp_path):
    (tmp_path / "photos.csv").mkdir()  # a folder, whatever its name
    assert detect_format(str(tmp_path / "photos.csv")) == "folder"
    assert detect_format("anything", format="jsonl") == "jsonl"
    assert set(FORMATS) == {"folder", "csv", "tsv", "jsonl", "parquet", "webdataset"}
    with pytest.raises(UsageError, match="unknown dataset format 'xls'.*folder, csv"):
        detect_format("a.csv", format="xls")
    with pytest.raises(UsageError, match="only for WebDataset"):
        detect_format("manifests/*.csv")
    with pytest.raises(UsageError, match="no such file"):
        detect_format(str(tmp_path / "absent"))
    (tmp_path / "notes.xml").write_text("<x/>")
    with pytest.raises(UsageError, match="cannot tell the dataset format"):
        detect_format(str(tmp_path / "notes.xml"))

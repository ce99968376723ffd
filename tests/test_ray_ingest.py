"""cbir ingest --engine ray: decode tasks and encode actors on a local cluster give the library the local
engine gives, moves and deletes included, and survives a worker killed mid-run."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.config import resolve_settings
from cbir.encode.fake import FakeEncoder
from cbir.errors import ModelMismatch
from cbir.library import Library
from tests.conftest import media_module, run_cbir, write_image
from tests.test_pdf import text_pdf
from tests.test_video import scene_frames, write_video

# Ray clusters: the long suite (.ci/run), not the README's fast tier
pytestmark = pytest.mark.slow


def make_folder(root: Path, n: int = 24) -> Path:
    """Photos with EXIF dates, cameras and descriptions, PNGs, caption files, a copy of one
    photo and a file that is not an image."""
    for i in range(n):
        folder = root / ("2020" if i % 2 else "2021/trip")
        if i % 3 == 0:
            write_image(folder / f"p{i:02d}.png", seed=i, size=(40 + i, 30))
            continue
        exif = Image.Exif()
        exif[306] = f"2021:05:{i + 1:02d} 10:00:00"
        exif[271], exif[272] = "Canon", f"Canon EOS {i}D"
        if i % 4 == 1:
            exif[270] = f"a description of photo {i}"
        write_image(folder / f"p{i:02d}.jpg", seed=i, size=(64, 48 + i), exif=exif.tobytes())
        if i % 5 == 2:
            (folder / f"p{i:02d}.txt").write_text(f"caption {i}")
    shutil.copy(root / "2020/p01.jpg", root / "copy.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def snapshot(library: Path) -> tuple[dict, dict, dict]:
    """(metadata and texts, vectors, skip reasons), each by path."""
    with sqlite3.connect(library / "library.db") as c:
        rows = c.execute(
            "select i.id, i.path, size, mtime_ns, content_hash, width, height, format, taken_at, camera, "
            "dataset, extra, v.vector from images i join vectors v on v.image_id = i.id"
        ).fetchall()
        texts: dict[int, list] = {}
        for image_id, source, content in c.execute("select image_id, source, content from texts"):
            texts.setdefault(image_id, []).append((source, content))
        skipped = dict(c.execute("select path, reason from skipped"))
    meta = {r[1]: (*r[2:12], sorted(texts.get(r[0], []))) for r in rows}
    vectors = {r[1]: np.frombuffer(r[12], np.float32) for r in rows}
    assert len(meta) == len(rows)  # every path once
    return meta, vectors, skipped


def assert_same(a: Path, b: Path) -> None:
    meta_a, vectors_a, skipped_a = snapshot(a)
    meta_b, vectors_b, skipped_b = snapshot(b)
    assert meta_a == meta_b
    assert skipped_a == skipped_b
    for path, vector in vectors_a.items():
        np.testing.assert_allclose(vectors_b[path], vector, atol=1e-5, err_msg=path)


def open_lib(path: Path, **options) -> Library:
    options.setdefault("workers", 1)
    encoder = options.pop("encoder", None)
    return Library.open(resolve_settings(library=path, env={}, **options), create=True, encoder=encoder)


def ingest(path: Path, source, engine: str = "local", **options):
    with open_lib(path, **options) as lib:
        return lib.ingest(source, engine=engine)


def test_private_cluster_listens_on_loopback_only(ray_local):
    from cbir.distributed.cluster import loopback_only

    assert ray_local.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert loopback_only(ray_local)


def test_ray_equals_local_with_the_real_model(ray_local, tmp_path):
    photos = make_folder(tmp_path / "photos")
    local = ingest(tmp_path / "local", photos, model="cbir-tiny")
    ray = ingest(tmp_path / "ray", photos, "ray", model="cbir-tiny", batch_size=8)
    assert (ray.added, ray.copied, ray.skipped, ray.texts) == (local.added, local.copied, local.skipped, local.texts)
    assert (ray.added, ray.skipped) == (25, 1) and ray.texts > 0  # copy.jpg is new too: encoded
    assert_same(tmp_path / "local", tmp_path / "ray")


def test_rerun_moves_and_deletes_under_ray(ray_local, tmp_path):
    photos = make_folder(tmp_path / "photos")
    fake = {"encoder": FakeEncoder(), "batch_size": 4}
    ingest(tmp_path / "local", photos, **fake)
    ingest(tmp_path / "ray", photos, "ray", **fake)
    again = ingest(tmp_path / "ray", photos, "ray", **fake)
    assert (again.added, again.updated, again.removed, again.encoded) == (0, 0, 0, 0)
    assert_same(tmp_path / "local", tmp_path / "ray")
    (photos / "2020/p01.jpg").rename(photos / "moved.jpg")
    (photos / "2021/trip/p02.jpg").unlink()
    write_image(photos / "2020/p05.jpg", seed=99)  # changed content
    for engine, lib in (("local", "local"), ("ray", "ray")):
        report = ingest(tmp_path / lib, photos, engine, **fake)
        assert (report.moved, report.removed, report.updated, report.encoded) == (1, 1, 1, 1)
    assert_same(tmp_path / "local", tmp_path / "ray")


def test_pdfs_and_videos_under_ray_equal_local(ray_local, tmp_path):
    """A PDF's pages and a video's frames come back from Ray's tasks in any order and batch: they
    are committed as the local engine commits them."""
    av = media_module("av")
    media_module("pypdfium2")
    photos = make_folder(tmp_path / "photos", n=6)
    (photos / "report.pdf").write_bytes(text_pdf(["first page", "second page", "third page"]))
    write_video(av, photos / "clip.mp4", scene_frames([2, 2]))
    fake = {"encoder": FakeEncoder(), "batch_size": 2}
    local = ingest(tmp_path / "local", photos, **fake)
    ray = ingest(tmp_path / "ray", photos, "ray", **fake)
    assert (ray.added, ray.skipped, ray.texts) == (local.added, local.skipped, local.texts)
    assert_same(tmp_path / "local", tmp_path / "ray")
    assert sum("report.pdf#page=" in p for p in snapshot(tmp_path / "ray")[0]) == 3


def test_a_killed_encode_worker_is_replaced_and_every_image_lands_once(ray_local, tmp_path):
    photos = make_folder(tmp_path / "photos")
    marker = tmp_path / "crash-once"
    marker.touch()
    crashing = FakeEncoder(crash_marker=str(marker), crash_after=8)  # dies on its third batch
    report = ingest(tmp_path / "ray", photos, "ray", encoder=crashing, batch_size=4)
    assert not marker.exists()  # the worker did die (os._exit) mid-run
    assert report.added == 25
    ingest(tmp_path / "clean", photos, encoder=FakeEncoder(), batch_size=4)
    assert_same(tmp_path / "clean", tmp_path / "ray")


def test_a_worker_with_another_model_is_refused(ray_local, tmp_path):
    photos = make_folder(tmp_path / "photos", n=4)
    with open_lib(tmp_path / "lib", encoder=_Disguised(FakeEncoder(seed=2))) as lib:
        with pytest.raises(ModelMismatch, match="Ray worker loaded fake:seed0"):
            lib.ingest(photos, engine="ray")
        assert lib.catalog.count_images() == 0


class _Disguised:
    """seed 2's fingerprint, but Ray workers would load seed 0 (a node with other weights)."""

    def __init__(self, inner):
        self._inner = inner
        self.recipe = FakeEncoder().recipe

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_webdataset_and_manifest_through_ray(ray_local, tmp_path):
    src = tmp_path / "src"
    images = [write_image(src / f"{i:02d}.jpg", seed=i) for i in range(6)]
    (src / "00.jpg").write_bytes(b"not an image either")
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for i, image in enumerate(images):
            for name, data in ((f"{i:05d}.jpg", image.read_bytes()), (f"{i:05d}.txt", f"sample {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "set.csv").write_text(
        "path,caption,split\n" + "".join(f"src/{i:02d}.jpg,cap {i},train\n" for i in range(6))
    )
    fake = {"encoder": FakeEncoder(), "batch_size": 4}
    for source in (tmp_path / "shard.tar", tmp_path / "set.csv"):
        ingest(tmp_path / f"local-{source.suffix}", source, **fake)
        report = ingest(tmp_path / f"ray-{source.suffix}", source, "ray", **fake)
        assert (report.added, report.skipped) == (5, 1)
        assert_same(tmp_path / f"local-{source.suffix}", tmp_path / f"ray-{source.suffix}")


def test_cli_engine_ray_joins_a_running_cluster(ray_local, tmp_path):
    photos = make_folder(tmp_path / "photos", n=6)
    address = ray_local.get_runtime_context().gcs_address
    result = run_cbir(
        "ingest",
        str(photos),
        "--library",
        str(tmp_path / "lib"),
        "--model",
        "cbir-tiny",
        "--engine",
        "ray",
        "--address",
        address,
        "--json",
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["added"], report["skipped"]) == (7, 1)  # 6 photos and a copy
    local = run_cbir("ingest", str(photos), "--library", str(tmp_path / "local"), "--model", "cbir-tiny", "-q")
    assert local.returncode == 0, local.stderr
    assert_same(tmp_path / "local", tmp_path / "lib")


def test_cli_without_ray_is_one_line(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "ray.py").write_text("raise ImportError('no ray here')\n")
    result = run_cbir(
        "ingest", str(tmp_path), "--library", str(tmp_path / "lib"), "--engine", "ray", env={"PYTHONPATH": str(blocker)}
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: the Ray engine needs Ray, which is not installed: pip install 'cbir[ray]'"
    ]


def test_ray_options_need_the_ray_engine(tmp_path):
    result = run_cbir("ingest", str(tmp_path), "--library", str(tmp_path / "lib"), "--address", "auto")
    assert result.returncode == 2 and "--engine ray" in result.stderr

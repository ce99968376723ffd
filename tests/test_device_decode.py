"""JPEG decoding on the model's device (nvJPEG on CUDA), run here on the CPU through the same
torchvision code: the same library as decoding in the CPU workers, EXIF orientation included,
and a file the device decoder refuses still decoded or skipped as before."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cbir.encode.spec import Preprocess
from cbir.ingest import device_decode
from cbir.ingest.decode import open_image
from tests.conftest import write_image


def _photo(path, seed, orientation=None, size=(320, 200)):
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)).resize(
        size, Image.BICUBIC
    )
    exif = Image.Exif()
    if orientation:
        exif[274] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    base.save(path, quality=92, exif=exif)
    return path


def test_device_pixels_match_pillow_for_every_orientation_and_resize_mode(tmp_path):
    files = [_photo(tmp_path / f"o{o}.jpg", o, orientation=o) for o in range(1, 9)]
    datas = [f.read_bytes() for f in files]
    for mode in ("shortest", "longest", "squash"):
        pp = Preprocess(size=64, resize_mode=mode)
        for data, pixels in zip(datas, device_decode.decode(datas, pp, "cpu")):
            reference = open_image(data, pp, draft=False)[0]
            assert pixels.shape == reference.shape == (64, 64, 3)
            assert np.abs(pixels.numpy().astype(int) - reference.astype(int)).mean() < 2.0, mode
    assert device_decode.decode([b"\xff\xd8\xff not really"], Preprocess(size=64), "cpu") == [None]


def test_an_ingest_decoding_jpegs_on_the_device_stores_what_the_workers_would(fake_library, tmp_path):
    for i in range(6):
        _photo(tmp_path / "photos" / f"p{i}.jpg", i, orientation=(i % 8) + 1)
    write_image(tmp_path / "photos" / "plain.png", seed=9)  # not a JPEG: decoded by Pillow as ever
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    workers = fake_library("workers")
    device = fake_library("device")
    a = workers.ingest(tmp_path / "photos", decode_device=None)
    b = device.ingest(tmp_path / "photos", decode_device="cpu")
    assert (a.added, a.skipped) == (b.added, b.skipped) == (7, 1)
    va = dict(zip(*map(np.concatenate, zip(*workers.catalog.iter_vectors()))))
    vb = dict(zip(*map(np.concatenate, zip(*device.catalog.iter_vectors()))))
    assert va.keys() == vb.keys()
    for i in va:
        assert float(va[i] @ vb[i]) > 0.99
    ia, ib = workers.catalog.images(va), device.catalog.images(vb)
    assert sorted((x.path.name, x.width, x.height) for x in ia.values()) == sorted(
        (x.path.name, x.width, x.height) for x in ib.values()
    )
    reasons = [[why for _, why in lib.status(with_skipped=True).skipped_files] for lib in (workers, device)]
    assert reasons[0] == reasons[1] and "broken.jpg" not in reasons[0][0]

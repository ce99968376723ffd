"""Masks (cbir ingest --mask x,y,w,h): a part of every image the model does not see, at ingest and
in query images, recorded in the library. The fake encoder sees a 4x4 thumbnail of its input, so
images that differ only under the mask get the same vector when it is covered."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cbir.encode.fake import FakeEncoder
from cbir.encode.spec import Preprocess
from cbir.errors import UsageError
from cbir.ingest.mask_setting import parse_mask
from cbir.ingest.pixels import cover, to_model_pixels
from tests.conftest import run_cbir

CORNER = (0.5, 0.5, 0.5, 0.5)  # the bottom-right quarter


def drawing(path, body: str, block: str) -> None:
    """A white page whose top-left quarter is ``body`` and bottom-right quarter ``block``."""
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((4, 4, 28, 28), fill=body)
    draw.rectangle((32, 32, 63, 63), fill=block)
    image.save(path)


def test_cover_paints_the_boxes_in_the_images_median_colour():
    image = Image.new("RGB", (100, 50), (250, 250, 250))
    ImageDraw.Draw(image).rectangle((60, 30, 99, 49), fill=(0, 0, 0))
    covered = np.asarray(cover(image, [(0.6, 0.6, 0.4, 0.4)]))
    assert (covered[30:, 60:] == 250).all() and (covered[:30] == 250).all()
    assert np.asarray(image)[40, 80].tolist() == [0, 0, 0]  # the original is untouched
    pp = Preprocess(size=32, masks=((0.6, 0.6, 0.4, 0.4),))
    assert (to_model_pixels(image, pp) == 250).all()
    assert not (to_model_pixels(image, Preprocess(size=32)) == 250).all()


@pytest.mark.parametrize(
    "text, message",
    [
        ("0.5,0.5,0.5", "give x,y,w,h"),
        ("a,b,c,d", "give x,y,w,h"),
        ("0.5,0.5,0.6,0.2", "leaves the image"),
        ("-0.1,0,0.2,0.2", "x and y in [0, 1)"),
        ("0,0,0,0.5", "w and h above 0"),
        ("0,0,1,1", "too little to compare"),
        ("nan,0,0.1,0.1", "x and y in [0, 1)"),
    ],
)
def test_a_bad_mask_is_a_one_line_error(text, message):
    with pytest.raises(UsageError, match=re.escape(message)) as error:
        parse_mask(text)
    assert "\n" not in str(error.value)


def test_parse_mask_reads_fractions():
    assert parse_mask("0.7, 0.8, 0.3, 0.2") == (0.7, 0.8, 0.3, 0.2)


def test_ingest_and_queries_ignore_the_masked_part(fake_library, tmp_path):
    folder = tmp_path / "drawings"
    folder.mkdir()
    drawing(folder / "a1.png", "red", "black")
    drawing(folder / "a2.png", "red", "blue")  # the same part, another title block
    drawing(folder / "b.png", "green", "black")  # another part, the same title block as a1
    plain, masked = fake_library("plain"), fake_library("masked")
    plain.ingest(folder)
    masked.ingest(folder, masks=["0.5,0.5,0.5,0.5"])

    # without the mask the title block counts: a1 is nearer b (same block) than a2 (same part)
    near_plain = [h.path.name for h in plain.search(like=folder / "a1.png", k=3)]
    near_masked = [h.path.name for h in masked.search(like=folder / "a1.png", k=3)]
    assert near_masked[:2] == ["a1.png", "a2.png"]
    assert near_plain != near_masked
    # a query image has the library's masks covered too: a1 with a third block finds a1 and a2 alike
    drawing(tmp_path / "query.png", "red", "yellow")
    top = masked.search(image=tmp_path / "query.png", k=2)
    assert {h.path.name for h in top} == {"a1.png", "a2.png"}
    assert top[0].score == pytest.approx(top[1].score, abs=1e-5)


def test_masks_are_a_setting_of_the_library(fake_library, tmp_path):
    folder = tmp_path / "drawings"
    folder.mkdir()
    drawing(folder / "a.png", "red", "black")
    lib = fake_library()
    lib.ingest(folder, masks=[CORNER])
    assert lib.status().masks == "0.5,0.5,0.5,0.5"
    assert lib.ingest(folder, masks=[CORNER]).unchanged == 1  # the same again: fine
    assert lib.ingest(folder).unchanged == 1  # none given: the library's
    with pytest.raises(UsageError, match="1 images were encoded with 0.5,0.5,0.5,0.5; .* needs a new library"):
        lib.ingest(folder, masks=["0.6,0.6,0.4,0.4"])
    with pytest.raises(UsageError, match="needs a new library"):
        lib.ingest(folder, masks=[])
    assert lib.status().masks == "0.5,0.5,0.5,0.5"


def test_masks_leave_the_models_fingerprint_alone():
    encoder = FakeEncoder()
    before = encoder.fingerprint()
    from cbir.ingest.mask_setting import apply

    apply(encoder, (CORNER,))
    assert encoder.fingerprint() == before and encoder.preprocess.masks == (CORNER,)


def test_cli_mask(tmp_path):
    folder = tmp_path / "drawings"
    folder.mkdir()
    drawing(folder / "a.png", "red", "black")
    bad = run_cbir("ingest", str(folder), "--library", str(tmp_path / "lib"), "--mask", "1,1,1,1")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--mask" in bad.stderr
    good = run_cbir(
        "ingest", str(folder), "--library", str(tmp_path / "lib"), "--model", "cbir-tiny", "--mask", "0.7,0.8,0.3,0.2"
    )
    assert good.returncode == 0, good.stderr
    status = run_cbir("status", "--library", str(tmp_path / "lib"))
    assert "masks     0.7,0.8,0.3,0.2" in status.stdout

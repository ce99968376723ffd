"""The demo: a small synthetic photo library that the bundled cbir-tiny model understands."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from cbir.synthetic import Scene, random_scene, render

DEMO_MODEL = "cbir-tiny"
DEMO_SEED = 7  # the training and evaluation galleries use other seeds
# (folder, first date taken, camera make, camera model); "scans" have no EXIF.
EVENTS = [
    ("2019/beach", datetime(2019, 7, 14, 10, 0), "Google", "Pixel 3"),
    ("2019/winter", datetime(2019, 12, 28, 14, 30), "Google", "Pixel 3"),
    ("2021/birthday", datetime(2021, 5, 2, 18, 0), "Canon", "Canon EOS R6"),
    ("2023/garden", datetime(2023, 8, 19, 9, 15), "Apple", "iPhone 14"),
    ("scans", None, None, None),
]
SIZES = [(640, 480), (480, 640), (800, 600), (512, 512)]
FORMATS = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]
# Example searches; the first photos show these scenes three times each, so each has answers.
QUERY_SCENES = [
    Scene("red", "circle", "gray"),
    Scene("yellow", "star", "cyan"),
    Scene("blue", "triangle", "pink"),
    Scene("white", "square", "brown"),
]


@dataclass(frozen=True)
class DemoPhoto:
    path: Path
    scene: Scene


def scene_of(path: Path) -> str:
    """The scene a demo photo shows, from its name: ``red-circle-on-gray``."""
    return path.stem.rsplit("-", 1)[0]


def slug(scene: Scene) -> str:
    return f"{scene.colour}-{scene.shape}-on-{scene.background}"


def make_demo_photos(folder: Path, n: int = 160, seed: int = DEMO_SEED) -> list[DemoPhoto]:
    """Write ``n`` photos in dated folders as JPEG, PNG and WebP with EXIF date and camera, a
    caption file (``NAME.txt``) beside every fourth one, plus one broken file, which ingest
    records as skipped. Existing files are left as they are."""
    rng = np.random.default_rng(seed)
    photos = []
    for i in range(n):
        scene = random_scene(rng)
        if i < 3 * len(QUERY_SCENES):
            scene = QUERY_SCENES[i % len(QUERY_SCENES)]
        width, height = SIZES[int(rng.integers(len(SIZES)))]
        image = render(scene, rng, (width, height))
        sub, start, make, model = EVENTS[i % len(EVENTS)]
        ext, fmt = FORMATS[i % len(FORMATS)]
        path = folder / sub / f"{slug(scene)}-{i:03d}.{ext}"
        photos.append(DemoPhoto(path, scene))
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % 4 == 0:
            path.with_suffix(".txt").write_text(scene.caption + "\n", encoding="utf-8")
        exif = Image.Exif()
        if start is not None:
            taken = (start + timedelta(minutes=7 * i)).strftime("%Y:%m:%d %H:%M:%S")
            exif[271], exif[272], exif[306] = make, model, taken
            exif.get_ifd(0x8769)[36867] = taken
        image.save(path, fmt, exif=exif.tobytes(), **({"quality": 90} if fmt != "PNG" else {}))
    broken = folder / "scans" / "broken-scan.jpg"
    if not broken.exists():
        broken.parent.mkdir(parents=True, exist_ok=True)
        broken.write_bytes(b"\xff\xd8\xff\xe0 this scan was cut off")
    return photos


def built_with_older_weights(library: Path, photos: Path) -> bool:
    """Whether ``library`` is a demo library (its one folder of photos: ``photos``) built with
    other weights of the demo model than the installed ones, as after a cbir release that
    retrained the bundled cbir-tiny. Read-only; False for anything else."""
    from cbir.encode.spec import parse_model_spec
    from cbir.store.hint import model_fingerprint_hint, root_folders_hint

    stored = model_fingerprint_hint(library)
    if not stored or stored.get("spec") != DEMO_MODEL:
        return False
    if stored.get("weights") == parse_model_spec(DEMO_MODEL).weights_id():
        return False
    return root_folders_hint(library) == [str(photos.resolve())]


def clear_library(library: Path, keep: Path) -> None:
    """Remove ``library``'s catalogue and indexes, keeping ``keep`` (its photos), under its write
    lock: no other cbir process is writing to it meanwhile."""
    import shutil

    from cbir.fsutil import LOCK_FILENAME, writer_lock

    with writer_lock(library):
        for entry in library.iterdir():
            if entry == keep or entry.name == LOCK_FILENAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

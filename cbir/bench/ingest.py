"""Ingest speed measured against its ceiling and a naive baseline, in one run on one machine.

- end to end: images/s of a real ``Library.ingest`` (scan, read, decode in worker processes,
  encode in batches, persist to SQLite, index) of a generated folder of JPEG photos;
- ceiling: images/s of the model's forward pass alone on already-preprocessed pixels, same
  model, batch size, dtype and device (measured just before and just after the ingest);
- naive: images/s of what a notebook does: open, preprocess with open_clip's own transform and
  encode one image at a time.

Decode: images/s per process of full JPEG decoding vs reduced (draft) decoding of camera-size
files, and the cosine between their embeddings (draft counts only where it keeps >= 0.99).

Throughput does not depend on the weights, so ``ViT-B-32:none`` (random weights, nothing to
download) stands in for real ViT-B-32 weights.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cbir.synthetic import random_scene, render

SETS = {"web": (0.3, 0.5), "camera": (8.0, 12.0)}  # megapixels
COSINE_FLOOR = 0.99


def make_photos(folder: Path, count: int, megapixels: tuple[float, float], seed: int = 0) -> list[Path]:
    """``count`` JPEG photos of ``megapixels`` (4:3, quality 90) with sensor-like grain, so they
    compress (and decode) like camera files rather than flat synthetic drawings."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        pixels = rng.uniform(*megapixels) * 1e6
        width = int(math.sqrt(pixels * 4 / 3))
        height = int(width * 3 / 4)
        base = np.asarray(
            render(random_scene(rng), rng, size=(width // 4, height // 4)).resize((width, height), Image.BICUBIC)
        )
        grain = rng.integers(-12, 13, size=base.shape, dtype=np.int16)
        image = Image.fromarray(np.clip(base.astype(np.int16) + grain, 0, 255).astype(np.uint8))
        path = folder / f"photo-{i:04d}.jpg"
        image.save(path, quality=90)
        files.append(path)
    return files


def forward_rate(encoder, pixels: np.ndarray, batch: int, seconds: float = 5.0) -> float:
    """Images/s of ``encoder.encode_images`` on preprocessed uint8 pixels (after one warm-up
    batch), over at least ``seconds`` or one pass over ``pixels``."""
    batches = [pixels[i : i + batch] for i in range(0, len(pixels), batch)]
    encoder.encode_images(batches[0])
    done, start = 0, time.perf_counter()
    while True:
        for chunk in batches:
            encoder.encode_images(chunk)
            done += len(chunk)
        if time.perf_counter() - start >= seconds:
            return done / (time.perf_counter() - start)


def naive_rate(encoder, files: list[Path]) -> float:
    """Images/s of open -> open_clip's preprocessing transform -> encode, one image at a time."""
    import open_clip
    import torch

    pp = encoder.preprocess
    transform = open_clip.image_transform(
        pp.size, is_train=False, mean=pp.mean, std=pp.std, resize_mode=pp.resize_mode, interpolation=pp.interpolation
    )
    model = encoder.model

    def one(path: Path) -> None:
        with torch.inference_mode(), encoder.autocast():
            tensor = transform(Image.open(path).convert("RGB")).unsqueeze(0).to(encoder.device)
            torch.nn.functional.normalize(model.encode_image(tensor).float(), dim=-1).cpu()

    one(files[0])  # warm-up
    start = time.perf_counter()
    for path in files:
        one(path)
    return len(files) / (time.perf_counter() - start)


def decoded_pixels(files: list[Path], preprocess, draft: bool = True) -> tuple[np.ndarray, float]:
    """(model pixels of every file, seconds spent decoding them in this process)."""
    from cbir.ingest.decode import open_image

    out, start = [], time.perf_counter()
    for path in files:
        out.append(open_image(path.read_bytes(), preprocess, draft=draft)[0])
    return np.stack(out), time.perf_counter() - start


def ingest_once(folder: Path, encoder, batch: int, workers: int | None, library: Path | None = None):
    """A real ingest of ``folder`` into a new library at ``library`` (kept), else in a temporary
    folder (removed): its report."""
    import tempfile

    from cbir.config import resolve_settings
    from cbir.library import Library

    with tempfile.TemporaryDirectory() as tmp:
        settings = resolve_settings(library=library or Path(tmp) / "lib", batch_size=batch, workers=workers)
        with Library.open(settings, create=True, encoder=encoder) as lib:
            return lib.ingest(folder)


def ingest_benchmark(
    encoder, workdir: Path, sets: dict[str, int], batch: int, workers: int | None, progress=None
) -> list[dict]:
    """A row per photo set (name -> image count): end-to-end, ceiling and naive images/s, their
    ratios, and the ingest's per-stage seconds."""
    say = progress or (lambda _: None)
    rows = []
    for name, count in sets.items():
        say(f"ingest/{name}: generating {count} photos of {SETS[name][0]}-{SETS[name][1]} MP")
        files = make_photos(workdir / name, count, SETS[name], seed=len(rows))
        pixels, _ = decoded_pixels(files, encoder.preprocess)
        say(f"ingest/{name}: model forward ceiling")
        before = forward_rate(encoder, pixels, batch)
        say(f"ingest/{name}: cbir ingest")
        report = ingest_once(workdir / name, encoder, batch, workers)
        after = forward_rate(encoder, pixels, batch)
        say(f"ingest/{name}: naive one-at-a-time baseline")
        naive = naive_rate(encoder, files[: min(len(files), 32)])
        ceiling = (before + after) / 2
        rows.append(
            {
                "set": name,
                "images": count,
                "megapixels": list(SETS[name]),
                "batch": batch,
                "end_to_end": report.images_per_second,
                "ceiling": ceiling,
                "ceiling_before_after": [before, after],
                "naive": naive,
                "vs_ceiling": report.images_per_second / ceiling,
                "vs_naive": report.images_per_second / naive,
                "seconds": report.seconds,
                "stages": {k: round(v, 3) for k, v in report.timings.items()},
            }
        )
    return rows


def decode_benchmark(encoder, workdir: Path, count: int, progress=None) -> dict:
    """Full vs draft decoding of camera-size JPEGs in this process: images/s each, and the
    cosine between the embeddings of the two (worst and mean)."""
    say = progress or (lambda _: None)
    say(f"decode: generating {count} camera-size photos")
    files = make_photos(workdir / "decode", count, SETS["camera"], seed=99)
    full, full_s = decoded_pixels(files, encoder.preprocess, draft=False)
    draft, draft_s = decoded_pixels(files, encoder.preprocess, draft=True)
    cosines = np.sum(encoder.encode_images(full) * encoder.encode_images(draft), axis=1)
    return {
        "images": count,
        "full_per_s": count / full_s,
        "draft_per_s": count / draft_s,
        "speedup": full_s / draft_s,
        "cosine_min": float(cosines.min()),
        "cosine_mean": float(cosines.mean()),
        "valid": bool(cosines.min() >= COSINE_FLOOR),
    }


def text_latency(encoder, repeats: int = 50) -> dict:
    """Milliseconds to encode one short query text (p50, p99), after a warm-up."""
    encoder.encode_texts(["a photo of a dog"])
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        encoder.encode_texts([f"two dogs in a frosty field {i}"])
        times.append(1000 * (time.perf_counter() - start))
    return {"p50_ms": statistics.median(times), "p99_ms": float(np.percentile(times, 99))}

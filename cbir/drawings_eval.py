"""Measure image-only fine-tuning on generated drawings (the figures of docs/beyond-search.md).

    python -m cbir.drawings_eval --out /tmp/drawings
    python -m cbir.drawings_eval --out /tmp/drawings-masked --mask 0.68,0.78,0.3,0.2

Writes ``--per-family`` pages of each family of cbir.synthetic_drawings into OUT/pages (a folder
per family), ingests them into the library OUT/lib with cbir-tiny (as ``cbir ingest OUT/pages
--library OUT/lib --model cbir-tiny [--mask ...]`` does: ``--mask`` covers the title block for
the model), runs ``cbir finetune --images-only --library OUT/lib --no-flip`` on it, and prints
one JSON object: the held-out metrics before and after (mAP@10 by family, near-duplicate top-1
and mAP), the training time, and text->image precision@1 on cbir-tiny's own held-out scenes
(cbir.training.tiny_eval.evaluate) with the original and the tuned weights, since the image tower
moved under a frozen text tower (cbir-tiny only: those scenes are what it knows).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="a new folder for the pages, the library and the checkpoint")
    p.add_argument("--per-family", type=int, default=40)
    p.add_argument("--size", type=int, default=256, help="page side in pixels")
    p.add_argument("--seed", type=int, default=0, help="of the pages")
    p.add_argument("--mask", action="append", metavar="X,Y,W,H", help="cbir ingest --mask for the library")
    p.add_argument("--model", default="cbir-tiny", help="the library's model, where fine-tuning starts")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--holdout", type=float, default=0.25)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from cbir.finetune_images import finetune_images
    from cbir.library import open_library
    from cbir.synthetic_drawings import make_drawing_gallery
    from cbir.training.tiny import load
    from cbir.training.tiny_eval import evaluate

    out = Path(args.out)
    pages = out / "pages"
    if not pages.exists():
        make_drawing_gallery(pages, args.per_family, args.seed, (args.size, args.size))
    started = time.perf_counter()
    with open_library(library=out / "lib", model=args.model, create=True, device=args.device) as lib:
        lib.ingest(pages, masks=args.mask)
    ingest_s = time.perf_counter() - started
    options = dict(
        library=str(out / "lib"),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        holdout=args.holdout,
        flip=False,
    )
    report = finetune_images(
        options, out / "tuned.pt", device=args.device, workers=args.workers, progress=False, log=_stderr
    )
    report.pop("encoder")
    scenes = None
    if args.model == "cbir-tiny":  # its own scenes: what the text side lost
        scenes = {"before": evaluate(*load())["t2i_p1"], "after": evaluate(*load(out / "tuned.pt"))["t2i_p1"]}
    print(
        json.dumps(
            {
                "pages": report["images"],
                "size": args.size,
                "mask": args.mask or [],
                "ingest_seconds": round(ingest_s, 1),
                "settings": options,
                "before": report["before"],
                "after": report["after"],
                "steps": report["steps"],
                "train_seconds": report["train_seconds"],
                "model": args.model,
                "scenes_text_to_image_p1": scenes,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

"""`cbir locate`, `cbir finetune` and `cbir models check`: where a text is inside an image,
training a model on your own image-caption pairs, and int8 measured on a library's own images."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from cbir.cli import cli, context_settings, debug_option, library_options
from cbir.cli.common import group_values, option_group
from cbir.cli.tools import models
from cbir.config import resolve_settings
from cbir.errors import UsageError

# The training run's settings (cbir.finetune.FinetuneSettings, saved with it for --resume),
# handed to cbir.finetune as they are named there.
RUN = "cbir.finetune_run"
run_option = option_group(RUN)
# The options of --images-only runs alone (cbir.finetune_images.ImageFinetuneSettings).
IMAGES = "cbir.finetune_images_run"
images_option = option_group(IMAGES)


def _encoder_for(library, model, device):
    """The model to use (cbir.library.open_encoder): the library's when ``--library`` (or
    CBIR_LIBRARY) names one; else ``--model`` (or CBIR_MODEL); else the default library's model
    when it exists; else cbir's default model. Loaded on ``--device``."""
    from cbir.library import open_encoder

    return open_encoder(library=library, model=model, device=device, **context_settings())


@cli.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.argument("text")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Where to write the PNG (heat map and box over the image); default: IMAGE_STEM.locate.png in the current folder.",
)
@click.option(
    "--windows",
    metavar="D,D,...",
    help="Window sides as divisors of the image's shorter side (default 3,4,6,8: 1/3 .. 1/8 of it); stride a quarter window.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the box and scores as JSON.")
@library_options
def locate(image, text, out, windows, as_json, library, model, device):
    """Where TEXT is in IMAGE: slide windows of several sizes over it, score each crop against
    the text with the model, and draw the relevance map and the best box.

    \b
      cbir locate photo.jpg "a butterfly"
      cbir locate photo.jpg "a red car" --json --out car.png
    """
    from cbir.locate import default_out, overlay, parse_windows, read_picture
    from cbir.locate import locate as run_locate

    divisors = parse_windows(windows)
    picture = read_picture(image)
    out = out if out is not None else default_out(image)
    if out.exists() and out.resolve() == image.resolve():
        raise UsageError(f"--out {out} is the input image; choose another file")
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: the picture is written as PNG; give a .png file name")
    encoder = _encoder_for(library, model, device)
    result = run_locate(encoder, picture, text, divisors)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        overlay(picture, result).save(out, "PNG")
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    if as_json:
        click.echo(json.dumps({**result.as_dict(), "out": str(out)}))
    else:
        x0, y0, x1, y1 = result.box
        click.echo(
            f"box {x0},{y0},{x1},{y1} (x0,y0,x1,y1 of {result.image_size[0]}x{result.image_size[1]}); "
            f"best window score {result.score:.3f}, whole image {result.whole_score:.3f}, "
            f"{result.windows} windows"
        )
        click.echo(f"wrote {out}")


@cli.command()
@click.option(
    "--dataset",
    metavar="MANIFEST",
    help="Image-caption pairs: a .csv, .tsv, .jsonl or .parquet manifest (image paths relative to it).",
)
@click.option(
    "--model",
    metavar="NAME",
    help="Model to start from, e.g. ViT-B-32:laion2b_s34b_b79k, cbir-tiny, or ARCH:path/to/checkpoint.pt. [env: CBIR_MODEL]",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("finetuned.pt"),
    show_default=True,
    help="The fine-tuned checkpoint (load it with --model ARCH:OUT); the training state goes beside it as OUT_STEM.train.pt.",
)
@run_option("--epochs", type=click.IntRange(min=1), help="Passes over the training pairs (default 5).")
@run_option("--batch-size", type=click.IntRange(min=2), help="Pairs per step; the loss contrasts them (default 64).")
@run_option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    help="Peak learning rate (default 1e-5; AdamW, warmup then cosine).",
)
@run_option("--weight-decay", type=click.FloatRange(min=0), help="AdamW weight decay (default 0.1).")
@run_option("--warmup", type=click.IntRange(min=0), help="Warmup steps (default 10% of all steps).")
@run_option(
    "--holdout",
    type=click.FloatRange(0, 1, max_open=True),
    help="Fraction of the images held out for evaluation (default 0.1).",
)
@run_option("--seed", type=int, help="Seed of the held-out split and the batch order (default 0).")
@run_option("--image-column", metavar="NAME", help="The manifest's image column (default: path, image, filepath, ...).")
@run_option("--caption-column", metavar="NAME", help="The manifest's caption column (default: caption, text, ...).")
@click.option(
    "--images-only",
    is_flag=True,
    help="Train the image tower alone on two augmented views of each image (SimCLR), text tower frozen: for images without captions.",
)
@click.option(
    "--library",
    metavar="PATH",
    help="With --images-only: train on this library's images (its model is the default --model). [env: CBIR_LIBRARY]",
)
@images_option(
    "--where",
    metavar="EXPR",
    help="With --images-only --library: only images passing this filter (see cbir search --where).",
)
@images_option(
    "--label-column",
    metavar="NAME",
    help="With --images-only: each image's label for mAP@10 by label: a manifest column; for a library folder (the default) or extra.COLUMN.",
)
@images_option(
    "--clip-weight",
    type=click.FloatRange(min=0),
    help="With --images-only: weight of the CLIP loss on the training images that have captions (default 0.1; 0: off).",
)
@images_option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    help="With --images-only: NT-Xent temperature (default 0.1).",
)
@images_option(
    "--flip/--no-flip",
    default=None,
    help="With --images-only: mirror views at random (default on; --no-flip for drawings, text, anything whose mirror image is another thing).",
)
@click.option(
    "--workers", type=click.IntRange(min=0), help="Image decoding processes (default: up to 4; 0: in this process)."
)
@click.option(
    "--device",
    metavar="auto|cpu|cuda",
    help="Where to train; auto picks CUDA when present (fp16 autocast there). [env: CBIR_DEVICE]",
)
@click.option("--resume", is_flag=True, help="Continue the run that writes --out from its last finished epoch.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@debug_option
def finetune(dataset, model, out, images_only, library, workers, device, resume, as_json, quiet):
    """Fine-tune a CLIP model on your image-caption pairs (contrastive CLIP loss), or with
    --images-only its image tower on your images alone; a held-out evaluation before and after
    and a checkpoint every epoch.

    \b
      cbir finetune --dataset pairs.csv --model ViT-B-32 --epochs 5 --out mine.pt
      cbir finetune --images-only --library drawings --no-flip --out mine.pt
      cbir finetune --out mine.pt --resume          continue a stopped run
      cbir ingest photos --model ViT-B-32:mine.pt   use it
    """
    from cbir.config import resolve_settings

    log = (lambda message: click.echo(message, err=True)) if as_json else click.echo
    image_options = {k: v for k, v in group_values(IMAGES).items() if v is not None}
    if images_only:
        _finetune_images(dataset, model, library, image_options, out, workers, device, resume, as_json, quiet, log)
        return
    if library or image_options:
        given = ["--library"] if library else []
        given += [f"--{k.replace('_', '-')}" for k in image_options]
        raise UsageError(f"{', '.join(given)}: only with --images-only")
    from cbir.finetune import finetune as run_finetune

    settings = resolve_settings(model=model, device=device)
    options = dict(dataset=dataset, model=settings.model, **group_values(RUN))
    if not resume and not dataset:
        raise UsageError("--dataset MANIFEST is required: a .csv, .tsv, .jsonl or .parquet of image-caption pairs")
    if not resume and not settings.model:
        raise UsageError("--model is required: the model to start from, e.g. cbir-tiny or ViT-B-32")
    report = run_finetune(
        options, out, device=settings.device, workers=workers, resume=resume, progress=not quiet, log=log
    )
    report.pop("encoder", None)
    if as_json:
        click.echo(json.dumps(report))
        return
    before, after = report["before"], report["after"]

    def line(name, m):
        r = m["retrieval"]
        return (
            f"{name}: held-out loss {m['loss']:.4f}; text->image R@1 {100 * r['text_to_image']['R@1']:.1f}% "
            f"R@5 {100 * r['text_to_image']['R@5']:.1f}%; image->text R@1 {100 * r['image_to_text']['R@1']:.1f}%"
        )

    click.echo(line("before", before))
    click.echo(line("after ", after))
    skipped = report["skipped"]
    if skipped["undecodable_pairs"]:
        click.echo(f"skipped {skipped['undecodable_pairs']} pairs whose image could not be decoded")
    click.echo(
        f"wrote {report['out']} ({report['steps']} steps in {report['train_seconds']:.0f}s); "
        f"use it with --model {report['load_with']}"
    )


def _finetune_images(dataset, model, library, image_options, out, workers, device, resume, as_json, quiet, log):
    """`cbir finetune --images-only`: cbir.finetune_images, and its report in lines or JSON."""
    from cbir.finetune_images import finetune_images

    settings = resolve_settings(model=model, device=device)
    if library is None and dataset is None and not resume and settings.library_named:
        library = settings.library  # CBIR_LIBRARY
    options = dict(library=library, dataset=dataset, model=settings.model, **group_values(RUN), **image_options)
    report = finetune_images(
        options, out, device=settings.device, workers=workers, resume=resume, progress=not quiet, log=log
    )
    report.pop("encoder", None)
    if as_json:
        click.echo(json.dumps(report))
        return
    for line in image_report_lines(report):
        click.echo(line)


def image_report_lines(report: dict) -> list[str]:
    """An --images-only report in words: each held-out metric before -> after, then the run."""
    before, after = report["before"], report.get("after") or {}

    def pair(get) -> str:
        b, a = get(before), get(after) if after else None
        return f"{100 * b:.1f}%" + (f" -> {100 * a:.1f}%" if a is not None else "")

    lines = [
        f"held-out near-duplicates ({before['images']} images; copies cropped 5%, halved, JPEG 50): "
        f"top-1 {pair(lambda m: m['near_duplicates']['top1'])}, mAP {pair(lambda m: m['near_duplicates']['map'])}"
    ]
    if before.get("by_label"):
        k = before["by_label"]["k"]
        lines.append(
            f"mAP@{k} by label ({before['by_label']['labels']} labels): {pair(lambda m: m['by_label']['map_at_k'])}"
        )
    if before.get("text_to_image"):
        lines.append(f"text->image R@1 of held-out captions: {pair(lambda m: m['text_to_image']['R@1'])}")
    frozen = report["frozen"]
    lines.append(
        f"text tower frozen ({frozen['frozen_parameters']:,} parameters; {frozen['trainable_parameters']:,} trained); "
        f"CLIP loss weight {report['clip_weight']} on {report['captioned_train_images']} captioned training images"
    )
    if report["skipped"]["unreadable_images"]:
        lines.append(f"skipped {report['skipped']['unreadable_images']} images that could not be read")
    if report.get("out"):
        lines.append(
            f"wrote {report['out']} ({report['steps']} steps in {report['train_seconds']:.0f}s); "
            f"use it with --model {report['load_with']}"
        )
    return lines


@models.command("check")
@click.option(
    "--sample",
    type=click.IntRange(2, 10_000),
    default=200,  # cbir.precision_check.DEFAULT_SAMPLE, named here so that `cbir --help` needs no numpy
    show_default=True,
    help="Images of the library to encode both ways (picked at random, the same ones at every run).",
)
@click.option(
    "--switch",
    is_flag=True,
    help="Then switch the library to --precision if it passed: new images are encoded at it, the "
    "stored vectors are kept. --switch --precision fp32 switches back (no check needed).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the measurement as JSON.")
@click.option("--min-cosine", type=float, hidden=True, help="A stricter min cosine than the documented one.")
@click.option("--min-overlap", type=float, hidden=True, help="A stricter mean overlap than the documented one.")
@library_options
def check(sample, switch, as_json, min_cosine, min_overlap, library, model, device):
    """Measure a reduced precision (--precision, default int8) against fp32 on the library's own
    images; with --switch, switch the library to it when it passes.

    A sample of the library's images is decoded as ingest decodes them and encoded by the fp32
    and the int8 image tower (text stays fp32). Printed: the min and mean cosine between each
    image's two vectors, and the top-10 overlap of searches made against the sample encoded
    each way (each sampled image as a query, and up to 100 of the library's texts). It passes
    with min cosine >= 0.995 and mean top-10 overlap >= 0.9 (image and text queries each);
    below, it exits 1 and --switch changes nothing.

    \b
      cbir models check                              int8 on 200 of the library's images
      cbir models check --switch                     and switch the library to int8 if it passes
      cbir models check --switch --precision fp32    back to fp32
    """
    from cbir.library import Library
    from cbir.precision_check import REFERENCE, THRESHOLDS, Thresholds, check_precision, refusal, switch_precision

    options = context_settings()
    precision = options.pop("precision", None) or "int8"  # the precision to check, not the library's
    if precision == REFERENCE and not switch:
        raise UsageError(
            f"{REFERENCE} is what the check compares against; --switch --precision {REFERENCE} switches back to it"
        )
    thresholds = Thresholds(
        _stricter("--min-cosine", min_cosine, THRESHOLDS.min_cosine),
        _stricter("--min-overlap", min_overlap, THRESHOLDS.mean_overlap),
    )
    # The library opens at whatever precision it records (CBIR_PRECISION is not asked of it).
    settings = replace(resolve_settings(library=library, model=model, device=device, **options), precision=None)
    with Library.open(settings) as lib:
        measured = None if precision == REFERENCE else check_precision(lib, precision, sample, thresholds)
        passed = measured is None or measured.passed
        switched = switch and passed and switch_precision(lib, precision, measured)
        if as_json:
            report = measured.as_dict() if measured else {"precision": precision}
            recorded = lib.fingerprint.get("precision", REFERENCE)
            click.echo(json.dumps({**report, "switched": switched, "library_precision": recorded}))
        elif measured is not None:
            _echo_check(measured)
        if not passed:
            raise refusal(measured)
        if switch and not as_json:
            click.echo(
                f"switched the library to {precision}: new images are encoded at {precision}, stored vectors are kept"
                if switched
                else f"the library is at {precision} already; nothing changed"
            )


# --precision comes with library_options, where it asks for a library's precision; here it names
# the one to measure (or switch to).
for _param in check.params:
    if _param.name == "precision":
        _param.help = "The precision to check, or with --switch to switch to: int8 (default), or fp32 with --switch."


def _stricter(option: str, value: float | None, documented: float) -> float:
    """A threshold given on the command line: only ever stricter than the documented one."""
    if value is None:
        return documented
    if value < documented:
        raise UsageError(f"{option} {value}: a threshold can only be raised above its documented {documented}")
    return value


def _echo_check(measured) -> None:
    t = measured.thresholds
    unreadable = f" ({measured.unreadable} unreadable, left out)" if measured.unreadable else ""
    click.echo(f"{measured.precision} against fp32 on {measured.sampled} images of the library{unreadable}:")
    click.echo(
        f"  cosine of each image's two vectors: min {measured.min_cosine:.5f}, mean {measured.mean_cosine:.5f}"
        f"  (passes at min >= {t.min_cosine})"
    )
    for name, overlap in (("image", measured.image_queries), ("text", measured.text_queries)):
        if overlap is not None:
            click.echo(
                f"  top-{overlap.k} overlap of {overlap.queries} {name} queries: mean {overlap.mean:.3f}, "
                f"worst {overlap.worst:.2f}  (passes at mean >= {t.mean_overlap})"
            )
    if measured.passed:
        click.echo(
            f"passed: {measured.precision} vectors are interchangeable with this library's within the thresholds"
        )

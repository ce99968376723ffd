"""`cbir ingest` (with its first-run folder cleanup and the cbir-tiny notice) and `cbir forget`."""

from __future__ import annotations

from pathlib import Path

import click

from cbir.cli import cli, context_settings, library_options
from cbir.cli.common import _open, _Progress, group_values, option_group
from cbir.cli.render import echo_json, ingest_summary
from cbir.config import DEFAULT_MODEL, resolve_settings
from cbir.errors import UsageError

# Models that know only what cbir-tiny was trained on; an ingest with them says so.
TOY_MODELS = ("cbir-tiny",)  # fingerprint specs: the bundled weights, not a fine-tuned copy
TINY_NOTICE = (
    "Note: cbir-tiny knows only coloured shapes (the demo's pictures), not photos; for your "
    "photos use a real CLIP model in a new library: cbir ingest PHOTOS --library NEW_LIBRARY "
    f"--model {DEFAULT_MODEL}"
)

# Option groups, handed to Library.ingest as its keyword arguments: what PATH is, and who
# decodes and encodes.
SOURCE, ENGINE = "cbir.ingest_source", "cbir.ingest_engine"
source_option, engine_option = option_group(SOURCE), option_group(ENGINE)


@cli.command()
@click.argument("path")
@library_options
@source_option(
    "--format",
    type=click.Choice(["folder", "csv", "tsv", "jsonl", "parquet", "webdataset"]),
    help="What PATH is (default: detected from it).",
)
@source_option(
    "--image-column",
    metavar="NAME",
    help="Manifests: the column with image paths (default: path, image, filepath, ...).",
)
@source_option(
    "--caption-column", metavar="NAME", help="Manifests: the column with captions (default: caption, text, ...)."
)
@click.option(
    "--exclude",
    "excludes",
    metavar="GLOB",
    multiple=True,
    help="Leave out the files and folders matching GLOB (gitignore syntax, relative to the scanned folder "
    "PATH is in; repeatable). Remembered for that folder: later ingests keep leaving them out, and images "
    "already in the library that GLOB matches are removed; given again, it replaces the remembered patterns. "
    "Also left out: what a .cbirignore file in the folder lists, and the defaults (hidden files, @eaDir, "
    "#recycle, Thumbs.db, temporary and partial files). Folders only: a dataset (manifest, WebDataset) lists "
    "its images itself and ignores exclusions.",
)
@click.option("--no-exclude", is_flag=True, help="Forget the remembered --exclude patterns of PATH's folder.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per model batch. [env: CBIR_BATCH_SIZE]")
@click.option(
    "--workers", type=click.IntRange(min=1), help="Decode processes (default: one per core). [env: CBIR_WORKERS]"
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Try again the files recorded as skipped (by default they are retried only once they change).",
)
@engine_option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    envvar="CBIR_ENGINE",
    help="Who decodes and encodes: worker processes here, or a Ray cluster (pip install 'cbir[ray]'); this process commits either way. [env: CBIR_ENGINE]",
)
@engine_option(
    "--address",
    metavar="ADDR",
    help="--engine ray: the cluster to join: auto (one started on this machine), ray://HOST:PORT (Ray Client) or HOST:PORT; default: a private cluster on this machine, listening on 127.0.0.1 only.",
)
@engine_option(
    "--gpus-per-worker",
    type=click.FloatRange(min=0),
    default=0,
    help="--engine ray: GPUs for each encode worker (default 0: encode on CPUs).",
)
@engine_option(
    "--ray-workers",
    type=click.IntRange(min=1),
    metavar="N",
    help="--engine ray: encode workers, each loading the model once (default: the cluster's GPUs / --gpus-per-worker, or half its CPUs).",
)
@click.option(
    "--ocr/--no-ocr",
    default=None,
    help="Read the text inside images (signs, posters, screenshots, documents) and store it as a text of "
    "source ocr, found by keyword and hybrid search and --where 'text ~ WORD' (pip install 'cbir[ocr]'). "
    "Remembered for the library: later ingests keep reading it, and images already in the library are "
    "read once. --no-ocr stops the reading for later ingests; the OCR texts already stored stay until "
    "their files change. Default: as the library was last told (off for a new one).",
)
@click.option(
    "--frame-every",
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Videos: besides a frame at each scene change, at least one frame every SECONDS (default 10). "
    "Remembered for the library; applies to the videos read from then on.",
)
@click.option(
    "--max-frames",
    type=click.IntRange(min=1, max=10_000),
    metavar="N",
    help="Videos: at most N frames a video (default 100). Remembered like --frame-every.",
)
@click.option(
    "--mask",
    "masks",
    multiple=True,
    metavar="X,Y,W,H",
    help="Ignore this part of every image (fractions of its width and height: 0.7,0.8,0.3,0.2 is the "
    "bottom-right corner), at ingest and in query images: a title block, a watermark, a date stamp. "
    "Repeatable; set on a library's first ingest and kept (cbir status shows it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def ingest(
    path,
    library,
    model,
    device,
    excludes,
    no_exclude,
    batch_size,
    workers,
    retry_failed,
    ocr,
    frame_every,
    max_frames,
    masks,
    as_json,
    quiet,
):
    """Add the images under PATH to the library (or update it: only new and changed files are
    encoded; moved files keep their vectors; deleted files leave the index). The pages of PDFs
    and frames of videos are images too (pip install 'cbir[media]'). PATH may also be a
    dataset: a manifest (CSV, TSV, JSON Lines, Parquet) naming image files with captions and
    other columns, or WebDataset tar shards (one .tar, a glob or a brace list, quoted).

    \b
    Examples:
      cbir ingest ~/Pictures
      cbir ingest ~/Pictures --exclude 'raw/' --exclude '*.psd'
      cbir ingest ~/Pictures --ocr
      cbir ingest ~/drawings --mask 0.7,0.8,0.3,0.2
      cbir ingest captions.csv --caption-column alt_text
      cbir ingest 'laion/{00000..00009}.tar'
      cbir ingest /shared/photos --engine ray --address auto --gpus-per-worker 1
    """
    engine = group_values(ENGINE)  # engine, address, gpus_per_worker, ray_workers
    if engine["engine"] != "ray" and (engine["address"] or engine["gpus_per_worker"] or engine["ray_workers"]):
        raise UsageError("--address, --gpus-per-worker and --ray-workers go with --engine ray")
    if excludes and no_exclude:
        raise UsageError("--exclude and --no-exclude cannot go together")
    exclude = list(excludes) if excludes else ([] if no_exclude else None)
    from cbir.library import Library

    settings = resolve_settings(
        **context_settings(), library=library, model=model, device=device, batch_size=batch_size, workers=workers
    )
    # A first ingest that fails before committing anything (no such folder, the model cannot
    # be downloaded) takes away the library folder it created: there is nothing in it to keep.
    new_folders = [] if settings.database_url else _missing_folders(settings.library)
    try:
        with Library.open(settings, create=True) as lib:
            with _Progress(enabled=not quiet and not as_json) as progress:
                try:
                    report = lib.ingest(
                        path,
                        progress=progress,
                        retry_failed=retry_failed,
                        exclude=exclude,
                        ocr=ocr,
                        frame_every=frame_every,
                        max_frames=max_frames,
                        masks=list(masks) or None,
                        **group_values(SOURCE),
                        **engine,
                    )
                finally:
                    if new_folders and _committed(lib):
                        new_folders = []
            if as_json:
                echo_json(report.as_dict())
            else:
                click.echo(ingest_summary(report))
                click.echo(f"Library {lib.path}: {lib.catalog.count_images()} images ({lib.fingerprint['spec']})")
            if not quiet and (lib.fingerprint or {}).get("spec") in TOY_MODELS:
                click.echo(TINY_NOTICE, err=True)
    except BaseException:
        _remove_new_folders(new_folders)
        raise


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, innermost first."""
    missing = []
    path = path.absolute()
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _committed(lib) -> bool:
    """The library holds something: a model was recorded (the first batch commits it)."""
    try:
        return lib.fingerprint is not None
    except Exception:  # cannot tell (the database itself failed): keep the folder
        return True


def _remove_new_folders(folders: list[Path]) -> None:
    """Remove the library folder this run created and the parents it created with it. Only
    folders that did not exist before the run are listed, so nothing of the user's is in them.
    A failure here must not hide the error that brought us here."""
    import shutil

    if not folders:
        return
    shutil.rmtree(folders[0], ignore_errors=True)
    for parent in folders[1:]:
        try:
            parent.rmdir()  # only while empty
        except OSError:
            return


@cli.command()
@click.argument("path")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed when not run from a terminal).")
@click.option("--dry-run", is_flag=True, help="Only say how many images would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@library_options
def forget(path, yes, dry_run, as_json, library, model, device):
    """Remove the images of the folder PATH from the library: their vectors, texts and labels.
    The files themselves are not touched. For folders gone from disk (cbir status lists them)
    or no longer wanted; a renamed folder needs no forget: ingest it under its new name and its
    images follow it.

    \b
    Examples:
      cbir forget ~/Pictures/old-phone --dry-run
      cbir forget ~/Pictures/old-phone --yes
    """
    import sys

    with _open(library=library, model=model, device=device) as lib:
        plan = lib.forget(path, dry_run=True)
        where = "gone from disk" if plan.gone else "still on disk, untouched"
        if not dry_run and not yes:
            question = f"Forget the {plan.images} images of {plan.root} ({where})?"
            if not sys.stdin.isatty():
                raise UsageError(f"{question[:-1]}: confirm with --yes (no terminal to ask on)")
            if not click.confirm(question, default=False, err=True):
                raise UsageError("nothing forgotten")
        done = plan if dry_run else lib.forget(path)
    if as_json:
        echo_json(done.as_dict())
    elif dry_run:
        click.echo(f"{done.root}: {done.images} images would be forgotten ({where})")
    else:
        click.echo(
            f"{done.root}: {done.images} images and {done.texts} texts forgotten (the files, {where}, are not touched)"
        )

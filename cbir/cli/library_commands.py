"""`cbir label`, `cbir status` and `cbir export`: what the library holds, read and annotated."""

from __future__ import annotations

from pathlib import Path

import click

from cbir.cli import cli, library_options
from cbir.cli.common import _open
from cbir.cli.render import echo_json, echo_rows, status_text


@cli.group()
def label():
    """Labels: your own words for an image, searchable as texts and usable as --tag filters.

    \b
      cbir label add photos/2019/rex.jpg "Rex" "golden retriever"
      cbir search --tag rex dog on the beach
      cbir label list photos/2019/rex.jpg
      cbir label list                        every label, with its number of images
      cbir label remove photos/2019/rex.jpg Rex
    """


@label.command("add")
@click.argument("image", type=str)
@click.argument("labels", nargs=-1, required=True)
@library_options
def label_add(image, labels, library, model, device):
    """Add LABELS to IMAGE (a file already in the library)."""
    with _open(library=library, model=model, device=device) as lib:
        for text in labels:
            added = lib.add_label(image, text)
            click.echo(f"{'added' if added else 'already there'}: {text}")


@label.command("remove")
@click.argument("image", type=str)
@click.argument("labels", nargs=-1)
@library_options
def label_remove(image, labels, library, model, device):
    """Remove LABELS from IMAGE (every label when none are named)."""
    with _open(library=library, model=model, device=device) as lib:
        for text in labels or (None,):
            removed = lib.remove_label(image, text)
            click.echo(f"{'removed' if removed else 'not found'}: {text if text else 'all labels'}")


@label.command("list")
@click.argument("image", type=str, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON Lines.")
@library_options
def label_list(image, as_json, library, model, device):
    """The texts of IMAGE: caption file, embedded description and labels; without IMAGE,
    every label of the library with the number of images it is on."""
    with _open(library=library, model=model, device=device) as lib:
        texts = lib.texts_of(image) if image is not None else None
        labels = lib.labels() if image is None else []
    if image is None and not labels and not as_json:
        click.echo('(no labels yet: cbir label add IMAGE "LABEL")')
    echo_rows(labels, as_json, ("label", "images"), lambda text, count: f"{count:>6}  {text}")
    echo_rows(texts or (), as_json, ("source", "text"), lambda source, text: f"{source:<9} {text}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--skipped", is_flag=True, help="List the skipped files and why (--json always lists them).")
@library_options
def status(as_json, skipped, library, model, device):
    """What the library holds: model, images, skipped files, index."""
    with _open(library=library, model=model, device=device) as lib:
        st = lib.status(with_skipped=skipped or as_json)  # JSON: the files with their count
    if as_json:
        echo_json(st.as_dict())
    else:
        click.echo(status_text(st))


@cli.command("export")
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "npy"]),
    default="parquet",
    show_default=True,
    help="parquet: one file, a row per image with its vector; npy: a folder with vectors.npy, ids.npy and metadata.jsonl.",
)
@library_options
def export_command(out, fmt, library, model, device):
    """Write the library's image vectors with their ids and metadata to OUT, for pandas, numpy
    or another index (streamed: a large library is never held in memory).

    \b
    Examples:
      cbir export library.parquet
      cbir export vectors/ --format npy
    """
    from cbir.export import export

    with _open(library=library, model=model, device=device) as lib:
        count = export(lib.catalog, out, fmt)
    click.echo(f"exported {count} images to {out}")

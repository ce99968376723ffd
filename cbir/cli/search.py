"""`cbir search`: its option groups, the metadata filters and the query-image checks."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import click

from cbir.cli import cli, library_options
from cbir.cli.common import _open
from cbir.cli.engine_options import engine_info, engine_lines, ray_options, search_engine_options, use_engine
from cbir.cli.render import echo_json, hits_table, query_label
from cbir.errors import UsageError


def _check_query_images(queries) -> None:
    """A query image that is not there is an error before the library and the model load
    (which take seconds)."""
    for query in queries:
        if not isinstance(query.image, str | PathLike) or "\x00" in str(query.image):
            continue  # no image file (bytes come only through the API); a NUL byte gets the library's own error
        path = Path(query.image).expanduser()
        if not path.exists():
            raise UsageError(f"query image not found: {query.image}")
        if not path.is_file():  # a folder, or a FIFO or device that would block or never end
            from cbir.fsutil import special_file

            raise UsageError(f"query image {query.image} is {special_file(path.stat().st_mode)}, not an image file")


def _date(_ctx, _param, value):
    """A bad date is an error as the option is read, before any other check (the request
    parses it again)."""
    if value:
        from cbir.query.filter_values import parse_date

        parse_date(value)
    return value


def filter_options(f):
    """The metadata filters of `cbir search` (all combined with AND)."""
    options = [
        click.option(
            "--after",
            callback=_date,
            metavar="DATE",
            help="Taken on or after DATE (2019, 2019-06, 2019-06-01, 2019-06-01T10:30); the file time when there is no EXIF date.",
        ),
        click.option(
            "--before", callback=_date, metavar="DATE", help="Taken before DATE (--before 2020: up to the end of 2019)."
        ),
        click.option(
            "--folder",
            multiple=True,
            metavar="PATH",
            help="In this folder or below: a path, or a folder name at any depth (2019/beach, beach). Repeat for any of several.",
        ),
        click.option(
            "--camera",
            multiple=True,
            metavar="TEXT",
            help="Camera make/model contains TEXT, any case (Pixel). Repeat for any of several.",
        ),
        click.option("--min-width", type=click.IntRange(min=1), metavar="PX", help="At least this wide."),
        click.option("--min-height", type=click.IntRange(min=1), metavar="PX", help="At least this tall."),
        click.option(
            "--format",
            "formats",
            multiple=True,
            metavar="FMT",
            help="File format: jpeg, png, webp, ... (repeat or comma-separate).",
        ),
        click.option(
            "--tag",
            multiple=True,
            metavar="LABEL",
            help="Has this label (cbir label add) or tag (cbir tag); repeat to require several.",
        ),
        click.option(
            "--where",
            metavar="EXPR",
            help='A filter expression: taken >= 2019-06-01 and camera ~ "Pixel" (fields: taken, added, width, height, size, duration, format, camera, folder, path, tag, text, and extra.COLUMN for a dataset column).',
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def result_options(f):
    """How many results `cbir search` shows, which, and in what order."""
    options = [
        click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Results per query."),
        click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many results (paging)."),
        click.option("--min-score", type=float, metavar="X", help="Only results with cosine similarity >= X."),
        click.option(
            "--sort",
            type=click.Choice(["score", "date"]),
            default="score",
            show_default=True,
            help="Order of the results shown: by score, or by date taken (oldest first).",
        ),
        click.option("--dedup", is_flag=True, help="Collapse near-identical results into the best of them."),
        click.option(
            "--frames", is_flag=True, help="List every matching frame of a video (by default only its best one)."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def plan_options(f):
    """How `cbir search` searches the index: the planner's strategy, ANN parameters, the GPU."""
    options = [
        click.option(
            "--strategy",
            type=click.Choice(["auto", "ann", "exact-subset", "ann-post-filter"]),
            default="auto",
            show_default=True,
            help="Override the planner's choice (for comparing).",
        ),
        click.option(
            "--nprobe",
            type=click.IntRange(min=1),
            help="IVF indexes: lists to visit for this query (default: chosen at build time).",
        ),
        click.option(
            "--ef",
            type=click.IntRange(min=1),
            help="HNSW indexes: search breadth for this query (default: chosen at build time).",
        ),
        click.option(
            "--gpu",
            is_flag=True,
            help="Search the index on the GPU with faiss GPU ([gpu] extra; flat and IVF kinds); an error without one.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@click.argument("query", nargs=-1)
@click.option(
    "--image",
    "image",
    type=str,
    metavar="PATH",
    help='Find images similar to this picture (combine with text: --image a.jpg + "in winter").',
)
@click.option(
    "--crop",
    metavar="X,Y,W,H",
    help="Search by this box of the --image only: fractions of the picture as shown (0.5,0,0.5,1: its right half).",
)
@click.option(
    "--like",
    "like",
    type=str,
    multiple=True,
    metavar="PATH",
    help="Find images like this image of the library (no model needed for it); repeat for several. With a query: more like these.",
)
@click.option(
    "--unlike",
    type=str,
    multiple=True,
    metavar="PATH",
    help="Less like this image of the library (relevance feedback); repeatable.",
)
@click.option(
    "--batch",
    "batch",
    type=click.File("r", encoding="utf-8"),
    help='Run many queries: one per line (a query, or {"image": "PATH"}); - for stdin.',
)
@click.option(
    "--target",
    type=click.Choice(["images", "text"]),
    default="images",
    show_default=True,
    help="Search images, or the library's texts (captions, descriptions, labels, tags).",
)
@click.option(
    "--mode",
    type=click.Choice(["semantic", "keyword", "hybrid"]),
    help="semantic (CLIP), keyword (FTS5 BM25 over texts) or hybrid (both, fused); default: hybrid for --target text with words, else semantic.",
)
@filter_options
@result_options
@plan_options
@click.option("--explain", is_flag=True, help="Print the plan: strategy and why, candidates, time per stage.")
@click.option(
    "--json", "as_json", is_flag=True, help="JSON Lines: one object per result (and the plan, with --explain)."
)
@search_engine_options
@library_options
def search(query, image, crop, like, unlike, batch, target, mode, explain, as_json, library, model, device, **options):
    """Search the library by text (QUERY), by example (--image, --like) or many at once (--batch).

    \b
    Examples:
      cbir search two dogs in a frosty field
      cbir search "dog" + "snow" - "indoors"
      cbir search "cat":2 + sofa --after 2019 --camera Pixel
      cbir search --image holiday.jpg + "in winter" -k 20
      cbir search --image holiday.jpg --crop 0.5,0,0.5,1
      cbir search "red car" --like a.jpg --like b.jpg --unlike c.jpg --explain
      cbir search sunset --target text --mode keyword
      cbir search beach --where 'taken >= 2019-06-01 and folder = trips' --explain
      cbir search --batch queries.txt --json
    """
    from cbir.query.request import SearchRequest, command_line_queries

    items = command_line_queries(query, image, like, batch, unlike=unlike, crop=crop)
    _check_query_images(q for _, q in items)
    gpu = options.pop("gpu")
    request = SearchRequest.from_options([q for _, q in items], target=target, mode=mode, explain=explain, **options)
    engine = ray_options()
    encodes_text = engine is None and request.model_use()[1]
    with _open(library=library, model=model, device=device, gpu=gpu, text_model=encodes_text) as lib:
        use_engine(lib, engine)
        results = lib.run_search(request)
        served = engine_info(lib) if explain else {}  # while the actors run
    for (echo, _), hits in zip(items, results):
        if as_json:
            if explain:
                echo_json({"query": echo, "plan": {**hits.plan.as_dict(), "engine": served}})
            for hit in hits:
                echo_json({"query": echo, **hit.as_dict()})
            continue
        if len(items) > 1:
            click.echo(f"\n== {query_label(echo)}")
        if explain:
            click.echo("\n".join([*hits.plan.describe(), *engine_lines(served)]) + "\n")
        click.echo(hits_table(hits))

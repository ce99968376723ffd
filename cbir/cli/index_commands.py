"""`cbir index`: rebuild, shard, inspect, verify and repair the library's FAISS indexes."""

from __future__ import annotations

import click

from cbir.cli import cli, library_options
from cbir.cli.common import _open
from cbir.cli.render import build_summary, echo_json, index_info_text


@cli.group("index")
def index_group():
    """The library's FAISS indexes: rebuild as another kind, inspect, verify, repair.

    \b
      cbir index rebuild --type auto --memory 4GB   choose, build, tune and report
      cbir index shard --shards 4 --by date        split into shard files
      cbir index info                              kind, parameters, size, recall
      cbir index verify                            checksums, ids == the database's
      cbir index repair                            rebuild what verify found broken
    """


@index_group.command("rebuild")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["auto", "flat", "hnsw", "ivf", "ivfpq"]),
    default="auto",
    show_default=True,
    help="Index kind; auto chooses from the vector count, dimension and memory budget.",
)
@click.option(
    "--memory",
    metavar="SIZE",
    help="Memory budget for the index, e.g. 4GB (auto picks IVF-PQ when full vectors do not fit).",
)
@click.option(
    "--shard",
    "shard",
    type=click.IntRange(min=0),
    help="Rebuild only this shard of a sharded image index (--type: its kind; default the one it has).",
)
@click.option(
    "--gpu/--no-gpu",
    "gpu",
    default=None,
    help="Build on the GPU with faiss GPU ([gpu] extra); an error without one. Default: on the GPU when one is usable and the index is past the flat size.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON Lines.")
@library_options
def index_rebuild(kind, memory, shard, gpu, as_json, library, model, device):
    """Build new indexes from the stored vectors (no image is re-encoded), tune their search
    parameters for recall@10 >= 0.95 on a held-out sample, and switch to them atomically."""
    from cbir.units import parse_bytes

    budget = parse_bytes(memory, "memory size", positive=True) if memory else None
    with _open(library=library, model=model, device=device) as lib:
        if shard is not None:
            reports = [lib.rebuild_shard(shard, None if kind == "auto" else kind, gpu)]
        else:
            reports = lib.rebuild_index(kind, budget, gpu)
    for report in reports:
        if as_json:
            echo_json(report.as_dict())
        else:
            click.echo(build_summary(report))


@index_group.command("shard")
@click.option("--shards", type=click.IntRange(min=2), required=True, help="How many shard files.")
@click.option(
    "--by",
    type=click.Choice(["hash", "folder", "date"]),
    default="hash",
    show_default=True,
    help="What decides an image's shard: a hash of its id, its top-level folder, or its date taken (equal-sized date ranges).",
)
@click.option(
    "--type",
    "kind",
    type=click.Choice(["auto", "flat", "hnsw", "ivf", "ivfpq"]),
    help="Index kind of every shard (default: the current kind).",
)
@click.option(
    "--gpu/--no-gpu",
    "gpu",
    default=None,
    help="Build on the GPU with faiss GPU ([gpu] extra); an error without one. Default: on the GPU when one is usable and the index is past the flat size.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON Lines.")
@library_options
def index_shard(shards, by, kind, gpu, as_json, library, model, device):
    """Split the image index into shard files, each built and tuned on its own; a query fans out
    over them in parallel and merges the results (on flat shards exactly the unsharded results).
    `cbir index rebuild` makes one index again."""
    with _open(library=library, model=model, device=device) as lib:
        reports = lib.shard_index(shards, by, kind, gpu)
    for report in reports:
        if as_json:
            echo_json(report.as_dict())
        else:
            click.echo(build_summary(report))


@index_group.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@library_options
def index_info(as_json, library, model, device):
    """The current index generation: each index's kind, parameters, vectors, size and recall."""
    with _open(library=library, model=model, device=device) as lib:
        info = lib.index_info()
    if as_json:
        echo_json(info)
    else:
        click.echo(index_info_text(info))


@index_group.command("verify")
@library_options
def index_verify(library, model, device):
    """Check every index file against its checksum, the model, and the database's ids; exit 1
    when something is wrong (then: cbir index repair)."""
    with _open(library=library, model=model, device=device) as lib:
        problems = lib.verify_index()
    for name, found in problems.items():
        click.echo(f"{name}: " + ("ok" if not found else "; ".join(found)))
    if any(problems.values()):
        raise click.exceptions.Exit(1)


@index_group.command("repair")
@library_options
def index_repair(library, model, device):
    """Rebuild, from the stored vectors, every index that verify finds broken."""
    with _open(library=library, model=model, device=device) as lib:
        repaired = lib.repair_index()
    if not repaired:
        click.echo("every index is sound; nothing to repair")
    for name, found in repaired.items():
        click.echo(f"{name}: rebuilt ({'; '.join(found)})")

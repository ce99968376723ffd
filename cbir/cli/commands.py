"""The commands. Each parses options, calls the Library API and renders; nothing else."""

from __future__ import annotations

from pathlib import Path

import click

from cbir.cli import cli, database_url, debug_option, library_options
from cbir.cli.engine_options import ray_options, search_engine_options, use_engine
from cbir.cli.render import (
    build_summary,
    echo_json,
    echo_rows,
    hits_table,
    index_info_text,
    ingest_summary,
    query_label,
    status_text,
)
from cbir.config import DEFAULT_MODEL, resolve_settings
from cbir.errors import UsageError


# Models that know only what cbir-tiny was trained on; an ingest with them says so.
TOY_MODELS = ("cbir-tiny",)  # fingerprint specs: the bundled weights, not a fine-tuned copy
TINY_NOTICE = (
    "Note: cbir-tiny knows only coloured shapes (the demo's pictures), not photos; for your "
    "photos use a real CLIP model in a new library: cbir ingest PHOTOS --library NEW_LIBRARY "
    f"--model {DEFAULT_MODEL}"
)


def _open(create=False, **options):
    from cbir.library import Library

    return Library.open(resolve_settings(database_url=database_url(), **options), create=create)


class _Progress:
    """A tqdm bar fed by the pipeline's (done, total) callback; silent when not a terminal.
    Used as a context manager so the bar is closed however the run ends."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total == 0:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc="ingest", disable=None, smoothing=0.1)
        self.bar.update(done - self.bar.n)


@cli.command()
@click.argument("path")
@library_options
@click.option("--format", "fmt", type=click.Choice(["folder", "csv", "tsv", "jsonl", "parquet", "webdataset"]), help="What PATH is (default: detected from it).")
@click.option("--image-column", metavar="NAME", help="Manifests: the column with image paths (default: path, image, filepath, ...).")
@click.option("--caption-column", metavar="NAME", help="Manifests: the column with captions (default: caption, text, ...).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per model batch. [env: CBIR_BATCH_SIZE]")
@click.option("--workers", type=click.IntRange(min=1), help="Decode processes (default: one per core). [env: CBIR_WORKERS]")
@click.option("--retry-failed", is_flag=True, help="Try again the files recorded as skipped (by default they are retried only once they change).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True, envvar="CBIR_ENGINE", help="Who decodes and encodes: worker processes here, or a Ray cluster (pip install 'cbir[ray]'); this process commits either way. [env: CBIR_ENGINE]")
@click.option("--address", metavar="ADDR", help="--engine ray: the cluster to join: auto (one started on this machine), ray://HOST:PORT (Ray Client) or HOST:PORT; default: a private cluster on this machine, listening on 127.0.0.1 only.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0, help="--engine ray: GPUs for each encode worker (default 0: encode on CPUs).")
@click.option("--ray-workers", type=click.IntRange(min=1), metavar="N", help="--engine ray: encode workers, each loading the model once (default: the cluster's GPUs / --gpus-per-worker, or half its CPUs).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def ingest(path, library, model, device, fmt, image_column, caption_column, batch_size, workers, retry_failed,
           engine, address, gpus_per_worker, ray_workers, as_json, quiet):
    """Add the images under PATH to the library (or update it: only new and changed files are
    encoded; moved files keep their vectors; deleted files leave the index). PATH may also be a
    dataset: a manifest (CSV, TSV, JSON Lines, Parquet) naming image files with captions and
    other columns, or WebDataset tar shards (one .tar, a glob or a brace list, quoted).

    \b
    Examples:
      cbir ingest ~/Pictures
      cbir ingest captions.csv --caption-column alt_text
      cbir ingest 'laion/{00000..00009}.tar'
      cbir ingest /shared/photos --engine ray --address auto --gpus-per-worker 1
    """
    if engine != "ray" and (address or gpus_per_worker or ray_workers):
        raise UsageError("--address, --gpus-per-worker and --ray-workers go with --engine ray")
    from cbir.library import Library

    settings = resolve_settings(database_url=database_url(), library=library, model=model, device=device,
                                batch_size=batch_size, workers=workers)
    # A first ingest that fails before committing anything (no such folder, the model cannot
    # be downloaded) takes away the library folder it created: there is nothing in it to keep.
    new_folders = [] if settings.database_url else _missing_folders(settings.library)
    try:
        with Library.open(settings, create=True) as lib:
            with _Progress(enabled=not quiet and not as_json) as progress:
                try:
                    report = lib.ingest(path, progress=progress, format=fmt, image_column=image_column,
                                        caption_column=caption_column, retry_failed=retry_failed, engine=engine,
                                        address=address, gpus_per_worker=gpus_per_worker, ray_workers=ray_workers)
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


def _check_query_images(queries) -> None:
    """A query image that is not there is an error before the library and the model load
    (which take seconds)."""
    from cbir.query import ImageData

    for query in queries:
        if query.image is None or isinstance(query.image, ImageData) or "\x00" in str(query.image):
            continue  # a NUL byte gets the library's own error
        path = Path(query.image).expanduser()
        if not path.exists():
            raise UsageError(f"query image not found: {query.image}")
        if not path.is_file():  # a folder, or a FIFO or device that would block or never end
            from cbir.ingest.limits import special_file

            raise UsageError(f"query image {query.image} is {special_file(path.stat().st_mode)}, not an image file")


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


def _split(values) -> tuple[str, ...]:
    """Repeatable options that also take comma-separated lists: --format jpeg,png."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def _date(_ctx, param, value):
    from cbir.query.filters import parse_date

    return parse_date(value)[0] if value else None


def filter_options(f):
    """The metadata filters of `cbir search` (all combined with AND)."""
    options = [
        click.option("--after", callback=_date, metavar="DATE", help="Taken on or after DATE (2019, 2019-06, 2019-06-01, 2019-06-01T10:30); the file time when there is no EXIF date."),
        click.option("--before", callback=_date, metavar="DATE", help="Taken before DATE (--before 2020: up to the end of 2019)."),
        click.option("--folder", multiple=True, metavar="PATH", help="In this folder or below: a path, or a folder name at any depth (2019/beach, beach). Repeat for any of several."),
        click.option("--camera", multiple=True, metavar="TEXT", help="Camera make/model contains TEXT, any case (Pixel). Repeat for any of several."),
        click.option("--min-width", type=click.IntRange(min=1), metavar="PX", help="At least this wide."),
        click.option("--min-height", type=click.IntRange(min=1), metavar="PX", help="At least this tall."),
        click.option("--format", "formats", multiple=True, metavar="FMT", help="File format: jpeg, png, webp, ... (repeat or comma-separate)."),
        click.option("--tag", multiple=True, metavar="LABEL", help="Has this label (cbir label add) or tag (cbir tag); repeat to require several."),
        click.option("--where", metavar="EXPR", help='A filter expression: taken >= 2019-06-01 and camera ~ "Pixel" (fields: taken, added, width, height, size, format, camera, folder, path, tag, text, and extra.COLUMN for a dataset column).'),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@click.argument("query", nargs=-1)
@click.option("--image", "image", type=str, metavar="PATH", help="Find images similar to this picture (combine with text: --image a.jpg + \"in winter\").")
@click.option("--like", "like", type=str, metavar="PATH", help="Find images similar to this image of the library (no model needed for it).")
@click.option("--batch", "batch", type=click.File("r", encoding="utf-8"), help="Run many queries: one per line (a query, or {\"image\": \"PATH\"}); - for stdin.")
@click.option("--target", type=click.Choice(["images", "text"]), default="images", show_default=True, help="Search images, or the library's texts (captions, descriptions, labels, tags).")
@click.option("--mode", type=click.Choice(["semantic", "keyword", "hybrid"]), help="semantic (CLIP), keyword (FTS5 BM25 over texts) or hybrid (both, fused); default: hybrid for --target text with words, else semantic.")
@filter_options
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Results per query.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many results (paging).")
@click.option("--min-score", type=float, metavar="X", help="Only results with cosine similarity >= X.")
@click.option("--sort", type=click.Choice(["score", "date"]), default="score", show_default=True, help="Order of the results shown: by score, or by date taken (oldest first).")
@click.option("--dedup", is_flag=True, help="Collapse near-identical results into the best of them.")
@click.option("--strategy", type=click.Choice(["auto", "ann", "exact-subset", "ann-post-filter"]), default="auto", show_default=True, help="Override the planner's choice (for comparing).")
@click.option("--nprobe", type=click.IntRange(min=1), help="IVF indexes: lists to visit for this query (default: chosen at build time).")
@click.option("--ef", type=click.IntRange(min=1), help="HNSW indexes: search breadth for this query (default: chosen at build time).")
@click.option("--gpu", is_flag=True, help="Search the index on the GPU with faiss GPU ([gpu] extra; flat and IVF kinds); an error without one.")
@click.option("--explain", is_flag=True, help="Print the plan: strategy and why, candidates, time per stage.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one object per result (and the plan, with --explain).")
@search_engine_options
@library_options
def search(query, image, like, batch, target, mode, after, before, folder, camera, min_width, min_height, formats, tag, where, k, offset, min_score, sort, dedup, strategy, nprobe, ef, gpu, explain, as_json, library, model, device):
    """Search the library by text (QUERY), by example (--image, --like) or many at once (--batch).

    \b
    Examples:
      cbir search two dogs in a frosty field
      cbir search "dog" + "snow" - "indoors"
      cbir search "cat":2 + sofa --after 2019 --camera Pixel
      cbir search --image holiday.jpg + "in winter" -k 20
      cbir search sunset --target text --mode keyword
      cbir search beach --where 'taken >= 2019-06-01 and folder = trips' --explain
      cbir search --batch queries.txt --json
    """
    from cbir.query import Query
    from cbir.query.batch import parse_batch
    from cbir.query.expression import expression_from_argv
    from cbir.query.filters import Filters

    text = expression_from_argv(query).strip() if query else ""
    if batch and (text or image or like):
        raise UsageError("--batch takes its queries from the file; give no QUERY, --image or --like with it")
    if not (batch or text or image or like):
        raise UsageError("give a QUERY text, --image PATH, --like PATH or --batch FILE")
    if batch:
        items = parse_batch(batch, source=batch.name)
    else:
        echo = text if not (image or like) else {
            **({"image": str(image)} if image else {"like": str(like)}),
            **({"text": text} if text else {}),
        }
        items = [(echo, Query(text=text or None, image=image, like=like))]
    _check_query_images(q for _, q in items)
    filters = Filters(
        after=after,
        before=before,
        folders=tuple(folder),
        cameras=tuple(camera),
        min_width=min_width,
        min_height=min_height,
        formats=_split(formats),
        tags=tuple(tag),
        where=where,
    )
    engine = ray_options()
    with _open(library=library, model=model, device=device, gpu=gpu) as lib:
        use_engine(lib, engine)
        results = lib.search_many(
            [q for _, q in items],
            k=k,
            target="texts" if target == "text" else "images",
            mode=mode,
            filters=filters,
            min_score=min_score,
            sort=sort,
            offset=offset,
            dedup=dedup,
            strategy=strategy,
            index_params={**({"nprobe": nprobe} if nprobe else {}), **({"efSearch": ef} if ef else {})},
        )
    for (echo, _), hits in zip(items, results):
        if as_json:
            if explain:
                echo_json({"query": echo, "plan": hits.plan.as_dict()})
            for hit in hits:
                echo_json({"query": echo, **hit.as_dict()})
            continue
        if len(items) > 1:
            click.echo(f"\n== {query_label(echo)}")
        if explain:
            click.echo("\n".join(hits.plan.describe()) + "\n")
        click.echo(hits_table(hits))


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
@click.option("--type", "kind", type=click.Choice(["auto", "flat", "hnsw", "ivf", "ivfpq"]), default="auto", show_default=True, help="Index kind; auto chooses from the vector count, dimension and memory budget.")
@click.option("--memory", metavar="SIZE", help="Memory budget for the index, e.g. 4GB (auto picks IVF-PQ when full vectors do not fit).")
@click.option("--shard", "shard", type=click.IntRange(min=0), help="Rebuild only this shard of a sharded image index (--type: its kind; default the one it has).")
@click.option("--gpu/--no-gpu", "gpu", default=None, help="Build on the GPU with faiss GPU ([gpu] extra); an error without one. Default: on the GPU when one is usable and the index is past the flat size.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON Lines.")
@library_options
def index_rebuild(kind, memory, shard, gpu, as_json, library, model, device):
    """Build new indexes from the stored vectors (no image is re-encoded), tune their search
    parameters for recall@10 >= 0.95 on a held-out sample, and switch to them atomically."""
    from cbir.index.types import parse_memory

    budget = parse_memory(memory) if memory else None
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
@click.option("--by", type=click.Choice(["hash", "folder", "date"]), default="hash", show_default=True, help="What decides an image's shard: a hash of its id, its top-level folder, or its date taken (equal-sized date ranges).")
@click.option("--type", "kind", type=click.Choice(["auto", "flat", "hnsw", "ivf", "ivfpq"]), help="Index kind of every shard (default: the current kind).")
@click.option("--gpu/--no-gpu", "gpu", default=None, help="Build on the GPU with faiss GPU ([gpu] extra); an error without one. Default: on the GPU when one is usable and the index is past the flat size.")
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
@click.option("--skipped", is_flag=True, help="List the skipped files and why.")
@library_options
def status(as_json, skipped, library, model, device):
    """What the library holds: model, images, skipped files, index."""
    with _open(library=library, model=model, device=device) as lib:
        st = lib.status(with_skipped=skipped)
    if as_json:
        echo_json(st.as_dict())
    else:
        click.echo(status_text(st))


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
        click.echo(f"{done.root}: {done.images} images and {done.texts} texts forgotten (the files, {where}, are not touched)")


@cli.group("eval")
def eval_group():
    """Measure retrieval quality with the library's model, as CLIP papers report it.

    \b
      cbir eval retrieval                  text->image and image->text Recall@1/5/10
      cbir eval zeroshot --templates openai  zero-shot top-1/top-5 on class folders
    """


@eval_group.command("retrieval")
@click.option("--where", metavar="EXPR", help="Only images passing this filter (see cbir search --where).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@library_options
def eval_retrieval(where, as_json, library, model, device):
    """Image-caption retrieval over the library's captioned images: each caption finds its
    image (text->image), each image its captions (image->text); Recall@1/5/10 and median rank."""
    from cbir.evaluate import retrieval_table
    from cbir.evaluate.library import evaluate_retrieval
    from cbir.query.filters import Filters

    with _open(library=library, model=model, device=device) as lib:
        result = evaluate_retrieval(lib, Filters(where=where) if where else None)
    if as_json:
        echo_json(result.as_dict())
    else:
        click.echo(retrieval_table(result))


@eval_group.command("zeroshot")
@click.option("--templates", default="ensemble", show_default=True, metavar="NAME|FILE", help="Prompt templates: single (a photo of a {}.), ensemble (open_clip's 7), openai (CLIP's 80) or a file with one template per line.")
@click.option("--label", default="folder", show_default=True, metavar="folder|extra.COLUMN", help="Each image's class: the folder holding it, or a dataset column.")
@click.option("--where", metavar="EXPR", help="Only images passing this filter (see cbir search --where).")
@click.option("--worst", type=click.IntRange(min=0), default=5, show_default=True, help="How many of the worst classes to show with their confusions.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@library_options
def eval_zeroshot(templates, label, where, worst, as_json, library, model, device):
    """Zero-shot classification of the library's images: class names from their folders (or a
    column) filled into prompt templates; top-1/top-5 accuracy and the worst classes' confusions."""
    from cbir.evaluate import zeroshot_table
    from cbir.evaluate.library import evaluate_zeroshot
    from cbir.query.filters import Filters

    with _open(library=library, model=model, device=device) as lib:
        result = evaluate_zeroshot(lib, templates, label, Filters(where=where) if where else None, worst)
    if as_json:
        echo_json(result.as_dict())
    else:
        click.echo(zeroshot_table(result))


@cli.command()
@click.option("--quick", is_flag=True, help="Small sizes: a few minutes (the full run takes about an hour on 2 cores).")
@click.option("--only", metavar="SECTIONS", help="Comma-separated: ingest, decode, text, search, filtered, memory, gpu, serve, ray, ray-ingest (default: all).")
@click.option("--model", default="ViT-B-32:none", show_default=True, help="Model for the ingest sections (random weights: throughput does not depend on them).")
@click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda|auto", help="Where the model runs (the gpu section always uses CUDA when present).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per model batch (default: 32 on CPU, 256 on CUDA).")
@click.option("--workers", type=click.IntRange(min=1), help="Decode processes (default: one per core).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=Path("bench.json"), show_default=True, help="Where to write the full report.")
@debug_option
def bench(quick, only, model, device, batch_size, workers, json_path):
    """Measure ingest and search speed on this machine: end-to-end ingest against the model's own
    forward-pass ceiling and a naive one-image-at-a-time baseline, decode, per-stage timings,
    search latency per index kind, filtered search, memory. Prints Markdown tables."""
    import json as json_module

    from cbir.bench import SECTIONS, report_text, run

    sections = _split([only]) if only else SECTIONS
    report = run(quick=quick, model=model, device=device, sections=sections, batch=batch_size,
                 workers=workers, progress=lambda line: click.echo(line, err=True))
    json_path.write_text(json_module.dumps(report, indent=2, default=str))
    click.echo(report_text(report))
    click.echo(f"\n(full report: {json_path})")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on. Any address but loopback needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free one, printed).")
@click.option("--token", envvar="CBIR_TOKEN", metavar="TOKEN", help="Secret every request must carry (Authorization: Bearer TOKEN, or open /?token=TOKEN once). [env: CBIR_TOKEN]")
@click.option("--upload-limit", default="25MB", show_default=True, metavar="SIZE", help="Largest query image accepted.")
@click.option("--gpu", is_flag=True, help="Search the index on the GPU with faiss GPU ([gpu] extra); an error without one.")
@search_engine_options
@library_options
def serve(host, port, token, upload_limit, gpu, library, model, device):
    """Search the library in a browser, or from other programs over HTTP (read-only).

    \b
    Examples:
      cbir serve                                  then open http://127.0.0.1:8000/
      cbir serve --port 9000 --library ~/photo-libs/large
      CBIR_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe())') cbir serve --host 0.0.0.0
      cbir serve --engine ray --address auto --shards-per-actor 2
    """
    from cbir.index.types import parse_memory
    from cbir.serve import serve as run

    settings = resolve_settings(library=library, model=model, device=device, gpu=gpu, database_url=database_url())
    run(settings, host=host, port=port, token=token or None, upload_limit=parse_memory(upload_limit), echo=click.echo,
        ray=ray_options())


@cli.command("export")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["parquet", "npy"]), default="parquet", show_default=True, help="parquet: one file, a row per image with its vector; npy: a folder with vectors.npy, ids.npy and metadata.jsonl.")
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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON Lines.")
@debug_option
def models(as_json):
    """Models cbir can use: the bundled cbir-tiny and every open_clip pretrained model.

    Use one with --model NAME when creating a library; ARCH:path/to/weights.pt loads a local
    checkpoint. Hub weights download on first use.
    """
    from cbir.config import DEFAULT_MODEL
    from cbir.encode.registry import list_models

    for name, note in list_models():
        if name == DEFAULT_MODEL:
            note = "default for new libraries"
        if as_json:
            echo_json({"name": name, "note": note})
        else:
            click.echo(f"{name:<55} {note}".rstrip())


@cli.command()
@click.option("--library", metavar="PATH", help="Where to build the demo library (default: indexes/demo in a checkout, else the user data folder).")
@click.option("--images", type=click.IntRange(min=10), default=160, show_default=True, help="How many photos to generate.")
@click.option("--device", metavar="auto|cpu|cuda", help="Where the model runs.")
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Results per example search.")
@debug_option
def demo(library, images, device, k):
    """Generate a small photo library, index it with the bundled cbir-tiny model and run a few
    searches; no download, no GPU needed."""
    from datetime import datetime

    from cbir.demo import DEMO_MODEL, QUERY_SCENES, make_demo_photos, scene_of, slug
    from cbir.library import Library
    from cbir.query.filters import Filters

    settings = resolve_settings(
        library=library or None, model=DEMO_MODEL, device=device, env={}, default_library_name="demo"
    )
    photos_dir = settings.library / "photos"
    click.echo(f"Generating {images} demo photos in {photos_dir} ...")
    photos = make_demo_photos(photos_dir, images)
    with Library.open(settings, create=True) as lib:
        with _Progress(enabled=True) as progress:
            report = lib.ingest(photos_dir, progress=progress)
        click.echo(ingest_summary(report))
        found_total = shown_total = 0
        for scene in QUERY_SCENES:
            hits = lib.search(scene.caption, k=k)
            want = slug(scene)
            exist = sum(slug(p.scene) == want for p in photos)
            found = sum(scene_of(h.path) == want for h in hits)
            found_total, shown_total = found_total + found, shown_total + min(exist, k)
            click.echo(
                f'\ncbir search "{scene.caption}"  '
                f"({found} of the {exist} photos showing exactly that are in the top {k})"
            )
            click.echo(hits_table(hits))
        example = photos[0].path
        hits = lib.search(image=example, k=k)
        click.echo(f"\ncbir search --image {example}")
        click.echo(hits_table(hits))
        caption = QUERY_SCENES[1].caption
        hits = lib.search(caption, k=k, filters=Filters(cameras=("pixel",), after=datetime(2019, 7, 1)))
        click.echo(f'\ncbir search "{caption}" --camera pixel --after 2019-07 --explain')
        click.echo("\n".join(hits.plan.describe()) + "\n")
        click.echo(hits_table(hits))
        hits = lib.search("red circle", k=k, target="texts")
        click.echo('\ncbir search "red circle" --target text    (captions from the .txt files beside photos)')
        click.echo(hits_table(hits))
    click.echo(
        f"\nText search found {found_total} of the {shown_total} exact matches it could show."
        f"\nTry your own: cbir search --library {settings.library} \"a green star on a pink background\""
        f"\nIn a browser: cbir serve --library {settings.library}   (then open http://127.0.0.1:8000/)"
        f"\nWith real CLIP weights on your photos: cbir ingest ~/Pictures --model ViT-B-32:laion2b_s34b_b79k"
    )

"""The commands. Each parses options, calls the Library API and renders; nothing else."""

from __future__ import annotations

from pathlib import Path

import click

from cbir.cli import cli, debug_option, library_options
from cbir.cli.render import echo_json, hits_table, ingest_summary, query_label, status_text
from cbir.config import resolve_settings
from cbir.errors import UsageError


def _open(create=False, **options):
    from cbir.engine import Library

    return Library.open(resolve_settings(**options), create=create)


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
@click.argument("path", type=click.Path(path_type=Path))
@library_options
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per model batch. [env: CBIR_BATCH_SIZE]")
@click.option("--workers", type=click.IntRange(min=1), help="Decode processes (default: one per core). [env: CBIR_WORKERS]")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def ingest(path, library, model, device, batch_size, workers, as_json, quiet):
    """Add the images under PATH to the library (or update it: only new and changed files are
    encoded; moved files keep their vectors; deleted files leave the index).

    Example: cbir ingest ~/Pictures
    """
    lib = _open(create=True, library=library, model=model, device=device, batch_size=batch_size, workers=workers)
    with lib:
        with _Progress(enabled=not quiet and not as_json) as progress:
            report = lib.ingest(path, progress=progress)
        if as_json:
            echo_json(report.as_dict())
        else:
            click.echo(ingest_summary(report))
            click.echo(f"Library {lib.path}: {lib.catalog.count_images()} images ({lib.fingerprint['spec']})")


@cli.command()
@click.argument("query", nargs=-1)
@click.option("--image", "image", type=click.Path(path_type=Path), help="Find images similar to this picture.")
@click.option("--batch", "batch", type=click.File("r", encoding="utf-8"), help="Run many queries: one per line (text, or {\"image\": \"PATH\"}); - for stdin.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Results per query.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one object per result.")
@library_options
def search(query, image, batch, k, as_json, library, model, device):
    """Search the library by text (QUERY), by example (--image) or many at once (--batch).

    \b
    Examples:
      cbir search two dogs in a frosty field
      cbir search --image holiday.jpg -k 20
      cbir search --batch queries.txt --json
    """
    from cbir.query import Query
    from cbir.query.batch import parse_batch

    text = " ".join(query).strip()
    given = sum(bool(x) for x in (text, image, batch))
    if given != 1:
        raise UsageError("give exactly one of: a QUERY text, --image PATH, or --batch FILE")
    if batch:
        items = parse_batch(batch, source=batch.name)
    elif image:
        items = [({"image": str(image)}, Query(image=image))]
    else:
        items = [(text, Query(text=text))]
    with _open(library=library, model=model, device=device) as lib:
        results = lib.search_many([q for _, q in items], k=k)
    for (echo, _), hits in zip(items, results):
        if as_json:
            for hit in hits:
                echo_json({"query": echo, **hit.as_dict()})
            continue
        if len(items) > 1:
            click.echo(f"\n== {query_label(echo)}")
        click.echo(hits_table(hits))


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
    from cbir.demo import DEMO_MODEL, QUERY_SCENES, make_demo_photos, scene_of, slug
    from cbir.engine import Library

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
    click.echo(
        f"\nText search found {found_total} of the {shown_total} exact matches it could show."
        f"\nTry your own: cbir search --library {settings.library} \"a green star on a pink background\""
        f"\nWith real CLIP weights on your photos: cbir ingest ~/Pictures --model ViT-B-32:laion2b_s34b_b79k"
    )

"""`cbir eval`, `cbir bench`, `cbir serve`, `cbir models` and `cbir demo`: measuring, serving
and trying cbir."""

from __future__ import annotations

from pathlib import Path

import click

from cbir.cli import cli, context_settings, debug_option, library_options
from cbir.cli.common import _open, _Progress, _split
from cbir.cli.engine_options import ray_options, search_engine_options
from cbir.cli.render import echo_json, hits_table, ingest_summary
from cbir.config import resolve_settings


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
    from cbir.library import Filters

    with _open(library=library, model=model, device=device) as lib:
        result = evaluate_retrieval(lib, Filters(where=where) if where else None)
    if as_json:
        echo_json(result.as_dict())
    else:
        click.echo(retrieval_table(result))


@eval_group.command("zeroshot")
@click.option(
    "--templates",
    default="ensemble",
    show_default=True,
    metavar="NAME|FILE",
    help="Prompt templates: single (a photo of a {}.), ensemble (open_clip's 7), openai (CLIP's 80) or a file with one template per line.",
)
@click.option(
    "--label",
    default="folder",
    show_default=True,
    metavar="folder|extra.COLUMN",
    help="Each image's class: the folder holding it, or a dataset column.",
)
@click.option("--where", metavar="EXPR", help="Only images passing this filter (see cbir search --where).")
@click.option(
    "--worst",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many of the worst classes to show with their confusions.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@library_options
def eval_zeroshot(templates, label, where, worst, as_json, library, model, device):
    """Zero-shot classification of the library's images: class names from their folders (or a
    column) filled into prompt templates; top-1/top-5 accuracy and the worst classes' confusions."""
    from cbir.evaluate import zeroshot_table
    from cbir.evaluate.library import evaluate_zeroshot
    from cbir.library import Filters

    with _open(library=library, model=model, device=device) as lib:
        result = evaluate_zeroshot(lib, templates, label, Filters(where=where) if where else None, worst)
    if as_json:
        echo_json(result.as_dict())
    else:
        click.echo(zeroshot_table(result))


@cli.command()
@click.option("--quick", is_flag=True, help="Small sizes: a few minutes (the full run takes about an hour on 2 cores).")
@click.option(
    "--only",
    metavar="SECTIONS",
    help="Comma-separated: backends, ingest, decode, text, search, filtered, memory, gpu, serve, ray, ray-ingest (default: all).",
)
@click.option(
    "--model",
    default="ViT-B-32:none",
    show_default=True,
    help="Model for the ingest sections (random weights: throughput does not depend on them).",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    metavar="cpu|cuda|auto",
    help="Where the model runs (the gpu section always uses CUDA when present).",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="Images per model batch (default: 32 on CPU, 256 on CUDA)."
)
@click.option("--workers", type=click.IntRange(min=1), help="Decode processes (default: one per core).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=Path("bench.json"),
    show_default=True,
    help="Where to write the full report.",
)
@debug_option
def bench(quick, only, model, device, batch_size, workers, json_path):
    """Measure ingest and search speed on this machine: end-to-end ingest against the model's own
    forward-pass ceiling and a naive one-image-at-a-time baseline, decode, per-stage timings,
    search latency per index kind, filtered search, memory. Prints Markdown tables."""
    import json as json_module

    from cbir.bench import SECTIONS, report_text, run

    sections = _split([only]) if only else SECTIONS
    report = run(
        quick=quick,
        model=model,
        device=device,
        sections=sections,
        batch=batch_size,
        workers=workers,
        progress=lambda line: click.echo(line, err=True),
    )
    json_path.write_text(json_module.dumps(report, indent=2, default=str))
    click.echo(report_text(report))
    click.echo(f"\n(full report: {json_path})")


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Any address but loopback needs --token.",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free one, printed)."
)
@click.option(
    "--token",
    envvar="CBIR_TOKEN",
    metavar="TOKEN",
    help="Secret every request must carry (Authorization: Bearer TOKEN, or open /?token=TOKEN once). [env: CBIR_TOKEN]",
)
@click.option("--upload-limit", default="25MB", show_default=True, metavar="SIZE", help="Largest query image accepted.")
@click.option(
    "--gpu", is_flag=True, help="Search the index on the GPU with faiss GPU ([gpu] extra); an error without one."
)
@click.option(
    "--watch",
    "watch",
    metavar="FOLDER",
    multiple=True,
    help="Keep the library up to date with FOLDER as files land, change, move and go, as `cbir watch` does, "
    "in a thread of the server (repeatable). A missing folder is an error.",
)
@search_engine_options
@library_options
def serve(host, port, token, upload_limit, gpu, watch, library, model, device):
    """Search the library in a browser, or from other programs over HTTP (read-only).

    \b
    Examples:
      cbir serve                                  then open http://127.0.0.1:8000/
      cbir serve --port 9000 --library ~/photo-libs/large
      CBIR_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe())') cbir serve --host 0.0.0.0
      cbir serve --engine ray --address auto --shards-per-actor 2
      cbir serve --watch ~/Pictures              new photos are found seconds after they land
    """
    from cbir.serve import serve as run
    from cbir.units import parse_bytes

    settings = resolve_settings(library=library, model=model, device=device, gpu=gpu, **context_settings())
    limit = parse_bytes(upload_limit, "upload limit", positive=True)
    run(
        settings,
        host=host,
        port=port,
        token=token or None,
        upload_limit=limit,
        echo=click.echo,
        ray=ray_options(),
        watch=watch,
    )


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON Lines.")
@debug_option
@click.pass_context
def models(ctx, as_json):
    """Models cbir can use: the bundled cbir-tiny and every open_clip pretrained model.

    Use one with --model NAME when creating a library; ARCH:path/to/weights.pt loads a local
    checkpoint. Hub weights download on first use. `cbir models check` measures int8 on a
    library's own images, and switches the library to it.
    """
    if ctx.invoked_subcommand is not None:
        return
    from cbir.config import DEFAULT_MODEL
    from cbir.library import list_models

    for name, note in list_models():
        if name == DEFAULT_MODEL:
            note = "default for new libraries"
        if as_json:
            echo_json({"name": name, "note": note})
        else:
            click.echo(f"{name:<55} {note}".rstrip())


@cli.command()
@click.option(
    "--library",
    metavar="PATH",
    help="Where to build the demo library (default: indexes/demo in a checkout, else the user data folder).",
)
@click.option(
    "--images", type=click.IntRange(min=10), default=160, show_default=True, help="How many photos to generate."
)
@click.option("--device", metavar="auto|cpu|cuda", help="Where the model runs.")
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Results per example search.")
@debug_option
def demo(library, images, device, k):
    """Generate a small photo library, index it with the bundled cbir-tiny model and run a few
    searches; no download, no GPU needed."""
    from datetime import datetime

    from cbir.demo import (
        DEMO_MODEL,
        QUERY_SCENES,
        built_with_older_weights,
        clear_library,
        make_demo_photos,
        scene_of,
        slug,
    )
    from cbir.library import Filters, Library

    settings = resolve_settings(
        library=library or None, model=DEMO_MODEL, device=device, env={}, default_library_name="demo"
    )
    photos_dir = settings.library / "photos"
    if built_with_older_weights(settings.library, photos_dir):
        click.echo(f"The demo library at {settings.library} was built with an earlier {DEMO_MODEL}: building it again.")
        clear_library(settings.library, keep=photos_dir)
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
        f'\nTry your own: cbir search --library {settings.library} "a green star on a pink background"'
        f"\nIn a browser: cbir serve --library {settings.library}   (then open http://127.0.0.1:8000/)"
        f"\nWith real CLIP weights on your photos: cbir ingest ~/Pictures --model ViT-B-32:laion2b_s34b_b79k"
    )

"""`cbir classify`, `cbir tag` and `cbir duplicates`: zero-shot labels and duplicate groups
over the library's own vectors."""

from __future__ import annotations

import click

from cbir.cli import cli, context_settings, library_options  # noqa: F401  (commands below register on it)
from cbir.cli.common import _open
from cbir.cli.render import echo_json, echo_rows
from cbir.errors import UsageError
from cbir.units import format_bytes

TEMPLATES_HELP = (
    "Prompt templates: single (a photo of a {}.), ensemble (open_clip's 7), openai (CLIP's 80) "
    "or a file with one template per line, each with one {} for the label."
)


def _classifier(library, model, device):
    """The model to classify with (cbir.library.open_encoder): the library's when a library is
    named (--library, CBIR_LIBRARY) or, without --model, when the default library exists; else
    the --model (the default model for new libraries without one), loaded on its own."""
    from cbir.library import open_encoder

    return open_encoder(library=library, model=model, device=device, **context_settings())


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--labels", metavar="A,B,C", help='Comma-separated labels to choose between: --labels "dog,cat,car".')
@click.option("--labels-file", metavar="FILE", help="Labels, one per line (blank lines and # comments ignored).")
@click.option("--templates", default="ensemble", show_default=True, metavar="NAME|FILE", help=TEMPLATES_HELP)
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="Labels shown per image.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="JSON Lines: one object per image (path, best, labels with probability and similarity).",
)
@library_options
def classify(images, labels, labels_file, templates, top, as_json, library, model, device):
    """Zero-shot classification of IMAGES (any image files) into the given labels.

    Each label is put into the prompt templates and encoded; an image's probabilities are the
    softmax over the labels of its cosine similarities times the model's logit scale (CLIP's
    learned temperature). Uses the library's model when --library (or CBIR_LIBRARY) names one,
    else --model. An unreadable image is reported on its own line and the others are still
    classified; the exit status is then 1.

    \b
    Examples:
      cbir classify photo.jpg --labels "dog,cat,car"
      cbir classify *.jpg --labels-file classes.txt --templates openai --json
    """
    from cbir.classify import Classification, classify_files, file_problem, parse_labels, read_labels_file

    if bool(labels) == bool(labels_file):
        raise UsageError("give the labels with --labels A,B,C or --labels-file FILE (one of them)")
    names = parse_labels(labels) if labels else read_labels_file(labels_file)
    if len(names) < 2:
        raise UsageError(f"give at least two labels to choose between (got only {names[0]!r})")
    from cbir.evaluate.templates import resolve_templates

    problems = [file_problem(path) for path in images]
    if all(problems):  # nothing to classify: say so before the model loads (seconds)
        results = [Classification(str(path), error=problem) for path, problem in zip(images, problems)]
    else:
        prompts = resolve_templates(templates)  # a bad templates file: an error before the model loads
        results = classify_files(_classifier(library, model, device), images, names, prompts, top)
    failed = [r for r in results if r.error is not None]
    if len(images) == 1 and failed:
        raise UsageError(f"cannot classify {failed[0].path}: {failed[0].error}")
    width = max(len(n) for n in names)
    for result in results:
        if as_json:
            echo_json(result.as_dict())
        if result.error is not None:
            click.echo(f"Error: cannot classify {result.path}: {result.error}", err=True)
            continue
        if not as_json:
            click.echo(result.path)
            for label, probability, similarity in result.labels:
                click.echo(f"  {probability:6.3f}  {label:<{width}}  (cosine {similarity:.3f})")
    if failed:
        raise click.exceptions.Exit(1)


@cli.command()
@click.option(
    "--vocabulary", metavar="FILE", help="The words to tag with, one per line (blank lines and # comments ignored)."
)
@click.option(
    "--threshold",
    type=float,
    default=0.2,
    show_default=True,
    metavar="P",
    help="Keep a word when its probability is at least P: the softmax over the vocabulary of the image's cosine similarities times the model's logit scale (what cbir classify shows), so at most 1/P words pass.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="At most this many tags per image (the most probable).",
)
@click.option(
    "--min-similarity",
    type=float,
    metavar="X",
    help="Also require a cosine similarity of at least X (the probabilities always sum to 1, even when no word fits).",
)
@click.option("--templates", default="ensemble", show_default=True, metavar="NAME|FILE", help=TEMPLATES_HELP)
@click.option("--clear", is_flag=True, help="Remove every tag instead (labels and captions stay).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@library_options
def tag(vocabulary, threshold, top, min_similarity, templates, clear, as_json, library, model, device):
    """Tag every image of the library with words of a vocabulary, zero-shot, from the stored
    vectors (no image is decoded or encoded again).

    Tags are stored with their probability; they replace the tags of the previous run (labels
    and captions are never touched), are --tag filters (cbir search --tag red) and library texts
    (cbir search red --target text). `cbir tags IMAGE` shows an image's tags.

    \b
    Examples:
      cbir tag --vocabulary words.txt
      cbir tag --vocabulary words.txt --threshold 0.3 --top 3 --templates openai
    """
    from cbir.classify import read_labels_file

    if clear:
        if vocabulary:
            raise UsageError("--clear removes the tags; it takes no --vocabulary")
        with _open(library=library, model=model, device=device) as lib:
            removed = lib.clear_tags()
        if as_json:
            echo_json({"removed": removed})
        else:
            click.echo(f"removed {removed} tags")
        return
    if not vocabulary:
        raise UsageError("give the words to tag with: --vocabulary FILE (one per line)")
    words = read_labels_file(vocabulary, "--vocabulary")
    with _open(library=library, model=model, device=device) as lib:
        report = lib.tag(words, templates=templates, threshold=threshold, top=top, min_similarity=min_similarity)
    if as_json:
        echo_json(report.as_dict())
        return
    click.echo(
        f"tagged {report.tagged} of {report.images} images with {report.tags} tags "
        f"({report.per_image:.2f} per tagged image; vocabulary of {report.vocabulary}, "
        f"probability >= {report.threshold}, at most {report.top}) in {report.seconds:.1f}s"
    )
    if report.replaced:
        click.echo(f"replaced {report.replaced} tags of the previous run")
    common = report.common()
    if common:
        click.echo("most common tags:")
        width = max(len(t) for t, _ in common)
        for word, count in common:
            click.echo(f"  {word:<{width}}  {count} images")


@cli.command("tags")
@click.argument("image", type=str)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON Lines.")
@library_options
def tags_command(image, as_json, library, model, device):
    """The tags of IMAGE (from cbir tag) with their probabilities, best first."""
    with _open(library=library, model=model, device=device) as lib:
        found = lib.tags_of(image)
    if not found and not as_json:
        click.echo("(no tags: run cbir tag --vocabulary FILE)")
    echo_rows(
        found, as_json, ("tag", "score"), lambda word, score: f"{'' if score is None else f'{score:.3f}':>6}  {word}"
    )


@cli.command()
@click.option(
    "--threshold",
    type=float,
    default=0.98,
    show_default=True,
    metavar="X",
    help="Cosine similarity from which two images are copies (resized, re-encoded).",
)
@click.option(
    "--near",
    type=float,
    default=0.92,
    show_default=True,
    metavar="Y",
    help="Cosine similarity from which two images are near-duplicates (similar shots); --near equal to --threshold lists copies only.",
)
@click.option(
    "--neighbours",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Nearest images each image is compared with (groups also form through chains).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one group per line.")
@library_options
def duplicates(threshold, near, neighbours, as_json, library, model, device):
    """Groups of duplicate images: exact copies (same bytes), copies (resized or re-encoded:
    cosine >= --threshold) and near-duplicates (similar shots: cosine >= --near), from the
    stored vectors (no image is decoded). Nothing is deleted.

    Each group names a suggested keeper: the largest image (pixels), then the oldest (date
    taken, else the file time), then the shortest path.
    """
    with _open(library=library, model=model, device=device) as lib:
        report = lib.duplicates(copy=threshold, near=near, neighbours=neighbours)
    if as_json:
        for group in report.groups:
            echo_json(group.as_dict())
        return
    for group in report.groups:
        click.echo(f"{group.kind}: {len(group.members)} images, best similarity {group.similarity:.3f}")
        for m in group.members:
            mark = "keep" if m.keeper else ("same bytes" if m.exact else f"{m.similarity:.3f}")
            taken = (m.taken or "")[:19].replace("T", " ")
            click.echo(f"  {mark:>10}  {m.width}x{m.height}  {format_bytes(m.bytes):>8}  {taken:<19}  {m.path}")
    counts = report.counts()
    click.echo(
        f"{len(report.groups)} groups among {report.images} images ({counts['exact']} exact, "
        f"{counts['copy']} copies, {counts['near']} near-duplicates); {report.removable} images "
        f"are not their group's keeper. Nothing was deleted."
    )

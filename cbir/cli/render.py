"""Turning results into terminal text or JSON Lines."""

from __future__ import annotations

import json
import shlex

import click

from cbir.units import format_bytes


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, default=str))


def echo_rows(rows, as_json: bool, keys: tuple[str, ...], line) -> None:
    """Each row as a JSON line of ``keys``, or as the text ``line(*row)``."""
    for row in rows:
        if as_json:
            echo_json(dict(zip(keys, row)))
        else:
            click.echo(line(*row))


def query_label(query) -> str:
    """A batch query as a heading: the text itself, or ``image: PATH, text: ...``."""
    if isinstance(query, str):
        return query
    return ", ".join(f"{k}: {v}" for k, v in query.items())


def hits_table(hits, text_width: int = 60) -> str:
    if not hits:
        return "  (no results)"
    if any(h.text_id is not None for h in hits):
        lines = [f"{'rank':>4}  {'score':>6}  {'source':<8}  {'text':<{text_width}}  image"]
        lines += [
            f"{h.rank:>4}  {h.score:>6.3f}  {h.source:<8}  {_clip(h.text, text_width):<{text_width}}  {h.path}{_gone(h)}"
            for h in hits
        ]
        return "\n".join(lines)
    lines = [f"{'rank':>4}  {'score':>6}  path"]
    lines += [f"{h.rank:>4}  {h.score:>6.3f}  {h.path}{_gone(h)}" for h in hits]
    return "\n".join(lines)


def _gone(hit) -> str:
    return "  (missing: no longer on disk)" if getattr(hit, "missing", False) else ""


def _clip(text: str, width: int) -> str:
    """A text on one line of the table (the lines of an OCR text or a caption file joined)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def ingest_summary(report) -> str:
    parts = [f"{report.added} new"]
    for count, label in (
        (report.updated, "updated"),
        (report.moved, "moved"),
        (report.copied, "duplicates"),
        (report.touched, "touched"),
        (report.removed, "removed"),
    ):
        if count:
            parts.append(f"{count} {label}")
    parts.append(f"{report.unchanged} unchanged")
    parts.append(f"{report.skipped} skipped")
    speed = f" ({report.images_per_second:.1f} images/s)" if report.encoded else ""
    line = f"{report.root}: {', '.join(parts)}; {report.encoded} encoded in {report.seconds:.1f} s{speed}"
    for old, count in report.followed.items():
        line += f"\n{count} of the moved images followed from {old}, which is gone"
    if report.ocr_read or report.ocr_failed:
        failed = f", {report.ocr_failed} failed (read again next run)" if report.ocr_failed else ""
        line += f"\nOCR: {report.ocr_read} read, {report.ocr_with_text} with text{failed}"
    for note in report.notes:
        line += f"\n{note}"
    if report.skipped:
        line += "\nSkipped files and reasons: cbir status --skipped"
    return line


def _media(status) -> str:
    """ "  (12 pages of 2 PDFs, 40 frames of 3 videos)" when the library holds some."""
    parts = [
        f"{items} {noun}{'s' if items != 1 else ''} of {files} {kind}{'s' if files != 1 else ''}"
        for items, noun, files, kind in (
            (status.pdf_pages, "page", status.pdfs, "PDF"),
            (status.video_frames, "frame", status.videos, "video"),
        )
        if items
    ]
    return f"  ({', '.join(parts)})" if parts else ""


def status_text(status) -> str:
    fp = status.fingerprint
    model = f"{status.model} ({fp['weights']}, {fp['dim']}-d)" if fp else status.model
    index_state = "up to date" if status.index_current else "stale: rebuilt on next use"
    lines = [
        f"library   {status.library}",
        f"model     {model}",
        f"images    {status.images}" + _media(status),
        f"texts     {status.texts}  (captions, descriptions, OCR, labels, tags)",
        f"skipped   {status.skipped}" + ("  (list: cbir status --skipped)" if status.skipped else ""),
        f"index     {status.index_type}, {status.index_vectors} vectors, "
        f"{format_bytes(status.index_bytes)}, {index_state}",
        f"database  {format_bytes(status.database_bytes)}",
        f"ocr       {_ocr_state(status)}",
    ]
    if status.masks:
        lines.append(f"masks     {status.masks}  (covered in every image and query image)")
    for path, count in status.missing_roots:
        lines.append(
            f"missing   {path}: gone from disk, {count} images kept "
            f"(ingest it where it is now, or `cbir forget {shlex.quote(str(path))}`)"
        )
    for path, patterns, has_ignore_file in status.exclusions:
        given = [f"--exclude {shlex.quote(p)}" for p in patterns]
        lines.append(f"excludes  {path}: " + ", ".join(given + ([".cbirignore"] if has_ignore_file else [])))
    if status.skipped_files:
        lines.append("")
        lines += [f"{path}: {reason}" for path, reason in status.skipped_files]
    return "\n".join(lines)


def _ocr_state(status) -> str:
    """Whether ingests read the text inside images, and what they have read."""
    if status.ocr:
        return f"on: {status.ocr_read} of {status.images} images read, {status.ocr_texts} with text"
    if status.ocr_texts:
        return f"off (the {status.ocr_texts} OCR texts stored stay; cbir ingest --ocr turns it on)"
    return "off (cbir ingest --ocr reads the text inside images)"


def build_summary(report) -> str:
    params = ", ".join(f"{k}={v}" for k, v in report.params.items()) or "none"
    recall = (
        f"recall@10 {report.recall_at_10:.3f} on {report.queries} held-out vectors"
        if report.recall_at_10 is not None
        else "recall not measured (too few vectors)"
    )
    return (
        f"{report.name}: {report.kind} ({report.factory}), {report.vectors} vectors, "
        f"{format_bytes(report.bytes)}, built in {report.seconds:.1f} s{' on the GPU' if report.gpu else ''}; "
        f"search {params}; {recall}\n"
        f"  why: {report.reason}"
    )


def index_info_text(info: dict) -> str:
    if info.get("generation") is None:
        return "no index yet (it is built on the next ingest or search)"
    lines = [f"generation {info['generation']} ({info['folder']})"]
    for name, entry in info["indexes"].items():
        spec = entry["spec"]
        params = ", ".join(f"{k}={v}" for k, v in spec["params"].items()) or "none"
        build = entry.get("build") or {}
        recall = build.get("recall_at_10")
        lines.append(
            f"{name:<7} {spec['kind']} ({spec['factory']}), {entry['count']} vectors, "
            f"{format_bytes(entry['bytes'])}, search {params}"
            + (f", recall@10 {recall:.3f}" if recall is not None else "")
            + f", vector version {entry['vector_version']}"
        )
        if entry.get("sharding"):
            router, counts = entry["sharding"]["router"], entry["sharding"]["counts"]
            lines.append(f"        {len(counts)} shards by {router['by']}: {', '.join(map(str, counts))} vectors")
    return "\n".join(lines)

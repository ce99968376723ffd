"""What an ingest settles before the pipeline runs (``Library.ingest`` calls these): which source
the path is (a folder, one image or a dataset), where it sits among the library's roots, the
batch size and where JPEGs are decoded."""

from __future__ import annotations

from pathlib import Path

from cbir.errors import UsageError


def source(catalog, path: str | Path, format: str | None, image_column: str | None, caption_column: str | None):
    """The resolved folder or image file to ingest and, for a dataset, the dataset read from
    ``path`` (else None); ``format`` None detects it."""
    from cbir.ingest.datasets import FORMATS, detect_format
    from cbir.ingest.scan import is_read_name

    if format is not None and format not in FORMATS:
        raise UsageError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}")
    if format in (None, "folder"):
        from cbir.ingest.roots import folder_gone, missing_folder_message

        # a folder of the library gone from disk: say where its images are (or went)
        known = folder_gone(Path(path).expanduser()) and missing_folder_message(catalog, path)
        if known:
            raise UsageError(known)
    single_image = Path(path).expanduser().is_file() and is_read_name(str(path))  # or one PDF or video
    fmt = format or ("folder" if single_image else detect_format(str(path)))
    dataset = None
    if fmt == "folder":
        target = Path(path).expanduser()
        if not target.exists():
            raise UsageError(f"no such file or folder: {path}")
        target = target.resolve()
    else:
        from cbir.ingest.sources import read_dataset

        dataset = read_dataset(str(path), fmt, image_column=image_column, caption_column=caption_column)
        target = dataset.base.resolve()
    return target, dataset


def place(catalog, target: Path, dataset):
    """(root id, root folder, scope under it, the dataset's scan or None): a folder is scanned
    under its root, one image alone, a dataset as a whole."""
    base = target if target.is_dir() else target.parent
    root_id, scope = catalog.root_for(base)
    if not target.is_dir():
        scope = f"{scope}/{target.name}" if scope else target.name
    root = catalog.roots()[root_id]
    scanned = dataset.scan_result(root) if dataset else None
    if dataset:
        scope = ""
    return root_id, root, scope, scanned


def batch_size(configured: int | None, on_gpu: bool) -> int:
    """The configured batch size, else one that fills a GPU without starving a CPU."""
    return configured or (256 if on_gpu else 32)


def decode_device(choice: str | None, encoder_device: str) -> str | None:
    """Where JPEGs are decoded: ``auto`` is the model's CUDA device when nvJPEG works there,
    else the CPU workers (None); any other choice is kept."""
    if choice != "auto":
        return choice
    if encoder_device.startswith("cuda"):
        from cbir.ingest import device_decode

        return encoder_device if device_decode.available(encoder_device) else None
    return None

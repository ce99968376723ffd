"""What Library.ingest and Library.forget do, which add a folder's images to a library and take
them out: the checks made before anything loads, the writer locks, the model recorded on a
library's first ingest, the stage (local workers or Ray) and the indexes saved however the run
ends. The Library's methods document the options."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import OperationalError

from cbir.errors import CbirError, StorageError, UsageError
from cbir.fsutil import writer_lock
from cbir.names import IMAGES, TEXTS
from cbir.store.catalog import MODEL
from cbir.store.db import catalogue_writer_lock
from cbir.store.opening import database_error

if TYPE_CHECKING:
    from cbir.library import Library

ENGINES = ("local", "ray")  # who decodes and encodes


def ingest(
    library: Library,
    path: str | Path,
    *,
    progress,
    format: str | None,
    image_column: str | None,
    caption_column: str | None,
    decode_device: str | None,
    retry_failed: bool,
    engine: str,
    address: str | None,
    gpus_per_worker: float,
    ray_workers: int | None,
    exclude,
    ocr: bool | None,
    frame_every: float | None = None,
    max_frames: int | None = None,
    masks=None,
):
    from cbir.ingest import frame_setting, mask_setting, ocr_setting, prepare
    from cbir.ingest.pipeline import default_workers, run_ingest

    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "ray":
        from cbir.distributed.cluster import import_ray

        import_ray()  # without Ray, a one-line error before any work
    read_text = ocr_setting.wanted(library.catalog, ocr)  # without the ocr extra, the same
    target, dataset = prepare.source(library.catalog, path, format, image_column, caption_column)
    if exclude is not None:
        from cbir.ingest.exclude import check_patterns

        check_patterns(exclude, dataset is not None)  # before a model loads
    with writer_lock(library.path), catalogue_writer_lock(library.catalog.engine):
        masks = mask_setting.settle(library.catalog, masks)  # before a model loads: a refusal is instant
        encoder = mask_setting.apply(library.encoder, masks)
        if library.fingerprint is None:
            library.catalog.set_meta(MODEL, json.dumps(encoder.fingerprint()))
            library.catalog.dim = encoder.dim
        ocr_setting.remember(library.catalog, ocr)
        sampling = frame_setting.sampling(library.catalog, frame_every, max_frames)
        frame_setting.remember(library.catalog, sampling)
        root_id, root, scope, scanned = prepare.place(library.catalog, target, dataset)
        indexes = [library.indexes.load(name, writer=True) for name in (IMAGES, TEXTS)]
        batch = prepare.batch_size(library.settings.batch_size, encoder.device.startswith("cuda"))
        # masks are painted on decoded images: the device's JPEG decoder would skip them
        decode_device = None if masks else prepare.decode_device(decode_device, encoder.device)
        stage = None
        if engine == "ray":
            from cbir.distributed.ingest import RayStage

            batch = prepare.batch_size(library.settings.batch_size, bool(gpus_per_worker))
            stage = RayStage.of(
                encoder, batch_size=batch, address=address, workers=ray_workers, gpus_per_worker=gpus_per_worker
            )
        failed = True
        try:
            report = run_ingest(
                library.catalog,
                indexes[0],
                indexes[1],
                encoder,
                root_id,
                root,
                scope,
                batch_size=batch,
                workers=library.settings.workers or default_workers(),
                progress=progress,
                dataset=scanned,
                decode_device=decode_device,
                retry_failed=retry_failed,
                stage=stage,
                exclude=exclude,
                ocr=read_text,
                sampling=sampling,
            )
            if stage is not None and stage.survived:
                report.notes.append(stage.survived)
            failed = False
        except OperationalError as e:
            raise database_error(e, library.path) from e
        finally:
            _save_indexes(library, indexes, failed)
        return report


def _save_indexes(library: Library, indexes: list, failed: bool) -> None:
    """Save what the in-memory indexes hold, labelled with the versions they reflect, even
    when the run was interrupted: a batch committed but not yet indexed leaves one stale, and
    a stale index is rebuilt on the next open."""
    try:
        library.indexes.save_changed(dict(zip((IMAGES, TEXTS), indexes)))
    except Exception as e:
        if failed:  # the run's own error is the one to report, never this one
            logging.getLogger(__name__).warning("saving the indexes after the error failed too: %s", e)
        elif isinstance(e, (CbirError, OperationalError, OSError)):
            raise StorageError(
                f"{e}; every image ingested is committed, and the index is rebuilt from them on the next run"
            ) from e
        else:
            raise


def forget(library: Library, path: Path, given: str | Path, dry_run: bool):
    """Library.forget of the folder ``path`` (``given`` as the user wrote it, for messages)."""
    from cbir.ingest import roots

    root_id = roots.find_root(library.catalog, path, given)
    images = library.catalog.root_image_counts().get(root_id, 0)
    gone = roots.folder_gone(path)
    if dry_run:
        return roots.Forgotten(path, images, None, gone, dry_run=True)
    with writer_lock(library.path), catalogue_writer_lock(library.catalog.engine):
        root_id = roots.find_root(library.catalog, path, given)  # still there, now that we write
        indexes = {name: library.indexes.load(name, writer=True) for name in (IMAGES, TEXTS)}
        try:
            images = library.catalog.root_image_counts().get(root_id, 0)
            texts = roots.forget(library.catalog, root_id, indexes[IMAGES], indexes[TEXTS])
        except OperationalError as e:
            raise database_error(e, library.path) from e
        library.indexes.save_changed(indexes)
    return roots.Forgotten(path, images, texts, gone)

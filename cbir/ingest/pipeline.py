"""The ingest pipeline: scan -> plan -> decode (worker processes) -> encode (batched) -> persist -> index.

Decode and encode form one pluggable stage (``Stage``): the local one here, or Ray's
(cbir.distributed.ingest). Whatever runs it, this process alone commits (cbir.ingest.commit):
every batch goes to the database (metadata and vectors together) before the in-memory index
sees it, so a run stopped at any moment resumes where it stopped on the next run. What to read
is planned before (cbir.ingest.plan), what each file read means sorted after
(cbir.ingest.outcome)."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

import numpy as np

from cbir.encode.spec import Encoder
from cbir.errors import CbirError
from cbir.index.vector_index import VectorIndex
from cbir.ingest import exclude as exclusions
from cbir.ingest.captions import Captions, DatasetRows
from cbir.ingest.commit import MAX_CHANGES, Committer
from cbir.ingest.decode import MAX_PIXELS, Decoded, FileTask, decode_chunk, decode_task, init_worker
from cbir.ingest.media import container_of, is_container_name
from cbir.ingest.outcome import Outcomes
from cbir.ingest.plan import plan_ingest
from cbir.ingest.report import IngestReport
from cbir.ingest.roots import VanishedRows
from cbir.ingest.scan import ScannedFile, ScanResult, scan
from cbir.ingest.video import EVERY, MAX_FRAMES
from cbir.ingest.workers import worker_pool
from cbir.store.catalog import Catalog, StoredFile
from cbir.timing import Timer

__all__ = [
    "CHUNK",
    "MAX_CHANGES",
    "IngestReport",
    "Item",
    "LocalStage",
    "Progress",
    "Stage",
    "decode_stream",
    "default_workers",
    "encode_decoded",
    "run_ingest",
]

Progress = Callable[[int, int], None]  # (files done, files to do)

CHUNK = 16  # files per task sent to a decode worker

# A decoded file and its image vector; the vector is None when the file needed no model (its
# content is already in the library) or could not be used (``Decoded.error``).
Item = tuple[Decoded, "np.ndarray | None"]
# Decode and encode: (files to read, content hashes the library holds, timer) -> batches of
# items, each file once, in any order. The local engine's is LocalStage; Ray's is in
# cbir.distributed.ingest.
Stage = Callable[[list[FileTask], frozenset, Timer], Iterator[list[Item]]]


def decode_stream(
    tasks: list[FileTask], encoder_pp, known: frozenset, workers: int, jpeg_elsewhere: bool = False
) -> Iterator[Decoded]:
    """Decoded files in input order. Worker processes decode ahead of the consumer, bounded to a
    few chunks per worker so memory stays flat however slow encoding is. With ``jpeg_elsewhere``
    they only read JPEGs' metadata and leave their pixels to the model's device."""
    if workers <= 1 or len(tasks) <= 2 * CHUNK:
        for task in tasks:
            yield from decode_task(task, encoder_pp, known, MAX_PIXELS, jpeg_elsewhere)
        return
    chunks = file_chunks(tasks)
    pool = worker_pool(workers, init_worker, (encoder_pp, known, MAX_PIXELS, jpeg_elsewhere))
    try:
        inflight = deque(pool.submit(decode_chunk, c) for c in islice(chunks, 3 * workers))
        while inflight:
            try:
                results = inflight.popleft().result()
            except BrokenProcessPool:
                raise CbirError(
                    "a decode worker process died (out of memory, or a file crashed the image "
                    "decoder); everything committed so far is kept: run the same command again"
                ) from None
            nxt = next(chunks, None)
            if nxt is not None:
                inflight.append(pool.submit(decode_chunk, nxt))
            yield from results
    finally:
        # Queued chunks are cancelled and running ones finish (a chunk is a few files). Waiting
        # also lets the pool's manager thread end before interpreter exit: Python 3.11's exit hook
        # otherwise races it for the pool's wake-up pipe and prints an EBADF traceback.
        pool.shutdown(wait=True, cancel_futures=True)


def file_chunks(tasks: list[FileTask]) -> Iterator[list[FileTask]]:
    """Tasks in chunks of CHUNK files, a PDF or video alone in its own: it delivers up to
    hundreds of pages or frames at once."""
    chunk: list[FileTask] = []
    for task in tasks:
        if is_container_name(task.path):
            yield [task]
            continue
        chunk.append(task)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class LocalStage:
    """The local engine: decode in forked worker processes (``decode_stream``), encode here in
    batches of ``batch_size``; with ``decode_device`` JPEGs are decoded there, batch by batch."""

    encoder: Encoder
    workers: int
    batch_size: int
    decode_device: str | None = None

    def __call__(self, tasks: list[FileTask], known: frozenset, timer: Timer) -> Iterator[list[Item]]:
        """Batches encoded one ahead, on a thread: while the caller commits a batch, the next one
        encodes (the model releases the GIL), so commits cost the model no time (int8 ViT-B-32
        on 2 cores: 59 images/s, where a commit of 32 takes 20-50 ms)."""
        encoding = ThreadPoolExecutor(1, thread_name_prefix="cbir-encode")
        try:
            pending: Future | None = None
            for batch in self._batches(tasks, known):
                ahead = encoding.submit(self._encode, batch)
                if pending is not None:
                    yield _timed(pending, timer)
                pending = ahead
            if pending is not None:
                yield _timed(pending, timer)
        finally:
            encoding.shutdown(wait=True, cancel_futures=True)  # a batch being encoded finishes first

    def _batches(self, tasks: list[FileTask], known: frozenset) -> Iterator[list[Decoded]]:
        batch: list[Decoded] = []  # everything decoded since the last batch went out
        to_encode = 0
        elsewhere = self.decode_device is not None
        for d in decode_stream(tasks, self.encoder.preprocess, known, self.workers, elsewhere):
            batch.append(d)
            if not d.error and (d.pixels is not None or d.jpeg is not None or _read_text_alone(d)):
                to_encode += 1  # an image read by OCR alone counts too: its text is committed as often
            if to_encode >= self.batch_size or len(batch) >= MAX_CHANGES:
                yield batch
                batch, to_encode = [], 0
        if batch:
            yield batch

    def _encode(self, batch: list[Decoded]) -> tuple[list[Item], dict[str, float]]:
        """The batch encoded, and the time its steps took (added to the run's timings by the
        thread that takes the result: the caller adds to the same keys meanwhile)."""
        spent: dict[str, float] = {}
        timer = Timer(spent)
        if self.decode_device is not None and any(d.jpeg is not None for d in batch):
            with timer("decode"):
                _decode_jpegs(batch, self.encoder.preprocess, self.decode_device)
        with timer("encode"):
            items = encode_decoded(self.encoder, batch, lambda pixels: _stack(pixels, self.decode_device))
        return items, spent


def _timed(encoded: Future, timer: Timer) -> list[Item]:
    items, spent = encoded.result()
    for stage, seconds in spent.items():
        timer.timings[stage] = timer.timings.get(stage, 0.0) + seconds
    return items


def _read_text_alone(d: Decoded) -> bool:
    """An image the library holds, decoded for OCR alone (cbir.ingest.plan's ``to_ocr``)."""
    return d.task.ocr_stored and d.pixels is None and (d.ocr_text is not None or d.ocr_error is not None)


def encode_decoded(encoder: Encoder, batch: list[Decoded], stack=np.stack) -> list[Item]:
    """Each decoded file of ``batch`` with its vector: the files with pixels are encoded in one
    call (their pixels dropped afterwards), the others get None. Both engines' encode step."""
    todo = [d for d in batch if not d.error and d.pixels is not None]
    vectors: dict[int, np.ndarray] = {}
    if todo:
        for d, vector in zip(todo, encoder.encode_images(stack([d.pixels for d in todo]))):
            vectors[id(d)] = vector
            d.pixels = None  # encoded: the memory can go
    return [(d, vectors.get(id(d))) for d in batch]


def run_ingest(
    catalog: Catalog,
    index: VectorIndex,
    text_index: VectorIndex,
    encoder: Encoder,
    root_id: int,
    root: Path,
    scope: str,
    *,
    batch_size: int,
    workers: int,
    progress: Progress | None = None,
    dataset: ScanResult | None = None,
    decode_device: str | None = None,
    retry_failed: bool = False,
    stage: Stage | None = None,
    exclude: Sequence[str] | None = None,
    ocr: bool = False,
    sampling: tuple[float, int] = (EVERY, MAX_FRAMES),
) -> IngestReport:
    """Ingest the folder ``root / scope``, or with ``dataset`` the images a dataset lists under
    ``root`` (cbir.ingest.sources): folder scans and datasets each follow, and remove, only the
    images they added. ``decode_device`` (e.g. "cuda"): decode JPEGs there, in batches, instead
    of in the CPU workers (cbir.ingest.device_decode). Files recorded as skipped are retried
    only once they change, or with ``retry_failed``. ``stage``: who decodes and encodes (default
    a LocalStage of ``encoder``, ``workers``, ``batch_size`` and ``decode_device``); ``encoder``
    still encodes the texts here. ``exclude``: gitignore patterns a folder scan leaves out
    (cbir.ingest.exclude), remembered for the root in place of its earlier ones once the scan
    succeeds; None applies the remembered ones. Datasets ignore them. ``ocr``: read the text
    inside the images read (cbir.ocr), and inside those of the library OCR has not read yet.
    ``sampling``: (every, max_frames) for the videos read (cbir.ingest.video).

    The steps: survey (scan, and what the library holds), plan (cbir.ingest.plan), decode and
    encode (the stage), sort each file's outcome (cbir.ingest.outcome), commit in batches
    (cbir.ingest.commit), then the caption files of unchanged images, and what is gone."""
    started = time.perf_counter()
    report = IngestReport(root / scope if scope else root)
    timer = Timer(report.timings)
    with timer("scan"):
        if dataset is None:
            patterns = exclusions.remembered(catalog, root) if exclude is None else tuple(exclude)
            found = _survey_folder(catalog, root_id, root, scope, exclusions.Exclusions.for_root(root, patterns))
            if exclude is not None:
                exclusions.remember(catalog, root, patterns)
        else:
            found = _survey_dataset(catalog, root_id, dataset)
    report.scanned = len(found.scanned.files)
    plan = plan_ingest(
        found.scanned,
        found.stored,
        found.skips,
        root,
        others=found.others,
        retry_failed=retry_failed,
        ocr=ocr,
        sampling=sampling,
    )
    report.unchanged = plan.unchanged
    # a folder renamed or moved: its old root is gone and its rows follow their content here
    vanished = VanishedRows(catalog, root_id) if dataset is None else None

    batch = Committer(catalog, index, text_index, encoder, root_id, report, timer)
    batch.changes.skipped.extend(plan.new_skips)
    report.skipped += len(plan.new_skips)
    outcomes = Outcomes(
        catalog,
        batch,
        report,
        stored=found.stored,
        skips=found.skips,
        entries=found.entries,
        known=found.known,
        gone=plan.gone,
        vanished=vanished,
        captions=found.captions,
    )
    if stage is None:
        stage = LocalStage(encoder, workers, batch_size, decode_device)
    _commit_decoded(stage, plan.to_read + plan.to_ocr, frozenset(found.known), outcomes, batch_size, timer, progress)
    for path in plan.captions_to_check:
        found.captions.queue(path, batch.texts, batch.changes, report)
        if batch.full():
            batch.flush()

    batch.changes.removed.extend(s.id for s in plan.gone.values())  # the gone files no file moved to
    report.removed = len(plan.gone)
    batch.changes.unskipped.extend(plan.stale_skips)
    batch.flush()
    if vanished is not None:
        report.followed = {str(vanished.roots[i]): n for i, n in vanished.moved_from.items()}
        vanished.finish(root)
    report.skipped_total = catalog.count_skipped()
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class _Survey:
    """What a scan found and what the library holds of it: the plan's inputs."""

    scanned: ScanResult
    stored: dict[str, StoredFile]  # path -> the library's file, of those this scan follows
    skips: dict[str, tuple[int, int, str]]  # path -> size, mtime and reason of a recorded skip
    captions: Captions | DatasetRows
    known: dict[str, int]  # content hash -> an image holding it
    entries: dict[str, ScannedFile]  # path -> its scan entry (a dataset's row)
    others: set[str] = field(default_factory=set)  # files a dataset added, which a folder scan leaves to it


def _survey_folder(catalog: Catalog, root_id: int, root: Path, scope: str, excluded: exclusions.Exclusions) -> _Survey:
    scanned = scan(root, scope, excluded)
    stored = catalog.files_under(root_id, scope)
    others = {p for p, s in stored.items() if s.dataset is not None}
    stored = {p: s for p, s in stored.items() if s.dataset is None}
    skips = catalog.skips_under(root_id, scope)
    captions = Captions(catalog, root, root_id, scope, scanned, skips)
    entries = {f.path: f for f in scanned.files}
    return _Survey(scanned, stored, skips, captions, catalog.known_hashes(), entries, others)


def _survey_dataset(catalog: Catalog, root_id: int, scanned: ScanResult) -> _Survey:
    entries = {f.path: f for f in scanned.files}
    datasets = scanned.datasets
    assert datasets is not None  # a dataset's scan lists its datasets
    stored = {p: s for p, s in catalog.files_under(root_id).items() if s.dataset in datasets or p in entries}
    # its bad rows (under the manifest's or tar's path) and its images that failed
    scopes = tuple(s + "/" for s in scanned.skip_scopes)
    skips = {p: v for p, v in catalog.skips_under(root_id).items() if p in entries or p.startswith(scopes)}
    captions = DatasetRows(catalog, root_id, entries, stored)
    return _Survey(scanned, stored, skips, captions, catalog.known_hashes(), entries)


def _commit_decoded(
    stage: Stage,
    tasks: list[FileTask],
    known: frozenset,
    outcomes: Outcomes,
    batch_size: int,
    timer: Timer,
    progress: Progress | None,
) -> None:
    """Run ``stage`` over ``tasks`` and sort each file it delivers into the batch, committed
    whenever it holds ``batch_size`` encoded images or enough other changes."""
    batch, report = outcomes.batch, outcomes.report
    done: set[str] = set()
    files = 0  # tasks finished (a PDF or video once it is delivered itself)
    unfinished: dict[str, int] = {}  # PDF or video -> its items sorted less its items delivered
    if progress:
        progress(0, len(tasks))
    for d, vector in chain.from_iterable(stage(tasks, known, timer)):
        path = d.task.path
        if path in done:
            continue  # delivered again by a stage that retried its work: committed once
        done.add(path)
        report.timings["read"] += d.read_seconds
        report.timings["decode"] += d.decode_seconds
        outcomes.sort(d, vector)
        if d.container_hash is not None:  # a PDF's or video's items are committed together
            owner = path if d.container else container_of(path)
            unfinished[owner] = unfinished.get(owner, 0) + (-d.items if d.container else 1)
            if not unfinished[owner]:
                del unfinished[owner]
        if not unfinished and (batch.encoded + batch.ocr_read >= batch_size or batch.full()):
            batch.flush()
        if progress and (d.container or d.container_hash is None):
            files += 1
            progress(files, len(tasks))
    batch.flush()


def _decode_jpegs(pending: list[Decoded], pp, device: str) -> None:
    """Give the JPEGs in ``pending`` their model pixels, decoded in one batch on ``device``; one
    the device decoder refuses is decoded by Pillow, and one Pillow refuses too gets its error."""
    from cbir.ingest import device_decode
    from cbir.ingest.decode import BadImage, open_image

    jpegs = [(d, d.jpeg) for d in pending if d.jpeg is not None]
    for (d, jpeg), pixels in zip(jpegs, device_decode.decode([jpeg for _, jpeg in jpegs], pp, device)):
        if pixels is None:
            try:
                pixels = open_image(jpeg, pp)[0]
            except BadImage as e:
                d.error = str(e)
        d.pixels, d.jpeg = pixels, None


def _stack(pixels: list, decode_device: str | None):
    if decode_device is None:
        return np.stack(pixels)
    from cbir.ingest.device_decode import stack

    return stack(pixels, decode_device)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)

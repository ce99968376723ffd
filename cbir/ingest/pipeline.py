"""The ingest pipeline: scan -> decode (worker processes) -> encode (batched) -> persist -> index.

Decode and encode form one pluggable stage (``Stage``): the local one here, or Ray's
(cbir.distributed.ingest). Whatever runs it, this process alone commits: every batch goes to the
database (metadata and vectors together) before the in-memory index sees it, so a run stopped at
any moment resumes where it stopped on the next run."""

from __future__ import annotations

import os
import time
from collections import defaultdict, deque
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from cbir.encode.spec import TEXT_BATCH, Encoder, encode_texts_batched
from cbir.errors import CbirError
from cbir.index.vector_index import VectorIndex
from cbir.ingest.decode import MAX_PIXELS, Decoded, FileTask, decode_chunk, decode_file, init_worker, read_failed
from cbir.ingest.roots import VanishedRows
from cbir.ingest.scan import ScannedFile, ScanResult, scan
from cbir.ingest.texts import SidecarError, read_sidecar
from cbir.ingest.workers import worker_pool
from cbir.store.catalog import CAPTION, EMBEDDED, SIDECAR, Catalog, Changes, ImageRecord, StoredFile, TextRecord
from cbir.timing import Timer

Progress = Callable[[int, int], None]  # (files done, files to do)

CHUNK = 16  # files per task sent to a decode worker
MAX_CHANGES = 1000  # changes (moves, touches, skips, ...) committed together at most

# A decoded file and its image vector; the vector is None when the file needed no model (its
# content is already in the library) or could not be used (``Decoded.error``).
Item = tuple[Decoded, "np.ndarray | None"]
# Decode and encode: (files to read, content hashes the library holds, timer) -> batches of
# items, each file once, in any order. The local engine's is LocalStage; Ray's is in
# cbir.distributed.ingest.
Stage = Callable[[list[FileTask], frozenset, Timer], Iterator[list[Item]]]


@dataclass
class IngestReport:
    root: Path
    scanned: int = 0
    added: int = 0  # new files encoded
    updated: int = 0  # modified files re-encoded
    moved: int = 0  # renamed or moved: the stored vector follows the file
    copied: int = 0  # content already in the library: its vector is reused
    touched: int = 0  # mtime changed, content did not
    followed: dict[str, int] = field(default_factory=dict)  # of `moved`: from a vanished root, by its path
    unchanged: int = 0
    removed: int = 0  # files gone from disk, taken out of the library
    skipped: int = 0  # files that could not be used in this run
    texts: int = 0  # captions and descriptions stored or updated
    skipped_total: int = 0  # all recorded skips in the library after the run
    encoded: int = 0  # images that went through the model
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "timings"}
        data["root"] = str(self.root)
        data["images_per_second"] = round(self.images_per_second, 2)
        data["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        return data


def decode_stream(
    tasks: list[FileTask], encoder_pp, known: frozenset, workers: int, jpeg_elsewhere: bool = False
) -> Iterator[Decoded]:
    """Decoded files in input order. Worker processes decode ahead of the consumer, bounded to a
    few chunks per worker so memory stays flat however slow encoding is. With ``jpeg_elsewhere``
    they only read JPEGs' metadata and leave their pixels to the model's device."""
    if workers <= 1 or len(tasks) <= 2 * CHUNK:
        for task in tasks:
            yield decode_file(task, encoder_pp, known, MAX_PIXELS, jpeg_elsewhere)
        return
    chunks = (tasks[i : i + CHUNK] for i in range(0, len(tasks), CHUNK))
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
        pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class LocalStage:
    """The local engine: decode in forked worker processes (``decode_stream``), encode here in
    batches of ``batch_size``; with ``decode_device`` JPEGs are decoded there, batch by batch."""

    encoder: Encoder
    workers: int
    batch_size: int
    decode_device: str | None = None

    def __call__(self, tasks: list[FileTask], known: frozenset, timer: Timer) -> Iterator[list[Item]]:
        batch: list[Decoded] = []  # everything decoded since the last batch went out
        to_encode = 0
        elsewhere = self.decode_device is not None
        for d in decode_stream(tasks, self.encoder.preprocess, known, self.workers, elsewhere):
            batch.append(d)
            if not d.error and (d.pixels is not None or d.jpeg is not None):
                to_encode += 1
            if to_encode >= self.batch_size or len(batch) >= MAX_CHANGES:
                yield self._encode(batch, timer)
                batch, to_encode = [], 0
        if batch:
            yield self._encode(batch, timer)

    def _encode(self, batch: list[Decoded], timer: Timer) -> list[Item]:
        if self.decode_device is not None and any(d.jpeg is not None for d in batch):
            with timer("decode"):
                _decode_jpegs(batch, self.encoder.preprocess, self.decode_device)
        with timer("encode"):
            return encode_decoded(self.encoder, batch, lambda pixels: _stack(pixels, self.decode_device))


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
) -> IngestReport:
    """Ingest the folder ``root / scope``, or with ``dataset`` the images a dataset lists under
    ``root`` (cbir.ingest.sources): folder scans and datasets each follow, and remove, only the
    images they added. ``decode_device`` (e.g. "cuda"): decode JPEGs there, in batches, instead
    of in the CPU workers (cbir.ingest.device_decode). Files recorded as skipped are retried
    only once they change, or with ``retry_failed``. ``stage``: who decodes and encodes (default
    a LocalStage of ``encoder``, ``workers``, ``batch_size`` and ``decode_device``); ``encoder``
    still encodes the texts here."""
    started = time.perf_counter()
    report = IngestReport(root / scope if scope else root)
    timer = Timer(report.timings)

    with timer("scan"):
        others: set[str] = set()  # files a dataset added, which a folder scan leaves to it
        if dataset is None:
            scanned = scan(root, scope)
            stored = catalog.files_under(root_id, scope)
            others = {p for p, s in stored.items() if s.dataset is not None}
            stored = {p: s for p, s in stored.items() if s.dataset is None}
            skips = catalog.skips_under(root_id, scope)
            captions = _Captions(catalog, root, root_id, scope, scanned, skips)
        else:
            scanned = dataset
        entries = {f.path: f for f in scanned.files}
        if dataset is not None:
            stored = {
                p: s for p, s in catalog.files_under(root_id).items()
                if s.dataset in scanned.datasets or p in entries
            }
            # its bad rows (under the manifest's or tar's path) and its images that failed
            scopes = tuple(s + "/" for s in scanned.skip_scopes)
            skips = {p: v for p, v in catalog.skips_under(root_id).items() if p in entries or p.startswith(scopes)}
            captions = _DatasetRows(catalog, root_id, entries, stored)
        known = catalog.known_hashes()
    report.scanned = len(scanned.files)

    todo: list[FileTask] = []
    unchanged: list[str] = []  # stored images whose caption file may still have changed
    for f in scanned.files:
        mine = stored.get(f.path)
        if f.path in others:
            report.unchanged += 1
        elif mine and (mine.size, mine.mtime_ns) == (f.size, f.mtime_ns):
            report.unchanged += 1
            unchanged.append(f.path)
        elif not retry_failed and f.path in skips and skips[f.path][:2] == (f.size, f.mtime_ns) \
                and not read_failed(skips[f.path][2]):
            report.unchanged += 1  # a known bad file that has not changed: not retried
        else:
            todo.append(FileTask(f.path, f.abspath or str(root / f.path), f.size, f.mtime_ns, f.offset))
    seen = {f.path for f in scanned.files} | set(scanned.sidecars)
    # gone: what this scan follows (a folder's files, a dataset's rows) and no longer finds
    gone: dict[str, StoredFile] = {
        p: s for p, s in stored.items() if p not in seen and (dataset is None or s.dataset in dataset.datasets)
    }
    gone_by_hash: dict[str, list[str]] = defaultdict(list)
    for p, s in gone.items():
        gone_by_hash[s.content_hash].append(p)
    # a folder renamed or moved: its old root is gone and its rows follow their content here
    vanished = VanishedRows(catalog, root_id) if dataset is None else None

    changes = Changes(root_id)
    for path, reason in scanned.problems:
        if path not in skips:
            changes.skipped.append((path, 0, 0, reason))
            report.skipped += 1
    encoded = 0  # images with a vector in `changes`
    texts: dict[tuple[str, str], list[tuple[str, int | None, int | None]]] = {}

    def skip(d: Decoded) -> None:
        changes.skipped.append((d.task.path, d.task.size, d.task.mtime_ns, d.error))
        report.skipped += 1
        mine = stored.get(d.task.path)
        if mine:  # it was a good image before and is broken now: its old vector is stale
            changes.removed.append(mine.id)

    def flush() -> None:
        nonlocal encoded
        if texts:
            with timer("encode"):
                changes.texts = _embed_texts(encoder, texts)
            report.texts += sum(len(v) for v in changes.texts.values())
            texts.clear()
        if len(changes):
            with timer("persist"):
                applied = catalog.apply(changes)
            with timer("index"):
                index.apply(applied.images)
                text_index.apply(applied.texts)
            changes.__init__(root_id)
        encoded = 0

    if stage is None:
        stage = LocalStage(encoder, workers, batch_size, decode_device)
    done: set[str] = set()
    if progress:
        progress(0, len(todo))
    for d, vector in chain.from_iterable(stage(todo, frozenset(known), timer)):
        path = d.task.path
        if path in done:
            continue  # delivered again by a stage that retried its work: committed once
        done.add(path)
        report.timings["read"] += d.read_seconds
        report.timings["decode"] += d.decode_seconds
        mine = stored.get(path)
        if d.error:
            skip(d)
        else:
            if path in skips:
                changes.unskipped.append(path)
            if vector is not None:
                record = _record(d, entries[path])
                if mine:
                    changes.replaced.append((mine.id, record, vector))
                    report.updated += 1
                else:
                    changes.added.append((record, vector))
                    report.added += 1
                report.encoded += 1
                encoded += 1
                if d.texts or mine:  # a re-encoded file's old description goes
                    texts[(path, EMBEDDED)] = [(t, None, None) for t in d.texts]
                captions.queue(path, texts, changes, report)
            elif mine and mine.content_hash == d.content_hash:
                changes.touched.append((mine.id, d.task.size, d.task.mtime_ns))
                report.touched += 1
                captions.queue(path, texts, changes, report)
            else:
                if mine:  # replaced by content the library already has elsewhere
                    changes.removed.append(mine.id)
                    report.updated += 1
                candidates = gone_by_hash.get(d.content_hash)
                if candidates:
                    old = gone.pop(candidates.pop())
                    changes.moved.append((old.id, _reuse(catalog, old.id, d, entries[path])))
                    report.moved += 1
                elif vanished and (claimed := vanished.claim(d.content_hash, path)):
                    old, sidecar = claimed
                    changes.moved.append((old.id, _reuse(catalog, old.id, d, entries[path])))
                    report.moved += 1
                    if sidecar:  # its caption file moved too: not read again unless it changed
                        captions.stored[path] = sidecar
                else:
                    source = known[d.content_hash]
                    changes.copied.append((_reuse(catalog, source, d, entries[path]), source))
                    report.copied += 1
                captions.queue(path, texts, changes, report)
        if encoded >= batch_size or len(changes) >= MAX_CHANGES or len(texts) >= TEXT_BATCH:
            flush()
        if progress:
            progress(len(done), len(todo))
    flush()
    for path in unchanged:
        captions.queue(path, texts, changes, report)
        if len(texts) >= TEXT_BATCH or len(changes) >= MAX_CHANGES:
            flush()

    changes.removed.extend(s.id for s in gone.values())
    report.removed = len(gone)
    problem_paths = {p for p, _ in scanned.problems}
    changes.unskipped.extend(p for p in skips if p not in seen and p not in problem_paths)
    flush()
    if vanished is not None:
        report.followed = {str(vanished.roots[i]): n for i, n in vanished.moved_from.items()}
        vanished.finish(root)
    report.skipped_total = catalog.count_skipped()
    report.seconds = time.perf_counter() - started
    return report


def _decode_jpegs(pending: list[Decoded], pp, device: str) -> None:
    """Give the JPEGs in ``pending`` their model pixels, decoded in one batch on ``device``; one
    the device decoder refuses is decoded by Pillow, and one Pillow refuses too gets its error."""
    from cbir.ingest import device_decode
    from cbir.ingest.decode import BadImage, open_image

    jpegs = [d for d in pending if d.jpeg is not None]
    for d, pixels in zip(jpegs, device_decode.decode([d.jpeg for d in jpegs], pp, device)):
        if pixels is None:
            try:
                pixels = open_image(d.jpeg, pp)[0]
            except BadImage as e:
                d.error = str(e)
        d.pixels, d.jpeg = pixels, None


def _stack(pixels: list, decode_device: str | None):
    if decode_device is None:
        return np.stack(pixels)
    from cbir.ingest.device_decode import stack

    return stack(pixels, decode_device)


class _Captions:
    """Caption files beside images (``IMG_1.jpg.txt`` or ``IMG_1.txt``): read when new or
    changed (by size and mtime), dropped when gone, recorded as skipped when unreadable."""

    def __init__(self, catalog: Catalog, root: Path, root_id: int, scope: str, scanned: ScanResult, skips):
        self.root = root
        self.scanned = scanned
        self.skips = skips
        self.stored = catalog.sidecars_under(root_id, scope)  # image path -> (size, mtime)

    def queue(self, image_path: str, texts: dict, changes: Changes, report: IngestReport) -> None:
        found = self.scanned.sidecar_of(image_path)
        current = found[1:] if found else None
        if current == self.stored.get(image_path):
            return
        if found is None:  # the caption file was deleted
            texts[(image_path, SIDECAR)] = []
            return
        name, size, mtime_ns = found
        if self.skips.get(name, ())[:2] == (size, mtime_ns):
            return  # a known bad caption file that has not changed: not retried
        try:
            content = read_sidecar(self.root / name)
        except (SidecarError, OSError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            changes.skipped.append((name, size, mtime_ns, reason))
            report.skipped += 1
            return
        if name in self.skips:
            changes.unskipped.append(name)
        texts[(image_path, SIDECAR)] = [(content, size, mtime_ns)] if content else []


class _DatasetRows:
    """A dataset's captions and extra columns, compared with what the library holds for each
    image it lists: the captions (source "caption") and columns are replaced when they differ,
    so an edited manifest updates its images without re-encoding them."""

    def __init__(self, catalog: Catalog, root_id: int, entries: dict[str, ScannedFile], stored: dict[str, StoredFile]):
        self.entries = entries  # image path -> its row
        self.rows = catalog.dataset_rows(root_id)
        self.stored = stored  # images already in the library (new ones get their columns on insert)

    def queue(self, image_path: str, texts: dict, changes: Changes, report: IngestReport) -> None:
        entry = self.entries[image_path]
        captions, extra = self.rows.get(image_path, ((), None))
        if tuple(sorted(set(entry.captions))) != captions:
            texts[(image_path, CAPTION)] = [(c, None, None) for c in dict.fromkeys(entry.captions)]
        mine = self.stored.get(image_path)
        if mine is not None and (entry.extra or None) != extra:
            changes.extras.append((mine.id, entry.extra))


def _embed_texts(encoder: Encoder, texts: dict) -> dict[tuple[str, str], list[TextRecord]]:
    """Encode every queued text in batches; keys with no texts stay (they delete old ones)."""
    flat = [(key, item) for key, items in texts.items() for item in items]
    vectors = encode_texts_batched(encoder, [content for _, (content, _, _) in flat]) if flat else []
    out: dict[tuple[str, str], list[TextRecord]] = {key: [] for key in texts}
    for (key, (content, size, mtime_ns)), vector in zip(flat, vectors):
        out[key].append(TextRecord(content, vector, size, mtime_ns))
    return out


def _record(d: Decoded, entry: ScannedFile) -> ImageRecord:
    return ImageRecord(
        path=d.task.path,
        size=d.task.size,
        mtime_ns=d.task.mtime_ns,
        content_hash=d.content_hash,
        width=d.width,
        height=d.height,
        format=d.format,
        taken_at=d.taken_at,
        camera=d.camera,
        dataset=entry.dataset,
        extra=entry.extra,
    )


def _reuse(catalog: Catalog, image_id: int, d: Decoded, entry: ScannedFile) -> ImageRecord:
    """The stored metadata of identical content, under the new file's path, size and mtime
    (and the dataset and columns of the row that lists it)."""
    return replace(
        catalog.record_of(image_id), path=d.task.path, size=d.task.size, mtime_ns=d.task.mtime_ns,
        dataset=entry.dataset, extra=entry.extra,
    )


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)

"""The plan of an ingest: what a scan found against what the library holds, decided before any
file is read or any model loaded (like rclip's mark and sweep by size and mtime).

A pure function of values: the scan result, the stored files and the recorded skips. What it
cannot decide without reading a file (added, updated, moved, copied, touched) is left to the
files it lists as to read; cbir.ingest.outcome sorts them once they are decoded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cbir.ingest.decode import FileTask, read_failed
from cbir.ingest.media import container_of
from cbir.ingest.scan import ScannedFile, ScanResult
from cbir.ingest.video import EVERY, MAX_FRAMES
from cbir.store.catalog import StoredFile


@dataclass
class IngestPlan:
    to_read: list[FileTask] = field(default_factory=list)  # new, changed, or bad files to retry
    # with OCR on: unchanged images that OCR has not read yet, to read for their text alone
    # (counted in ``unchanged``; their caption files are checked once they are read)
    to_ocr: list[FileTask] = field(default_factory=list)
    unchanged: int = 0  # files not read for the model: same size and mtime, another's, or a known bad file
    # stored images not read, whose caption file may still have changed
    captions_to_check: list[str] = field(default_factory=list)
    # what this scan follows (a folder's files, a dataset's rows) and no longer finds: removed,
    # unless a file read in this run turns out to hold its content (a move)
    gone: dict[str, StoredFile] = field(default_factory=dict)
    new_skips: list[tuple[str, int, int, str]] = field(default_factory=list)  # scan problems not yet recorded
    stale_skips: list[str] = field(default_factory=list)  # skip records of paths no longer there


def plan_ingest(
    scanned: ScanResult,
    stored: dict[str, StoredFile],
    skips: dict[str, tuple[int, int, str]],
    root: Path,
    *,
    others: set[str] | frozenset[str] = frozenset(),
    retry_failed: bool = False,
    ocr: bool = False,
    sampling: tuple[float, int] = (EVERY, MAX_FRAMES),
) -> IngestPlan:
    """The plan for ``scanned`` (a folder's scan, or a dataset's when ``scanned.datasets`` is
    set) against ``stored`` (path -> the library's file) and ``skips`` (path -> size, mtime and
    reason of a recorded skip). ``others``: files a dataset added, which a folder scan leaves to
    it. A known bad file is retried only once it changes, after a read failure (it may have been
    a passing one), or with ``retry_failed``. Files are read from ``root``. With ``ocr`` the files
    read have their text read too, and so do the unchanged images OCR has not read yet. A PDF or
    video is planned as one file (its pages and frames share its size and mtime); with ``ocr``
    a PDF read has its scanned pages read by OCR, but an unchanged one is not read again for
    that. ``sampling``: (every, max_frames) for the videos read (cbir.ingest.video)."""
    plan = IngestPlan()
    items = _items_by_file(stored)
    kept: set[str] = set()  # pages and frames of unchanged PDFs and videos
    for f in scanned.files:
        if f.path in items:  # a PDF or video the library holds: unchanged while each item agrees
            if all((stored[i].size, stored[i].mtime_ns) == (f.size, f.mtime_ns) for i in items[f.path]):
                plan.unchanged += 1
                kept.update(items[f.path])
            else:  # read again; its items not delivered again are gone
                plan.to_read.append(_task(f, root, ocr, False, sampling))
            continue
        mine = stored.get(f.path)
        # an image of the library, unchanged or not, that OCR has not read
        unread = ocr and mine is not None and mine.ocr_engine is None
        if f.path in others:
            plan.unchanged += 1
        elif mine and (mine.size, mine.mtime_ns) == (f.size, f.mtime_ns):
            plan.unchanged += 1
            if unread:
                plan.to_ocr.append(_task(f, root, ocr, unread, sampling))
            else:
                plan.captions_to_check.append(f.path)
        elif (
            not retry_failed
            and f.path in skips
            and skips[f.path][:2] == (f.size, f.mtime_ns)
            and not read_failed(skips[f.path][2])
        ):
            plan.unchanged += 1  # a known bad file that has not changed: not retried
        else:
            plan.to_read.append(_task(f, root, ocr, unread, sampling))
    seen = {f.path for f in scanned.files} | set(scanned.sidecars) | kept
    datasets = scanned.datasets
    plan.gone = {p: s for p, s in stored.items() if p not in seen and (datasets is None or s.dataset in datasets)}
    plan.new_skips = [(path, 0, 0, reason) for path, reason in scanned.problems if path not in skips]
    problem_paths = {p for p, _ in scanned.problems}
    plan.stale_skips = [p for p in skips if p not in seen and p not in problem_paths]
    return plan


def _items_by_file(stored: dict[str, StoredFile]) -> dict[str, list[str]]:
    """A PDF's or video's path -> the paths of its pages or frames the library holds."""
    items: dict[str, list[str]] = {}
    for path, s in stored.items():
        if s.container_hash is not None:
            items.setdefault(container_of(path), []).append(path)
    return items


def _task(f: ScannedFile, root: Path, ocr: bool, ocr_stored: bool, sampling: tuple[float, int]) -> FileTask:
    every, most = sampling
    return FileTask(f.path, f.abspath or str(root / f.path), f.size, f.mtime_ns, f.offset, ocr, ocr_stored, every, most)

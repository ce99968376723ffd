"""The texts an ingest keeps beside images: caption files next to a folder's images, and a
dataset's captions and extra columns. Each ``queue``s what changed into the batch being built
(cbir.ingest.commit), which encodes and stores it."""

from __future__ import annotations

from pathlib import Path

from cbir.ingest.report import IngestReport
from cbir.ingest.scan import ScannedFile, ScanResult
from cbir.ingest.sidecars import SidecarError, read_sidecar
from cbir.store.catalog import CAPTION, SIDECAR, Catalog, Changes, StoredFile


class Captions:
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


class DatasetRows:
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

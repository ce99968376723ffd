"""What a decoded file means for the library, decided once it is read: added, updated (encoded
again), touched (same content, new size or mtime), moved (the vector of a gone file, or of a
vanished root's file, follows it), copied (content the library holds elsewhere) or skipped; and
the text OCR read in it (cbir ingest --ocr), which follows the file as its embedded texts do.
A PDF's pages and a video's frames are sorted one by one, then their file (cbir.ingest.media)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cbir.ingest.captions import Captions, DatasetRows
from cbir.ingest.commit import Committer
from cbir.ingest.decode import OCR_ENGINE, Decoded
from cbir.ingest.media import container_of, item_of, item_path
from cbir.ingest.report import IngestReport
from cbir.ingest.roots import VanishedRows
from cbir.ingest.scan import ScannedFile
from cbir.store.catalog import EMBEDDED, OCR, PDF, Catalog, ImageRecord, StoredFile


class Outcomes:
    """Sorts each decoded file into ``batch`` (and counts it in ``report``). ``gone``: the
    plan's gone files, from which the moves are taken: what is left of it at the end is removed."""

    def __init__(
        self,
        catalog: Catalog,
        batch: Committer,
        report: IngestReport,
        *,
        stored: dict[str, StoredFile],
        skips: dict,
        entries: dict[str, ScannedFile],
        known: dict[str, int],
        gone: dict[str, StoredFile],
        vanished: VanishedRows | None,
        captions: Captions | DatasetRows,
    ):
        self.catalog, self.batch, self.report = catalog, batch, report
        self.stored, self.skips, self.entries, self.known = stored, skips, entries, known
        self.gone, self.vanished, self.captions = gone, vanished, captions
        self.gone_by_hash: dict[str, list[str]] = {}
        for p, s in gone.items():
            self.gone_by_hash.setdefault(s.content_hash, []).append(p)

    def sort(self, d: Decoded, vector: np.ndarray | None) -> None:
        if d.container:
            self._container(d)
            return
        changes, path = self.batch.changes, d.task.path
        if d.container_hash is not None:
            self._delivered(path)
        mine = self.stored.get(path)
        unchanged = mine is not None and (mine.size, mine.mtime_ns) == (d.task.size, d.task.mtime_ns)
        self._count_ocr(d)
        if d.error and unchanged and d.task.ocr_stored:
            # read for its text alone (plan.to_ocr) and unreadable now: the image stays as it
            # was, its text is read on a later run
            self.report.ocr_failed += 1
            return
        if d.error:
            self._skip(d, d.error, mine)
            return
        if path in self.skips:
            changes.unskipped.append(path)
        if vector is not None:
            self._encoded(d, vector, mine)
        elif mine and mine.content_hash == d.content_hash:
            if not unchanged:
                changes.touched.append((mine.id, d.task.size, d.task.mtime_ns))
                self.report.touched += 1
            if d.ocr_text is not None:  # the kept image's text, read now
                self.batch.texts[(path, OCR)] = _ocr_texts(d.ocr_text)
                changes.ocr_read.append((mine.id, OCR_ENGINE))
                self.batch.ocr_read += 1
        else:
            self._known_content(d, mine)
        if d.container_hash is None:  # a page or frame has no caption file of its own
            self.captions.queue(path, self.batch.texts, changes, self.report)

    # -- PDFs and videos (cbir.ingest.media) ---------------------------------------------------
    def _delivered(self, path: str) -> None:
        """A page or frame read again from its changed file: it is not gone."""
        old = self.gone.pop(path, None)
        if old is not None:
            self.gone_by_hash[old.content_hash].remove(path)

    def _container(self, d: Decoded) -> None:
        """A PDF or video, after its pages or frames: a skip when it could not be used or was
        read in part (its reason), else the items of content the library holds follow it."""
        path = d.task.path
        if d.error:
            self.batch.changes.skipped.append((path, d.task.size, d.task.mtime_ns, d.error))
            self.report.skipped += 1
            return
        if path in self.skips:
            self.batch.changes.unskipped.append(path)
        if d.content_hash in self.known:  # not opened: its content is in the library
            self._known_container(d)

    def _known_container(self, d: Decoded) -> None:
        """The items of a file whose content the library holds: its own, touched; a gone file's
        (or a vanished root's), moved; else another file's, copied."""
        path, changes, report, entry = d.task.path, self.batch.changes, self.report, self.entries[d.task.path]
        groups: dict[str, list[str]] = {}  # gone file -> its items of this content
        for p, s in self.gone.items():
            if s.container_hash == d.content_hash:
                groups.setdefault(container_of(p), []).append(p)
        if path in groups:
            for p in groups[path]:
                self._delivered(p)
                changes.touched.append((self.stored[p].id, d.task.size, d.task.mtime_ns))
            report.touched += len(groups[path])
            return
        if groups:
            old_items = [(p, self.gone[p]) for p in next(iter(groups.values()))]
        elif self.vanished is not None:
            old_items = self.vanished.claim_container(d.content_hash)
        else:
            old_items = []
        for p, old in old_items:
            self._delivered(p)
            new = item_path(path, item_of(p))
            changes.moved.append((old.id, _reuse(self.catalog, old.id, d, entry, new)))
        report.moved += len(old_items)
        if old_items:
            return
        for source, p in self.catalog.container_items(self.known[d.content_hash]):
            new = item_path(path, item_of(p))
            changes.copied.append((_reuse(self.catalog, source, d, entry, new), source))
            report.copied += 1

    def _count_ocr(self, d: Decoded) -> None:
        if d.ocr_text is not None:
            self.report.ocr_read += 1
            self.report.ocr_with_text += bool(d.ocr_text)
        elif d.ocr_error is not None:
            self.report.ocr_failed += 1
        if d.ocr_seconds:
            self.report.timings["ocr"] += d.ocr_seconds

    def _skip(self, d: Decoded, error: str, mine: StoredFile | None) -> None:
        self.batch.changes.skipped.append((d.task.path, d.task.size, d.task.mtime_ns, error))
        self.report.skipped += 1
        if mine:  # it was a good image before and is broken now: its old vector is stale
            self.batch.changes.removed.append(mine.id)

    def _encoded(self, d: Decoded, vector: np.ndarray, mine: StoredFile | None) -> None:
        path, changes, report = d.task.path, self.batch.changes, self.report
        record = _record(d, self._entry(d))
        if d.ocr_text is not None:
            record.ocr_engine = OCR_ENGINE
        if mine:
            changes.replaced.append((mine.id, record, vector))
            report.updated += 1
        else:
            changes.added.append((record, vector))
            report.added += 1
        report.encoded += 1
        self.batch.encoded += 1
        if d.texts or mine:  # a re-encoded file's old description goes
            self.batch.texts[(path, EMBEDDED)] = [(t, None, None) for t in d.texts]
        if d.ocr_text or mine:  # and its old OCR text: replaced, or gone when not read now
            self.batch.texts[(path, OCR)] = _ocr_texts(d.ocr_text or "")
        if d.document_text or (mine and d.container_hash):  # a PDF page's text layer
            self.batch.texts[(path, PDF)] = _ocr_texts(d.document_text)

    def _entry(self, d: Decoded) -> ScannedFile:
        """The scan's entry of a decoded file (of a page's or frame's file)."""
        path = d.task.path
        return self.entries[container_of(path) if d.container_hash is not None else path]

    def _known_content(self, d: Decoded, mine: StoredFile | None) -> None:
        """Content the library already holds: the file moved here, or is a copy."""
        path, changes, report, entry = d.task.path, self.batch.changes, self.report, self._entry(d)
        if mine:  # replaced by content the library already has elsewhere
            changes.removed.append(mine.id)
            report.updated += 1
        candidates = self.gone_by_hash.get(d.content_hash)
        if candidates:
            old = self.gone.pop(candidates.pop())
            changes.moved.append((old.id, _reuse(self.catalog, old.id, d, entry)))
            report.moved += 1
        elif self.vanished and (claimed := self.vanished.claim(d.content_hash, path)):
            old, sidecar = claimed
            changes.moved.append((old.id, _reuse(self.catalog, old.id, d, entry)))
            report.moved += 1
            # Its caption file moved too: not read again unless it changed (only folder ingests,
            # which keep Captions, follow vanished roots).
            if sidecar and isinstance(self.captions, Captions):
                self.captions.stored[path] = sidecar
        else:
            source = self.known[d.content_hash]
            changes.copied.append((_reuse(self.catalog, source, d, entry), source))
            report.copied += 1


def _ocr_texts(text: str) -> list[tuple[str, int | None, int | None]]:
    """An image's OCR texts: the text it holds, as one text (keyword search finds its words,
    and its CLIP vector carries the whole); none when it holds no text."""
    return [(text, None, None)] if text else []


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
        container_hash=d.container_hash,
        duration=d.duration,
    )


def _reuse(catalog: Catalog, image_id: int, d: Decoded, entry: ScannedFile, path: str | None = None) -> ImageRecord:
    """The stored metadata of identical content, under the new file's path (or ``path``: a page
    or frame of the file), size and mtime (and the dataset and columns of the row that lists it)."""
    return replace(
        catalog.record_of(image_id),
        path=path or d.task.path,
        size=d.task.size,
        mtime_ns=d.task.mtime_ns,
        dataset=entry.dataset,
        extra=entry.extra,
    )

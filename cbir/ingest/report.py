"""What an ingest did: the counts and timings that ``run_ingest`` returns (cbir.ingest.pipeline)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


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
    ocr_read: int = 0  # images whose text OCR read (cbir ingest --ocr)
    ocr_with_text: int = 0  # of ``ocr_read``: those that held text
    ocr_failed: int = 0  # images OCR could not read (kept without text; read again next run)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the run rode through (a lost Ray node), one line each
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

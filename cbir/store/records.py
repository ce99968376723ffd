"""What the catalogue reads and writes, as plain values: the meta keys, the text sources, the
records ingest writes (``Changes``), what a committed transaction changed (``Applied``), what
search and status show, and how vectors and dataset columns are stored in a row."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cbir.store.hint import MODEL as MODEL  # the model fingerprint (JSON)

VECTOR_VERSION = "vector_version"  # bumped in every transaction that changes image vectors
TEXT_VERSION = "text_version"  # bumped in every transaction that changes texts

# Where a text comes from. Sidecar, embedded and OCR texts follow their files; labels are the user's.
SIDECAR, EMBEDDED, LABEL, TAG, CAPTION = "sidecar", "embedded", "label", "tag", "caption"  # caption: a dataset's
OCR = "ocr"  # the text read inside the image (cbir ingest --ocr)
PDF = "pdf"  # a PDF page's own text layer
FILE_SOURCES = (EMBEDDED, OCR, PDF)  # texts read from the image file itself: a copy of the file has them too
OCR_SETTING = "ocr"  # meta key: "on" while ingests read the text inside images
TAG_SOURCES = (LABEL, TAG)  # what --tag matches

# An image's facts as cbir shows them (`cbir export` rows and columns, search hits, serve's image
# details), in that order, each with the Arrow type of its export column: a row of plain JSON
# values, dates as ISO text. Hits and details show those an ImageInfo has.
IMAGE_FIELDS = {
    "id": "int64",
    "path": "string",  # absolute
    "width": "int32",
    "height": "int32",
    "format": "string",
    "bytes": "int64",  # the file's size
    "taken_at": "string",  # from EXIF
    "taken": "string",  # what date filters and --sort date use
    "camera": "string",
    "dataset": "string",  # the dataset that added it
    "extra": "string",  # a dataset row's other columns (a JSON object)
    "duration": "float64",  # a video frame's: the video's length in seconds
}


def file_of(path: Path, item: str | None) -> Path:
    """The file that holds an image at ``path``: for a PDF page or video frame (``item``), the
    path less its "#page=3" or "#t=12.5"."""
    return Path(str(path).rsplit("#", 1)[0]) if item else path


def json_value(value):
    """A stored value as JSON shows it: dates as ISO text, a path as text."""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value) if isinstance(value, Path) else value


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class StoredFile:
    id: int
    size: int
    mtime_ns: int
    content_hash: str
    dataset: str | None = None  # the dataset that added it; None for a folder scan
    ocr_engine: str | None = None  # the OCR engine that read its text; None: not read
    container_hash: str | None = None  # a PDF page's or video frame's: its file's (see models.Image)


@dataclass(frozen=True)
class ImageInfo:
    """What a search result or status shows about an image."""

    id: int
    path: Path  # absolute
    width: int
    height: int
    format: str
    taken_at: datetime | None
    camera: str | None
    taken: datetime | None = None  # what date filters and --sort date use
    # a PDF page or video frame: where in its file ("page=3", "t=12.5"); None for other images
    item: str | None = None
    duration: float | None = None  # a video frame's: the video's length in seconds

    @property
    def file(self) -> Path:
        """The file that holds the image: ``path`` less a page's or frame's "#..."."""
        return file_of(self.path, self.item)

    @property
    def page(self) -> int | None:
        return int(self.item[5:]) if self.item and self.item.startswith("page=") else None

    @property
    def time(self) -> float | None:
        """A video frame's moment, in seconds from the start."""
        return float(self.item[2:]) if self.item and self.item.startswith("t=") else None

    def as_dict(self) -> dict:
        """The image's facts as JSON values, in IMAGE_FIELDS order; a PDF page's or video
        frame's file, and its page or moment, after them."""
        own = {f.name for f in fields(ImageInfo)}
        data = {name: json_value(getattr(self, name)) for name in IMAGE_FIELDS if name in own}
        if self.item:
            data["file"] = str(self.file)
            data.update({"page": self.page} if self.page is not None else {"time": self.time})
        return data


@dataclass(frozen=True)
class ImageFile:
    """An image's file as stored: ``path`` is absolute; for a WebDataset sample it is the tar's
    path followed by the member's name (``dataset`` starts with ``tar:``)."""

    id: int
    path: Path
    size: int
    content_hash: str
    format: str
    dataset: str | None
    extra: dict
    mtime_ns: int = 0
    item: str | None = None  # a PDF page or video frame: where in its file ("page=3", "t=12.5")

    @property
    def file(self) -> Path:
        """The file that holds the image: ``path`` less a page's or frame's "#..."."""
        return file_of(self.path, self.item)


@dataclass
class ImageRecord:
    """A file's metadata as written by ingest."""

    path: str  # relative to its root, POSIX separators
    size: int
    mtime_ns: int
    content_hash: str
    width: int
    height: int
    format: str
    taken_at: datetime | None = None
    camera: str | None = None
    dataset: str | None = None  # the dataset that added it; None for a folder scan
    extra: dict | None = None  # a dataset row's other columns
    ocr_engine: str | None = None  # the OCR engine that read its text (its OCR texts); None: not read
    container_hash: str | None = None  # a PDF page's or video frame's: the SHA-256 of its whole file
    duration: float | None = None  # a video frame's: the video's length in seconds

    def columns(self) -> dict:
        """The images table's columns for this record: its fields (each a column of the same
        name, ``extra`` as JSON text) and the date filters use."""
        return {
            **{f.name: getattr(self, f.name) for f in fields(self)},
            "extra": _extra_json(self.extra),
            "taken": self.taken_at or local_time(self.mtime_ns),
        }


def _extra_json(extra: dict | None) -> str | None:
    return json.dumps(extra, ensure_ascii=False, sort_keys=True) if extra else None


def local_time(mtime_ns: int) -> datetime:
    """A file time as the naive local time a file browser shows (EXIF dates are local too)."""
    return datetime.fromtimestamp(mtime_ns / 1e9).replace(microsecond=0)


@dataclass
class TextRecord:
    """A text to store for an image: its content, embedding and, for sidecars, the file's
    size and mtime (the text is re-read only when they change)."""

    content: str
    vector: np.ndarray
    origin_size: int | None = None
    origin_mtime_ns: int | None = None
    score: float | None = None  # a tag's zero-shot probability (cbir tag)


@dataclass
class Changes:
    """One batch of ingest results, committed in a single transaction."""

    root_id: int
    added: list[tuple[ImageRecord, np.ndarray]] = field(default_factory=list)
    replaced: list[tuple[int, ImageRecord, np.ndarray]] = field(default_factory=list)
    copied: list[tuple[ImageRecord, int]] = field(default_factory=list)  # vector of image id
    moved: list[tuple[int, ImageRecord]] = field(default_factory=list)
    touched: list[tuple[int, int, int]] = field(default_factory=list)  # id, size, mtime_ns
    removed: list[int] = field(default_factory=list)
    skipped: list[tuple[str, int, int, str]] = field(default_factory=list)  # path, size, mtime, why
    unskipped: list[str] = field(default_factory=list)  # paths whose skip record is obsolete
    # (image path, source) -> the texts that replace that image's texts of that source
    texts: dict[tuple[str, str], list[TextRecord]] = field(default_factory=dict)
    extras: list[tuple[int, dict | None]] = field(default_factory=list)  # id, new dataset columns
    # id, OCR engine: kept images whose text was read now (their OCR texts are in ``texts``)
    ocr_read: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(
            len(x)
            for x in (
                self.added,
                self.replaced,
                self.copied,
                self.moved,
                self.touched,
                self.removed,
                self.skipped,
                self.unskipped,
                self.texts,
                self.extras,
                self.ocr_read,
            )
        )


@dataclass
class VectorChanges:
    """What a committed transaction did to one kind of vectors, for updating an in-memory index."""

    add_ids: np.ndarray
    add_vectors: np.ndarray
    remove_ids: np.ndarray
    version: int

    @classmethod
    def of(
        cls, add_ids: Sequence[int], add_vectors: list[np.ndarray], remove_ids: Sequence[int], version: int, dim: int
    ) -> VectorChanges:
        return cls(
            add_ids=np.asarray(add_ids, dtype=np.int64),
            add_vectors=(np.stack(add_vectors).astype(np.float32) if add_vectors else np.zeros((0, dim), np.float32)),
            remove_ids=np.asarray(remove_ids, dtype=np.int64),
            version=version,
        )


@dataclass
class Applied:
    images: VectorChanges
    texts: VectorChanges


def _to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def _from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)

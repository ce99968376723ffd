"""The catalogue: every read and write of a library's rows (roots, images, skips, texts, vectors,
meta) goes through the ``Catalog``, assembled here from one part per concern:

- ``cbir.store.images``: roots, what a scan finds stored, the write transaction of an ingest
  batch (``apply``), images for search and status;
- ``cbir.store.texts``: labels, tags, captions and other texts of images;
- ``cbir.store.vectors``: stored vectors for the indexes, and rows for export and evaluation;
- ``cbir.store.base``: the engines, the meta table and the roots they all use;
- ``cbir.store.records``: the plain values they take and return (importable from here too).

The rest of SQL lives beside it in ``cbir.store``: the query executor's filtered counts and
keyword matches in ``collections``, dialect-specific expressions in ``sql``, the schema in
``models`` (changed only by the Alembic migrations that ``db`` runs)."""

from __future__ import annotations

from cbir.store.images import ImageCatalog
from cbir.store.records import (
    CAPTION,
    EMBEDDED,
    LABEL,
    MODEL,
    OCR,
    OCR_SETTING,
    PDF,
    SIDECAR,
    TAG,
    TAG_SOURCES,
    TEXT_VERSION,
    VECTOR_VERSION,
    Applied,
    Changes,
    ImageFile,
    ImageInfo,
    ImageRecord,
    StoredFile,
    TextRecord,
    VectorChanges,
    local_time,
)
from cbir.store.texts import TextCatalog
from cbir.store.vectors import VectorCatalog

__all__ = [
    "CAPTION",
    "EMBEDDED",
    "LABEL",
    "MODEL",
    "OCR",
    "OCR_SETTING",
    "PDF",
    "SIDECAR",
    "TAG",
    "TAG_SOURCES",
    "TEXT_VERSION",
    "VECTOR_VERSION",
    "Applied",
    "Catalog",
    "Changes",
    "ImageFile",
    "ImageInfo",
    "ImageRecord",
    "StoredFile",
    "TextRecord",
    "VectorChanges",
    "local_time",
]


class Catalog(ImageCatalog, TextCatalog, VectorCatalog):
    """A library's database: ``Catalog(engine, dim)``; reads use ``engine``, writes one
    immediate transaction each (see cbir.store.db.for_writing)."""

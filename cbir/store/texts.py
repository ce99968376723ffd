"""The Catalog's texts: labels and tags the user adds, an image's texts, captions, and the text
rows a write transaction adds or removes (remembered for the text index)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import numpy as np
from sqlalchemy import delete, func, insert, select

from cbir.store.base import CatalogBase, _bump
from cbir.store.models import Image, ImageText
from cbir.store.records import (
    CAPTION,
    FILE_SOURCES,
    LABEL,
    SIDECAR,
    TAG,
    TEXT_VERSION,
    TextRecord,
    VectorChanges,
    _from_blob,
    _now,
    _to_blob,
)


class TextCatalog(CatalogBase):
    # -- labels: texts the user adds ------------------------------------------------------------
    def add_text(self, image_id: int, source: str, record: TextRecord) -> VectorChanges | None:
        """Store one text for an image; None if the image already has exactly that text."""
        texts = _TextChanges()
        with self._writer.begin() as c:
            exists = c.execute(
                select(ImageText.id).where(
                    ImageText.image_id == image_id,
                    ImageText.source == source,
                    ImageText.content == record.content,
                )
            ).first()
            if exists:
                return None
            texts.insert(c, image_id, source, [record], _now())
            version = _bump(c, TEXT_VERSION, True)
        return VectorChanges.of(texts.add_ids, texts.add_vectors, [], version, self.dim or 0)

    def remove_texts(self, image_id: int, source: str, content: str | None = None) -> VectorChanges | None:
        """Delete an image's texts of one source (only those equal to ``content``, ignoring
        case, when given); None if there were none."""
        texts = _TextChanges()
        condition = (ImageText.image_id == image_id) & (ImageText.source == source)
        if content is not None:
            condition &= func.lower(ImageText.content) == content.lower()
        with self._writer.begin() as c:
            texts.delete(c, condition)
            if not texts.changed:
                return None
            version = _bump(c, TEXT_VERSION, True)
        return VectorChanges.of([], [], texts.remove_ids, version, self.dim or 0)

    def replace_tags(self, tags: list[tuple[int, str, float]], vectors: dict[str, np.ndarray]) -> VectorChanges | None:
        """Replace the tags (texts of source TAG) of every image by ``tags`` (image id, tag,
        score; ``vectors[tag]`` its text embedding) in one transaction; labels, captions and
        descriptions are untouched, tags of images gone meanwhile are dropped. None if nothing
        was removed or added."""
        now = _now()
        with self._writer.begin() as c:
            removed = c.execute(select(ImageText.id).where(ImageText.source == TAG)).scalars().all()
            c.execute(delete(ImageText).where(ImageText.source == TAG))
            existing = set(c.execute(select(Image.id)).scalars())
            rows = [
                dict(
                    image_id=i,
                    source=TAG,
                    content=t,
                    vector=_to_blob(vectors[t]),
                    origin_size=None,
                    origin_mtime_ns=None,
                    added_at=now,
                    score=float(s),
                )
                for i, t, s in tags
                if i in existing
            ]
            if rows:
                c.execute(insert(ImageText), rows)
            added = c.execute(
                select(ImageText.id, ImageText.content).where(ImageText.source == TAG).order_by(ImageText.id)
            ).all()
            if not removed and not added:
                return None
            version = _bump(c, TEXT_VERSION, True)
        return VectorChanges.of([i for i, _ in added], [vectors[t] for _, t in added], removed, version, self.dim or 0)

    def tags_of(self, image_id: int) -> list[tuple[str, float | None]]:
        """(tag, score) of an image's tags (cbir tag), best first."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(ImageText.content, ImageText.score)
                .where(ImageText.image_id == image_id, ImageText.source == TAG)
                .order_by(ImageText.score.desc(), ImageText.id)
            ).all()
        return [(content, score) for content, score in rows]

    def labels(self) -> list[tuple[str, int]]:
        """(label, number of images with it) of every label (cbir label add), by label."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(ImageText.content, func.count(ImageText.image_id.distinct()))
                .where(ImageText.source == LABEL)
                .group_by(ImageText.content)
                .order_by(func.lower(ImageText.content), ImageText.content)
            ).all()
        return [(content, count) for content, count in rows]

    # -- reading texts -------------------------------------------------------------------------
    def texts_of(self, image_id: int) -> list[tuple[str, str]]:
        """(source, content) of every text of an image, labels last."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(ImageText.source, ImageText.content)
                .where(ImageText.image_id == image_id)
                .order_by(ImageText.source == LABEL, ImageText.id)
            ).all()
        return [(source, content) for source, content in rows]

    def captions(self, condition=None) -> tuple[np.ndarray, np.ndarray]:
        """(image ids, text ids) of every caption (a dataset's, or a caption file's) of the
        images passing ``condition`` (a filter over ``images``), in text id order."""
        query = (
            select(ImageText.image_id, ImageText.id)
            .join(Image, Image.id == ImageText.image_id)
            .where(ImageText.source.in_((CAPTION, SIDECAR)))
            .order_by(ImageText.id)
        )
        if condition is not None:
            query = query.where(condition)
        with self.engine.connect() as c:
            rows = c.execute(query).all()
        return np.asarray([r[0] for r in rows], np.int64), np.asarray([r[1] for r in rows], np.int64)

    def texts(self, ids: Iterable[int]) -> dict[int, tuple[str, str, int]]:
        """text id -> (content, source, image id)."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        query = select(ImageText.id, ImageText.content, ImageText.source, ImageText.image_id).where(
            ImageText.id.in_(ids)
        )
        with self.engine.connect() as c:
            return {r[0]: (r[1], r[2], r[3]) for r in c.execute(query)}

    def count_texts(self, source: str | None = None) -> int:
        """How many texts the library holds (of ``source`` only, when given)."""
        if source is None:
            return self._count(ImageText)
        with self.engine.connect() as c:
            return c.execute(select(func.count()).where(ImageText.source == source)).scalar_one()


class _TextChanges:
    """Text rows written in one transaction, remembered for updating the text index."""

    def __init__(self) -> None:
        self.add_ids: list[int] = []
        self.add_vectors: list[np.ndarray] = []
        self.remove_ids: list[int] = []

    @property
    def changed(self) -> bool:
        return bool(self.add_ids or self.remove_ids)

    def delete(self, c, condition) -> None:
        ids = c.execute(select(ImageText.id).where(condition)).scalars().all()
        if ids:
            c.execute(delete(ImageText).where(ImageText.id.in_(ids)))
            self.remove_ids += ids

    def insert(self, c, image_id: int, source: str, records: list[TextRecord], now: datetime) -> None:
        for record in records:
            text_id = c.execute(
                insert(ImageText).values(
                    image_id=image_id,
                    source=source,
                    content=record.content,
                    vector=_to_blob(record.vector),
                    origin_size=record.origin_size,
                    origin_mtime_ns=record.origin_mtime_ns,
                    added_at=now,
                    score=record.score,
                )
            ).inserted_primary_key[0]
            self.add_ids.append(text_id)
            self.add_vectors.append(np.asarray(record.vector, dtype=np.float32))


def _file_texts(c, image_id: int) -> dict[str, list[TextRecord]]:
    """source -> an image's texts read from its file (FILE_SOURCES: embedded descriptions, OCR
    text), which a copy of the file has too."""
    rows = c.execute(
        select(ImageText.source, ImageText.content, ImageText.vector).where(
            ImageText.image_id == image_id, ImageText.source.in_(FILE_SOURCES)
        )
    ).all()
    out: dict[str, list[TextRecord]] = {}
    for source, content, blob in rows:
        out.setdefault(source, []).append(TextRecord(content, _from_blob(blob)))
    return out

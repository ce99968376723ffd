"""What the query executor asks SQLite about the things it searches (images, or texts about
images): how many pass a filter, which ids pass, which of some candidates pass, keyword matches.
Filters are SQLAlchemy conditions over ``images``; values are always bound, never spliced."""

from __future__ import annotations

import json
import re

from sqlalchemy import Engine, column, func, literal_column, select, table

from cbir.store.models import Image, ImageText

FTS = table("texts_fts", column("rowid"), column("rank"))
_WORD = re.compile(r"\w+", re.UNICODE)


def fts_match(texts: list[str]) -> str | None:
    """An FTS5 query that matches any word of ``texts``: each word quoted (so no user text is read
    as FTS5 syntax), joined by OR; BM25 ranks texts with more and rarer words first."""
    words = dict.fromkeys(w.lower() for t in texts for w in _WORD.findall(t))
    return " OR ".join(f'"{w}"' for w in words) or None


class Collection:
    """One searchable kind of row with a vector index; ``id_column`` holds the index ids."""

    name: str

    def __init__(self, engine: Engine, id_column):
        self.engine = engine
        self.id_column = id_column  # an instance attribute: on the class it would bind to it

    def _select(self, *columns):
        raise NotImplementedError

    def _where(self, query, condition):
        return query if condition is None else query.where(condition)

    def count(self, condition=None) -> int:
        with self.engine.connect() as c:
            return int(c.execute(self._where(self._select(func.count()), condition)).scalar_one())

    def matching_ids(self, condition) -> list[int]:
        with self.engine.connect() as c:
            return c.execute(self._where(self._select(self.id_column), condition)).scalars().all()

    def passing(self, ids: list[int], condition) -> set[int]:
        """Which of ``ids`` pass ``condition`` (one bound JSON array, so any number of ids)."""
        if not ids:
            return set()
        candidates = select(literal_column("value")).select_from(func.json_each(json.dumps(ids)))
        query = self._where(self._select(self.id_column).where(self.id_column.in_(candidates)), condition)
        with self.engine.connect() as c:
            return set(c.execute(query).scalars())

    def keyword(self, match: str, condition, limit: int) -> list[tuple[int, float]]:
        """(id, BM25 score: higher is better) of the best keyword matches, best first. An image
        ranks by its best-matching text. (FTS5's bm25 is negative: lower is better.)"""
        per_image = self.id_column is Image.id
        key = ImageText.image_id if per_image else ImageText.id
        # FTS5's rank column is bm25() (which itself cannot be used inside an aggregate)
        rank = func.min(FTS.c.rank) if per_image else FTS.c.rank
        query = (
            select(key, rank)
            .select_from(FTS)
            .join(ImageText, ImageText.id == FTS.c.rowid)
            .join(Image, Image.id == ImageText.image_id)
            .where(literal_column("texts_fts").op("MATCH")(match))
            .order_by(rank, key)
            .limit(limit)
        )
        if per_image:
            query = query.group_by(key)
        query = self._where(query, condition)
        with self.engine.connect() as c:
            return [(int(i), -float(r)) for i, r in c.execute(query)]


class Images(Collection):
    name = "images"

    def __init__(self, engine: Engine):
        super().__init__(engine, Image.id)

    def _select(self, *columns):
        return select(*columns).select_from(Image)


class Texts(Collection):
    name = "texts"

    def __init__(self, engine: Engine):
        super().__init__(engine, ImageText.id)

    def _select(self, *columns):
        return select(*columns).select_from(ImageText).join(Image, Image.id == ImageText.image_id)

"""What the query executor asks the catalogue about the things it searches (images, or texts
about images): how many pass a filter, which ids pass, which of some candidates pass, keyword
matches. Filters are SQLAlchemy conditions over ``images``; values are always bound, never
spliced. SQLite and PostgreSQL answer the same questions with their own SQL here."""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnClause,
    ColumnElement,
    Engine,
    any_,
    bindparam,
    column,
    func,
    literal,
    literal_column,
    select,
    table,
)
from sqlalchemy.dialects.postgresql import ARRAY

from cbir.store.models import Image, ImageText

FTS = table("texts_fts", column("rowid"), column("rank"))
_WORD = re.compile(r"\w+", re.UNICODE)
# Written out, not bound: only an expression equal to the index's own can use the index.
_ENGLISH: ColumnClause[str] = literal_column("'english'::regconfig")


def fts_match(texts: list[str]) -> tuple[str, ...] | None:
    """The words of ``texts`` to look for (lower case, each once); a text matches any of them.
    Each database turns them into its own query, never reading user text as query syntax."""
    return tuple(dict.fromkeys(w.lower() for t in texts for w in _WORD.findall(t))) or None


def fts5_query(words: tuple[str, ...]) -> str:
    """SQLite: each word quoted (so no user text is read as FTS5 syntax), joined by OR; BM25
    ranks texts with more and rarer words first."""
    return " OR ".join(f'"{w}"' for w in words)


def _document(content):
    """PostgreSQL: the expression of migration 0002's GIN index, so the index is used."""
    return func.to_tsvector(_ENGLISH, func.cbir_fts_text(content))


def _tsquery(words: tuple[str, ...]):
    """PostgreSQL: any of the words, each parsed by plainto_tsquery as plain text (stemmed,
    accents folded as in the index), joined by || (OR)."""
    parts = [func.plainto_tsquery(_ENGLISH, func.cbir_fts_text(literal(w))) for w in words]
    query: ColumnElement[Any] = parts[0]
    for part in parts[1:]:
        query = query.op("||")(part)
    return query


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
            return list(c.execute(self._where(self._select(self.id_column), condition)).scalars())

    @property
    def _postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def passing(self, ids: list[int], condition) -> set[int]:
        """Which of ``ids`` pass ``condition`` (one bound array, so any number of ids: a JSON
        array read by json_each in SQLite, a bigint[] in PostgreSQL)."""
        if not ids:
            return set()
        if self._postgresql:
            candidate = self.id_column == any_(bindparam("ids", [int(i) for i in ids], ARRAY(BigInteger)))
        else:
            candidate = self.id_column.in_(select(literal_column("value")).select_from(func.json_each(json.dumps(ids))))
        query = self._where(self._select(self.id_column).where(candidate), condition)
        with self.engine.connect() as c:
            return set(c.execute(query).scalars())

    def keyword(self, match: tuple[str, ...], condition, limit: int) -> list[tuple[int, float]]:
        """(id, score: higher is better) of the best keyword matches of the words ``match``
        (see fts_match), best first. An image ranks by its best-matching text."""
        per_image = self.id_column is Image.id
        key = ImageText.image_id if per_image else ImageText.id
        if self._postgresql:
            return self._keyword_postgresql(match, condition, limit, per_image, key)
        # (FTS5's bm25 is negative: lower is better.)
        # FTS5's rank column is bm25() (which itself cannot be used inside an aggregate)
        rank = func.min(FTS.c.rank) if per_image else FTS.c.rank
        query = (
            select(key, rank)
            .select_from(FTS)
            .join(ImageText, ImageText.id == FTS.c.rowid)
            .join(Image, Image.id == ImageText.image_id)
            .where(literal_column("texts_fts").op("MATCH")(fts5_query(match)))
            .order_by(rank, key)
            .limit(limit)
        )
        if per_image:
            query = query.group_by(key)
        query = self._where(query, condition)
        with self.engine.connect() as c:
            return [(int(i), -float(r)) for i, r in c.execute(query)]

    def _keyword_postgresql(self, match, condition, limit: int, per_image: bool, key):
        # ts_rank_cd (cover density; higher is better) in place of BM25
        document, tsquery = _document(ImageText.content), _tsquery(match)
        rank = func.ts_rank_cd(document, tsquery)
        if per_image:
            rank = func.max(rank)
        query = (
            select(key, rank)
            .select_from(ImageText)
            .join(Image, Image.id == ImageText.image_id)
            .where(document.op("@@")(tsquery))
            .order_by(rank.desc(), key)
            .limit(limit)
        )
        if per_image:
            query = query.group_by(key)
        query = self._where(query, condition)
        with self.engine.connect() as c:
            return [(int(i), float(r)) for i, r in c.execute(query)]


class Images(Collection):
    name = "images"

    def __init__(self, engine: Engine):
        super().__init__(engine, Image.id)

    def _select(self, *columns):
        return select(*columns).select_from(Image)

    def videos_of(self, ids: list[int]) -> dict[int, tuple[int, str]]:
        """image id -> (root id, video path) of the video frames among ``ids``."""
        if not ids:
            return {}
        frame = Image.container_hash.is_not(None) & (Image.format != "pdf")
        query = select(Image.id, Image.root_id, Image.path).where(Image.id.in_(ids), frame)
        with self.engine.connect() as c:
            return {i: (root_id, path.rsplit("#", 1)[0]) for i, root_id, path in c.execute(query)}


class Texts(Collection):
    name = "texts"

    def __init__(self, engine: Engine):
        super().__init__(engine, ImageText.id)

    def _select(self, *columns):
        return select(*columns).select_from(ImageText).join(Image, Image.id == ImageText.image_id)

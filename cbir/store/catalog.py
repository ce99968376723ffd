"""The catalogue: every read and write of a library's database goes through here."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from sqlalchemy import Engine, delete, func, insert, select, update

from cbir.store.db import for_writing
from cbir.store.models import Image, ImageText, Meta, Root, Skipped, Vector
from cbir.store.sql import json_text, position

VECTOR_VERSION = "vector_version"  # bumped in every transaction that changes image vectors
TEXT_VERSION = "text_version"  # bumped in every transaction that changes texts
MODEL = "model"  # the model fingerprint (JSON)

# Where a text comes from. Sidecar and embedded texts follow their files; labels are the user's.
SIDECAR, EMBEDDED, LABEL, TAG, CAPTION = "sidecar", "embedded", "label", "tag", "caption"  # caption: a dataset's
TAG_SOURCES = (LABEL, TAG)  # what --tag matches


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class StoredFile:
    id: int
    size: int
    mtime_ns: int
    content_hash: str
    dataset: str | None = None  # the dataset that added it; None for a folder scan


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

    def columns(self) -> dict:
        return {
            "path": self.path,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "content_hash": self.content_hash,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "taken_at": self.taken_at,
            "taken": self.taken_at or local_time(self.mtime_ns),
            "camera": self.camera,
            "dataset": self.dataset,
            "extra": _extra_json(self.extra),
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
    def of(cls, add_ids: list[int], add_vectors: list[np.ndarray], remove_ids: list[int], version: int, dim: int):
        return cls(
            add_ids=np.asarray(add_ids, dtype=np.int64),
            add_vectors=(
                np.stack(add_vectors).astype(np.float32) if add_vectors else np.zeros((0, dim), np.float32)
            ),
            remove_ids=np.asarray(remove_ids, dtype=np.int64),
            version=version,
        )


@dataclass
class Applied:
    images: VectorChanges
    texts: VectorChanges


class Catalog:
    def __init__(self, engine: Engine, dim: int | None = None):
        self.engine = engine  # reads
        self._writer = for_writing(engine)  # write transactions: BEGIN IMMEDIATE
        self.dim = dim

    # -- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(select(Meta.value).where(Meta.key == key)).scalar_one_or_none()

    def set_meta(self, key: str, value: str) -> None:
        with self._writer.begin() as c:
            self._put_meta(c, key, value)

    @staticmethod
    def _put_meta(c, key: str, value: str) -> None:
        if c.execute(select(Meta.key).where(Meta.key == key)).first():
            c.execute(update(Meta).where(Meta.key == key).values(value=value))
        else:
            c.execute(insert(Meta).values(key=key, value=value))

    def model_fingerprint(self) -> dict | None:
        raw = self.get_meta(MODEL)
        return json.loads(raw) if raw else None

    def vector_version(self) -> int:
        return int(self.get_meta(VECTOR_VERSION) or 0)

    def text_version(self) -> int:
        return int(self.get_meta(TEXT_VERSION) or 0)

    # -- roots -------------------------------------------------------------------------------
    def roots(self) -> dict[int, Path]:
        with self.engine.connect() as c:
            return {i: Path(p) for i, p in c.execute(select(Root.id, Root.path))}

    def root_for(self, path: Path) -> tuple[int, str]:
        """The root a path belongs to and the path's scope inside it; a new root if none holds it."""
        for root_id, root in self.roots().items():
            if path == root or root in path.parents:
                return root_id, path.relative_to(root).as_posix() if path != root else ""
        with self._writer.begin() as c:
            root_id = c.execute(insert(Root).values(path=str(path))).inserted_primary_key[0]
            # Roots inside the new one become part of it, so no file is held twice.
            for old_id, old in c.execute(select(Root.id, Root.path)).all():
                old = Path(old)
                if path in old.parents:
                    prefix = old.relative_to(path).as_posix() + "/"
                    for table in (Image, Skipped):
                        c.execute(
                            update(table)
                            .where(table.root_id == old_id)
                            .values(root_id=root_id, path=prefix + table.path)
                        )
                    c.execute(delete(Root).where(Root.id == old_id))
        return root_id, ""

    def root_image_counts(self) -> dict[int, int]:
        """root id -> its number of images (roots without images are left out)."""
        with self.engine.connect() as c:
            return dict(c.execute(select(Image.root_id, func.count()).group_by(Image.root_id)).all())

    def drop_empty_roots(self, root_ids: list[int]) -> list[int]:
        """Delete those of ``root_ids`` that hold no image, with their skip records; the ids
        deleted."""
        dropped = []
        with self._writer.begin() as c:
            for root_id in root_ids:
                if c.execute(select(Image.id).where(Image.root_id == root_id).limit(1)).first() is None:
                    c.execute(delete(Skipped).where(Skipped.root_id == root_id))
                    c.execute(delete(Root).where(Root.id == root_id))
                    dropped.append(root_id)
        return dropped

    # -- what is stored under a scope ---------------------------------------------------------
    @staticmethod
    def _in_scope(column, scope: str):
        if not scope:
            return True
        return (column == scope) | (func.substr(column, 1, len(scope) + 1) == scope + "/")

    def files_under(self, root_id: int, scope: str = "") -> dict[str, StoredFile]:
        """The stored images under ``scope``, whatever added them (see StoredFile.dataset)."""
        query = select(
            Image.path, Image.id, Image.size, Image.mtime_ns, Image.content_hash, Image.dataset
        ).where(Image.root_id == root_id, self._in_scope(Image.path, scope))
        with self.engine.connect() as c:
            return {row[0]: StoredFile(*row[1:]) for row in c.execute(query)}

    def skips_under(self, root_id: int, scope: str = "") -> dict[str, tuple[int, int, str]]:
        """path -> (size, mtime_ns, reason) of the recorded skips under ``scope``."""
        query = select(Skipped.path, Skipped.size, Skipped.mtime_ns, Skipped.reason).where(
            Skipped.root_id == root_id, self._in_scope(Skipped.path, scope)
        )
        with self.engine.connect() as c:
            return {p: (s, m, r) for p, s, m, r in c.execute(query)}

    def known_hashes(self) -> dict[str, int]:
        """content hash -> one image id holding it."""
        with self.engine.connect() as c:
            return {h: i for h, i in c.execute(select(Image.content_hash, Image.id))}

    def record_of(self, image_id: int) -> ImageRecord:
        with self.engine.connect() as c:
            row = c.execute(select(Image).where(Image.id == image_id)).mappings().one()
        record = ImageRecord(**{k: row[k] for k in ImageRecord.__dataclass_fields__})
        record.extra = json.loads(record.extra) if record.extra else None
        return record

    # -- writing -----------------------------------------------------------------------------
    def apply(self, changes: Changes) -> Applied:
        """Commit a batch atomically; bump the image and text versions if their vectors changed."""
        add_ids: list[int] = []
        add_vectors: list[np.ndarray] = []
        remove_ids: list[int] = list(changes.removed)
        texts = _TextChanges()
        now = _now()
        with self._writer.begin() as c:
            # Read the vectors to copy before anything is deleted, then delete before inserting
            # so a path freed in this batch can be taken again in the same batch.
            copies = [
                (record, c.execute(select(Vector.vector).where(Vector.image_id == src)).scalar_one(), src)
                for record, src in changes.copied
            ]
            copied_texts = {src: _embedded_texts(c, src) for _, src in changes.copied}
            for i in range(0, len(changes.removed), 10_000):  # SQLite caps bound parameters
                chunk = changes.removed[i : i + 10_000]
                texts.delete(c, ImageText.image_id.in_(chunk))
                c.execute(delete(Vector).where(Vector.image_id.in_(chunk)))
                c.execute(delete(Image).where(Image.id.in_(chunk)))
            for image_id, record in changes.moved:
                c.execute(
                    update(Image)
                    .where(Image.id == image_id)
                    .values(root_id=changes.root_id, **record.columns())
                )
            for image_id, size, mtime_ns in changes.touched:
                c.execute(
                    update(Image)
                    .where(Image.id == image_id)
                    .values(
                        size=size,
                        mtime_ns=mtime_ns,
                        taken=func.coalesce(Image.taken_at, local_time(mtime_ns)),
                    )
                )
            for image_id, extra in changes.extras:
                c.execute(update(Image).where(Image.id == image_id).values(extra=_extra_json(extra)))
            for image_id, record, vector in changes.replaced:
                c.execute(update(Image).where(Image.id == image_id).values(**record.columns()))
                c.execute(
                    update(Vector).where(Vector.image_id == image_id).values(vector=_to_blob(vector))
                )
                remove_ids.append(image_id)
                add_ids.append(image_id)
                add_vectors.append(vector)
            new_rows = [(r, _to_blob(v), v, None) for r, v in changes.added]
            new_rows += [(r, blob, _from_blob(blob), src) for r, blob, src in copies]
            for record, blob, vector, src in new_rows:
                image_id = c.execute(
                    insert(Image).values(root_id=changes.root_id, added_at=now, **record.columns())
                ).inserted_primary_key[0]
                c.execute(insert(Vector).values(image_id=image_id, vector=blob))
                add_ids.append(image_id)
                add_vectors.append(vector)
                if src is not None:  # a copy has the same embedded description as its source
                    texts.insert(c, image_id, EMBEDDED, copied_texts[src], now)
            for (path, source), records in changes.texts.items():
                image_id = c.execute(
                    select(Image.id).where(Image.root_id == changes.root_id, Image.path == path)
                ).scalar_one_or_none()
                if image_id is None:  # the image itself was not stored (e.g. it failed to decode)
                    continue
                texts.delete(c, (ImageText.image_id == image_id) & (ImageText.source == source))
                texts.insert(c, image_id, source, records, now)
            stale_skips = [p for p, *_ in changes.skipped] + changes.unskipped
            if stale_skips:
                c.execute(
                    delete(Skipped).where(
                        Skipped.root_id == changes.root_id, Skipped.path.in_(stale_skips)
                    )
                )
            for path, size, mtime_ns, reason in changes.skipped:
                c.execute(
                    insert(Skipped).values(
                        root_id=changes.root_id,
                        path=path,
                        size=size,
                        mtime_ns=mtime_ns,
                        reason=reason,
                        recorded_at=now,
                    )
                )
            version = _bump(c, VECTOR_VERSION, bool(add_ids or remove_ids))
            text_version = _bump(c, TEXT_VERSION, texts.changed)
        dim = self.dim or (len(add_vectors[0]) if add_vectors else 0)
        return Applied(
            images=VectorChanges.of(add_ids, add_vectors, remove_ids, version, dim),
            texts=VectorChanges.of(texts.add_ids, texts.add_vectors, texts.remove_ids, text_version, dim),
        )

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
                dict(image_id=i, source=TAG, content=t, vector=_to_blob(vectors[t]), origin_size=None,
                     origin_mtime_ns=None, added_at=now, score=float(s))
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
        return VectorChanges.of(
            [i for i, _ in added], [vectors[t] for _, t in added], removed, version, self.dim or 0
        )

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

    def content_hashes(self) -> dict[int, str]:
        """image id -> content hash, for every image (copies share a hash)."""
        with self.engine.connect() as c:
            return {i: h for i, h in c.execute(select(Image.id, Image.content_hash))}

    def texts_of(self, image_id: int) -> list[tuple[str, str]]:
        """(source, content) of every text of an image, labels last."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(ImageText.source, ImageText.content)
                .where(ImageText.image_id == image_id)
                .order_by(ImageText.source == LABEL, ImageText.id)
            ).all()
        return [(source, content) for source, content in rows]

    def image_at(self, path: Path) -> int | None:
        """The id of the library image stored for an absolute file path, if any."""
        for root_id, root in self.roots().items():
            if root in path.parents:
                with self.engine.connect() as c:
                    found = c.execute(
                        select(Image.id).where(
                            Image.root_id == root_id, Image.path == path.relative_to(root).as_posix()
                        )
                    ).scalar_one_or_none()
                if found is not None:
                    return found
        return None

    def sidecars_under(self, root_id: int, scope: str = "") -> dict[str, tuple[int, int]]:
        """image path -> (size, mtime_ns) of the sidecar file its stored caption was read from."""
        query = (
            select(Image.path, ImageText.origin_size, ImageText.origin_mtime_ns)
            .join(ImageText, ImageText.image_id == Image.id)
            .where(
                Image.root_id == root_id,
                ImageText.source == SIDECAR,
                self._in_scope(Image.path, scope),
            )
        )
        with self.engine.connect() as c:
            return {p: (s, m) for p, s, m in c.execute(query)}

    def dataset_rows(self, root_id: int) -> dict[str, tuple[tuple[str, ...], dict | None]]:
        """image path -> (its dataset captions, sorted; its extra columns) for the images of
        ``root_id`` that have either: what a dataset ingest compares its rows with."""
        captions: dict[str, list[str]] = defaultdict(list)
        extras: dict[str, dict] = {}
        with self.engine.connect() as c:
            for path, content in c.execute(
                select(Image.path, ImageText.content)
                .join(ImageText, ImageText.image_id == Image.id)
                .where(Image.root_id == root_id, ImageText.source == CAPTION)
            ):
                captions[path].append(content)
            for path, extra in c.execute(
                select(Image.path, Image.extra).where(Image.root_id == root_id, Image.extra.is_not(None))
            ):
                extras[path] = json.loads(extra)
        return {p: (tuple(sorted(captions.get(p, ()))), extras.get(p)) for p in set(captions) | set(extras)}

    # -- reading for search and status ---------------------------------------------------------
    def iter_vectors(self, chunk: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All stored image vectors in id order, in chunks of (ids, float32 matrix)."""
        return self._iter_vectors(Vector.image_id, Vector.vector, chunk)

    def iter_text_vectors(self, chunk: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All stored text vectors in id order, in chunks of (ids, float32 matrix)."""
        return self._iter_vectors(ImageText.id, ImageText.vector, chunk)

    def _vector_columns(self, name: str):
        return (Vector.image_id, Vector.vector) if name == "images" else (ImageText.id, ImageText.vector)

    def vector_ids(self, name: str) -> np.ndarray:
        """Every id with a stored vector, for the index ``name`` ("images" or "texts")."""
        id_column, _ = self._vector_columns(name)
        with self.engine.connect() as c:
            return np.fromiter(c.execute(select(id_column).order_by(id_column)).scalars(), dtype=np.int64)

    def vectors_of(self, name: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found, their stored vectors), in the order of ``ids``."""
        id_column, vector_column = self._vector_columns(name)
        found = self._by_id(id_column, ids, vector_column)
        kept = [int(i) for i in ids if int(i) in found]
        dim = self.dim or 0
        vectors = np.stack([_from_blob(found[i][0]) for i in kept]) if kept else np.zeros((0, dim), np.float32)
        return np.asarray(kept, dtype=np.int64), vectors

    def top_folders(self, ids: np.ndarray) -> list[str]:
        """For each image id: its root and top-level folder ("3:2019"; "3:" for files at the root)."""
        rows = self._image_column(ids, Image.root_id, func.substr(Image.path, 1, position(Image.path, "/") - 1))
        return [f"{root}:{top}" for root, top in rows]

    def dates_taken(self, ids: np.ndarray) -> list[datetime]:
        return [taken for (taken,) in self._image_column(ids, Image.taken)]

    def _image_column(self, ids: np.ndarray, *columns) -> list[tuple]:
        """``columns`` of the images ``ids``, in the order of ``ids``."""
        rows = self._by_id(Image.id, ids, *columns)
        return [rows[int(i)] for i in ids]

    def _by_id(self, id_column, ids, *columns) -> dict[int, tuple]:
        """id -> ``columns`` of the rows whose ``id_column`` is in ``ids`` (any number of ids)."""
        ids = [int(i) for i in ids]
        rows: dict[int, tuple] = {}
        with self.engine.connect() as c:
            for start in range(0, len(ids), 10_000):  # SQLite caps bound parameters
                query = select(id_column, *columns).where(id_column.in_(ids[start : start + 10_000]))
                rows.update((r[0], tuple(r[1:])) for r in c.execute(query))
        return rows

    def sample_vectors(self, name: str, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``size`` stored (ids, vectors) picked at random (ids first, so only the chosen
        vectors are read)."""
        ids = self.vector_ids(name)
        if len(ids) > size:
            ids = np.random.default_rng(seed).choice(ids, size, replace=False)
        return self.vectors_of(name, ids)

    def _iter_vectors(self, id_column, vector_column, chunk: int):
        last = -1
        while True:
            with self.engine.connect() as c:
                rows = c.execute(
                    select(id_column, vector_column)
                    .where(id_column > last)
                    .order_by(id_column)
                    .limit(chunk)
                ).all()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, np.stack([_from_blob(r[1]) for r in rows])
            last = int(ids[-1])

    def images(self, ids: Iterable[int]) -> dict[int, ImageInfo]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        roots = self.roots()
        query = select(
            Image.id,
            Image.root_id,
            Image.path,
            Image.width,
            Image.height,
            Image.format,
            Image.taken_at,
            Image.camera,
            Image.taken,
        ).where(Image.id.in_(ids))
        with self.engine.connect() as c:
            return {
                r.id: ImageInfo(
                    id=r.id,
                    path=roots[r.root_id] / r.path,
                    width=r.width,
                    height=r.height,
                    format=r.format,
                    taken_at=r.taken_at,
                    camera=r.camera,
                    taken=r.taken,
                )
                for r in c.execute(query)
            }

    def image_file(self, image_id: int) -> ImageFile | None:
        """Where an image's bytes are and what they were when ingested (to serve them)."""
        with self.engine.connect() as c:
            row = c.execute(
                select(Image.root_id, Image.path, Image.size, Image.content_hash, Image.format, Image.dataset, Image.extra)
                .where(Image.id == image_id)
            ).one_or_none()
        if row is None:
            return None
        extra = json.loads(row.extra) if row.extra else {}
        return ImageFile(image_id, self.roots()[row.root_id] / row.path, row.size, row.content_hash,
                         row.format, row.dataset, extra if isinstance(extra, dict) else {"value": extra})

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

    def image_labels(self, column: str, condition=None) -> tuple[np.ndarray, list[str]]:
        """(image ids, their label) for zero-shot evaluation: ``folder`` is the name of the
        folder holding the image (a class-per-folder dataset), ``extra.NAME`` a dataset
        column; images without one are left out."""
        if column == "folder":
            label = Image.path
        elif column.startswith("extra.") and len(column) > 6:
            label = json_text(Image.extra, column[6:])
        else:
            raise ValueError(f"not a label column: {column}")
        query = select(Image.id, label).where(label.is_not(None)).order_by(Image.id)
        if condition is not None:
            query = query.where(condition)
        ids, labels = [], []
        with self.engine.connect() as c:
            for image_id, value in c.execute(query):
                if column == "folder":
                    value = value.rpartition("/")[0].rpartition("/")[2]
                if value not in ("", None):
                    ids.append(image_id)
                    labels.append(str(value))
        return np.asarray(ids, np.int64), labels

    def export_rows(self, ids: Iterable[int]) -> dict[int, dict]:
        """image id -> its metadata as plain values (absolute path, dates as ISO text, the
        dataset's extra columns and captions), for `cbir export`."""
        ids = [int(i) for i in ids]
        roots = self.roots()
        rows: dict[int, dict] = {}
        columns = (Image.id, Image.root_id, Image.path, Image.width, Image.height, Image.format,
                   Image.taken_at, Image.taken, Image.camera, Image.dataset, Image.extra, Image.size)
        with self.engine.connect() as c:
            for start in range(0, len(ids), 10_000):  # SQLite caps bound parameters
                chunk = ids[start : start + 10_000]
                for r in c.execute(select(*columns).where(Image.id.in_(chunk))):
                    rows[r.id] = {
                        "id": r.id,
                        "path": str(roots[r.root_id] / r.path),
                        "width": r.width,
                        "height": r.height,
                        "format": r.format,
                        "bytes": r.size,
                        "taken_at": r.taken_at.isoformat() if r.taken_at else None,
                        "taken": r.taken.isoformat() if r.taken else None,
                        "camera": r.camera,
                        "dataset": r.dataset,
                        "extra": json.loads(r.extra) if r.extra else None,
                        "captions": [],
                    }
                for image_id, content in c.execute(
                    select(ImageText.image_id, ImageText.content)
                    .where(ImageText.image_id.in_(chunk), ImageText.source.in_((CAPTION, SIDECAR)))
                    .order_by(ImageText.id)
                ):
                    rows[image_id]["captions"].append(content)
        return rows

    def texts(self, ids: Iterable[int]) -> dict[int, tuple[str, str, int]]:
        """text id -> (content, source, image id)."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        query = select(ImageText.id, ImageText.content, ImageText.source, ImageText.image_id).where(
            ImageText.id.in_(ids)
        )
        with self.engine.connect() as c:
            return {r[0]: tuple(r[1:]) for r in c.execute(query)}

    def _count(self, table) -> int:
        with self.engine.connect() as c:
            return c.execute(select(func.count()).select_from(table)).scalar_one()

    def count_images(self) -> int:
        return self._count(Image)

    def has_images(self) -> bool:
        with self.engine.connect() as c:
            return c.execute(select(Image.id).limit(1)).first() is not None

    def count_skipped(self) -> int:
        return self._count(Skipped)

    def count_texts(self) -> int:
        return self._count(ImageText)

    def skipped(self) -> list[tuple[Path, str]]:
        roots = self.roots()
        with self.engine.connect() as c:
            rows = c.execute(
                select(Skipped.root_id, Skipped.path, Skipped.reason).order_by(
                    Skipped.root_id, Skipped.path
                )
            ).all()
        return [(roots[r] / p, reason) for r, p, reason in rows]


class _TextChanges:
    """Text rows written in one transaction, remembered for updating the text index."""

    def __init__(self):
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


def _embedded_texts(c, image_id: int) -> list[TextRecord]:
    rows = c.execute(
        select(ImageText.content, ImageText.vector).where(
            ImageText.image_id == image_id, ImageText.source == EMBEDDED
        )
    ).all()
    return [TextRecord(content, _from_blob(blob)) for content, blob in rows]


def _bump(c, key: str, changed: bool) -> int:
    """The version counter ``key``, incremented when ``changed``."""
    version = int(c.execute(select(Meta.value).where(Meta.key == key)).scalar_one_or_none() or 0)
    if changed:
        version += 1
        Catalog._put_meta(c, key, str(version))
    return version


def _to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def _from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)

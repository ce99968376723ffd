"""The Catalog's images: roots, what a scan finds stored under a scope, the write transaction
that commits a batch of ingest results (``apply``), and reading images for search and status."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import cast

import numpy as np
from sqlalchemy import Connection, Insert, delete, func, insert, or_, select, update

from cbir.store.base import CatalogBase, _bump
from cbir.store.models import Image, ImageText, Root, Skipped, Vector
from cbir.store.records import (
    CAPTION,
    SIDECAR,
    TEXT_VERSION,
    VECTOR_VERSION,
    Applied,
    Changes,
    ImageFile,
    ImageInfo,
    ImageRecord,
    StoredFile,
    VectorChanges,
    _extra_json,
    _from_blob,
    _now,
    _to_blob,
    local_time,
)
from cbir.store.texts import _file_texts, _TextChanges


class ImageCatalog(CatalogBase):
    # -- roots -------------------------------------------------------------------------------
    def root_for(self, path: Path) -> tuple[int, str]:
        """The root a path belongs to and the path's scope inside it; a new root if none holds it."""
        for root_id, root in self.roots().items():
            if path == root or root in path.parents:
                return root_id, path.relative_to(root).as_posix() if path != root else ""
        with self._writer.begin() as c:
            root_id = _inserted_id(c, insert(Root).values(path=str(path)))
            # Roots inside the new one become part of it, so no file is held twice.
            for old_id, old_path in c.execute(select(Root.id, Root.path)).all():
                old = Path(old_path)
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
        """Rows at ``scope``, below it, and (images) the pages or frames of the file it names."""
        if not scope:
            return True
        below = func.substr(column, 1, len(scope) + 1)
        rows = [column == scope, below == scope + "/"]
        if column is Image.path:  # not a folder "scope#2" beside it: only a PDF's or video's items
            rows.append((below == scope + "#") & Image.container_hash.is_not(None))
        return or_(*rows)

    def files_under(self, root_id: int, scope: str = "") -> dict[str, StoredFile]:
        """The stored images under ``scope``, whatever added them (see StoredFile.dataset)."""
        query = select(
            Image.path,
            Image.id,
            Image.size,
            Image.mtime_ns,
            Image.content_hash,
            Image.dataset,
            Image.ocr_engine,
            Image.container_hash,
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
        """content hash -> one image id holding it; a PDF's or video's hash (container_hash) ->
        one of its pages or frames."""
        with self.engine.connect() as c:
            files = select(Image.container_hash, Image.id).where(Image.container_hash.is_not(None))
            known: dict[str, int] = {h: i for h, i in c.execute(files) if h is not None}
            known.update((h, i) for h, i in c.execute(select(Image.content_hash, Image.id)))
            return known

    def container_items(self, image_id: int) -> list[tuple[int, str]]:
        """(id, path) of the pages or frames of the file that holds the page or frame
        ``image_id`` (its path up to "#" in its root), in id order."""
        with self.engine.connect() as c:
            root_id, path, container_hash = c.execute(
                select(Image.root_id, Image.path, Image.container_hash).where(Image.id == image_id)
            ).one()
            prefix = path.rsplit("#", 1)[0] + "#"
            rows = c.execute(
                select(Image.id, Image.path)
                .where(Image.root_id == root_id, Image.container_hash == container_hash)
                .where(func.substr(Image.path, 1, len(prefix)) == prefix)
                .order_by(Image.id)
            )
            return [(i, p) for i, p in rows]

    def record_of(self, image_id: int) -> ImageRecord:
        with self.engine.connect() as c:
            row = c.execute(select(Image).where(Image.id == image_id)).mappings().one()
        fields = {k: row[k] for k in ImageRecord.__dataclass_fields__}
        fields["extra"] = json.loads(fields["extra"]) if fields["extra"] else None  # stored as JSON text
        return ImageRecord(**fields)

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
            copied_texts = {src: _file_texts(c, src) for _, src in changes.copied}
            for i in range(0, len(changes.removed), 10_000):  # SQLite caps bound parameters
                chunk = changes.removed[i : i + 10_000]
                texts.delete(c, ImageText.image_id.in_(chunk))
                c.execute(delete(Vector).where(Vector.image_id.in_(chunk)))
                c.execute(delete(Image).where(Image.id.in_(chunk)))
            _update_kept(c, changes)  # moved, touched, new dataset columns: no new vectors
            for image_id, record, vector in changes.replaced:
                c.execute(update(Image).where(Image.id == image_id).values(**record.columns()))
                c.execute(update(Vector).where(Vector.image_id == image_id).values(vector=_to_blob(vector)))
                remove_ids.append(image_id)
                add_ids.append(image_id)
                add_vectors.append(vector)
            new_rows: list[tuple[ImageRecord, bytes, np.ndarray, int | None]]  # (..., the copy's source)
            new_rows = [(r, _to_blob(v), v, None) for r, v in changes.added]
            new_rows += [(r, blob, _from_blob(blob), src) for r, blob, src in copies]
            for record, blob, vector, src in new_rows:
                image_id = _inserted_id(
                    c, insert(Image).values(root_id=changes.root_id, added_at=now, **record.columns())
                )
                c.execute(insert(Vector).values(image_id=image_id, vector=blob))
                add_ids.append(image_id)
                add_vectors.append(vector)
                if src is not None:  # a copy has the same embedded description and OCR text as its source
                    for source, records in copied_texts[src].items():
                        texts.insert(c, image_id, source, records, now)
            for (path, source), records in changes.texts.items():
                owner_id = c.execute(
                    select(Image.id).where(Image.root_id == changes.root_id, Image.path == path)
                ).scalar_one_or_none()
                if owner_id is None:  # the image itself was not stored (e.g. it failed to decode)
                    continue
                texts.delete(c, (ImageText.image_id == owner_id) & (ImageText.source == source))
                texts.insert(c, owner_id, source, records, now)
            _record_skips(c, changes, now)
            version = _bump(c, VECTOR_VERSION, bool(add_ids or remove_ids))
            text_version = _bump(c, TEXT_VERSION, texts.changed)
        dim = self.dim or (len(add_vectors[0]) if add_vectors else 0)
        return Applied(
            images=VectorChanges.of(add_ids, add_vectors, remove_ids, version, dim),
            texts=VectorChanges.of(texts.add_ids, texts.add_vectors, texts.remove_ids, text_version, dim),
        )

    # -- reading images for ingest, search and status ------------------------------------------
    def content_hashes(self) -> dict[int, str]:
        """image id -> content hash, for every image (copies share a hash)."""
        with self.engine.connect() as c:
            return {i: h for i, h in c.execute(select(Image.id, Image.content_hash))}

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

    def sidecars_under(self, root_id: int, scope: str = "") -> dict[str, tuple[int | None, int | None]]:
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
                extras[path] = json.loads(cast(str, extra))  # not NULL: the query's condition
        return {p: (tuple(sorted(captions.get(p, ()))), extras.get(p)) for p in set(captions) | set(extras)}

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
            Image.container_hash,
            Image.duration,
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
                    item=r.path.rsplit("#", 1)[1] if r.container_hash else None,
                    duration=r.duration,
                )
                for r in c.execute(query)
            }

    def image_file(self, image_id: int) -> ImageFile | None:
        """Where an image's bytes are and what they were when ingested (to serve them)."""
        with self.engine.connect() as c:
            row = c.execute(
                select(
                    Image.root_id,
                    Image.path,
                    Image.size,
                    Image.content_hash,
                    Image.format,
                    Image.dataset,
                    Image.extra,
                    Image.mtime_ns,
                    Image.container_hash,
                ).where(Image.id == image_id)
            ).one_or_none()
        if row is None:
            return None
        extra = json.loads(row.extra) if row.extra else {}
        return ImageFile(
            image_id,
            self.roots()[row.root_id] / row.path,
            row.size,
            row.content_hash,
            row.format,
            row.dataset,
            extra if isinstance(extra, dict) else {"value": extra},
            row.mtime_ns,
            row.path.rsplit("#", 1)[1] if row.container_hash else None,
        )

    def count_images(self) -> int:
        return self._count(Image)

    def count_ocr_read(self) -> int:
        """How many images OCR has read (with text found or not)."""
        with self.engine.connect() as c:
            return c.execute(select(func.count()).where(Image.ocr_engine.is_not(None))).scalar_one()

    def count_media(self) -> dict[str, tuple[int, int]]:
        """ "pdf" and "video": (their pages or frames, the files these come from)."""
        page = Image.format == "pdf"
        query = (
            select(page, func.count(), func.count(func.distinct(Image.container_hash)))
            .where(Image.container_hash.is_not(None))
            .group_by(page)
        )
        with self.engine.connect() as c:
            counts = {("pdf" if is_page else "video"): (items, files) for is_page, items, files in c.execute(query)}
        return {kind: counts.get(kind, (0, 0)) for kind in ("pdf", "video")}

    def has_images(self) -> bool:
        with self.engine.connect() as c:
            return c.execute(select(Image.id).limit(1)).first() is not None

    def count_skipped(self) -> int:
        return self._count(Skipped)

    def skipped(self) -> list[tuple[Path, str]]:
        roots = self.roots()
        with self.engine.connect() as c:
            rows = c.execute(
                select(Skipped.root_id, Skipped.path, Skipped.reason).order_by(Skipped.root_id, Skipped.path)
            ).all()
        return [(roots[r] / p, reason) for r, p, reason in rows]


def _update_kept(c, changes: Changes) -> None:
    """Rewrite the rows of images kept with their vectors: moved, touched, new dataset columns,
    read by OCR."""
    for image_id, record in changes.moved:
        c.execute(update(Image).where(Image.id == image_id).values(root_id=changes.root_id, **record.columns()))
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
    for image_id, engine in changes.ocr_read:
        c.execute(update(Image).where(Image.id == image_id).values(ocr_engine=engine))


def _record_skips(c, changes: Changes, now: datetime) -> None:
    """Replace the skip records of the paths ``changes`` skipped or no longer skips."""
    stale_skips = [p for p, *_ in changes.skipped] + changes.unskipped
    if stale_skips:
        c.execute(delete(Skipped).where(Skipped.root_id == changes.root_id, Skipped.path.in_(stale_skips)))
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


def _inserted_id(c: Connection, statement: Insert) -> int:
    """The id of the one row an INSERT added."""
    key = c.execute(statement).inserted_primary_key
    assert key is not None  # SQLAlchemy sets it for every single-row INSERT
    return key[0]

"""SQLAlchemy models. The schema changes only through Alembic revisions in migrations/."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


# The keyword index over texts.content: raw SQL in migration 0002, not a model. SQLite: an FTS5
# table (with shadow tables); PostgreSQL: a GIN index of that name on texts.
FTS_TABLE = "texts_fts"


def is_modelled(name: str | None, type_: str, _parent_names=None) -> bool:
    """For Alembic's include_name: the keyword index's tables and index are not models."""
    return not (type_ in ("table", "index") and name is not None and name.startswith(FTS_TABLE))


class Meta(Base):
    """Library-wide facts: the model fingerprint, the vector version the index must match."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Root(Base):
    """A scanned folder. Image paths are stored relative to it, so photos and library can move."""

    __tablename__ = "roots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)


class Image(Base):
    __tablename__ = "images"
    # AUTOINCREMENT: an id is never reused, so a stale index can never point at a different image.
    __table_args__ = (UniqueConstraint("root_id", "path"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    width: Mapped[int] = mapped_column(Integer, index=True)
    height: Mapped[int] = mapped_column(Integer, index=True)
    format: Mapped[str] = mapped_column(String(16), index=True)
    taken_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)  # from EXIF
    # What date filters use: the date taken, or the file's modification time (local) without one.
    taken: Mapped[datetime | None] = mapped_column(DateTime, index=True)  # always set by cbir
    camera: Mapped[str | None] = mapped_column(String(128), index=True)
    added_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    # The dataset that added the image ("manifest:train.csv", "tar:shards/0001.tar"); NULL for
    # a folder scan. A scan of one kind never removes the other's images.
    dataset: Mapped[str | None] = mapped_column(String(300), index=True)
    extra: Mapped[str | None] = mapped_column(Text)  # JSON object: a dataset row's other columns
    # The OCR engine that read the text inside the image (its texts of source "ocr"); NULL: not
    # read. Set in the transaction that writes those texts, so a stopped pass resumes.
    ocr_engine: Mapped[str | None] = mapped_column(String(64))
    # A PDF page or video frame (path "report.pdf#page=3", "clip.mp4#t=12.5"): the SHA-256 of
    # its whole file, shared by the file's pages or frames, which move and copy together; NULL
    # for every other image. A video's frames carry its length in seconds (filters: duration).
    container_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    duration: Mapped[float | None] = mapped_column(Float, index=True)


class Vector(Base):
    """The L2-normalised embedding of an image (float32 bytes): the source of truth for indexes."""

    __tablename__ = "vectors"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class Skipped(Base):
    """A file that could not be ingested, with the reason; retried only once it changes."""

    __tablename__ = "skipped"
    __table_args__ = (UniqueConstraint("root_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(DateTime)


class ImageText(Base):
    """A text about an image (sidecar caption, embedded description, user label), with its CLIP
    text embedding; also indexed for keyword search by the FTS5 table ``texts_fts`` (created and
    kept in step by triggers in the migration, so it is not a model here)."""

    __tablename__ = "texts"
    __table_args__ = (
        UniqueConstraint("image_id", "source", "content"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(16), index=True)  # see cbir.store.records (SIDECAR ...)
    content: Mapped[str] = mapped_column(Text)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    # Size and mtime of the file the text was read from (sidecars): re-read only when they change.
    origin_size: Mapped[int | None] = mapped_column(BigInteger)
    origin_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    added_at: Mapped[datetime] = mapped_column(DateTime)
    # A tag's zero-shot probability over the vocabulary it came from (cbir tag); NULL otherwise.
    score: Mapped[float | None] = mapped_column(Float)

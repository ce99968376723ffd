"""The Python API: a Library opened once from resolved settings; the CLI is a thin layer on it.

    lib = open_library(library="my-lib", model="cbir-tiny")
    lib.ingest("photos")
    hits = lib.search("a red circle on a gray background", k=5)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from sqlalchemy.exc import DatabaseError, OperationalError

from cbir.config import Settings, resolve_settings
from cbir.encode.spec import Encoder, parse_model_spec, same_model
from cbir.errors import (
    CbirError,
    EmptyLibrary,
    LibraryCorrupt,
    LibraryLocked,
    LibraryNotFound,
    ModelMismatch,
    StorageError,
    UsageError,
)
from cbir.fsutil import writer_lock
from cbir.query import Query
from cbir.store.catalog import MODEL, Catalog, ImageInfo
from cbir.store.db import create_db_engine, current_revision, head_revision, library_db_path, migrate

INDEX_DIR = "index"
TEXT_BATCH = 256


@dataclass(frozen=True)
class Hit(ImageInfo):
    """A search result: the image's stored facts plus its rank (1-based) and cosine score."""

    rank: int = 0
    score: float = 0.0

    def as_dict(self) -> dict:
        return {
            "rank": self.rank,
            "score": round(self.score, 6),
            "path": str(self.path),
            "id": self.id,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
            "camera": self.camera,
        }


@dataclass
class Status:
    library: Path
    model: str
    fingerprint: dict
    images: int
    skipped: int
    index_type: str
    index_vectors: int
    index_bytes: int
    index_current: bool
    database_bytes: int
    skipped_files: list[tuple[Path, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        data["library"] = str(self.library)
        data["skipped_files"] = [{"path": str(p), "reason": r} for p, r in self.skipped_files]
        return data


def open_library(*, create: bool = False, encoder: Encoder | None = None, **options) -> "Library":
    """Resolve settings (defaults < CBIR_* environment < these options) and open the library."""
    return Library.open(resolve_settings(**options), create=create, encoder=encoder)


class Library:
    def __init__(self, settings: Settings, catalog: Catalog, encoder: Encoder | None = None):
        self.settings = settings
        self.path = settings.library
        self.catalog = catalog
        self._encoder = encoder
        self._index = None

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, settings: Settings, *, create: bool = False, encoder: Encoder | None = None):
        path = settings.library
        db_path = library_db_path(path)
        if path.exists() and not path.is_dir():
            raise UsageError(f"--library {path} is a file, not a library folder")
        if not db_path.is_file():
            if not create:
                raise LibraryNotFound(
                    f"no cbir library at {path}; create one with `cbir ingest PHOTOS_FOLDER` "
                    "(or point --library / CBIR_LIBRARY at an existing library)"
                )
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(f"cannot create library folder {path}: {e.strerror}") from e
        catalog = Catalog(create_db_engine(db_path))
        try:
            revision = current_revision(catalog.engine)
            if revision != head_revision():
                try:
                    migrate(catalog.engine)
                except Exception as e:
                    raise LibraryCorrupt(
                        f"cannot upgrade the library database {db_path} from schema {revision} "
                        f"({e}); it may come from a newer cbir"
                    ) from e
            fingerprint = catalog.model_fingerprint()
        except DatabaseError as e:
            raise LibraryCorrupt(f"{db_path} is not a readable cbir library database ({e.orig})") from e
        library = cls(settings, catalog, encoder)
        if fingerprint:
            catalog.dim = fingerprint["dim"]
            library._check_requested_model(fingerprint)
        return library

    def close(self) -> None:
        self.catalog.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the model -----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict | None:
        return self.catalog.model_fingerprint()

    def _check_requested_model(self, stored: dict) -> None:
        """Refuse before loading anything when the requested model is not the library's."""
        requested = self.settings.model
        if not requested:
            return
        spec = parse_model_spec(requested)
        if (spec.arch, spec.weights_id()) != (stored["model"], stored["weights"]):
            raise self._mismatch(stored, spec.name)

    def _mismatch(self, stored: dict, requested: str) -> ModelMismatch:
        return ModelMismatch(
            f"the library at {self.path} was built with {stored['spec']} "
            f"({stored['weights']}, {stored['dim']}-d), not {requested}; use --model "
            f"{stored['spec']} (or leave --model out), or index your photos into a new library "
            f"for {requested}: cbir ingest PHOTOS --library NEW_LIBRARY --model {requested}"
        )

    @property
    def encoder(self) -> Encoder:
        """The model, loaded on first use: the library's own, or the requested one for a new library."""
        if self._encoder is None:
            from cbir.encode import load_encoder

            stored = self.fingerprint
            if self.settings.model:
                spec = parse_model_spec(self.settings.model)
            elif stored:
                spec = parse_model_spec(stored["spec"])
            else:
                spec = parse_model_spec(self.settings.model_for_new_library)
            self._encoder = load_encoder(spec, self.settings.device)
        stored = self.fingerprint
        actual = self._encoder.fingerprint()
        if stored and not same_model(stored, actual):
            raise self._mismatch(stored, actual["spec"])
        return self._encoder

    # -- the index -----------------------------------------------------------------------------
    @property
    def index_dir(self) -> Path:
        return self.path / INDEX_DIR

    def _load_index(self, *, writer: bool):
        """The saved index, or one rebuilt from the stored vectors when it is missing or stale
        (e.g. after an interrupted ingest); a rebuilt index is saved when no one else writes."""
        from cbir.index.flat import FlatIndex

        dim = self.catalog.dim
        version = self.catalog.vector_version()
        index = FlatIndex.load(self.index_dir, dim, version)
        if index is None:
            index = FlatIndex.build(dim, self.catalog.iter_vectors(), version)
            if writer:
                index.save(self.index_dir)
            else:
                try:
                    with writer_lock(self.path):
                        if self.catalog.vector_version() == version:
                            index.save(self.index_dir)
                except (LibraryLocked, StorageError, OSError):  # busy, or a read-only library
                    pass  # searching works from memory; the writer will save it
        return index

    def rebuild_index(self) -> int:
        """Rebuild the index from stored vectors (never re-encoding images); returns its size."""
        from cbir.index.flat import FlatIndex

        self._require_images()
        with writer_lock(self.path):
            version = self.catalog.vector_version()
            index = FlatIndex.build(self.catalog.dim, self.catalog.iter_vectors(), version)
            index.save(self.index_dir)
        self._index = index
        return index.ntotal

    # -- ingest --------------------------------------------------------------------------------
    def ingest(self, path: str | Path, *, progress=None):
        """Add a folder (or one image) to the library: new files are encoded, changed ones
        re-encoded, moved ones followed, deleted ones removed; bad files are recorded as skipped."""
        from cbir.ingest.pipeline import default_workers, run_ingest

        target = Path(path).expanduser()
        if not target.exists():
            raise UsageError(f"no such file or folder: {path}")
        target = target.resolve()
        with writer_lock(self.path):
            encoder = self.encoder
            if self.fingerprint is None:
                self.catalog.set_meta(MODEL, json.dumps(encoder.fingerprint()))
                self.catalog.dim = encoder.dim
            base = target if target.is_dir() else target.parent
            root_id, scope = self.catalog.root_for(base)
            if not target.is_dir():
                scope = f"{scope}/{target.name}" if scope else target.name
            root = self.catalog.roots()[root_id]
            index = self._load_index(writer=True)
            batch = self.settings.batch_size or (256 if encoder.device.startswith("cuda") else 32)
            try:
                report = run_ingest(
                    self.catalog,
                    index,
                    encoder,
                    root_id,
                    root,
                    scope,
                    batch_size=batch,
                    workers=self.settings.workers or default_workers(),
                    progress=progress,
                )
            except OperationalError as e:
                raise _database_error(e, self.path) from e
            finally:
                # Save what the in-memory index holds, labelled with the version it reflects,
                # even when the run was interrupted: a batch committed but not yet indexed
                # leaves it stale, and a stale index is rebuilt on the next open.
                try:
                    index.save(self.index_dir)
                except (CbirError, OperationalError):
                    pass  # a stale index is detected and rebuilt on the next open
            self._index = index
            return report

    # -- search --------------------------------------------------------------------------------
    def _require_images(self) -> None:
        if not self.fingerprint or self.catalog.count_images() == 0:
            raise EmptyLibrary(
                f"the library at {self.path} has no images yet; add some with `cbir ingest PATH`"
            )

    def search(self, text: str | None = None, *, image: str | Path | None = None, k: int = 10):
        """Images most similar to a text or to an image file, best first."""
        query = Query(text=text, image=Path(image) if image is not None else None)
        return self.search_many([query], k=k)[0]

    def search_many(self, queries: Iterable[Query], k: int = 10) -> list[list[Hit]]:
        """Many queries with one model load and one index search."""
        queries = list(queries)
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        self._require_images()
        if not queries:
            return []
        vectors = self.embed_queries(queries)
        if self._index is None:
            self._index = self._load_index(writer=False)
        scores, ids = self._index.search(vectors, min(k, max(self._index.ntotal, 1)))
        infos = self.catalog.images(np.unique(ids[ids >= 0]))
        results = []
        for row_scores, row_ids in zip(scores, ids):
            found = [(float(s), infos[int(i)]) for s, i in zip(row_scores, row_ids) if int(i) in infos]
            results.append([_hit(rank, s, info) for rank, (s, info) in enumerate(found, 1)])
        return results

    def embed_queries(self, queries: list[Query]) -> np.ndarray:
        from cbir.ingest.decode import BadImage, read_query_image

        encoder = self.encoder
        out = np.zeros((len(queries), encoder.dim), dtype=np.float32)
        texts = [(i, q.text) for i, q in enumerate(queries) if q.text is not None]
        for start in range(0, len(texts), TEXT_BATCH):
            chunk = texts[start : start + TEXT_BATCH]
            out[[i for i, _ in chunk]] = encoder.encode_texts([t for _, t in chunk])
        for i, q in enumerate(queries):
            if q.image is None:
                continue
            try:
                pixels = read_query_image(Path(q.image).expanduser(), encoder.preprocess)
            except FileNotFoundError:
                raise UsageError(f"query image not found: {q.image}") from None
            except (OSError, BadImage) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else e
                raise UsageError(f"cannot use {q.image} as a query image: {reason}") from None
            out[i] = encoder.encode_images(pixels[None])[0]
        return out

    # -- status --------------------------------------------------------------------------------
    def status(self, *, with_skipped: bool = False) -> Status:
        from cbir.index.flat import INDEX_FILE, INDEX_TYPE, Manifest

        fingerprint = self.fingerprint or {}
        manifest = Manifest.read(self.index_dir)
        index_file = self.index_dir / INDEX_FILE
        db_bytes = sum(
            p.stat().st_size
            for p in self.path.glob(library_db_path(self.path).name + "*")
            if p.is_file()
        )
        return Status(
            library=self.path,
            model=fingerprint.get("spec", "(none yet)"),
            fingerprint=fingerprint,
            images=self.catalog.count_images(),
            skipped=self.catalog.count_skipped(),
            index_type=manifest.type if manifest else INDEX_TYPE,
            index_vectors=manifest.count if manifest else 0,
            index_bytes=index_file.stat().st_size if index_file.exists() else 0,
            index_current=bool(manifest)
            and manifest.vector_version == self.catalog.vector_version(),
            database_bytes=db_bytes,
            skipped_files=self.catalog.skipped() if with_skipped else [],
        )


def _hit(rank: int, score: float, info: ImageInfo) -> Hit:
    return Hit(rank=rank, score=score, **info.__dict__)


def _database_error(e: OperationalError, library: Path) -> CbirError:
    message = str(e.orig)
    if "full" in message:
        return StorageError(
            f"disk full while writing the library at {library}; everything committed before is "
            "kept: free some space and run the same command again"
        )
    if "locked" in message:
        return LibraryLocked(f"the library at {library} is busy (another process holds it)")
    return StorageError(f"database error in {library}: {message}")

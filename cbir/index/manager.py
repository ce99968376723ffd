"""A library's indexes as one managed whole: loaded on first use (rebuilt from the stored vectors
when missing or stale, as the kind they were), saved as atomic generations, rebuilt as another
kind, sharded, verified and repaired. The Library composes it; nothing here encodes images."""

from __future__ import annotations

import os
import threading
import warnings
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cbir.errors import CbirWarning, LibraryLocked, StorageError, UsageError
from cbir.fsutil import writer_lock
from cbir.names import IMAGES, TEXTS

if TYPE_CHECKING:
    from cbir.index.build import Chunks


class LibraryIndexes:
    """The image and text indexes of the library at ``library`` (files in ``folder``), derived
    from the vectors ``catalog`` stores."""

    def __init__(self, catalog, library: Path, folder: Path, gpu: bool = False, follow: bool = False):
        self.catalog = catalog
        self.library = library
        self.folder = folder
        self.gpu = gpu  # search the loaded indexes on the GPU (checked usable by the caller)
        # A long-lived reader (cbir serve) follows the generations other processes save: it
        # reloads when a newer one appears, and serves the last saved one while an ingest runs.
        self.follow = follow
        self._loaded: dict = {}  # name -> VectorIndex or ShardedIndex, loaded on first use
        self._loading = threading.Lock()  # one load at a time; searches go on with what is loaded
        self._files: dict = {}  # name -> the saved files (name -> sha256) loaded, None if built here
        self._manifest_seen: tuple | None = None  # (stat of manifest.json, the manifest)
        # Serves what readers load from elsewhere (cbir.distributed.search.RayEngine), once
        # set by serve_from; writers keep the local index.
        self.serving = None

    def forget(self) -> None:
        """Drop what is loaded: the next use reads (or rebuilds) the saved indexes."""
        self._loaded.clear()

    def loaded(self, name: str):
        """The index ``name`` as searches use it now, or None when it is not loaded yet (nothing
        is loaded here)."""
        return self._loaded.get(name)

    def serve_from(self, serving) -> None:
        """Have ``serving`` serve what readers load from now on (``wrap(name, index, files,
        reload)`` returns the index searches use, ``close()`` stops it); what is loaded is
        loaded again through it."""
        self.serving = serving
        self.forget()

    def close(self) -> None:
        """Stop serving elsewhere (the Ray actors), if anything does."""
        serving, self.serving = self.serving, None
        if serving is not None:
            serving.close()
            self.forget()

    def stored(self, name: str) -> tuple[int, Chunks]:
        """(current version, chunks of stored vectors) behind the index ``name``."""
        if name == IMAGES:
            return self.catalog.vector_version(), self.catalog.iter_vectors
        return self.catalog.text_version(), self.catalog.iter_text_vectors

    def _build(self, name: str, kind: str = "auto", memory_bytes: int | None = None, gpu: bool | None = False):
        """(index, report) built from the stored vectors: never re-encoding anything."""
        from cbir.index.build import build

        version, chunks = self.stored(name)
        return build(
            name,
            self.catalog.dim,
            len(self.catalog.vector_ids(name)),
            chunks,
            lambda n: self.catalog.sample_vectors(name, n),
            version,
            kind=kind,
            memory_bytes=memory_bytes,
            exact_source=self._exact_source(name),
            gpu=gpu,
        )

    def save(self, indexes: dict, builds: dict | None = None):
        """Write ``indexes`` as a new generation (the others carried over) and switch to it."""
        from cbir.index import generations

        return generations.save(self.folder, indexes, self.catalog.model_fingerprint() or {}, builds)

    def save_changed(self, indexes: dict) -> None:
        """Save those of ``indexes`` whose vector version the current generation does not have
        yet: an ingest that changed nothing rewrites no index file."""
        from cbir.index.generations import read_manifest

        manifest = read_manifest(self.folder)
        saved = manifest.indexes if manifest else {}
        changed = {
            name: index
            for name, index in indexes.items()
            if name not in saved or saved[name].vector_version != index.vector_version
        }
        if changed:
            self.save(changed)

    def load(self, name: str, *, writer: bool):
        """The saved index, or one rebuilt from the stored vectors (of the kind it had) when it
        is missing or stale, e.g. after an interrupted ingest; a rebuilt index is saved when no
        one else writes."""
        from cbir.index import generations

        version, _ = self.stored(name)
        model = self.catalog.model_fingerprint()
        # what is served elsewhere is kept here only to publish it and to answer for a lost part:
        # mapped from the files, it costs the OS's page cache, not this process's memory
        mapped = self.serving is not None and not writer
        index, entry = generations.load(self.folder, name, self.catalog.dim, version, model, mapped)
        if index is None and self.follow and entry and entry.vector_version < version and self._writer_busy():
            # an ingest is committing batches: search its last saved index rather than rebuild
            index, entry = generations.load(self.folder, name, self.catalog.dim, entry.vector_version, model, mapped)
        files = entry.files if index is not None else None  # what was read, for follow
        if index is None:
            index, build = self._rebuild_like(name, entry)
            builds = {name: build}
            if writer:
                self.save({name: index}, builds)
            else:  # searching never needs the save: it searches the index in memory
                try:
                    with writer_lock(self.library, brief=True):
                        if self.stored(name)[0] == version:
                            files = self.save({name: index}, builds).indexes[name].files
                except LibraryLocked:
                    pass  # the writer will save it
                except Exception as e:  # a full disk, a read-only library: the search goes on
                    if not _read_only(self.library):
                        warnings.warn(
                            f"the rebuilt {name} index is searched from memory, not saved: {e}",
                            CbirWarning,
                            stacklevel=2,
                        )
        self._files[name] = files
        index = self._bind(name, index)
        # Each generation a reader loads is handed on here, so a serving copy follows it too;
        # a writer changes the local index.
        if self.serving is not None and not writer:
            index = self.serving.wrap(name, index, files, partial(self.reload, name))
        self._loaded[name] = index
        return index

    def reload(self, name: str):
        """``name`` loaded again, for a serving copy that lost a part (a Ray actor died)."""
        with self._loading:
            return self.load(name, writer=False)

    def _bind(self, name: str, index):
        """Give an index what it needs from the database: exact vectors for IVF-PQ re-ranking,
        and a sharded index the keys its routing rule reads; parts faiss can run on the GPU
        search there when the library was opened for GPU search."""
        from cbir.index.gpu import KINDS as GPU_KINDS

        for part in getattr(index, "shards", [index]):
            part.exact_source = self._exact_source(name)
            part.gpu = self.gpu and part.kind in GPU_KINDS
        if hasattr(index, "router"):
            index.router.keys = self._shard_keys(index.router.by)
        return index

    def _exact_source(self, name: str):
        return lambda ids: self.catalog.vectors_of(name, ids)

    def _rebuild_like(self, name: str, entry) -> tuple:
        """(index, build record) made from the stored vectors as the manifest ``entry`` describes
        it: the same kind, sharded again by the same rule (auto when there is no entry)."""
        kind = entry.spec.kind if entry else "auto"
        if entry is not None and entry.sharding:
            router = entry.sharding["router"]
            index, reports = self._sharded(router["shards"], router["by"], kind)
            return index, {"shards": [r.for_manifest() for r in reports]}
        index, report = self._build(name, kind)
        return index, report.for_manifest()

    def _shard_keys(self, by: str) -> Callable[[np.ndarray], list[str]]:
        """ids -> the folder (root and top-level folder) or the date taken that shards them."""
        if by == "folder":
            return self.catalog.top_folders
        return lambda ids: [t.isoformat() for t in self.catalog.dates_taken(ids)]

    def _sharded(
        self, shards: int, by: str, kind: str = "auto", memory_bytes: int | None = None, gpu: bool | None = False
    ):
        """(ShardedIndex of the image vectors, a BuildReport per shard)."""
        from cbir.index.sharded import BY, Router, ShardedIndex

        if by not in BY:
            raise UsageError(f"unknown shard rule {by!r}: use one of {', '.join(BY)}")
        if shards < 2:
            raise UsageError("a sharded index has at least 2 shards (rebuild for one index)")
        ids = self.catalog.vector_ids(IMAGES)
        keys = self._shard_keys(by)
        router = Router(by, shards, keys=keys)
        if by == "date":  # equal-sized date ranges
            dates = sorted(keys(ids))
            router.bounds = [dates[len(dates) * i // shards] for i in range(1, shards)] if dates else []
        elif by == "folder":  # the biggest folders first, each to the emptiest shard
            sizes = [0] * shards
            for key, count in sorted(Counter(keys(ids)).items(), key=lambda kv: (-kv[1], kv[0])):
                router.folders[key] = sizes.index(min(sizes))
                sizes[router.folders[key]] += count
        where = router.assign(ids)
        budget = memory_bytes and memory_bytes // shards
        built = [self._build_shard(ids[where == number], number, kind, budget, gpu) for number in range(shards)]
        return ShardedIndex([index for index, _ in built], router), [report for _, report in built]

    def _build_shard(
        self, ids: np.ndarray, number: int, kind: str, memory_bytes: int | None = None, gpu: bool | None = False
    ):
        """(index, report) of shard ``number``: the stored image vectors ``ids``."""
        from cbir.index.build import build

        version, chunks = self.stored(IMAGES)

        def shard_chunks():
            for chunk_ids, vectors in chunks():
                keep = np.isin(chunk_ids, ids)
                yield chunk_ids[keep], vectors[keep]

        def shard_sample(size):
            chosen = np.random.default_rng(number).choice(ids, min(size, len(ids)), replace=False)
            return self.catalog.vectors_of(IMAGES, chosen)

        index, report = build(
            IMAGES,
            self.catalog.dim,
            len(ids),
            shard_chunks,
            shard_sample,
            version,
            kind=kind,
            memory_bytes=memory_bytes,
            exact_source=self._exact_source(IMAGES),
            gpu=gpu,
        )
        report.name = f"{IMAGES} shard {number}"
        return index, report

    def rebuild_shard(self, number: int, kind: str | None = None, gpu: bool | None = None):
        """Rebuild one shard of the image index from the stored vectors its rule routes to it
        (as its kind unless ``kind``), leaving the other shards as they are; its BuildReport."""
        with writer_lock(self.library):
            index = self.get(IMAGES)
            if not hasattr(index, "shards"):
                raise UsageError("the image index is not sharded; shard it with `cbir index shard --shards N`")
            if not 0 <= number < len(index.shards):
                raise UsageError(f"no shard {number}: the image index has shards 0 to {len(index.shards) - 1}")
            ids = self.catalog.vector_ids(IMAGES)
            mine = ids[index.router.assign(ids, [s.ntotal for s in index.shards]) == number]
            shard, report = self._build_shard(mine, number, kind or index.shards[number].kind, gpu=gpu)
            index.shards[number] = shard
            saved = self.save({IMAGES: index})
        report.bytes = saved.file_bytes(self.folder, _shard_files(saved, number))
        return report

    def shard(self, shards: int, by: str = "hash", kind: str | None = None, gpu: bool | None = None) -> list:
        """Split the image index into ``shards`` files by hash of the id, top-level folder, or
        date taken (each built and tuned on its own, of the current kind unless ``kind``), and
        switch to them atomically. Returns a BuildReport per shard."""
        from cbir.index.generations import read_manifest
        from cbir.index.sharded import check_shard_count

        check_shard_count(shards, self.catalog.count_images())  # before the lock: a typo costs nothing
        with writer_lock(self.library):
            manifest = read_manifest(self.folder)
            current = manifest.indexes.get(IMAGES) if manifest else None
            index, reports = self._sharded(shards, by, kind or (current.spec.kind if current else "auto"), gpu=gpu)
            saved = self.save({IMAGES: index}, {IMAGES: {"shards": [r.for_manifest() for r in reports]}})
        self._loaded[IMAGES] = self._bind(IMAGES, index)
        for number, report in enumerate(reports):
            report.bytes = saved.file_bytes(self.folder, _shard_files(saved, number))
        return reports

    def get(self, name: str):
        index = self._loaded.get(name)
        if index is None:
            with self._loading:
                index = self._loaded.get(name)
                return index if index is not None else self.load(name, writer=False)
        if self.follow and self._outdated(name, index) and self._loading.acquire(blocking=False):
            try:  # other threads keep searching the loaded index while this one reloads
                return self.load(name, writer=False)
            finally:
                self._loading.release()
        return index

    def _outdated(self, name: str, index) -> bool:
        """Whether another process saved a different ``name`` (an ingest, a rebuild as another
        kind), or the database moved past ``index`` with no writer left to save it (an
        interrupted ingest): then it is loaded, or rebuilt, again."""
        from cbir.index.generations import MANIFEST, read_manifest

        try:
            st = (self.folder / MANIFEST).stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        if self._manifest_seen is None or self._manifest_seen[0] != key:  # a stat per search
            self._manifest_seen = (key, read_manifest(self.folder) if key else None)
        manifest = self._manifest_seen[1]
        saved = manifest.indexes.get(name) if manifest else None
        if saved and saved.files != self._files.get(name) and saved.vector_version >= (index.vector_version or 0):
            return True
        return self.stored(name)[0] > (index.vector_version or 0) and not self._writer_busy()

    def _writer_busy(self) -> bool:
        """Whether another process holds the write lock (an ingest); held briefly, so an ingest waits for it."""
        try:
            with writer_lock(self.library, brief=True):
                return False
        except LibraryLocked:
            return True
        except (StorageError, OSError):  # a read-only library: nobody can be writing
            return False

    def rebuild(self, kind: str = "auto", memory_bytes: int | None = None, gpu: bool | None = None) -> list:
        """Rebuild the indexes from the stored vectors, never re-encoding; ``kind`` (auto, flat,
        hnsw, ivf, ivfpq) and the memory budget apply to the image index, the text index is
        chosen automatically; ``gpu`` as for cbir.index.build.build. Returns a BuildReport per
        index; the switch to them is atomic."""
        with writer_lock(self.library):
            built = {
                IMAGES: self._build(IMAGES, kind, memory_bytes, gpu),
                # the text index is sized on its own: on the GPU only when it is big enough (auto)
                TEXTS: self._build(TEXTS, "auto", memory_bytes, gpu and None),
            }
            indexes = {name: index for name, (index, _) in built.items()}
            manifest = self.save(indexes, {n: report.for_manifest() for n, (_, report) in built.items()})
        self._loaded.update({name: self._bind(name, index) for name, index in indexes.items()})
        for name, (_, report) in built.items():
            report.bytes = manifest.file_bytes(self.folder, manifest.indexes[name].files)
        return [report for _, report in built.values()]

    def verify(self) -> dict[str, list[str]]:
        """Problems of each index (checksums, model, version, ids == the database's ids); an
        index with an empty list is sound."""
        from cbir.index import generations

        problems: dict[str, list[str]] = {}
        for name in (IMAGES, TEXTS):
            version, _ = self.stored(name)
            ids = self.catalog.vector_ids(name)
            if name == TEXTS and not len(ids) and version == 0:
                problems[name] = []  # no texts, never had any: nothing to index
                continue
            problems[name] = generations.verify(
                self.folder, name, self.catalog.dim, version, ids, self.catalog.model_fingerprint() or {}
            )
        return problems

    def repair(self) -> dict[str, list[str]]:
        """Rebuild (as the same kind, from the stored vectors) every index verify finds broken:
        of a sharded index only the shards whose files are damaged, when the rest is sound.
        Returns what was wrong with the ones rebuilt."""
        from cbir.index import generations

        with writer_lock(self.library):
            broken = {name: p for name, p in self.verify().items() if p}
            manifest = generations.read_manifest(self.folder)
            built = {}
            for name in broken:
                entry = manifest.indexes.get(name) if manifest else None
                repaired = self._repair_shards(manifest, name) if entry and entry.sharding else None
                built[name] = repaired or self._rebuild_like(name, entry)
            if built:
                self.save({n: i for n, (i, _) in built.items()}, {n: b for n, (_, b) in built.items()})
                for name in built:
                    self._loaded.pop(name, None)  # loaded afresh, with its routing bound
        return broken

    def _repair_shards(self, manifest, name: str):
        """(index, build record) with only the damaged shards of sharded index ``name`` rebuilt
        and the others read as they are; None when more than shard files is wrong (stale,
        unreadable, other ids), for a rebuild of the whole."""
        from cbir.index import generations
        from cbir.index.sharded import Router, ShardedIndex

        entry = manifest.indexes[name]
        version, _ = self.stored(name)
        bad = {generations.shard_of_file(f) for f in generations.damaged_files(self.folder, manifest, name)}
        count = len(entry.sharding["counts"])
        if not bad or None in bad or entry.vector_version != version:
            return None
        try:
            good = generations.read_shards(self.folder, manifest, name, self.catalog.dim, set(range(count)) - bad)
        except (RuntimeError, OSError, ValueError):
            return None
        router = Router.from_dict(entry.sharding["router"])
        router.keys = self._shard_keys(router.by)
        ids = self.catalog.vector_ids(name)
        where = router.assign(ids, entry.sharding["counts"])
        records = list(entry.build.get("shards") or [{}] * count)
        shards = []
        for number in range(count):
            if number in good:
                shards.append(good[number])
                continue
            shard, report = self._build_shard(ids[where == number], number, entry.shard_spec(number).kind)
            shards.append(shard)
            records[number] = report.for_manifest()
        index = ShardedIndex(shards, router)
        index.vector_version = version
        if not np.array_equal(np.sort(index.ids()), ids):
            return None
        return index, {"shards": records}

    def info(self) -> dict:
        """The current generation's manifest, with each index's files and sizes."""
        from cbir.index.generations import read_manifest

        manifest = read_manifest(self.folder)
        if manifest is None:
            return {"generation": None, "indexes": {}}
        data = manifest.as_dict()
        for entry in data["indexes"].values():
            entry["bytes"] = manifest.file_bytes(self.folder, entry["files"])
        return data

    def vectors_of(self, name: str):
        """ids -> (ids found, exact vectors): from the index when it keeps them whole, else from
        SQLite (IVF-PQ keeps compressed codes only)."""
        index = self.get(name)
        if index.stores_exact_vectors:
            return index.vectors
        return lambda ids: self.catalog.vectors_of(name, ids)


def _shard_files(manifest, number: int) -> list[str]:
    """The files of image shard ``number`` (its index and any tombstones)."""
    return [f for f in manifest.indexes[IMAGES].files if f.startswith(f"{IMAGES}.{number}.")]


def _read_only(library: Path) -> bool:
    """A library no one can write (a read-only folder or disk): not saving there is expected."""
    return not os.access(library, os.W_OK)

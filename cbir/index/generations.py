"""A library's indexes on disk, as generations: every save writes a new folder ``gen-NNNNNN``
holding each index's files, then switches ``index/manifest.json`` to it with one atomic rename,
then removes older generations. A reader sees one whole generation or the next, never a mix; a
reader that loses the race with a removal reads the manifest again.

manifest.json: {"generation": N, "folder": "gen-...", "model": fingerprint, "indexes": {name:
{"spec", "dim", "count", "vector_version", "files": {file: sha256}, "build": {...},
"sharding": {"router", "counts", "specs"} or null}}}. A sharded index has a file per shard
(images.0.faiss, ...), and each shard its own spec (shards are tuned, and may be rebuilt as
another kind, on their own); HNSW tombstones sit beside their index (NAME.dead.npy).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cbir.fingerprint import same_model
from cbir.fsutil import atomic_write, atomic_write_text, fsync_dir, storage_error
from cbir.index.types import IndexSpec
from cbir.index.vector_index import VectorIndex

if TYPE_CHECKING:
    from cbir.index.sharded import ShardedIndex

MANIFEST = "manifest.json"
PREFIX = "gen-"


@dataclass
class Entry:
    """What the manifest says of one index."""

    spec: IndexSpec
    dim: int
    count: int
    vector_version: int
    files: dict[str, str]  # file name -> sha256
    build: dict = field(default_factory=dict)  # how it was built: seconds, recall@10, sample ...
    # {"router": Router.as_dict(), "counts": [vectors per shard], "specs": [spec per shard]}
    sharding: dict | None = None

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        data["spec"] = self.spec.as_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Entry:
        data = dict(data)
        data["spec"] = IndexSpec.from_dict(data["spec"])
        return cls(**data)

    def shard_spec(self, shard: int | None) -> IndexSpec:
        """The spec of shard ``shard`` (of the index itself for None)."""
        specs = (self.sharding or {}).get("specs")
        return IndexSpec.from_dict(specs[shard]) if shard is not None and specs else self.spec


@dataclass
class Manifest:
    generation: int
    folder: str
    model: dict
    indexes: dict[str, Entry]

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        data["indexes"] = {name: e.as_dict() for name, e in self.indexes.items()}
        return data

    def file_bytes(self, root: Path, files) -> int:
        """The size on disk of these files of the generation (missing ones count 0)."""
        folder = root / self.folder
        return sum((folder / f).stat().st_size for f in files if (folder / f).exists())


def read_manifest(root: Path) -> Manifest | None:
    """The current generation's manifest, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        return Manifest(
            data["generation"],
            data["folder"],
            data.get("model") or {},
            {name: Entry.from_dict(e) for name, e in data["indexes"].items()},
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(name: str, shard: int | None = None) -> tuple[str, str]:
    """The index file and the tombstone file of an index, or of one of its shards."""
    stem = name if shard is None else f"{name}.{shard}"
    return f"{stem}.faiss", f"{stem}.dead.npy"


def _read(
    folder: Path, entry: Entry, name: str, dim: int, shard: int | None = None, mapped: bool = False
) -> VectorIndex:
    import faiss

    index_file, dead_file = _files(name, shard)
    dead = np.load(folder / dead_file) if dead_file in entry.files else None
    # Mapped: the vectors (flat and HNSW storage) stay pages of the file, which the OS drops and
    # reads again as memory runs short, instead of the process's own memory. Safe because a
    # generation's files are never written again, only unlinked (and a mapping outlives that).
    flags = faiss.IO_FLAG_MMAP_IFC if mapped else 0
    return VectorIndex(dim, name, entry.shard_spec(shard), faiss.read_index(str(folder / index_file), flags), dead)


def load(root: Path, name: str, dim: int, vector_version: int, model: dict | None = None, mapped: bool = False):
    """(index, manifest entry): the saved index ``name`` if the current generation holds it for
    ``vector_version``, ``dim`` and (when given) the library's ``model`` fingerprint, else (None,
    the entry if any, to rebuild the index alike). A sharded index comes back as a ShardedIndex.
    ``mapped``: read-only, its vectors mapped from the files rather than read into memory."""
    from cbir.index.sharded import Router, ShardedIndex

    for _ in range(3):  # a writer may remove the generation between reading and opening
        manifest = read_manifest(root)
        entry = manifest.indexes.get(name) if manifest else None
        if manifest is None or entry is None or entry.vector_version != vector_version or entry.dim != dim:
            return None, entry
        if model and not same_model(manifest.model or {}, model):
            return None, entry  # another model's index (copied in from another library?)
        folder = root / manifest.folder
        loaded: VectorIndex | ShardedIndex
        try:
            if entry.sharding:
                count = len(entry.sharding["counts"])
                shards = [_read(folder, entry, name, dim, n, mapped) for n in range(count)]
                loaded = ShardedIndex(shards, Router.from_dict(entry.sharding["router"]))
            else:
                loaded = _read(folder, entry, name, dim, mapped=mapped)
        except (RuntimeError, OSError, ValueError):
            if (root / MANIFEST).exists() and read_manifest(root) != manifest:
                continue  # a newer generation replaced this one: read again
            return None, entry
        if loaded.ntotal != entry.count or loaded.dim != dim:
            return None, entry
        loaded.vector_version = vector_version
        return loaded, entry
    return None, None


def save(
    root: Path, indexes: dict[str, VectorIndex | ShardedIndex], model: dict, builds: dict[str, dict] | None = None
) -> Manifest:
    """Write a new generation holding ``indexes`` (and, unchanged, the current generation's other
    indexes), switch to it atomically, then remove older generations. A failed write (a full
    disk) raises StorageError and leaves the current generation as it was, with no new folder."""
    current = read_manifest(root)
    number = (current.generation if current else 0) + 1
    folder_name = f"{PREFIX}{number:06d}"
    folder = root / folder_name
    try:
        root.mkdir(parents=True, exist_ok=True)
        # A folder of this number is what a writer killed before its switch left (one writer holds
        # the lock, and readers only read the manifest's folder): start it anew, since its files
        # may be hard links into the current generation, onto which linking or copying again fails.
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        manifest = _write(root, folder, number, current, indexes, model, builds)
    except BaseException as e:
        switched = read_manifest(root)
        if switched is None or switched.folder != folder_name:  # no one's: one writer holds the lock
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(e, OSError):
            raise storage_error(e, Path(e.filename) if e.filename else folder) from e
        raise
    _remove_old(root, keep=folder_name)
    return manifest


def _write(
    root: Path,
    folder: Path,
    number: int,
    current: Manifest | None,
    indexes: dict[str, VectorIndex | ShardedIndex],
    model: dict,
    builds: dict[str, dict] | None,
) -> Manifest:
    """Write generation ``number`` into ``folder`` and switch the manifest to it."""
    from cbir.index.sharded import ShardedIndex

    entries: dict[str, Entry] = {}
    for name, index in indexes.items():
        if index.vector_version is None:
            raise ValueError("an index must know which vector version it holds before it is saved")
        if isinstance(index, ShardedIndex):
            sharded, shards = index, index.shards
        else:
            sharded, shards = None, [index]
        files: dict[str, str] = {}
        for position, shard in enumerate(shards):
            index_file, dead_file = _files(name, position if sharded is not None else None)
            atomic_write(folder / index_file, partial(_write_faiss, index=shard.faiss_index))
            files[index_file] = sha256_of(folder / index_file)
            if len(shard.dead_rows):
                atomic_write(folder / dead_file, partial(_save_npy, array=shard.dead_rows))
                files[dead_file] = sha256_of(folder / dead_file)
        build = (builds or {}).get(name)
        if build is None and current and name in current.indexes:
            build = current.indexes[name].build
        sharding = (
            {
                "router": sharded.router.as_dict(),
                "counts": [s.ntotal for s in sharded.shards],
                "specs": [s.spec.as_dict() for s in sharded.shards],
            }
            if sharded is not None
            else None
        )
        entries[name] = Entry(index.spec, index.dim, index.ntotal, index.vector_version, files, build or {}, sharding)
    if current:  # indexes not in memory stay as they were: hard links, not copies
        for name, entry in current.indexes.items():
            if name in entries:
                continue
            for file in entry.files:
                _link_or_copy(root / current.folder / file, folder / file)
            entries[name] = entry
    fsync_dir(folder)
    manifest = Manifest(number, folder.name, model, entries)
    atomic_write_text(root / MANIFEST, json.dumps(manifest.as_dict(), indent=2))
    return manifest


def _write_faiss(path: Path, index) -> None:
    """faiss.write_index through a Python file: a failed write raises the OSError (with its
    errno, e.g. ENOSPC), where faiss's own file writer raises a RuntimeError with the errno in
    its text, and only reports a failure of the final flush on stderr."""
    import faiss

    with open(path, "wb") as f:
        failed: list[OSError] = []

        def write(data: bytes) -> int:
            try:
                return f.write(data)
            except OSError as e:
                failed.append(e)
                raise

        try:
            faiss.write_index(index, faiss.PyCallbackIOWriter(write))
        except RuntimeError:
            if failed:  # a faiss that wraps the callback's error in its own
                raise failed[0] from None
            raise


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _remove_old(root: Path, keep: str) -> None:
    """Older generations, and index files of earlier cbir versions, which kept them loose."""
    for path in root.iterdir():
        if path.name in (MANIFEST, keep) or path.name.startswith("."):
            continue
        if path.is_dir() and path.name.startswith(PREFIX):
            shutil.rmtree(path, ignore_errors=True)
        elif path.suffix in (".faiss", ".json"):
            path.unlink(missing_ok=True)


def damaged_files(root: Path, manifest: Manifest, name: str) -> dict[str, bool]:
    """The files of index ``name`` in ``manifest``'s generation that are missing (True) or do not
    match their checksum (False)."""
    folder = root / manifest.folder
    damaged = {}
    for file, checksum in manifest.indexes[name].files.items():
        path = folder / file
        if not path.is_file():
            damaged[file] = True
        elif sha256_of(path) != checksum:
            damaged[file] = False
    return damaged


def read_shards(root: Path, manifest: Manifest, name: str, dim: int, numbers) -> dict[int, VectorIndex]:
    """Shards ``numbers`` of index ``name`` as ``manifest``'s generation holds them."""
    entry = manifest.indexes[name]
    return {n: _read(root / manifest.folder, entry, name, dim, n) for n in numbers}


def shard_of_file(file: str) -> int | None:
    """The shard a file belongs to (images.3.faiss -> 3), None for an unsharded index's file."""
    parts = file.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None


def _model_name(fingerprint: dict) -> str:
    """A model as verify names it: its spec and weights, as two models may differ by weights
    alone (cbir-tiny and a fine-tuned copy of it, under the same spec)."""
    return f"{fingerprint.get('spec')} (weights {fingerprint.get('weights')})"


def verify(root: Path, name: str, dim: int, vector_version: int, stored_ids: np.ndarray, model: dict) -> list[str]:
    """What is wrong with index ``name`` in the current generation, one line each (nothing when
    it is sound): its files and their checksums, its model, its version, and that it holds
    exactly the ids the database holds."""
    manifest = read_manifest(root)
    if manifest is None:
        return ["no index manifest (index/manifest.json is missing or unreadable)"]
    entry = manifest.indexes.get(name)
    if entry is None:
        return [f"the {name} index is missing from generation {manifest.generation}"]
    problems = []
    if manifest.model and model and manifest.model.get("weights") != model.get("weights"):
        problems.append(f"the {name} index was built with {_model_name(manifest.model)}, not {_model_name(model)}")
    for file, gone in damaged_files(root, manifest, name).items():
        problems.append(f"{file} is missing" if gone else f"{file} does not match its checksum (damaged or changed)")
    if problems:
        return problems
    index, _ = load(root, name, dim, entry.vector_version)
    if index is None:
        return [f"the {name} index cannot be read as a {entry.spec.kind} index of {entry.count} vectors"]
    if entry.vector_version != vector_version:
        problems.append(
            f"the {name} index is stale (vector version {entry.vector_version}, the database is at {vector_version})"
        )
    held = index.ids()
    missing = np.setdiff1d(stored_ids, held)
    extra = np.setdiff1d(held, stored_ids)
    if len(missing):
        problems.append(f"{len(missing)} {name} in the database are missing from the index (e.g. id {missing[0]})")
    if len(extra):
        problems.append(f"{len(extra)} ids in the {name} index are not in the database (e.g. id {extra[0]})")
    if len(np.unique(held)) != len(held):
        problems.append(f"the {name} index holds some ids twice")
    return problems

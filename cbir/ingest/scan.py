"""Walking a folder for image files (and PDFs and videos, whose pages and frames are images:
cbir.ingest.media): excluded entries (hidden ones, the defaults, .cbirignore and
--exclude patterns: cbir.ingest.exclude) left out and excluded folders not walked, symlinked
folders followed once. A RAW photo beside a JPEG or HEIC of the same name (IMG_1.CR2 and
IMG_1.JPG: the camera saved both of one shot) is no image of its own but listed with it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from cbir.fsutil import special_file
from cbir.ingest.decode import SUPPORTED_EXTENSIONS
from cbir.ingest.exclude import IGNORE_FILE, Exclusions
from cbir.ingest.media import is_container_name
from cbir.ingest.raw import is_raw_name
from cbir.ingest.sidecars import SIDECAR_SUFFIX, sidecar_candidates


@dataclass(frozen=True)
class ScannedFile:
    path: str  # relative to the root, POSIX separators
    size: int
    mtime_ns: int
    # Dataset entries only (see cbir.ingest.sources): where the bytes are when not at root/path
    # (a tar member: the tar, and the member's offset in it), the row's captions and other
    # columns, and the dataset that lists it.
    abspath: str | None = None
    offset: int | None = None
    captions: tuple[str, ...] = ()
    extra: dict | None = field(default=None, hash=False)
    dataset: str | None = None
    # Folder images: the RAW files of the same shot beside it (IMG_1.CR2 for IMG_1.JPG), which
    # are not ingested themselves; their names are also in ``extra`` (key "raw"), which search
    # results and the image's details show.
    companions: tuple[str, ...] = ()


@dataclass
class ScanResult:
    files: list[ScannedFile] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    sidecars: dict[str, tuple[int, int]] = field(default_factory=dict)  # caption file -> size, mtime
    # A dataset's scan: the datasets it lists in full (their images not listed are gone) and
    # the skip records it owns (under these path prefixes); None for a folder scan.
    datasets: frozenset[str] | None = None
    skip_scopes: tuple[str, ...] = ()

    def sidecar_of(self, image_path: str) -> tuple[str, int, int] | None:
        """(path, size, mtime_ns) of the caption file beside an image, if there is one."""
        for name in sidecar_candidates(image_path):
            if name in self.sidecars:
                return (name, *self.sidecars[name])
        return None


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in SUPPORTED_EXTENSIONS


def is_read_name(name: str) -> bool:
    """Whether a folder scan reads a file of this name: an image, a PDF or a video."""
    return is_image_name(name) or is_container_name(name)


# What a camera saves beside a RAW of the same shot (RAW+JPEG, RAW+HEIF modes).
_PAIRED_WITH_RAW = frozenset({".jpg", ".jpeg", ".jpe", ".heic", ".heif", ".hif"})


def _paired(files: list[ScannedFile]) -> list[ScannedFile]:
    """One folder's files, each RAW photo that has a JPEG or HEIC of the same name (case aside)
    moved from the list into that image's ``companions``."""
    developed: dict[str, int] = {}
    for i, f in enumerate(files):
        stem, ext = os.path.splitext(f.path)
        if ext.lower() in _PAIRED_WITH_RAW:
            developed.setdefault(stem.lower(), i)
    raws: dict[int, list[str]] = {}  # index of the JPEG -> its RAWs
    for f in files:
        pair = developed.get(os.path.splitext(f.path)[0].lower()) if is_raw_name(f.path) else None
        if pair is not None:
            raws.setdefault(pair, []).append(f.path)
    if not raws:
        return files
    listed = {p for paths in raws.values() for p in paths}
    kept = []
    for i, f in enumerate(files):
        if i in raws:
            extra = {"raw": ", ".join(p.rsplit("/", 1)[-1] for p in raws[i])}
            kept.append(replace(f, companions=tuple(raws[i]), extra=extra))
        elif f.path not in listed:
            kept.append(f)
    return kept


def _not_a_file(path: str | os.PathLike[str]) -> str:
    """Why a path named like an image is no file to read: a dangling symlink, a FIFO, ..."""
    try:
        kind = special_file(os.stat(path).st_mode)  # follows a symlink
    except FileNotFoundError:
        target = os.readlink(path).encode("utf-8", "backslashreplace").decode("utf-8")
        return f"dangling symlink (to {target}, which does not exist)"
    return f"not a regular file: {kind}" if kind else "changed while the folder was scanned"


def scan(root: Path, scope: str = "", exclusions: Exclusions | None = None) -> ScanResult:
    """Image files under ``root / scope`` (a folder or a single file), less what ``exclusions``
    leave out (default: the defaults and the ``.cbirignore`` files); a usage error when the
    scope itself is excluded."""
    result = ScanResult()
    start = root / scope if scope else root
    rules = (exclusions or Exclusions.for_root(root)).descend(scope)
    if start.is_file():
        stat = start.stat()
        result.files.append(ScannedFile(scope, stat.st_size, stat.st_mtime_ns))
        for name in sidecar_candidates(scope):
            sidecar = root / name
            if sidecar.is_file():
                st = sidecar.stat()
                result.sidecars[name] = (st.st_size, st.st_mtime_ns)
        return result
    if not start.is_dir() and (start.exists() or start.is_symlink()):
        result.problems.append((scope or ".", _not_a_file(start)))  # a FIFO given by name, ...
        return result
    visited: set[tuple[int, int]] = set()
    stack = [(start, scope, rules)]
    while stack:
        folder, rel, rules = stack.pop()
        try:
            stat = folder.stat()
        except OSError as e:
            result.problems.append((rel or ".", f"unreadable folder: {e.strerror}"))
            continue
        if (stat.st_dev, stat.st_ino) in visited:  # a symlink loop or a second link to a folder
            continue
        visited.add((stat.st_dev, stat.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            result.problems.append((rel or ".", f"unreadable folder: {e.strerror}"))
            continue
        if rel and any(e.name == IGNORE_FILE for e in entries):  # the root's is read already
            rules = rules.below(folder, rel)
        first = len(result.files)  # this folder's files, paired below
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir()  # follows symlinks; loops are cut by `visited`
            except OSError:
                is_dir = False  # an image-named one is reported below
            if rules.excludes(child, is_dir):  # an excluded folder is not walked
                continue
            try:
                child.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes in a name cannot be stored as text
                safe = child.encode("utf-8", "backslashreplace").decode("utf-8")
                result.problems.append((safe, "file name is not valid UTF-8; rename it"))
                continue
            try:
                if is_dir:
                    stack.append((Path(entry.path), child, rules))
                elif is_read_name(entry.name) and entry.is_file():
                    st = entry.stat()
                    result.files.append(ScannedFile(child, st.st_size, st.st_mtime_ns))
                elif entry.name.lower().endswith(SIDECAR_SUFFIX) and entry.is_file():
                    st = entry.stat()
                    result.sidecars[child] = (st.st_size, st.st_mtime_ns)
                elif is_read_name(entry.name):  # named like an image, but no file to read
                    result.problems.append((child, _not_a_file(entry.path)))
            except OSError as e:  # vanished entry, permissions
                if is_read_name(entry.name):
                    result.problems.append((child, f"unreadable: {e.strerror}"))
        result.files[first:] = _paired(result.files[first:])
    return result

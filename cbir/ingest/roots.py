"""Scanned folders that vanished from disk: followed when renamed or moved, listed, forgotten.

A root (a scanned folder) whose path no longer exists keeps its rows: it may be an unplugged
drive. The rule when a folder scan runs: every folder-scan row of a vanished root whose content
hash is found among the files being ingested moves to them (same id, vector, texts, labels and
tags; nothing is encoded again), preferring the row with the same relative path when several
rows hold that content. A vanished root left empty is dropped and the move remembered, so the
old name gets a helpful error; one with rows left stays, listed by `cbir status`, until its
folder comes back or `cbir forget` removes it.
"""

from __future__ import annotations

import json
import os
import shlex
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from cbir.errors import UsageError
from cbir.ingest.exclude import remember
from cbir.store.catalog import Catalog, Changes, StoredFile

MOVED_ROOTS = "moved_roots"  # meta key: JSON {old root path: the root its images moved to}


def folder_gone(path: Path) -> bool:
    """True when ``path`` does not exist (or a folder on the way is now a file). Any other
    error (permissions, a stale mount) is not proof that it is gone: it counts as present."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def vanished_roots(catalog: Catalog) -> dict[int, Path]:
    """The roots whose folder no longer exists."""
    return {i: p for i, p in catalog.roots().items() if folder_gone(p)}


class VanishedRows:
    """The folder-scan rows of vanished roots, by content hash: what a scan of another folder
    may claim (see the module's rule)."""

    def __init__(self, catalog: Catalog, root_id: int):
        self.catalog = catalog
        self.roots = {i: p for i, p in vanished_roots(catalog).items() if i != root_id}
        self.by_hash: dict[str, list[tuple[int, str, StoredFile]]] = defaultdict(list)
        self._sidecars: dict[int, dict[str, tuple[int | None, int | None]]] = {}
        self.moved_from: dict[int, int] = defaultdict(int)  # root id -> rows claimed
        for rid in self.roots:
            for path, stored in catalog.files_under(rid).items():
                if stored.dataset is None:
                    self.by_hash[stored.content_hash].append((rid, path, stored))

    def __bool__(self) -> bool:
        return bool(self.by_hash)

    def claim(self, content_hash: str, path: str) -> tuple[StoredFile, tuple[int | None, int | None] | None] | None:
        """A row holding ``content_hash`` (the one at the same relative ``path`` if any), taken
        out of the pool, with the (size, mtime_ns) of the caption file its stored caption came
        from; None if no vanished root holds that content."""
        candidates = self.by_hash.get(content_hash)
        if not candidates:
            return None
        same = [n for n, (_, old, _) in enumerate(candidates) if old == path]
        rid, old, stored = candidates.pop(same[0] if same else -1)
        if rid not in self._sidecars:
            self._sidecars[rid] = self.catalog.sidecars_under(rid)
        self.moved_from[rid] += 1
        return stored, self._sidecars[rid].get(old)

    def claim_container(self, container_hash: str) -> list[tuple[str, StoredFile]]:
        """The pages or frames of one vanished PDF or video of that content, taken out of the
        pool: (old path, row); none if no vanished root holds such a file."""
        rows = [row for rows in self.by_hash.values() for row in rows if row[2].container_hash == container_hash]
        if not rows:
            return []
        rid, first, _ = rows[0]
        prefix = first.rsplit("#", 1)[0] + "#"
        claimed = [row for row in rows if row[0] == rid and row[1].startswith(prefix)]
        for row in claimed:
            self.by_hash[row[2].content_hash].remove(row)
        self.moved_from[rid] += len(claimed)
        return [(old, stored) for _, old, stored in claimed]

    def finish(self, root: Path) -> None:
        """After the run: drop the vanished roots it emptied and remember where they went."""
        emptied = self.catalog.drop_empty_roots(list(self.moved_from))
        if emptied:
            moves = read_moves(self.catalog)
            moves.pop(str(root), None)  # a folder of that name exists again
            moves.update({str(self.roots[i]): str(root) for i in emptied})
            self.catalog.set_meta(MOVED_ROOTS, json.dumps(moves))


def read_moves(catalog: Catalog) -> dict[str, str]:
    raw = catalog.get_meta(MOVED_ROOTS)
    return json.loads(raw) if raw else {}


def missing_folder_message(catalog: Catalog, given: str | Path) -> str | None:
    """The one-line error for ingesting a folder that does not exist when the library knows
    it: its images are still held, or they moved with it (and where); None otherwise."""
    message = f"no such file or folder: {given}"
    path = Path(given).expanduser().resolve()
    roots = {p: i for i, p in catalog.roots().items()}
    if path in roots:
        count = catalog.root_image_counts().get(roots[path], 0)
        return (
            f"{message} (gone from disk; the library still holds its {count} images: "
            f"`cbir forget {shlex.quote(str(given))}` removes them, or ingest the folder where it is now)"
        )
    moves, seen, where = read_moves(catalog), set(), str(path)
    while where in moves and where not in seen:  # renamed again since: follow to the last name
        seen.add(where)
        where = moves[where]
    if where != str(path) and Path(where) in roots:
        return f"{message} (it was moved to {where}; its images followed it there)"
    return None


@dataclass
class Forgotten:
    """What `cbir forget` removed (or, with ``dry_run``, would remove) from the library; the
    files on disk are never touched."""

    root: Path
    images: int
    texts: int | None  # None on a dry run
    gone: bool  # whether the folder is gone from disk
    dry_run: bool = False

    def as_dict(self) -> dict:
        return {**self.__dict__, "root": str(self.root)}


def find_root(catalog: Catalog, path: Path, given: str | Path) -> int:
    """The id of the root at ``path`` (absolute); a usage error naming the library's folders
    when it is not one."""
    roots = catalog.roots()
    for root_id, root in roots.items():
        if root == path:
            return root_id
    for root in roots.values():
        if root in path.parents:
            raise UsageError(f"{given} is inside the library folder {root}: forget takes a whole folder")
    names = ", ".join(sorted(str(p) for p in roots.values())[:5]) + (", ..." if len(roots) > 5 else "")
    raise UsageError(f"not a folder of this library: {given}" + (f" (its folders: {names})" if roots else ""))


def forget(catalog: Catalog, root_id: int, index, text_index) -> int:
    """Remove a root's images (rows, vectors, texts), skip records and remembered --exclude
    patterns, and the root itself, through the path ingest takes for deleted files, so the
    indexes stay in step; the number of texts removed."""
    root = str(catalog.roots()[root_id])
    ids = [s.id for s in catalog.files_under(root_id).values()]
    applied = catalog.apply(Changes(root_id, removed=ids))
    index.apply(applied.images)
    text_index.apply(applied.texts)
    catalog.drop_empty_roots([root_id])
    remember(catalog, Path(root), ())  # its --exclude patterns go with it
    moves = read_moves(catalog)
    kept = {old: new for old, new in moves.items() if new != root}  # no "moved to" a forgotten root
    if kept != moves:
        catalog.set_meta(MOVED_ROOTS, json.dumps(kept))
    return len(applied.texts.remove_ids)

"""Duplicate groups among a library's images (`cbir duplicates`), from the stored vectors and
content hashes; nothing is deleted or changed.

Links between two images:

- *exact*: the same content hash (the same bytes under another name: ingest stores each copy as
  an image of its own, sharing the vector);
- *copy*: cosine similarity >= ``copy`` (default 0.98): the same picture resized, re-encoded or
  lightly edited;
- *near*: cosine >= ``near`` (default 0.92): similar shots (a burst, a small shift of the frame).

Similar pairs come from a batched k-nearest-neighbour search (faiss, exact inner product over the
unit vectors): every image is linked to those of its ``neighbours`` nearest images that pass
``near``. Groups are the connected components of all links (union-find), so a group forms
transitively and no list of all pairs is ever made. A group's kind is the loosest relation that
holds it together: *exact* when all its images have the same bytes, *copy* when the exact and
copy links alone connect it, else *near*.

The defaults are meant for the CLIP models cbir uses for real photos (ViT-B: a resized or
re-encoded copy stays above 0.98, a burst shot lands in the 0.9s). Measured with the bundled
cbir-tiny on generated 256 px scenes: a 50% copy saved at JPEG quality 60 scores 0.997-1.000
(57 of 57), images of different colours at most 0.74; but cbir-tiny hardly sees position, so
frames 24 px apart score 0.83-0.999 (median 0.98) and another rendering of the same scene
0.46-0.998 (median 0.97): on it "copy" and "near" overlap.

The suggested keeper of a group: the largest image (pixel count), then the oldest (date taken;
the file time when there is no EXIF date; unknown counts as newest), then the shortest path (then
the path itself, for a stable choice).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from cbir.errors import UsageError

COPY_THRESHOLD = 0.98
NEAR_THRESHOLD = 0.92
NEIGHBOURS = 32  # nearest images each image is compared with
QUERY_BATCH = 2048  # queries per faiss search
KINDS = ("exact", "copy", "near")


@dataclass
class Member:
    id: int
    path: str
    bytes: int
    width: int
    height: int
    taken: str | None  # ISO date taken (or file time)
    similarity: float  # cosine with the keeper
    exact: bool  # the same bytes as the keeper
    keeper: bool = False

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "id": self.id,
            "bytes": self.bytes,
            "width": self.width,
            "height": self.height,
            "taken": self.taken,
            "similarity": round(self.similarity, 6),
            "exact": self.exact,
            "keeper": self.keeper,
        }


@dataclass
class Group:
    kind: str  # exact | copy | near
    similarity: float  # the best similarity between two of its images
    members: list[Member] = field(default_factory=list)  # the keeper first

    @property
    def keeper(self) -> Member:
        return self.members[0]

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "similarity": round(self.similarity, 6),
            "keeper": self.keeper.path,
            "images": len(self.members),
            "members": [m.as_dict() for m in self.members],
        }


@dataclass
class DuplicateReport:
    groups: list[Group]
    images: int  # images compared
    copy: float
    near: float
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        return {kind: sum(g.kind == kind for g in self.groups) for kind in KINDS}

    @property
    def removable(self) -> int:
        """Images that are not a group's keeper."""
        return sum(len(g.members) - 1 for g in self.groups)

    def summary(self) -> dict:
        return {
            "images": self.images,
            "groups": len(self.groups),
            **self.counts(),
            "not_keepers": self.removable,
            "copy_threshold": self.copy,
            "near_threshold": self.near,
            "seconds": round(self.seconds, 3),
        }


def check_thresholds(copy: float, near: float) -> None:
    for name, value in (("--threshold", copy), ("--near", near)):
        if not (0.0 < value <= 1.0):  # also rejects NaN
            raise UsageError(f"{name} is a cosine similarity in (0, 1], got {value}")
    if near > copy:
        raise UsageError(
            f"--near ({near}) must not be above --threshold ({copy}): near-duplicates are the looser relation"
        )


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def components(self, members: np.ndarray) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i in members:
            out.setdefault(self.find(int(i)), []).append(int(i))
        return out


def similar_pairs(
    vectors: np.ndarray, threshold: float, neighbours: int = NEIGHBOURS, batch: int = QUERY_BATCH
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows a, rows b, cosine) with a < b for every row b among the ``neighbours`` nearest of
    row a (or a among b's) with cosine >= ``threshold``: a batched exact k-NN search."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    k = min(n, neighbours + 1)  # + the image itself
    a_parts, b_parts, s_parts = [], [], []
    for start in range(0, n, batch):
        scores, rows = index.search(vectors[start : start + batch], k)
        query = np.arange(start, start + len(rows))[:, None]
        keep = (rows >= 0) & (rows != query) & (scores >= threshold)
        if keep.any():
            q = np.broadcast_to(query, rows.shape)[keep]
            r = rows[keep]
            a_parts.append(np.minimum(q, r))
            b_parts.append(np.maximum(q, r))
            s_parts.append(scores[keep])
    if not a_parts:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    a, b, s = np.concatenate(a_parts), np.concatenate(b_parts), np.concatenate(s_parts)
    pairs, first = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True)
    return pairs[:, 0], pairs[:, 1], s[first]


def group_rows(
    vectors: np.ndarray,
    hashes: list[str],
    copy: float = COPY_THRESHOLD,
    near: float = NEAR_THRESHOLD,
    neighbours: int = NEIGHBOURS,
) -> list[tuple[str, list[int], float]]:
    """(kind, rows, best similarity) of every group of two or more rows."""
    check_thresholds(copy, near)
    n = len(vectors)
    a, b, sims = similar_pairs(vectors, near, neighbours)
    exact_links: list[tuple[int, int]] = []
    first_with: dict[str, int] = {}
    for row, h in enumerate(hashes):  # one pass over the images, not over pairs
        if h in first_with:
            exact_links.append((first_with[h], row))
        else:
            first_with[h] = row
    loose, tight = _UnionFind(n), _UnionFind(n)
    for x, y in exact_links:
        loose.union(x, y)
        tight.union(x, y)
    for x, y, s in zip(a.tolist(), b.tolist(), sims.tolist()):
        loose.union(x, y)
        if s >= copy:
            tight.union(x, y)
    linked = np.unique(np.concatenate([a, b, np.asarray([r for link in exact_links for r in link], np.int64)]))
    best: dict[int, float] = {}
    for x, s in zip(a.tolist(), sims.tolist()):
        root = loose.find(x)
        best[root] = max(best.get(root, -1.0), s)
    for x, _ in exact_links:
        best[loose.find(x)] = 1.0
    groups = []
    for root, rows in loose.components(linked).items():
        if len(rows) < 2:
            continue
        if len({hashes[r] for r in rows}) == 1:
            kind = "exact"
        elif len({tight.find(r) for r in rows}) == 1:
            kind = "copy"
        else:
            kind = "near"
        groups.append((kind, sorted(rows), min(1.0, best.get(root, 1.0))))
    return groups


def _keeper_key(row: dict):
    taken = row.get("taken")
    date = datetime.fromisoformat(taken) if taken else datetime.max
    return (-(row["width"] * row["height"]), date, len(row["path"]), row["path"])


def find_duplicates(
    lib, copy: float = COPY_THRESHOLD, near: float = NEAR_THRESHOLD, neighbours: int = NEIGHBOURS
) -> DuplicateReport:
    """The duplicate groups of a library, read from its stored vectors and hashes."""
    started = time.perf_counter()
    check_thresholds(copy, near)
    if neighbours < 1:
        raise UsageError(f"--neighbours must be at least 1, got {neighbours}")
    lib.require_images()
    id_parts, vector_parts = [], []
    for ids, vectors in lib.catalog.iter_vectors():
        id_parts.append(ids)
        vector_parts.append(vectors)
    ids = np.concatenate(id_parts)
    vectors = np.concatenate(vector_parts)
    stored_hashes = lib.catalog.content_hashes()
    hashes = [stored_hashes.get(int(i), f"missing:{int(i)}") for i in ids]
    found = group_rows(vectors, hashes, copy, near, neighbours)
    rows = lib.catalog.export_rows(ids[r] for _, members, _ in found for r in members)
    groups = []
    for kind, members, similarity in found:
        facts = {r: rows[int(ids[r])] for r in members if int(ids[r]) in rows}
        if len(facts) < 2:  # removed while we looked
            continue
        order = sorted(facts, key=lambda r: _keeper_key(facts[r]))
        keeper = order[0]
        group = Group(kind, similarity)
        for r in order:
            fact = facts[r]
            group.members.append(
                Member(
                    id=int(ids[r]),
                    path=fact["path"],
                    bytes=fact["bytes"],
                    width=fact["width"],
                    height=fact["height"],
                    taken=fact["taken"],
                    similarity=1.0 if r == keeper else float(vectors[r] @ vectors[keeper]),
                    exact=hashes[r] == hashes[keeper],
                    keeper=r == keeper,
                )
            )
        groups.append(group)
    groups.sort(key=lambda g: (KINDS.index(g.kind), g.keeper.path))
    return DuplicateReport(groups, len(ids), copy, near, time.perf_counter() - started)

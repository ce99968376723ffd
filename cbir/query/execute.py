"""Running a plan: the vector side (index alone, exact subset, or post-filter with widening), the
keyword side (FTS5), their fusion, then score cut-off, de-duplication and one frame a video,
widening again until enough results survive or nothing more can. Every strategy returns the
exact filtered top-k on an exact index (ties broken by id)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cbir.index.topk import merge_top_k
from cbir.query.plan import ANN, EXACT_SUBSET, HYBRID, KEYWORD, NONE, POST_FILTER, Plan, rrf
from cbir.timing import Timer

ROW_CHUNK = 65_536  # vectors gathered at a time when scoring a subset exactly (bounds memory)
DEDUP_SIMILARITY = 0.97  # results at least this similar to a better one are near-duplicates
HYBRID_DEPTH = 50  # at least this many from each side go into reciprocal rank fusion


@dataclass(frozen=True)
class Ranked:
    id: int
    score: float  # cosine similarity (semantic), BM25 (keyword) or fused RRF score (hybrid)
    similarity: float | None = None  # cosine similarity to the query vector, when there is one


@dataclass(frozen=True)
class Options:
    k: int = 10
    offset: int = 0
    min_score: float | None = None
    dedup: bool = False
    one_frame_a_video: bool = False  # a video's frames after its best one are left out

    @property
    def need(self) -> int:
        return self.offset + self.k

    @property
    def first_want(self) -> int:
        """Results to rank first: twice what is needed when near-duplicates will be dropped."""
        return self.need * (2 if self.dedup else 1)


class Executor:
    def __init__(self, plan: Plan, collection, index, condition, *, vectors_of, params=None, prefetched=None):
        self.plan = plan
        self.vectors_of = vectors_of  # ids -> (ids found, exact vectors): the index's or SQLite's
        self.params = params or {}  # per-call index search parameters (nprobe, efSearch)
        self.prefetched = prefetched  # (scores, ids) of a batched index search, for ANN
        self.collection = collection
        self.index = index
        self.condition = condition
        self._matching: np.ndarray | None = None
        self._passing: dict[int, bool] = {}
        self._fetch = plan.fetch
        self.timed = Timer(plan.timings)

    # -- the whole query ------------------------------------------------------------------------
    def run(self, vector: np.ndarray | None, match: tuple[str, ...] | None, options: Options) -> list[Ranked]:
        """The best ``options.need`` results (before the offset is applied), best first."""
        want = options.first_want
        while True:
            ranked, exhausted = self._rank(vector, match, want)
            results = ranked
            if options.min_score is not None:
                results = [r for r in ranked if r.similarity is not None and r.similarity >= options.min_score]
                # Semantic results come by falling similarity: one below the cut ends the search.
                if self.plan.mode not in (KEYWORD, HYBRID) and len(results) < len(ranked):
                    exhausted = True
            if options.dedup:
                with self.timed("dedup"):
                    results = self._dedup(results)
            if options.one_frame_a_video:
                results = self._one_frame_a_video(results)
            if len(results) >= options.need or exhausted:
                self.plan.returned = min(len(results), options.need) - min(len(results), options.offset)
                return results[: options.need]
            want *= 4

    def _rank(self, vector, match, want) -> tuple[list[Ranked], bool]:
        if self.plan.mode == KEYWORD:
            return self._keyword(match, want)
        if self.plan.mode == HYBRID:
            depth = max(want, HYBRID_DEPTH)
            semantic, done_v = self._vector(vector, depth)
            keyword, done_k = self._keyword(match, depth)
            fused = rrf([[(r.id, r.score) for r in semantic], [(r.id, r.score) for r in keyword]])
            similarity = {r.id: r.similarity for r in semantic}
            missing = [i for i, _ in fused if i not in similarity]
            if missing:  # keyword-only matches: their similarity from the stored vectors
                ids, vectors = self.vectors_of(np.asarray(missing))
                similarity.update(zip(ids.tolist(), (vectors @ vector).tolist()))
            ranked = [Ranked(i, s, similarity.get(i)) for i, s in fused]
            return ranked[:want], done_v and done_k
        return self._vector(vector, want)

    # -- one side at a time ---------------------------------------------------------------------
    def _vector(self, vector: np.ndarray, want: int) -> tuple[list[Ranked], bool]:
        strategy = self.plan.strategy
        self.plan.rounds += 1
        if strategy == NONE or self.index.ntotal == 0:
            return [], True
        if strategy == ANN:
            want = min(want, self.index.ntotal)
            if self.prefetched is not None and want <= len(self.prefetched[1]):
                scores, ids = self.prefetched
            else:
                with self.timed("search"):
                    scores, ids = (row[0] for row in self.index.search(vector, want, self.params))
            self.plan.examined += want
            return _ranked(scores[:want], ids[:want]), want >= self.index.ntotal
        if strategy == EXACT_SUBSET:
            if self._matching is None:
                with self.timed("filter"):
                    self._matching = np.asarray(self.collection.matching_ids(self.condition), np.int64)
            with self.timed("search"):
                scores, ids = search_subset(vector, self._matching, want, self.vectors_of)
            self.plan.examined += len(self._matching)
            return _ranked(scores, ids), want >= len(self._matching)
        if strategy == POST_FILTER:
            return self._post_filter(vector, want)
        raise ValueError(f"unknown strategy {strategy!r}")

    def _post_filter(self, vector: np.ndarray, want: int) -> tuple[list[Ranked], bool]:
        total = self.index.ntotal
        while True:
            fetch = min(max(self._fetch, want), total)
            with self.timed("search"):
                scores, ids = self.index.search(vector, fetch, self.params)
            self.plan.examined += min(fetch, total)
            fresh = [int(i) for i in ids[0] if i >= 0 and int(i) not in self._passing]
            with self.timed("filter"):
                passing = self.collection.passing(fresh, self.condition)
            self._passing.update((i, i in passing) for i in fresh)
            keep = np.array([i >= 0 and self._passing[int(i)] for i in ids[0]], dtype=bool)
            ranked = _ranked(scores[0][keep], ids[0][keep])
            if len(ranked) >= want:
                return ranked[:want], False
            # An approximate index returns only what its probed lists or graph walk reach (IVF
            # pads with -1), so asking for more stops helping before every match is seen:
            # then the exact answer over the matching subset replaces it.
            reached_all = fetch >= total or int((ids[0] >= 0).sum()) < fetch
            if reached_all:
                if self.index.exact:
                    return ranked[:want], True
                self.plan.strategy = EXACT_SUBSET
                self.plan.reason += f"; the {self.index.kind} index ran out of candidates, so exact subset instead"
                return self._vector(vector, want)
            self._fetch = min(total, fetch * 4)  # too few passed: widen
            self.plan.rounds += 1

    def _keyword(self, match: tuple[str, ...], want: int) -> tuple[list[Ranked], bool]:
        with self.timed("keyword"):
            found = self.collection.keyword(match, self.condition, want)
        self.plan.examined += len(found)
        return [Ranked(i, s) for i, s in found], len(found) < want

    def _dedup(self, results: list[Ranked]) -> list[Ranked]:
        """Greedy: keep a result unless it is near-identical to a better one already kept."""
        if len(results) < 2:
            return results
        ids, vectors = self.vectors_of(np.asarray([r.id for r in results]))
        by_id = dict(zip(ids.tolist(), vectors))
        kept: list[Ranked] = []
        kept_vectors: list[np.ndarray] = []
        for r in results:
            v = by_id.get(r.id)
            if v is not None and kept_vectors and float(np.max(np.stack(kept_vectors) @ v)) >= DEDUP_SIMILARITY:
                continue
            kept.append(r)
            if v is not None:
                kept_vectors.append(v)
        return kept

    def _one_frame_a_video(self, results: list[Ranked]) -> list[Ranked]:
        """Each video's best frame, in its place; its other frames left out."""
        videos = self.collection.videos_of([r.id for r in results])
        if not videos:
            return results
        seen: set[tuple[int, str]] = set()
        kept = []
        for r in results:
            video = videos.get(r.id)
            if video is None or video not in seen:
                kept.append(r)
                if video is not None:
                    seen.add(video)
        return kept


def _ranked(scores: np.ndarray, ids: np.ndarray) -> list[Ranked]:
    """Valid (id >= 0) results, best first, ties broken by id so every strategy agrees."""
    scores, ids = np.asarray(scores), np.asarray(ids)
    valid = ids >= 0
    scores, ids = scores[valid], ids[valid]
    order = np.lexsort((ids, -scores))
    return [Ranked(int(i), float(s), float(s)) for s, i in zip(scores[order], ids[order])]


def search_subset(
    query: np.ndarray, ids: np.ndarray, k: int, vectors_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, ids) among ``ids`` only, best first, ties by id: scores just those
    vectors, a chunk at a time, so a selective filter costs little whatever the library's size."""
    query = np.asarray(query, dtype=np.float32).ravel()
    best = (np.zeros((1, 0), np.float32), np.zeros((1, 0), np.int64))
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    for start in range(0, len(ids), ROW_CHUNK):
        found, vectors = vectors_of(ids[start : start + ROW_CHUNK])
        best = merge_top_k([best, ((vectors @ query)[None], np.asarray(found)[None])], k)
    scores, found = best[0][0], best[1][0]
    return scores[found >= 0], found[found >= 0]  # no padding: fewer than k passed

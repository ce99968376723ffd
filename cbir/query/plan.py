"""The planner: how to run one query, decided from counts SQLite gives, never from guesses.
Pure: no model, no index, no database; the executor measures what actually happened."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cbir.names import IMAGES, TEXTS  # the targets a query searches; re-exported here

# Strategies for the vector side of a query.
NONE = "none"  # nothing passes the filters
ANN = "ann"  # the index alone (no filter)
EXACT_SUBSET = "exact-subset"  # score only the vectors that pass the filters
POST_FILTER = "ann-post-filter"  # nearest neighbours, over-fetched, filtered, widened until enough
STRATEGIES = (ANN, EXACT_SUBSET, POST_FILTER)
FTS = "fts"  # keyword mode: SQLite FTS5 BM25 ranking

SEMANTIC, KEYWORD, HYBRID = "semantic", "keyword", "hybrid"
MODES = (SEMANTIC, KEYWORD, HYBRID)
TARGETS = (IMAGES, TEXTS)

# Relative cost of exact subset search per matching vector (fetch its id from SQLite, gather and
# score it) against the cost per vector of a flat index scan. Measured by
# benchmarks/filtered_search.py; see the table in docs/searching.md.
SUBSET_COST_PER_MATCH = 8.0
OVERFETCH = 1.5  # post-filter fetches this much more than the selectivity says it needs
MIN_FETCH = 32
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al. 2009; Elasticsearch's default)
TIE = 1e-6  # scores closer than this are equal (the same text encoded in another batch)


@dataclass
class Plan:
    """How a query runs and, once run, what happened (for --explain and --json)."""

    kind: str  # e.g. "text → image"
    target: str
    mode: str
    strategy: str
    reason: str
    total: int  # vectors in the searched collection
    matching: int | None = None  # how many pass the filters (SQLite count); None: no filter
    filters: str = ""
    query: str = ""  # how the query vector was formed: Expression.describe()
    fetch: int = 0  # candidates the plan expects to examine first
    examined: int = 0  # candidates actually examined, over all widening rounds
    rounds: int = 0
    returned: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def selectivity(self) -> float | None:
        if self.matching is None:
            return None
        return self.matching / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        data["selectivity"] = self.selectivity
        data["timings_ms"] = {k: round(v * 1000, 3) for k, v in self.timings.items()}
        del data["timings"]
        return data

    def describe(self) -> list[str]:
        """The plan as lines of text for --explain."""
        lines = [
            f"plan      {self.kind}, {self.mode}, strategy {self.strategy}",
            f"why       {self.reason}",
        ]
        if self.filters:
            lines.append(f"filters   {self.filters}")
        if self.query:
            lines.append(f"query     {self.query}")
        counted = "" if self.matching is None else f"{self.matching} of {self.total} {self.target} pass the filters; "
        lines.append(
            f"examined  {counted}expected to examine {self.fetch}, examined {self.examined}"
            f" in {self.rounds} round{'s' if self.rounds != 1 else ''}; returned {self.returned}"
        )
        total = sum(self.timings.values())
        stages = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in self.timings.items())
        lines.append(f"time      {stages}; total {total * 1000:.1f} ms")
        return lines


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2g}%" if whole else "0%"


def post_filter_fetch(want: int, matching: int, total: int) -> int:
    """Candidates to fetch so that about ``want`` of them pass a filter ``matching`` of
    ``total`` pass, with a margin."""
    if matching <= 0:
        return total
    return min(total, max(MIN_FETCH, math.ceil(want * total / matching * OVERFETCH)))


def choose_vector_strategy(
    total: int, matching: int | None, want: int, *, exact_index: bool, forced: str = "auto"
) -> tuple[str, str, int]:
    """(strategy, why, candidates to examine first) for ranking ``want`` results by vector."""
    if matching is None:
        if forced in ("auto", ANN):
            return ANN, "no filter: the index alone", min(want, total)
        matching = total  # a forced filtered strategy with no filter: every vector passes
    if matching == 0:
        return NONE, "nothing passes the filters", 0
    share = f"{matching} of {total} pass ({percent(matching, total)})"
    fetch = post_filter_fetch(want, matching, total)
    if forced == EXACT_SUBSET:
        return EXACT_SUBSET, f"forced; {share}", matching
    if forced in (POST_FILTER, ANN):
        return POST_FILTER, f"forced; {share}", fetch
    subset_cost = matching * SUBSET_COST_PER_MATCH
    scan_cost = total if exact_index else fetch  # an ANN index visits about what it returns
    if subset_cost <= scan_cost or fetch >= total:
        return (
            EXACT_SUBSET,
            f"selective filter: {share}; scoring just those costs less than searching the index",
            matching,
        )
    return (
        POST_FILTER,
        f"broad filter: {share}; fetching the {fetch} nearest and filtering them, widening until enough pass",
        fetch,
    )


def default_mode(target: str, has_words: bool, has_texts: bool) -> str:
    """Hybrid (keyword and vector ranks fused) when searching texts with words; else semantic."""
    return HYBRID if target == TEXTS and has_words and has_texts else SEMANTIC


def query_kind(expression, target: str) -> str:
    """What is asked for what, e.g. "text → image", "image+text → text"."""
    sources = list(dict.fromkeys("text" if t.text is not None else "image" for t in expression.terms))
    return f"{'+'.join(sources)} → {'image' if target == IMAGES else 'text'}"


def plan_query(
    expression,
    *,
    target: str,
    mode: str,
    total: int,
    matching: int | None,
    want: int,
    exact_index: bool,
    forced: str = "auto",
    filters: str = "",
) -> Plan:
    """The plan for one query over a collection of ``total`` vectors, ``matching`` of which pass
    the filters (None: no filter), ranking ``want`` results."""
    if mode == KEYWORD:
        strategy, why, fetch = FTS, "keyword mode: SQLite FTS5 BM25 over the texts", want
    else:
        strategy, why, fetch = choose_vector_strategy(total, matching, want, exact_index=exact_index, forced=forced)
        if mode == HYBRID:
            why += "; fused with FTS5 keyword ranks by reciprocal rank fusion"
    return Plan(
        kind=query_kind(expression, target),
        target=target,
        mode=mode,
        strategy=strategy,
        reason=why,
        total=total,
        matching=matching,
        filters=filters,
        query=expression.describe(),
        fetch=fetch,
    )


def rrf(rankings: list[list[tuple[int, float]]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of rankings of (id, score), best first: each id scores
    sum(1 / (k + rank)). Equal scores share a rank ("1224"), so ties (the same caption on two
    images) are not broken by id before fusing."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        rank, previous = 0, None
        for position, (item, score) in enumerate(ranking, 1):
            if previous is None or abs(score - previous) > TIE:
                rank, previous = position, score
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))

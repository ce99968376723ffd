"""One search request: the queries of a search and how to run them, as `cbir search`, `cbir serve`
and ``Library.search`` ask for them, checked here once, before anything is loaded."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import IO

from cbir.errors import UsageError
from cbir.query import Crop, Query
from cbir.query import plan as planning
from cbir.query.batch import parse_batch
from cbir.query.expression import expression_from_argv
from cbir.query.filter_values import parse_date
from cbir.query.filters import Filters

SORTS = ("score", "date")


@dataclass(frozen=True)
class SearchRequest:
    """Queries searched together (one model load, one filter evaluation, one text batch), and how:
    ``k`` results each after skipping ``offset`` (paging); ``target`` "images" or "texts";
    ``mode`` "semantic", "keyword" or "hybrid" (None: the target's default for the query's
    words); ``filters`` (:class:`cbir.query.filters.Filters`); ``min_score``, a similarity
    cut-off; ``sort`` "score" or "date"; ``dedup``: near-identical results collapsed;
    ``frames``: every matching frame of a video listed (by default only its best one);
    ``strategy``: the planner's choice forced ("auto", "ann", "exact-subset",
    "ann-post-filter"); ``index_params``: per-query index search parameters ({"nprobe": 32},
    {"efSearch": 128}); ``explain``: whether the caller shows the plan (each result list
    carries it as ``.plan`` anyway)."""

    queries: tuple[Query, ...] = ()
    k: int = 10
    target: str = "images"
    mode: str | None = None
    filters: Filters = field(default_factory=Filters)
    min_score: float | None = None
    sort: str = "score"
    offset: int = 0
    dedup: bool = False
    frames: bool = False
    strategy: str = "auto"
    index_params: dict[str, int] = field(default_factory=dict)
    explain: bool = False

    def __post_init__(self):
        self._check()
        # frozen, so set through object: callers may give a list of queries, None for no filters
        # or index parameters (as Library.search_many took them)
        object.__setattr__(self, "queries", tuple(self.queries))
        object.__setattr__(self, "filters", Filters() if self.filters is None else self.filters)
        object.__setattr__(self, "index_params", dict(self.index_params or {}))

    def _check(self) -> None:
        if self.k < 1:
            raise UsageError(f"k must be at least 1, got {self.k}")
        if self.offset < 0:
            raise UsageError(f"offset must be 0 or more, got {self.offset}")
        for name, value, allowed in (
            ("target", self.target, planning.TARGETS),
            ("mode", self.mode, (None, *planning.MODES)),
            ("sort", self.sort, SORTS),
            ("strategy", self.strategy, ("auto", *planning.STRATEGIES)),
        ):
            if value not in allowed:
                raise UsageError(f"unknown {name} {value!r}: use one of {', '.join(a for a in allowed if a)}")

    @classmethod
    def from_options(
        cls,
        queries: Iterable[Query] = (),
        *,
        target: str = "images",
        after: str | None = None,
        before: str | None = None,
        folder: Sequence[str] = (),
        camera: Sequence[str] = (),
        min_width: int | None = None,
        min_height: int | None = None,
        formats: Sequence[str] = (),
        tag: Sequence[str] = (),
        where: str | None = None,
        nprobe: int | None = None,
        ef: int | None = None,
        **fields,
    ) -> SearchRequest:
        """A request from the options as `cbir search` and `cbir serve` spell them: --target
        text, dates as text, repeatable filters (formats also comma-separated), --nprobe and
        --ef; ``fields``: those that need no translation (k, offset, mode, min_score, sort,
        dedup, frames, strategy, explain)."""
        filters = Filters(
            after=parse_date(after)[0] if after else None,
            before=parse_date(before)[0] if before else None,
            folders=tuple(folder),
            cameras=tuple(camera),
            min_width=min_width,
            min_height=min_height,
            formats=tuple(f.strip() for value in formats for f in value.split(",") if f.strip()),
            tags=tuple(tag),
            where=where,
        )
        index_params = {**({"nprobe": nprobe} if nprobe else {}), **({"efSearch": ef} if ef else {})}
        target = planning.TEXTS if target == "text" else target
        return cls(tuple(queries), target=target, filters=filters, index_params=index_params, **fields)

    def model_use(self) -> tuple[bool, bool]:
        """(whether a query may need the model, whether one has a text to encode): a term other
        than --like, searched by meaning. A cold search starts loading the model by these."""
        if self.mode == planning.KEYWORD:
            return False, False
        terms = [t for q in self.queries for t in q.expression().terms]
        return any(t.like is None for t in terms), any(t.text is not None for t in terms)

    def asking(self, *queries: Query) -> SearchRequest:
        """This request for other queries (cbir serve fills one per endpoint)."""
        return replace(self, queries=queries)


def command_line_queries(
    words: Sequence[str],
    image: str | None,
    like: str | Sequence[str] | None,
    batch: IO[str] | None,
    *,
    unlike: Sequence[str] = (),
    crop: str | None = None,
) -> list[tuple[object, Query]]:
    """The queries of `cbir search`: its QUERY words (query arithmetic), --image (cropped by
    --crop), --like and --unlike (repeatable: relevance feedback), each combinable with the
    others, or the lines of a --batch file; each with what its results echo as ``query``."""
    text = expression_from_argv(words).strip() if words else ""
    likes = [like] if isinstance(like, str) else list(like or ())
    unlikes = list(unlike)
    if batch and (text or image or likes or unlikes or crop):
        raise UsageError("--batch takes its queries from the file; give no QUERY, --image, --like or --unlike with it")
    if crop is not None and not image:
        raise UsageError("--crop is a box of the query image: give --image with it")
    box = Crop.parse(crop) if crop is not None else None  # checked before anything is loaded
    if not (batch or text or image or likes or unlikes):
        raise UsageError("give a QUERY text, --image PATH, --like PATH or --batch FILE")
    if batch:
        return parse_batch(batch, source=batch.name)
    query = Query(text=text or None, image=image, like=likes, unlike=unlikes, crop=box)
    if not (image or likes or unlikes):
        return [(text, query)]
    echo: dict[str, object] = {}
    if image:
        echo["image"] = str(image)
        if box is not None:
            echo["crop"] = str(box)
    if likes:
        echo["like"] = str(likes[0]) if len(likes) == 1 else [str(p) for p in likes]
    if unlikes:
        echo["unlike"] = [str(p) for p in unlikes]
    if text:
        echo["text"] = text
    return [(echo, query)]

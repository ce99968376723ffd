"""The search loop: a query's terms embedded, planned against the filters and the index, executed,
and the ranked ids turned into hits (``Library.search`` and ``search_many`` delegate here)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from cbir.encode.spec import Encoder, encode_texts_batched
from cbir.errors import EmptyLibrary, UsageError
from cbir.index.types import check_params_apply
from cbir.query import plan as planning
from cbir.query.execute import Executor, Options
from cbir.query.filter_sql import image_condition
from cbir.query.request import SearchRequest
from cbir.store.catalog import Catalog, ImageInfo
from cbir.store.collections import Images, Texts, fts_match
from cbir.timing import Timer


@dataclass(frozen=True)
class Hit(ImageInfo):
    """A search result: the image's stored facts plus its rank (1-based) and score (cosine
    similarity; BM25 in keyword mode; the fused rank score in hybrid mode). Text results also
    carry the text, where it came from and its id."""

    rank: int = 0
    score: float = 0.0
    similarity: float | None = None  # cosine similarity to the query vector, when there is one
    text: str | None = None
    source: str | None = None
    text_id: int | None = None
    missing: bool = False  # the file is no longer where the library saw it

    def as_dict(self) -> dict:
        data = {
            "rank": self.rank,
            "score": round(self.score, 6),
            "similarity": None if self.similarity is None else round(self.similarity, 6),
            "path": str(self.path),  # a hit lists its path before the image's other facts
            **super().as_dict(),
            "missing": self.missing,
        }
        if self.text_id is not None:
            data.update(text=self.text, source=self.source, text_id=self.text_id)
        return data


class Searcher:
    """Searches one library: its catalogue and indexes, and its model, loaded only when a query
    needs it. The Library supplies what this layer does not know: how the model is loaded and
    checked (``encoder``; ``loaded``: whether it is already), how a query image file or its
    bytes are read and embedded (``embed_image``, given a :class:`cbir.query.Crop` as a second
    argument when only a box of the picture is wanted) and how a path names a library image
    (``image_id(path, option)``)."""

    def __init__(
        self,
        catalog: Catalog,
        indexes,  # the library's LibraryIndexes (cbir.index.manager)
        path: Path,
        *,
        encoder: Callable[[], Encoder],
        loaded: Callable[[], bool],
        prepare: Callable[[bool], None] = lambda text: None,
        embed_image: Callable[..., np.ndarray],
        image_id: Callable[[str | Path, str], int],
    ):
        self.catalog = catalog
        self.indexes = indexes
        self.path = path  # the library's folder, for messages
        self._encoder = encoder
        self._loaded = loaded
        self._prepare = prepare
        self._embed_image = embed_image
        self._image_id = image_id

    def run(self, request: SearchRequest) -> list[Results]:
        """The results of each query of ``request``, in order: one model load, one filter
        evaluation and one text-encoder batch for them all."""
        started = time.perf_counter()
        require_images(self.catalog, self.path)
        if not request.queries:
            return []
        target, params = request.target, request.index_params
        expressions = [q.expression() for q in request.queries]
        needs_model, has_text = request.model_use()
        if needs_model:  # the model loads on a thread while the filters compile and the index loads
            self._prepare(has_text)
        condition = image_condition(request.filters, self.catalog.roots())
        index = self.indexes.get(target)
        check_params_apply(index.kind, params, target)
        collection = (Images if target == planning.IMAGES else Texts)(self.catalog.engine)
        if target == planning.TEXTS and index.ntotal == 0:
            raise self._no_texts()
        matches = [fts_match(e.texts) for e in expressions]  # the words for keyword search
        modes = _modes(expressions, matches, target, request.mode, request.min_score, index.ntotal)
        setup = {"prepare": time.perf_counter() - started}  # checks, filters, parsing
        timed = Timer(setup)
        matching = None
        if condition is not None:
            with timed("count"):
                matching = collection.count(condition)
        vectors, embed_each = self._vectors(expressions, modes, timed)
        described = request.filters.describe() if condition is not None else ""
        options = Options(
            k=request.k,
            offset=request.offset,
            min_score=request.min_score,
            dedup=request.dedup,
            one_frame_a_video=target == planning.IMAGES and not request.frames,
        )
        plans = []
        for expression, m, vector in zip(expressions, modes, vectors):
            plan = planning.plan_query(
                expression,
                target=target,
                mode=m,
                total=index.ntotal,
                matching=matching,
                want=options.need,
                exact_index=index.exact,
                forced=request.strategy,
                filters=described,
            )
            plan.timings = dict(setup, **({"embed": embed_each} if vector is not None else {}))
            plans.append(plan)
        prefetched = _search_together(index, plans, vectors, options, params)
        results = []
        vectors_of = self.indexes.vectors_of(target)
        for plan, vector, match, first in zip(plans, vectors, matches, prefetched):
            executor = Executor(
                plan, collection, index, condition, vectors_of=vectors_of, params=params, prefetched=first
            )
            ranked = executor.run(vector, match, options)[request.offset :]
            with executor.timed("fetch"):
                hits = self._hits(target, ranked, request.offset)
            if request.sort == "date":
                hits.sort(key=lambda h: (h.taken is None, h.taken or datetime.min, h.rank))
            results.append(Results(hits, plan))
        return results

    def _no_texts(self) -> EmptyLibrary:
        return EmptyLibrary(
            f"the library at {self.path} has no texts yet: put captions in .txt files beside "
            "the images (IMG_1.jpg.txt or IMG_1.txt) and ingest again, or add labels with "
            "`cbir label add IMAGE TEXT`"
        )

    def _vectors(self, expressions, modes: list[str], timed: Timer) -> tuple[list, float]:
        """The query vectors (None for keyword queries) and the embedding time per vector."""
        needs_vector = [m != planning.KEYWORD for m in modes]
        if not self._loaded() and any(
            n and any(t.like is None for t in e.terms) for e, n in zip(expressions, needs_vector)
        ):
            with timed("load model"):  # on its own, not as the first query's embedding
                self._encoder()
        embedding: dict[str, float] = {}
        with Timer(embedding)("embed"):
            vectors = self._embed(expressions, needs_vector)
        return vectors, embedding["embed"] / max(1, sum(needs_vector))

    def _hits(self, target: str, ranked, offset: int) -> list[Hit]:
        if target == "images":
            infos = self.catalog.images(r.id for r in ranked)
            return [
                Hit(
                    rank=offset + n,
                    score=r.score,
                    similarity=r.similarity,
                    missing=file_gone(infos[r.id].file),
                    **infos[r.id].__dict__,
                )
                for n, r in enumerate(ranked, 1)
                if r.id in infos
            ]
        texts = self.catalog.texts(r.id for r in ranked)
        infos = self.catalog.images(image_id for _, _, image_id in texts.values())
        hits = []
        for n, r in enumerate(ranked, 1):
            if r.id not in texts or texts[r.id][2] not in infos:
                continue
            content, source, image_id = texts[r.id]
            hits.append(
                Hit(
                    rank=offset + n,
                    score=r.score,
                    similarity=r.similarity,
                    text=content,
                    source=source,
                    text_id=r.id,
                    missing=file_gone(infos[image_id].file),
                    **infos[image_id].__dict__,
                )
            )
        return hits

    def _embed(self, expressions, needed: list[bool]) -> list[np.ndarray | None]:
        """One unit vector per expression that needs one: the weighted sum of its terms' unit
        embeddings, normalised (rclip's query arithmetic). Texts are encoded in one batch; a
        --like term is the image's stored vector, so a --like query loads no model."""
        texts = sorted({t.text for e, n in zip(expressions, needed) if n for t in e.terms if t.text is not None})
        # the model loads only if a term needs it
        encoded = dict(zip(texts, encode_texts_batched(self._encoder(), texts))) if texts else {}
        dim = self.catalog.dim
        assert dim is not None  # require_images passed: the library has a model, so a vector size
        out: list[np.ndarray | None] = []
        for e, n in zip(expressions, needed):
            if not n:
                out.append(None)
                continue
            total = np.zeros(dim, dtype=np.float64)
            for term in e.terms:
                if term.text is not None:
                    v = encoded[term.text]
                elif term.crop is not None:  # only that box of the picture
                    v = self._embed_image(term.image, term.crop)
                elif term.image is not None:
                    v = self._embed_image(term.image)
                else:
                    v = self._library_vector(term.like, "--like" if term.weight > 0 else "--unlike")
                total += term.weight * v / max(float(np.linalg.norm(v)), 1e-12)
            norm = float(np.linalg.norm(total))
            if norm < 1e-6:
                raise UsageError(f"the terms of this query cancel out: {e}")
            out.append((total / norm).astype(np.float32))
        return out

    def _library_vector(self, path: str, option: str) -> np.ndarray:
        image_id = self._image_id(path, option)
        ids, vectors = self.indexes.vectors_of(planning.IMAGES)(np.asarray([image_id]))
        if not len(ids):
            raise UsageError(f"{option} {path}: its vector is missing from the index; run `cbir ingest` again")
        return vectors[0]


class Results(list):
    """The hits of one query, best first, with the plan that produced them as ``.plan``."""

    def __init__(self, hits, plan):
        super().__init__(hits)
        self.plan = plan


def _search_together(index, plans, vectors, options, params) -> list:
    """One index search for every query that needs the index alone: a batch of queries costs
    about as much as one on a flat index (one matrix product). Per query: (scores, ids) or None."""
    batch = [i for i, p in enumerate(plans) if p.strategy == planning.ANN and p.mode == planning.SEMANTIC]
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(plans)
    if len(batch) < 2:
        return out
    want = min(options.first_want, index.ntotal)
    spent: dict[str, float] = {}
    with Timer(spent)("search"):
        scores, ids = index.search(np.stack([vectors[i] for i in batch]), want, params)
    for row, i in enumerate(batch):
        out[i] = (scores[row], ids[row])
        plans[i].timings["search"] = spent["search"] / len(batch)
    return out


def _modes(expressions, matches, target: str, mode: str | None, min_score: float | None, total: int) -> list[str]:
    """Each query's mode (the given one, or the default for its target and terms); a mode that
    needs words for a query without any, or a similarity cut-off in keyword mode, is an error."""
    modes = [mode or planning.default_mode(target, bool(e.texts), total > 0) for e in expressions]
    for e, m, match in zip(expressions, modes, matches):
        if m != planning.SEMANTIC and not match:
            raise UsageError(f"--mode {m} needs words to look for; this query has none: {e}")
    if min_score is not None and planning.KEYWORD in modes:
        raise UsageError("--min-score is a similarity cut-off; keyword mode has no similarity")
    return modes


def file_gone(path: Path) -> bool:
    """Whether a hit's file is no longer there: one stat. A WebDataset sample's path is its tar
    followed by the member's name (stat says "not a directory" while the tar is there)."""
    try:
        path.stat()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def require_images(catalog: Catalog, library: Path) -> None:
    """A search (or an index rebuild, a tagging) needs a model and images: an error if not yet."""
    if not catalog.model_fingerprint() or not catalog.has_images():
        raise EmptyLibrary(f"the library at {library} has no images yet; add some with `cbir ingest PATH`")

"""The planner and executor: whatever strategy runs, the results are exactly those of a brute-force
filtered search (numpy over the stored vectors), for images and for texts."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from cbir.encode.fake import FakeEncoder
from cbir.query.filter_sql import image_condition
from cbir.query.filters import Filters
from cbir.query.plan import EXACT_SUBSET, POST_FILTER, choose_vector_strategy, rrf
from cbir.store.catalog import MODEL, SIDECAR, Changes, ImageRecord, TextRecord
from cbir.store.collections import Texts
from cbir.store.models import Image, ImageText

CAMERAS = [None, "Pixel 3", "Canon EOS R6", "iPhone 14"]
FORMATS = ["jpeg", "png", "webp"]
FOLDERS = ["2019/beach", "2019/winter", "2021/party", "scans"]
N = 400


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def library(tmp_path_factory, new_database):
    """A library of N images with random metadata and clustered random vectors (so near ties
    and near duplicates occur), a third of them with a caption, built straight in the catalog."""
    from cbir.config import resolve_settings
    from cbir.library import Library

    base = tmp_path_factory.mktemp("planner")
    encoder = FakeEncoder(dim=16)
    settings = resolve_settings(library=base / "lib", database_url=new_database(), env={})
    lib = Library.open(settings, create=True, encoder=encoder)
    lib.catalog.set_meta(MODEL, json.dumps(encoder.fingerprint()))
    lib.catalog.dim = encoder.dim
    root_id, _ = lib.catalog.root_for(base / "photos")
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((12, 16))
    changes = Changes(root_id)
    for i in range(N):
        vector = _unit(centres[i % 12] + 0.35 * rng.standard_normal(16))
        record = ImageRecord(
            path=f"{FOLDERS[i % 4]}/img{i:04d}.jpg",
            size=int(rng.integers(1_000, 5_000_000)),
            mtime_ns=1_500_000_000 * 10**9 + i * 10**12,
            content_hash=f"{i:064x}",
            width=int(rng.choice([640, 1024, 1920, 4000])),
            height=int(rng.choice([480, 768, 1080, 3000])),
            format=FORMATS[i % 3],
            taken_at=datetime(2018, 1, 1) + timedelta(days=int(rng.integers(0, 2000))) if i % 5 else None,
            camera=CAMERAS[i % 4],
        )
        changes.added.append((record, vector))
        if i % 3 == 0:
            words = " ".join(rng.choice(["dog", "cat", "beach", "snow", "sunset", "party"], 3))
            caption = TextRecord(f"a {words} photo {i}", _unit(rng.standard_normal(16)))
            changes.texts[(record.path, SIDECAR)] = [caption]
    lib.catalog.apply(changes)
    yield lib, encoder
    lib.close()


FILTERS = st.one_of(
    st.just(Filters()),
    st.builds(Filters, min_width=st.sampled_from([640, 1024, 1920, 4000, 5000])),
    st.builds(Filters, formats=st.lists(st.sampled_from(FORMATS), min_size=1, max_size=2).map(tuple)),
    st.builds(Filters, cameras=st.sampled_from([("pixel",), ("canon", "iphone"), ("nikon",)])),
    st.sampled_from(
        [
            Filters(after=datetime(2019, 1, 1)),
            Filters(before=datetime(2020, 1, 1)),
            Filters(after=datetime(2019, 1, 1), before=datetime(2020, 1, 1)),
            Filters(after=datetime(2022, 6, 1), before=datetime(2023, 1, 1)),
        ]
    ),
    st.builds(Filters, folders=st.sampled_from([("beach",), ("2019",), ("scans", "party")])),
    st.builds(
        Filters,
        where=st.sampled_from(
            [
                "width >= 1920 and format = jpeg",
                "camera ~ pixel or height = 3000",
                "taken < 2019 and not format = png",
                "text ~ dog",
                "folder = 2019/winter and width = 4000 and height = 480",
            ]
        ),
    ),
)


def brute_force(lib, target, condition, query, k):
    """Exact filtered search by numpy over every stored vector: (top-k best first with ties by
    id, the score of every id that passes the filter)."""
    chunks = lib.catalog.iter_vectors() if target == "images" else lib.catalog.iter_text_vectors()
    ids, vectors = map(np.concatenate, zip(*chunks))
    if condition is not None:
        column = Image.id if target == "images" else ImageText.id
        query_sql = select(column) if target == "images" else Texts(None)._select(column)
        with lib.catalog.engine.connect() as c:
            allowed = set(c.execute(query_sql.where(condition)).scalars())
        keep = np.array([int(i) in allowed for i in ids], dtype=bool)
        ids, vectors = ids[keep], vectors[keep]
    scores = vectors @ query
    order = np.lexsort((ids, -scores))[:k]
    return [(int(ids[i]), float(scores[i])) for i in order], dict(zip(ids.tolist(), scores.tolist()))


def same_ranking(got, expected):
    """A valid exact top-k: the same scores position by position (to float rounding), distinct
    ids, each passing the filter with that score. Among equal scores any order is exact."""
    top, every = expected
    assert len(got) == len(top)
    assert np.allclose([s for _, s in got], [s for _, s in top], atol=1e-5)
    assert len({i for i, _ in got}) == len(got)
    for i, score in got:
        assert i in every and abs(every[i] - score) <= 1e-5, (i, score)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    filters=FILTERS,
    k=st.integers(1, 30),
    target=st.sampled_from(["images", "texts"]),
    strategy=st.sampled_from(["auto", EXACT_SUBSET, POST_FILTER]),
    seed=st.integers(0, 10_000),
)
def test_every_strategy_equals_brute_force(library, filters, k, target, strategy, seed):
    lib, encoder = library
    text = f"query {seed}"
    [hits] = lib.search_many(
        [__import__("cbir.query", fromlist=["Query"]).Query(text=text)],
        k=k,
        target=target,
        mode="semantic",
        filters=filters,
        strategy=strategy,
    )
    query = encoder.encode_texts([text])[0]
    condition = image_condition(filters, lib.catalog.roots())
    expected = brute_force(lib, target, condition, query, k)
    got = [(h.text_id if target == "texts" else h.id, h.score) for h in hits]
    same_ranking(got, expected)
    if hits.plan.matching == 0:
        assert hits.plan.strategy == "none" and not hits
    else:
        assert hits.plan.strategy in ({strategy} if strategy != "auto" else {"ann", EXACT_SUBSET, POST_FILTER})
    if filters.is_empty() and strategy == "auto":
        assert hits.plan.strategy == "ann"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(1, 15), offset=st.integers(0, 20), seed=st.integers(0, 1000), min_score=st.floats(-0.5, 0.9))
def test_offset_and_min_score_cut_the_full_ranking(library, k, offset, seed, min_score):
    lib, _ = library
    filters = Filters(where="width >= 1024")
    full = lib.search(f"q{seed}", k=offset + k, filters=filters)
    page = lib.search(f"q{seed}", k=k, offset=offset, filters=filters)
    assert [(h.id, h.rank) for h in page] == [(h.id, h.rank) for h in full[offset:]]
    cut = lib.search(f"q{seed}", k=N, min_score=min_score, filters=filters)
    everything = lib.search(f"q{seed}", k=N, filters=filters)
    assert [h.id for h in cut] == [h.id for h in everything if h.score >= min_score]


def test_dedup_drops_near_duplicates_only(library):
    lib, _ = library
    plain = lib.search("q dedup", k=40)
    deduped = lib.search("q dedup", k=10, dedup=True)
    assert len(deduped) == 10
    ids, vectors = lib._index("images").vectors(np.array([h.id for h in deduped]))
    similarity = vectors @ vectors.T - np.eye(len(ids)) * 2
    assert similarity.max() < 0.97
    # the kept ones come in score order, and the first is the overall best
    assert deduped[0].id == plain[0].id
    assert [h.score for h in deduped] == sorted((h.score for h in deduped), reverse=True)


def test_sort_by_date_reorders_the_same_results(library):
    lib, _ = library
    by_score = lib.search("q sort", k=15)
    by_date = lib.search("q sort", k=15, sort="date")
    assert {h.id for h in by_date} == {h.id for h in by_score}
    dates = [h.taken for h in by_date]
    assert dates == sorted(dates)


def test_the_planner_follows_selectivity():
    assert choose_vector_strategy(100_000, None, 10, exact_index=True)[0] == "ann"
    assert choose_vector_strategy(100_000, 0, 10, exact_index=True)[0] == "none"
    assert choose_vector_strategy(100_000, 100, 10, exact_index=True)[0] == EXACT_SUBSET
    assert choose_vector_strategy(100_000, 50_000, 10, exact_index=True)[0] == POST_FILTER
    strategy, why, fetch = choose_vector_strategy(100_000, 50_000, 10, exact_index=True)
    assert "50000 of 100000" in why and 20 <= fetch <= 100


def test_rrf_fuses_by_reciprocal_rank_and_ties_share_a_rank():
    fused = rrf([[(1, 0.9), (2, 0.8), (3, 0.7)], [(3, 5.0), (1, 4.0), (4, 3.0)]])
    assert [i for i, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    tied = dict(rrf([[(7, 0.5), (5, 0.5), (6, 0.4)]]))
    assert tied[7] == tied[5] == pytest.approx(1 / 61) and tied[6] == pytest.approx(1 / 63)


def test_explain_counts_candidates(library):
    lib, _ = library
    hits = lib.search("q explain", k=5, filters=Filters(where="width = 4000 and height = 480"))
    plan = hits.plan
    assert plan.matching is not None and plan.strategy == EXACT_SUBSET
    assert plan.examined == plan.matching and plan.returned == len(hits)
    assert {"prepare", "count", "search", "filter", "fetch"} <= set(plan.timings)
    text = "\n".join(plan.describe())
    assert "exact-subset" in text and "pass the filters" in text


def test_a_batch_equals_the_queries_one_by_one(library):
    from cbir.query import Query

    lib, _ = library
    queries = [Query(text=f"batch {i}") for i in range(6)]
    for options in ({}, {"dedup": True}, {"offset": 3, "min_score": 0.1}):
        together = lib.search_many(queries, k=7, **options)
        alone = [lib.search_many([q], k=7, **options)[0] for q in queries]
        assert [[h.id for h in r] for r in together] == [[h.id for h in r] for r in alone]


VECTOR = st.lists(st.integers(-2, 2), min_size=4, max_size=4).filter(any)  # small grid: many exact ties
ROW = st.tuples(VECTOR, st.sampled_from([640, 1024, 4000]), st.sampled_from(FORMATS), st.sampled_from(CAMERAS))
SMALL_FILTERS = st.one_of(
    st.just(Filters()),
    st.builds(Filters, min_width=st.sampled_from([1000, 4000])),
    st.builds(Filters, formats=st.lists(st.sampled_from(FORMATS), min_size=1, max_size=2).map(tuple)),
    st.builds(Filters, where=st.sampled_from(["camera ~ pixel or width = 640", "not format = png", "camera is null"])),
)


@pytest.fixture(scope="module")
def small_library(tmp_path_factory, new_database):
    from cbir.config import resolve_settings
    from cbir.library import Library

    base = tmp_path_factory.mktemp("random-libraries")
    encoder = FakeEncoder(dim=4)
    settings = resolve_settings(library=base / "lib", database_url=new_database(), env={})
    lib = Library.open(settings, create=True, encoder=encoder)
    lib.catalog.set_meta(MODEL, json.dumps(encoder.fingerprint()))
    lib.catalog.dim = 4
    root_id, _ = lib.catalog.root_for(base / "photos")
    yield lib, root_id
    lib.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(ROW, min_size=1, max_size=40),
    query=VECTOR,
    filters=SMALL_FILTERS,
    k=st.integers(1, 12),
    strategy=st.sampled_from(["auto", "ann", EXACT_SUBSET, POST_FILTER]),
)
def test_random_libraries_every_strategy_equals_brute_force(small_library, rows, query, filters, k, strategy):
    """Random vectors (with exact duplicates, so ties) and random metadata, a new library each time."""
    from sqlalchemy import delete

    from cbir.store.models import Vector

    lib, root_id = small_library
    with lib.catalog.engine.begin() as c:  # empty the library, keep its schema
        c.execute(delete(Vector))
        c.execute(delete(Image))
    changes = Changes(root_id)
    for i, (vector, width, fmt, camera) in enumerate(rows):
        record = ImageRecord(f"d/{i}.jpg", 1, 10**18, f"{i:064x}", width, 480, fmt, camera=camera)
        changes.added.append((record, _unit(np.array(vector, dtype=np.float32))))
    lib.catalog.apply(changes)
    lib.rebuild_index()
    q = _unit(np.array(query, dtype=np.float32))
    lib._searcher._embed = lambda expressions, needed: [q for _ in expressions]  # the query vector itself
    [hits] = lib.search_many(
        [__import__("cbir.query", fromlist=["Query"]).Query(text="q")], k=k, filters=filters, strategy=strategy
    )
    expected = brute_force(lib, "images", image_condition(filters, lib.catalog.roots()), q, k)
    same_ranking([(h.id, h.score) for h in hits], expected)

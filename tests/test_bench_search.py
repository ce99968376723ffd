"""Smoke tests of the search and filtered-search benchmarks (cbir.bench.search, .filtered): tiny
runs that produce every key with sane values and render their tables. Benchmarks never pass or
fail on speed, so nothing here asserts a timing beyond its being positive."""

from __future__ import annotations

import math

import pytest

from cbir.bench.filtered import filtered_benchmark, filtered_table
from cbir.bench.search import latency_ms, markdown_table, search_benchmark, search_table

SEARCH_KEYS = {
    "vectors",
    "dim",
    "queries",
    "kind",
    "factory",
    "params",
    "build_s",
    "peak_rss_mb",
    "size_mb",
    "tuned_recall",
    "recall_at_10",
    "p50_ms",
    "p99_ms",
    "single_qps",
    "batched_qps",
}
FILTERED_KEYS = {
    "selectivity",
    "matching",
    "vectors",
    "index",
    "k",
    "queries",
    "planner_chose",
    "planner",
    "exact_subset",
    "post_filter",
    "naive_post_filter",
    "planner_vs_best",
    "goal_met",
}
STRATEGY_KEYS = {"p50_ms", "p99_ms", "mean_ms", "recall"}


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_search_benchmark_rows_and_table():
    lines = []
    rows = search_benchmark(sizes=(2000,), kinds=("flat", "ivf"), dim=32, queries=20, progress=lines.append)
    assert [(r["vectors"], r["kind"]) for r in rows] == [(2000, "flat"), (2000, "ivf")]
    for row in rows:
        assert set(row) == SEARCH_KEYS
        assert 0 <= row["recall_at_10"] <= 1
        assert row["tuned_recall"] is None or 0 <= row["tuned_recall"] <= 1
        for key in ("build_s", "peak_rss_mb", "size_mb", "p50_ms", "p99_ms", "single_qps", "batched_qps"):
            assert _positive(row[key]), (key, row[key])
        assert row["p50_ms"] <= row["p99_ms"]
    assert rows[0]["recall_at_10"] == 1.0  # flat is exact
    assert lines and all(isinstance(line, str) for line in lines)
    table = search_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert table[0].startswith("| vectors | kind |") and "single" in table[0]
    assert table[2].startswith("| 2,000 | flat | Flat |")


def test_search_benchmark_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown index kind"):
        search_benchmark(sizes=(2000,), kinds=("flat", "lsh"), dim=32, queries=5)


def test_filtered_benchmark_rows_and_table():
    lines = []
    rows = filtered_benchmark(vectors=3000, dim=32, queries=5, selectivities=(0.01, 1.0), progress=lines.append)
    assert [r["selectivity"] for r in rows] == [0.01, 1.0]
    assert [r["matching"] for r in rows] == [30, 3000]
    for row in rows:
        assert set(row) == FILTERED_KEYS
        assert row["index"] == "flat" and row["vectors"] == 3000 and row["queries"] == 5
        assert row["planner_chose"] in ("exact-subset", "ann-post-filter")
        for name in ("planner", "exact_subset", "post_filter", "naive_post_filter"):
            assert set(row[name]) == STRATEGY_KEYS
            assert 0 <= row[name]["recall"] <= 1
            assert _positive(row[name]["p50_ms"])
        assert row["planner"]["recall"] == 1.0  # every library strategy is exact on a flat index
        assert _positive(row["planner_vs_best"])
        assert isinstance(row["goal_met"], bool)
    assert len(lines) == 1 + len(rows)
    table = filtered_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert "planner ÷ best" in table[0] and "goal" in table[0]
    assert table[2].startswith("| 1.0% | 30 | flat |")
    assert table[3].startswith("| 100.0% | 3,000 | flat |")


def test_shared_helpers():
    summary = latency_ms([0.001, 0.002, 0.003])
    assert summary["p50_ms"] == pytest.approx(2.0) and summary["mean_ms"] == pytest.approx(2.0)
    assert markdown_table([("a", "<"), ("b", ">")], [["x", "1"]]).splitlines() == [
        "| a | b |",
        "| --- | ---: |",
        "| x | 1 |",
    ]

"""`cbir bench --quick` runs every section and writes its JSON (a smoke test: benchmarks never
pass or fail on speed)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cbir


@pytest.mark.slow  # minutes: the long suite (.ci/run), not the README's fast tier
def test_bench_quick_runs_and_writes_its_report(tmp_path):
    out = run_cbir(
        "bench",
        "--quick",
        "--model",
        "cbir-tiny",
        "--json",
        str(tmp_path / "bench.json"),
        env={"CBIR_CACHE_DIR": str(tmp_path / "cache")},  # the ONNX graphs, not in the user's cache
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["settings"]["quick"] and report["machine"]["cores"] >= 1
    check_backends(report["backends"])
    web, camera = report["ingest"]
    assert web["set"] == "web" and web["end_to_end"] > 0 and web["ceiling"] > 0 and web["naive"] > 0
    assert set(web["stages"]) >= {"scan", "read", "decode", "encode", "persist", "index"}
    assert 0 < report["decode"]["cosine_min"] <= 1.0001
    assert {row["kind"] for row in report["search"]} == {"flat", "hnsw", "ivf", "ivfpq"}
    assert [row["selectivity"] for row in report["filtered"]] == [0.001, 0.01, 0.1, 0.5, 1.0]
    assert report["memory"][0]["peak_rss_mb"] > 0
    assert "skipped" in report["gpu"] or report["gpu"]["rows"]
    on_ray = report["ray-ingest"]  # a head and 2 worker nodes started by `ray start`
    assert "skipped" in on_ray or (on_ray["ray"]["images_per_s"] > 0 and on_ray["local"]["images_per_s"] > 0)
    for heading in ("**Backends**", "**Ingest**", "**Decode**", "**Search**", "**Filtered search**", "**Memory**"):
        assert heading in out.stdout


def check_backends(section: dict) -> None:
    """Every backend measured (cbir-tiny exports to ONNX), positive numbers, and the ratios are
    those of this run's own numbers."""
    rows = {row["backend"]: row for row in section["rows"]}
    assert list(rows) == ["torch fp32", "onnx fp32", "onnx int8"] and not section["skipped"]
    assert section["peak_gflops"] == max(section["gemm"].values()) > 0 and section["gflop_per_image"] > 0
    torch = rows["torch fp32"]
    for row in rows.values():
        assert row["model_per_s"] > 0 and row["ingest_per_s"] > 0
        assert row["gflops"] == pytest.approx(row["model_per_s"] * section["gflop_per_image"])
        assert row["of_peak"] == pytest.approx(row["gflops"] / section["peak_gflops"])
        assert row["ingest_vs_model"] == pytest.approx(row["ingest_per_s"] / row["model_per_s"])
        assert row["ingest_vs_torch"] == pytest.approx(row["ingest_per_s"] / torch["ingest_per_s"])
        assert 0 < row["text"]["p50_ms"] <= row["text"]["p99_ms"]
        cold = row["cold"]
        assert cold["wall_s"] > 0 and cold["peak_rss_mb"] > 0
        assert row["cold_vs_torch"] == pytest.approx(cold["wall_s"] / torch["cold"]["wall_s"])
    assert torch["cold"]["imported_torch"]
    assert not rows["onnx fp32"]["cold"]["imported_torch"] and rows["onnx fp32"]["cold"]["imported_onnxruntime"]

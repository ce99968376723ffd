"""`cbir bench --quick` runs every section and writes its JSON (a smoke test: benchmarks never
pass or fail on speed)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cbir


@pytest.mark.slow  # minutes: the long suite (.ci/run), not the README's fast tier
def test_bench_quick_runs_and_writes_its_report(tmp_path):
    out = run_cbir("bench", "--quick", "--model", "cbir-tiny", "--json", str(tmp_path / "bench.json"), timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["settings"]["quick"] and report["machine"]["cores"] >= 1
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
    for heading in ("**Ingest**", "**Decode**", "**Search**", "**Filtered search**", "**Memory**"):
        assert heading in out.stdout

"""The benchmark commands run end to end, print their table and write the same figures to
--json.

Nothing here is timed against a target (speed targets live in the commands' output), and no
figure is re-derived with the benchmark's own formula (such a check cannot fail); what is
checked independently is that prepare's row count describes the file it generated.
"""

from __future__ import annotations

import json

import pytest


def test_bench_train_reports_consistent_figures(small_dataset, tmp_path, cli):
    out = tmp_path / "bench.json"
    result = cli("bench", "train", "--data", small_dataset, "--batch-size", "100,200",
                 "--steps", "2", "--rounds", "1", "--backend", "cpu", "--json", out)
    assert result.code == 0, result.err
    rows = json.loads(out.read_text())
    assert [r["batch_size"] for r in rows] == [100, 200]
    for r in rows:
        assert r["users_per_s"] > 0 and r["ceiling_gflops"] > 0 and r["fraction"] > 0
    # The table on stdout shows the same figures as the JSON.
    for r in rows:
        assert f"{r['users_per_s']:,.0f}" in result.out


def test_bench_inference_reports_consistent_figures(small_dataset, tmp_path, cli):
    run = tmp_path / "run"
    assert cli("train", "--data", small_dataset, "--out", run, "--epochs", "1",
               "--hidden", "64", "--latent", "16", "--backend", "cpu", "--quiet").code == 0
    out = tmp_path / "inference.json"
    result = cli("bench", "inference", "--run", run, "--batch-size", "256", "--precision",
                 "bf16", "--json", out)
    assert result.code == 0, result.err
    r = json.loads(out.read_text())
    assert r["batch_size"] == 256 and r["single_calls"] == 200
    # bf16 is measured beside fp32, each with its bare one-user forward and memory floor.
    assert r["precision"] == "bf16" and r["fp32"]["precision"] == "fp32"
    for f in (r, r["fp32"]):
        assert f["users_per_s"] > 0 and f["ceiling_gflops"] > 0
        p = f["latency_ms"]
        assert 0 < p["p50"] <= p["p90"] <= p["p99"]
        assert f["bare_forward_p50_ms"] > 0 and f["latency_floor_ms"] > 0
        assert f"{f['users_per_s']:,.0f}" in result.err
    # bf16 weights are half the bytes of fp32's.
    assert r["weight_mb"] == pytest.approx(r["fp32"]["weight_mb"] / 2, rel=1e-6)
    a = r["agreement"]
    assert 0 <= a["top_k_overlap"] <= 1 and a["users"] > 0
    assert a["ndcg_difference"] == pytest.approx(a["ndcg"] - a["ndcg_reference"])


def test_bench_prepare_measures_the_generated_file(tmp_path, cli):
    result = cli("bench", "prepare", "--rows", "200000", "--workdir", tmp_path)
    assert result.code == 0, result.err
    meta = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    rows = meta["stats"]["rows_read"]
    assert rows == sum(1 for _ in (tmp_path / "synthetic-200000.csv").open()) - 1
    assert f"{rows:,}" in result.err and "rows/s" in result.err and "GB" in result.err
    assert "bare pyarrow read" in result.err

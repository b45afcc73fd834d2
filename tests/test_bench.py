"""The benchmark commands run end to end and report self-consistent figures.

Nothing here is timed against a target (speed targets live in the commands' output); the tests
check that each benchmark measures what it says: its FLOP count follows the layer sizes, its
throughput, ceiling and fraction agree with each other, and prepare's figures describe the file
it generated.
"""

from __future__ import annotations

import json

import pytest

from vaecf.bench.flops import forward_flops_per_user, train_flops_per_user


def test_flop_counts_follow_the_layer_sizes():
    items, hidden, latent, nnz = 20_000, 600, 200, 70
    dense = 2 * (hidden * 2 * latent + latent * hidden + hidden * items)
    assert forward_flops_per_user(items, hidden, latent, nnz) == 2 * nnz * hidden + dense
    # Backward: weight and input gradients of the dense layers, weight gradient of the first.
    assert train_flops_per_user(items, hidden, latent, nnz) == 4 * nnz * hidden + 3 * dense
    assert round(train_flops_per_user(items, hidden, latent, 67.6) / 1e6, 1) == 74.3


def test_bench_train_reports_consistent_figures(small_dataset, tmp_path, cli):
    out = tmp_path / "bench.json"
    result = cli("bench", "train", "--data", small_dataset, "--batch-size", "100,200",
                 "--steps", "2", "--rounds", "1", "--backend", "cpu", "--json", out)
    assert result.code == 0, result.err
    rows = json.loads(out.read_text())
    assert [r["batch_size"] for r in rows] == [100, 200]
    for r in rows:
        assert r["users_per_s"] > 0 and r["ceiling_gflops"] > 0
        assert r["gflops"] == pytest.approx(r["users_per_s"] * r["flops_per_user"] / 1e9,
                                            rel=1e-6)
        assert r["fraction"] == pytest.approx(r["gflops"] / r["ceiling_gflops"], rel=1e-6)
    assert "of ceiling" in result.out


def test_bench_inference_reports_consistent_figures(small_dataset, tmp_path, cli):
    run = tmp_path / "run"
    assert cli("train", "--data", small_dataset, "--out", run, "--epochs", "1",
               "--hidden", "64", "--latent", "16", "--backend", "cpu", "--quiet").code == 0
    out = tmp_path / "inference.json"
    result = cli("bench", "inference", "--run", run, "--batch-size", "256", "--json", out)
    assert result.code == 0, result.err
    r = json.loads(out.read_text())
    assert r["batch_size"] == 256 and r["single_calls"] == 200
    assert r["users_per_s"] == pytest.approx(256 / r["batch_seconds"], rel=1e-6)
    assert r["fraction_of_ceiling"] == pytest.approx(r["gflops"] / r["ceiling_gflops"], rel=1e-6)
    p = r["latency_ms"]
    assert 0 < p["p50"] <= p["p90"] <= p["p99"]


def test_bench_prepare_measures_the_generated_file(tmp_path, cli):
    result = cli("bench", "prepare", "--rows", "200000", "--workdir", tmp_path)
    assert result.code == 0, result.err
    meta = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    rows = meta["stats"]["rows_read"]
    assert rows == sum(1 for _ in (tmp_path / "synthetic-200000.csv").open()) - 1
    assert f"{rows:,}" in result.err and "rows/s" in result.err and "GB" in result.err

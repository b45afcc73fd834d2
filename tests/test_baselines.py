"""EASE and popularity baselines (vaecf/evaluation/baselines.py) on the bundled real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vaecf.backend import cpu_backend
from vaecf.evaluation import baselines


def _small_real_matrix(small_dataset, users: int = 300, items: int = 40):
    """The first ``users`` training users × the ``items`` most popular items (binary CSR)."""
    from vaecf.data.dataset import Dataset

    train = Dataset.open(small_dataset).train_matrix()
    popular = np.argsort(-np.asarray(train.sum(axis=0)).ravel(), kind="stable")[:items]
    return train[:users][:, popular].tocsr()


def _ease_by_columns(x: np.ndarray, lam: float) -> np.ndarray:
    """EASE by another route: for each item j, ridge-regress column j on the other columns,
    b_{-j,j} = (X_{-j}ᵀX_{-j} + λI)⁻¹ X_{-j}ᵀ x_j, and leave b_jj = 0."""
    n = x.shape[1]
    b = np.zeros((n, n))
    for j in range(n):
        rest = np.delete(np.arange(n), j)
        a = x[:, rest].T @ x[:, rest] + lam * np.eye(n - 1)
        b[rest, j] = np.linalg.solve(a, x[:, rest].T @ x[:, j])
    return b


@pytest.mark.parametrize("lam", [5.0, 50.0])
def test_ease_matches_per_column_least_squares(small_dataset, lam):
    train = _small_real_matrix(small_dataset)
    backend = cpu_backend()
    gram = baselines.gram_matrix(backend, train)
    before = gram.copy()
    weights = baselines.ease_weights(backend, gram, lam)
    expected = _ease_by_columns(train.toarray().astype(np.float64), lam)
    assert np.abs(expected).max() > 1e-3           # a non-trivial solution
    np.testing.assert_allclose(weights, expected, atol=1e-10)
    assert np.all(np.diag(weights) == 0)
    np.testing.assert_array_equal(gram, before)     # λ is taken off the diagonal again


def test_ease_scores_are_foldin_times_weights(small_dataset):
    train = _small_real_matrix(small_dataset)
    backend = cpu_backend()
    weights = baselines.ease_weights(backend, baselines.gram_matrix(backend, train), 10.0)
    rows = train[:7]
    scores = baselines.ease_scorer(backend, weights)(rows, None)
    np.testing.assert_allclose(scores, rows.toarray() @ weights)


def test_memory_estimate():
    assert baselines.ease_memory_bytes(1000) == 3 * 8 * 1000 * 1000
    assert cpu_backend().available_memory() > 0


def test_ease_skipped_with_one_line_when_memory_is_too_small(small_dataset, caplog):
    from vaecf.data.dataset import Dataset

    dataset = Dataset.open(small_dataset)
    with caplog.at_level("WARNING", logger="vaecf"):
        out = baselines.run_baselines(dataset, "test", [100], cpu_backend(),
                                      ("popularity", "ease"), memory_limit=300 * 2**20)
    lines = [record.getMessage() for record in caplog.records]
    need = baselines.ease_memory_bytes(dataset.n_items)
    assert need > 300 * 2**20
    assert "ease" not in out and "popularity" in out
    assert lines == [out["skipped"]["ease"]]
    assert f"{dataset.n_items:,} items need {need / 2**20:.0f} MiB" in lines[0]
    assert "300 MiB available" in lines[0]


def test_unknown_baseline_is_an_error(small_dataset):
    from vaecf.data.dataset import Dataset
    from vaecf.errors import VaecfError

    with pytest.raises(VaecfError, match="unknown baseline"):
        baselines.run_baselines(Dataset.open(small_dataset), "test", [100], cpu_backend(),
                                ("popularity", "knn"))


@pytest.mark.slow   # one 6,558 × 6,558 inversion: ~20 s on two shared cores
def test_ease_beats_popularity_on_bundled_data(small_dataset):
    from vaecf.data.dataset import Dataset

    dataset = Dataset.open(small_dataset)
    out = baselines.run_baselines(dataset, "test", [20, 100], cpu_backend(),
                                  ("popularity", "ease"), ease_grid=(1.0,))
    assert list(out["ease_validation"]) == [str(out["ease_lambda"])]
    assert out["ease"]["ndcg@100"] > out["popularity"]["ndcg@100"] + 0.03
    assert out["ease"]["recall@20"] > out["popularity"]["recall@20"]


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v1"


def test_cli_prints_every_baseline_and_json_has_every_column(tmp_path, cli):
    out = tmp_path / "test.json"
    result = cli("test", "--run", FIXTURES / "run", "--data", FIXTURES / "dataset",
                 "--json", out)
    assert result.code == 0, result.err
    assert "popularity" in result.out and "EASE (λ" in result.out
    got = json.loads(out.read_text())
    old = json.loads((FIXTURES / "test.json").read_text())
    # The model's column unchanged beside the new ones (popularity's ties rank by column
    # now, where the old code took its machine's sort order: test_formats_compat).
    assert got["model"] == pytest.approx(old["model"])
    assert set(got["ease"]) == set(got["popularity"]) == set(old["model"])
    assert got["ease_lambda"] > 0 and str(got["ease_lambda"]) in got["ease_validation"]


def test_cli_baselines_selects_columns(tmp_path, cli):
    out = tmp_path / "test.json"
    result = cli("test", "--run", FIXTURES / "run", "--data", FIXTURES / "dataset",
                 "--baselines", "popularity", "--json", out)
    assert result.code == 0, result.err
    assert "EASE" not in result.out
    old = json.loads((FIXTURES / "test.json").read_text())
    got = json.loads(out.read_text())
    # The JSON of old versions, key for key, plus which model the run holds.
    assert set(got) == set(old) | {"model_name"} and got["model_name"] == "multvae"
    assert cli("test", "--run", FIXTURES / "run", "--data", FIXTURES / "dataset",
               "--baselines", "ease,knn").code != 0

"""Ranking metrics against a plain NumPy/Python implementation of docs/design.md's formulas."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from vaecf.backend import cpu_backend
from vaecf.evaluation import metrics


def _reference(scores: np.ndarray, foldin: np.ndarray, targets: np.ndarray, k: int):
    """Per-user NDCG@k and Recall@k, written out loop by loop from the definitions."""
    ndcg, recall = [], []
    for u in range(scores.shape[0]):
        t = set(np.flatnonzero(targets[u]))
        if not t:
            continue
        candidates = [i for i in np.argsort(-scores[u], kind="stable") if not foldin[u, i]]
        top = candidates[:k]
        dcg = sum(1.0 / np.log2(rank + 2) for rank, item in enumerate(top) if item in t)
        idcg = sum(1.0 / np.log2(rank + 2) for rank in range(min(k, len(t))))
        ndcg.append(dcg / idcg)
        recall.append(len(set(top) & t) / min(k, len(t)))
    return np.array(ndcg), np.array(recall)


@pytest.mark.parametrize("k", [1, 5, 20, 50])
def test_metrics_match_reference_on_random_scores(k):
    rng = np.random.default_rng(k)
    users, items = 64, 80
    scores = rng.standard_normal((users, items)).astype(np.float32)
    foldin = rng.random((users, items)) < 0.2
    # Targets disjoint from fold-in; per-user counts from 0 to ~30, so many users have
    # fewer than k targets (and some none, which must be skipped).
    counts = rng.integers(0, 30, users)
    targets = np.zeros_like(foldin)
    for u in range(users):
        free = np.flatnonzero(~foldin[u])
        targets[u, rng.choice(free, min(counts[u], free.size), replace=False)] = True
    xp = np
    ranked = metrics.top_k(xp, metrics.exclude(xp, scores.copy(), scipy.sparse.csr_matrix(foldin)),
                           k)
    got = metrics.per_user(xp, ranked, scipy.sparse.csr_matrix(targets), [k])
    want_ndcg, want_recall = _reference(scores, foldin, targets, k)
    assert got[f"ndcg@{k}"].shape == want_ndcg.shape == ((counts > 0).sum(),)
    np.testing.assert_allclose(got[f"ndcg@{k}"], want_ndcg, rtol=1e-12)
    np.testing.assert_allclose(got[f"recall@{k}"], want_recall, rtol=1e-12)
    assert (counts[counts > 0] < k).any() or k == 1


def test_perfect_and_worst_rankings():
    targets = scipy.sparse.csr_matrix(np.array([[1, 1, 0, 0, 0, 0]], bool))
    xp = np
    best = metrics.per_user(xp, np.array([[0, 1, 2, 3]]), targets, [2, 4])
    assert best["ndcg@2"][0] == pytest.approx(1.0) and best["recall@4"][0] == pytest.approx(1.0)
    worst = metrics.per_user(xp, np.array([[2, 3, 4, 5]]), targets, [4])
    assert worst["ndcg@4"][0] == 0.0 and worst["recall@4"][0] == 0.0


def test_fold_in_items_are_never_recommended():
    scores = np.arange(10, dtype=np.float32)[None, :].repeat(3, axis=0)
    foldin = scipy.sparse.csr_matrix(np.eye(3, 10, k=7, dtype=bool))
    ranked = metrics.top_k(np, metrics.exclude(np, scores, foldin), 5)
    for u in range(3):
        assert 7 + u not in ranked[u]


def test_evaluate_popularity_baseline_on_bundled_data(small_dataset):
    from vaecf.data.dataset import Dataset
    from vaecf.evaluation.protocol import evaluate, popularity_scorer

    backend = cpu_backend()
    dataset = Dataset.open(small_dataset)
    foldin, targets = dataset.heldout("test")
    result = evaluate(popularity_scorer(backend, dataset.train_matrix()), backend, foldin,
                      targets, [20, 100], batch_size=7)   # several batches plus a partial one
    whole = evaluate(popularity_scorer(backend, dataset.train_matrix()), backend, foldin,
                     targets, [20, 100], batch_size=10_000)
    assert result == pytest.approx(whole)
    assert result["users"] == foldin.shape[0]
    assert 0.1 < result["ndcg@100"] < 0.4


def test_tied_scores_rank_in_column_order():
    """Counts tie often (the popularity baseline): equal scores are ranked by column on every
    machine, as a stable sort ranks them, whatever the CPU's sort kernels."""
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, (40, 300)).astype(np.float32)
    foldin = rng.random((40, 300)) < 0.3
    for k in (1, 7, 50, 300):
        ranked = metrics.top_k(np, metrics.exclude(np, scores.copy(),
                                                   scipy.sparse.csr_matrix(foldin)), k)
        for u in range(40):
            visible = np.where(foldin[u], -np.inf, scores[u])
            want = np.argsort(-visible, kind="stable")[:k]
            assert ranked[u].tolist() == want.tolist()

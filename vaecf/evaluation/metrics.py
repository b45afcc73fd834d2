"""Ranking metrics of the strong-generalization protocol, on any array backend (``xp`` is
``numpy`` or ``cupy``).

For a user with target set T (|T| ≥ 1) and the top-k list r_1..r_k of items not fed in:

- NDCG@k = DCG@k / IDCG@k, DCG@k = Σ_{j≤k} [r_j ∈ T] / log2(j + 1),
  IDCG@k = Σ_{j≤min(k,|T|)} 1 / log2(j + 1)  (binary gains, Liang et al. 2018 eq. 6);
- Recall@k = |{r_1..r_k} ∩ T| / min(k, |T|)  (the paper's normalised recall, eq. 5).

Scores of fold-in items are set to −inf before ranking. Users without targets are skipped.
"""

from __future__ import annotations

from typing import Any

from vaecf.model.batches import entry_rows

METRIC_KS = (20, 50, 100)
SELECTION_METRIC = "ndcg@100"   # what picks the best checkpoint


def exclude(xp: Any, scores: Any, foldin: Any) -> Any:
    """Set ``scores`` (B, I) float to −inf where the CSR ``foldin`` (B, I) has an entry;
    in place, returns ``scores``."""
    rows = entry_rows(xp, foldin.indptr)
    scores[rows, foldin.indices] = -xp.inf
    return scores


def top_k(xp: Any, scores: Any, k: int) -> Any:
    """Column indices of the k highest scores per row, best first, equal scores in column
    order: int (B, min(k, I)).

    Ties are broken by column on purpose: which of several tied items ``argpartition`` and
    ``argsort`` return depends on the CPU's SIMD sort kernels (NumPy dispatches AVX-512 and
    AVX2 differently), and ties are common (the popularity baseline scores by counts), so
    metrics would differ between machines.
    """
    k = min(k, scores.shape[1])
    part = xp.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = xp.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)   # (B, 1)
    above = scores > kth
    tied = scores == kth
    # Of the items tied with the k-th score, those with the lowest columns fill the k.
    room = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (xp.cumsum(tied, axis=1) <= room))
    picked = xp.nonzero(chosen)[1].reshape(scores.shape[0], k)   # columns ascending
    order = xp.argsort(-xp.take_along_axis(scores, picked, axis=1), axis=1, kind="stable")
    return xp.take_along_axis(picked, order, axis=1)


def per_user(xp: Any, ranked: Any, targets: Any, ks: list[int]) -> dict[str, Any]:
    """NDCG@k and Recall@k of each user.

    Args:
        ranked: int (B, K) item columns, best first, K ≥ max(ks) (or all items).
        targets: CSR (B, I) held-out items of each user.
        ks: cut-offs.

    Returns:
        ``{"ndcg@k": float64 (B',), "recall@k": float64 (B',)}`` over the B' users with targets.
    """
    dense = xp.asarray(targets.toarray() != 0)                        # bool (B, I)
    hits = xp.take_along_axis(dense, ranked, axis=1).astype(xp.float64)   # (B, K)
    n_targets = dense.sum(axis=1)
    has = n_targets > 0
    discount = 1.0 / xp.log2(xp.arange(2, ranked.shape[1] + 2, dtype=xp.float64))
    ideal = xp.concatenate([xp.zeros(1), xp.cumsum(discount)])     # ideal[n] = Σ_{j≤n}
    out = {}
    for k in ks:
        kk = min(k, ranked.shape[1])
        dcg = (hits[:, :kk] * discount[:kk]).sum(axis=1)
        cut = xp.minimum(n_targets, k)
        idcg = ideal[xp.minimum(cut, kk)]
        out[f"ndcg@{k}"] = dcg[has] / idcg[has]
        out[f"recall@{k}"] = hits[:, :kk].sum(axis=1)[has] / cut[has]
    return out


def metric_names(ks: list[int]) -> list[str]:
    """Display order: NDCG@k for every k, then Recall@k."""
    return [f"ndcg@{k}" for k in ks] + [f"recall@{k}" for k in ks]


def popularity_scores(xp: Any, train: Any) -> Any:
    """The popularity baseline's score of each item: its training interaction count,
    float32 (I,)."""
    return xp.asarray(train.sum(axis=0), dtype=xp.float32).ravel()

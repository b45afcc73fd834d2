"""Baselines scored on the same held-out users as the model: popularity and EASE.

- **popularity**: every user gets the items ranked by their number of training interactions.
- **EASE** (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): an item ×
  item weight matrix B with zero diagonal minimising ‖X − XB‖² + λ‖B‖², X the binary training
  matrix (U, I). Closed form: G = XᵀX + λI, P = G⁻¹, B = −P / diag(P) column-wise, diag(B) = 0.
  A user's scores are their fold-in row times B. λ is chosen on the *validation* users from a
  grid of multiples of the mean item count (the mean of diag XᵀX), which is where the optimum
  sits across data sizes (Steck's λ = 500 on ML-20M is ≈ 1× its mean item count), walking from
  2× towards the better neighbour until validation NDCG@100 stops rising.

Everything runs on the array backend (``backend.xp``: NumPy or CuPy). EASE holds about three
dense I × I float64 matrices (XᵀX, its inverse, B): :func:`ease_memory_bytes`. It is checked
against the memory available (host RAM, or free GPU memory) before solving and skipped with one
line when it would not fit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vaecf.backend import Backend
from vaecf.evaluation import metrics
from vaecf.model.batches import Batch

log = logging.getLogger("vaecf")

Scorer = Callable[[Any, Any], Any]   # (backend CSR fold-in rows (B, I), Batch) -> scores (B, I)

BASELINES = ("popularity", "ease")
# λ grid as multiples of the mean number of training interactions per item.
EASE_GRID = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
EASE_START = 2.0    # where the search starts (the best multiple on ML-1M and ML-100K)
EASE_MATRICES = 3   # dense I × I float64 matrices alive at once while solving


def popularity_scorer(backend: Backend, train: Any) -> Scorer:
    """Scores = each item's number of training interactions, the same for every user."""
    popularity = metrics.popularity_scores(backend.xp, backend.csr(train))

    def score(rows: Any, batch: Batch) -> Any:
        return backend.xp.tile(popularity, (batch.size, 1))

    return score


def ease_memory_bytes(n_items: int) -> int:
    """Bytes EASE needs: EASE_MATRICES dense n_items² float64 matrices."""
    return EASE_MATRICES * 8 * n_items * n_items


def size_text(n_bytes: float) -> str:
    """``"12.3 GiB"``, or ``"456 MiB"`` below one GiB."""
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.1f} GiB"
    return f"{n_bytes / 2**20:.0f} MiB"


def ease_weights(backend: Backend, gram: Any, lam: float) -> Any:
    """EASE's B (I, I) float64 from the Gram matrix XᵀX (I, I) float64 and λ > 0.

    λ is added to ``gram``'s diagonal in place for the inversion and taken off again, so at
    most three I × I matrices exist at once (``gram``, the inverse and the solver's copy).
    """
    xp = backend.xp
    diag = xp.arange(gram.shape[0])
    gram[diag, diag] += lam
    try:
        b = xp.linalg.inv(gram)
    finally:
        gram[diag, diag] -= lam
    b /= -xp.diag(b).copy()[None, :]     # B_ij = −P_ij / P_jj, in place
    b[diag, diag] = 0.0
    return b


def gram_matrix(backend: Backend, train: Any) -> Any:
    """XᵀX as a dense float64 backend array (I, I) from a CSR training matrix (U, I)."""
    x = backend.csr(train).astype(backend.xp.float64)
    gram = x.T @ x
    return gram.toarray() if hasattr(gram, "toarray") else backend.xp.asarray(gram)


def ease_scorer(backend: Backend, weights: Any) -> Scorer:
    """Scores = fold-in rows (binary CSR) × B."""
    xp = backend.xp

    def score(rows: Any, batch: Batch) -> Any:
        out = rows @ weights
        return xp.asarray(out.toarray() if hasattr(out, "toarray") else out)

    return score


@dataclass
class EaseFit:
    """EASE fitted on a training matrix with λ picked on validation users.

    Attributes:
        lam: the chosen λ.
        weights: B (I, I) float64 backend array.
        validation: validation NDCG@100 of each λ tried.
    """

    lam: float
    weights: Any
    validation: dict[float, float] = field(default_factory=dict)

    grid: tuple[float, ...] = ()

    @property
    def at_edge(self) -> bool:
        """Whether the chosen λ is the smallest or largest λ of the grid."""
        return bool(self.grid) and self.lam in (self.grid[0], self.grid[-1])


def fit_ease(backend: Backend, train: Any, validation: tuple[Any, Any],
             grid: tuple[float, ...] = EASE_GRID, batch_size: int = 2048) -> EaseFit:
    """Choose λ = g · (mean item count) on the validation users and solve EASE with it.

    ``grid`` (ascending multiples g) is searched from EASE_START's nearest entry towards the
    better neighbour, one step at a time, until validation NDCG@100 stops rising (it is
    unimodal in λ on every dataset of docs/accuracy.md), so the 10-point grid costs 3–5 solves
    instead of 10. ``validation`` is the (fold-in, targets) CSR pair.
    """
    from vaecf.evaluation.protocol import evaluate

    xp = backend.xp
    grid = tuple(sorted(grid))
    gram = gram_matrix(backend, train)
    mean_count = max(float(xp.trace(gram)) / gram.shape[0], 1.0)
    lams = [round(g * mean_count, 1) for g in grid]
    scores: dict[float, float] = {}
    last: tuple[float, Any] | None = None

    def score(i: int) -> float:
        nonlocal last
        if lams[i] not in scores:
            last = None   # free the previous solution before the next inversion
            weights = ease_weights(backend, gram, lams[i])
            scores[lams[i]] = evaluate(ease_scorer(backend, weights), backend, *validation,
                                       [100], batch_size)["ndcg@100"]
            last = (lams[i], weights)
        return scores[lams[i]]

    i = min(range(len(grid)), key=lambda j: abs(grid[j] - EASE_START))
    score(i)
    for step in (1, -1):   # climb up, and if the first step up is worse, climb down
        while 0 <= i + step < len(grid) and score(i + step) > score(i):
            i += step
    best = lams[i]
    weights = last[1] if last is not None and last[0] == best else None
    if weights is None:   # solved again rather than kept: no fourth I × I matrix
        last = None
        weights = ease_weights(backend, gram, best)
    return EaseFit(best, weights, dict(sorted(scores.items())), (lams[0], lams[-1]))


def run_baselines(dataset: Any, split: str, ks: list[int], backend: Backend,
                  names: tuple[str, ...] = BASELINES, batch_size: int = 2048,
                  memory_limit: int | None = None,
                  ease_grid: tuple[float, ...] = EASE_GRID) -> dict[str, Any]:
    """Score the held-out users of ``split`` with each baseline in ``names``.

    Args:
        dataset: a :class:`vaecf.dataset.Dataset`.
        memory_limit: bytes EASE may use; None asks ``backend.available_memory()``.
        ease_grid: λ candidates as multiples of the mean item count.

    Returns:
        ``{name: {metric: value}}`` for each baseline scored, plus ``"ease_lambda"`` and
        ``"ease_validation"`` ({λ: validation NDCG@100}) when EASE ran and ``"skipped"``
        ({name: reason}) only when some baseline was left out.
    """
    from vaecf.evaluation.protocol import evaluate

    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        from vaecf.errors import VaecfError

        raise VaecfError(f"--baselines: unknown baseline(s) {', '.join(unknown)} "
                         f"(choose from {', '.join(BASELINES)})")
    foldin, targets = dataset.heldout(split)
    train = dataset.train_matrix()
    out: dict[str, Any] = {}
    if "popularity" in names:
        result = evaluate(popularity_scorer(backend, train), backend, foldin, targets, ks,
                          batch_size)
        result.pop("users")
        out["popularity"] = result
    if "ease" in names:
        need = ease_memory_bytes(dataset.n_items)
        have = backend.available_memory() if memory_limit is None else memory_limit
        if need > have:
            reason = (f"EASE skipped: {dataset.n_items:,} items need {size_text(need)} "
                      f"({EASE_MATRICES} × items² float64), {size_text(have)} available")
            out.setdefault("skipped", {})["ease"] = reason
            log.warning("%s", reason)
        else:
            fit = fit_ease(backend, train, dataset.heldout("validation"), ease_grid,
                           batch_size)
            result = evaluate(ease_scorer(backend, fit.weights), backend, foldin, targets, ks,
                              batch_size)
            result.pop("users")
            out["ease"] = result
            out["ease_lambda"] = fit.lam
            out["ease_validation"] = {str(lam): v for lam, v in fit.validation.items()}
            if fit.at_edge:
                log.warning("EASE: λ = %g is at the edge of the grid %g–%g", fit.lam,
                            fit.grid[0], fit.grid[-1])
    return out

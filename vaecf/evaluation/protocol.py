"""Score held-out users in batches and average the ranking metrics (strong generalization).

A *scorer* maps a batch of fold-in rows to a writable backend array of scores (B, I); the
model's scorer feeds the L2-normalised fold-in through the network in evaluation mode
(z = mu, no dropout), the popularity scorer ignores the rows. Every held-out user is
evaluated, including the last partial batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vaecf.backend import Backend
from vaecf.evaluation import metrics
from vaecf.evaluation.baselines import BASELINES, popularity_scorer  # noqa: F401 (re-export)
from vaecf.model.batches import Batch, make_batch

Scorer = Callable[[Any, Any], Any]   # (backend CSR fold-in rows (B, I), Batch) -> scores (B, I)


def model_scorer(model: Any, backend: Backend) -> Scorer:
    """Scores = the model's float32 logits for the L2-normalised fold-in rows."""
    import tensorflow as tf

    from vaecf.model.multvae import row_parts

    to_tf, to_xp = backend.to_tf, backend.from_tf
    n_items = model.n_items

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.int64),
                                  tf.TensorSpec([None], tf.float32),
                                  tf.TensorSpec([], tf.int64)], reduce_retracing=True)
    def logits(indices, values, size):
        return model(tf.SparseTensor(indices, values, tf.stack([size, n_items])),
                     row_blocks=row_parts())

    def score(rows: Any, batch: Batch) -> Any:
        out = logits(to_tf(batch.indices), to_tf(batch.values), tf.constant(batch.size,
                                                                             tf.int64))
        return to_xp(out)

    return score


def evaluate(score: Scorer, backend: Backend, foldin: Any, targets: Any,
             ks: list[int] | tuple[int, ...] = metrics.METRIC_KS,
             batch_size: int = 2048) -> dict[str, float]:
    """Mean NDCG@k and Recall@k over the users of (``foldin``, ``targets``), scipy CSR (U, I).

    Returns:
        ``{"ndcg@k": float, "recall@k": float, ...}`` plus ``"users"``: users with targets.
    """
    xp = backend.xp
    foldin, targets = backend.csr(foldin), backend.csr(targets)
    sums: dict[str, float] = {}
    users = 0
    for start in range(0, foldin.shape[0], batch_size):
        rows = slice(start, min(start + batch_size, foldin.shape[0]))
        batch_foldin = foldin[rows]
        batch = make_batch(backend, batch_foldin, xp.arange(batch_foldin.shape[0]))
        scores = metrics.exclude(xp, score(batch_foldin, batch), batch_foldin)
        ranked = metrics.top_k(xp, scores, max(ks))
        per_user = metrics.per_user(xp, ranked, targets[rows], list(ks))
        for name, values in per_user.items():
            sums[name] = sums.get(name, 0.0) + float(values.sum())
        users += int(next(iter(per_user.values())).shape[0])
    result = {name: sums[name] / max(users, 1) for name in metrics.metric_names(list(ks))}
    result["users"] = users
    return result



def evaluate_run(run_path: Any, data: Any, split: str, ks: list[int], backend: Backend,
                 batch_size: int = 2048,
                 baselines: tuple[str, ...] = BASELINES) -> dict[str, Any]:
    """Test a run directory's best weights and the baselines on one held-out split.

    Args:
        run_path: the run directory.
        data: the dataset directory; None uses the one recorded in the run.
        split: ``"test"`` or ``"validation"``.
        baselines: which of ``popularity``, ``ease`` to score beside the model.

    Returns:
        ``{"run", "data", "split", "users", "best_epoch", "model_name" (``multvae`` or
        ``recvae``), "model": {metric: value},
        "popularity": {metric: value}, "ease": {metric: value}, "ease_lambda", ...,
        "skipped": {baseline: reason}}`` (see :func:`vaecf.evaluation.baselines.run_baselines`).
    """
    from vaecf.data.dataset import Dataset
    from vaecf.errors import VaecfError
    from vaecf.evaluation.baselines import run_baselines
    from vaecf.model.rundir import RunDir

    run = RunDir.open(run_path)
    dataset = Dataset.open(run.dataset_path if data is None else data)
    run.check_dataset(dataset)
    if not ks or min(ks) < 1:
        raise VaecfError(f"--k: cut-offs must be positive integers, got {ks}")
    foldin, targets = dataset.heldout(split)
    model = evaluate(model_scorer(run.load_model(), backend), backend, foldin, targets, ks,
                     batch_size)
    users = model.pop("users")
    return {"run": str(run.path), "data": str(dataset.path), "split": split, "users": users,
            "best_epoch": (run.best or {}).get("epoch"), "model_name": run.model_name,
            "model": model,
            **run_baselines(dataset, split, ks, backend, baselines, batch_size)}

"""Recommendations for users the model has never seen (the VAE's fold-in), from original ids.

Each user's row of known items is L2-normalised, the model scores every item with its mean
(z = mu, no sampling), the user's own items are excluded unless asked otherwise, and the top k
are kept. Single users and batches take the same path, :meth:`Recommender.top_k` on a CSR
matrix, which calls one of two concrete functions of :func:`_scoring_function`, traced once when
the Recommender is built: a few rows select with ``tf.math.top_k`` (fewer ops, the one-user
latency), many rows with the blocked top-k (the batch throughput). A call is one
``StatefulPartitionedCall`` op (:func:`op_call`) that takes the CSR arrays as they are (row
offsets and columns; the graph derives each pair's row) with ``k`` and the exclusion flag as
tensors made once, and gives back int64 columns with -1 for excluded slots: no retracing, no
per-call NumPy work beyond the two conversions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from vaecf.serving.graph import top_k_graph
from vaecf.serving.items import ItemMap, Request

# Users per scoring batch in batch mode: the (batch, n_items) float32 logits of 4,096 users of a
# 20k-item model take 330 MB, large enough that the decoder GEMM runs at full speed.
BATCH_USERS = 4096
# Up to this many rows a call selects with tf.math.top_k: blocked_top_k's extra ops cost more
# than they save on a few rows (one user: ~1 ms of a ~3 ms call on 20k items).
SMALL_ROWS = 16


class Recommender:
    """A trained Mult-VAE plus its item map, scoring CSR rows of known items.

    Args:
        model: a :class:`vaecf.model.multvae.MultVAE` with the weights to serve.
        item_map: the run's item map (column j <-> original id).
        precision: ``fp32`` (the weights as trained) or ``bf16`` (see
            :mod:`vaecf.serving.precision`).
    """

    def __init__(self, model: Any, item_map: ItemMap, precision: str = "fp32") -> None:
        from vaecf.serving.precision import at_precision

        self.model = model = at_precision(model, precision)
        self.precision = precision
        self.item_map = item_map
        self._small, self._large = (op_call(_scoring_function(model, many_rows))
                                    for many_rows in (False, True))

    @classmethod
    def from_run(cls, path: Path | str, precision: str = "fp32") -> Recommender:
        """The best weights of the run directory ``path``."""
        from vaecf.model.rundir import RunDir

        run = RunDir.open(path)
        return cls(run.load_model(), ItemMap(run.item_ids), precision)

    def top_k(self, seen: scipy.sparse.csr_matrix, k: int,
              exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k columns and scores of each row of ``seen``.

        Args:
            seen: binary CSR (n, n_items) of the users' known items (sorted indices).
            k: how many items per user (capped at n_items).
            exclude_seen: never recommend an item the user already has.
        Returns:
            (columns int64 (n, k), scores float32 (n, k)), best first; scores are the decoder's
            logits. Where fewer than k items remain after exclusion the tail has column -1 and
            score -inf.
        """
        k = min(k, self.item_map.n_items)
        n = seen.shape[0]
        if n > BATCH_USERS:   # bound the (rows, n_items) logits
            parts = [self.top_k(seen[s: s + BATCH_USERS], k, exclude_seen)
                     for s in range(0, n, BATCH_USERS)]
            return (np.concatenate([c for c, _ in parts]), np.concatenate([v for _, v in parts]))
        call = self._small if n <= SMALL_ROWS else self._large
        columns, scores = call(seen.indptr.astype(np.int64, copy=False),
                               seen.indices.astype(np.int64, copy=False), _scalar(k, "int32"),
                               _scalar(bool(exclude_seen), "bool"))
        return columns.numpy(), scores.numpy()

    def batches(self, seen: scipy.sparse.csr_matrix, k: int, exclude_seen: bool = True,
                batch_users: int = BATCH_USERS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """:meth:`top_k` over consecutive blocks of ``batch_users`` rows, in order."""
        if seen.shape[0] <= batch_users:   # no slice: a CSR slice costs ~25 us of a 3 ms call
            yield self.top_k(seen, k, exclude_seen)
            return
        for start in range(0, seen.shape[0], batch_users):
            yield self.top_k(seen[start: start + batch_users], k, exclude_seen)


def _scoring_function(model: Any, many_rows: bool) -> Any:
    """The concrete function (indptr int64 (n + 1,), indices int64 (nnz,), k int32, exclude
    bool) -> (columns int64 (n, k), scores float32 (n, k)) of :func:`top_k_graph` for the CSR
    rows (indptr, indices); columns are -1 where the score is -inf (excluded)."""
    import tensorflow as tf

    def score(indptr, indices, k, exclude):
        scores, columns = top_k_graph(model, indptr, indices, k, exclude, many_rows)
        excluded = tf.equal(scores, -np.inf)
        return tf.where(excluded, tf.constant(-1, tf.int64), tf.cast(columns, tf.int64)), scores

    # Plain positional parameters only: with a keyword parameter that has a default (the old
    # ``lambda *args, b=blocked``) every call binds it, measured at 1.3x instead of 1.1x the
    # bare forward on a one-user call.
    return tf.function(score).get_concrete_function(
        tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int64),
        tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.bool))


def op_call(function: Any) -> Callable[..., list[Any]]:
    """``function`` (a concrete function of tensors) called as one ``StatefulPartitionedCall``
    op, its captured variables appended: the same graph and results as calling it, without
    ``ConcreteFunction.__call__``'s Python binding and casting of every argument and its trip
    through the eager function runtime (0.35-0.5 ms of a 2-3 ms one-user call, measured
    interleaved). Arguments are tensors or NumPy arrays, in the signature's order; returns the
    flat list of outputs."""
    import tensorflow as tf

    captures = list(function.captured_inputs)
    dtypes = [output.dtype for output in function.outputs]

    def call(*inputs: Any) -> list[Any]:
        return tf.raw_ops.StatefulPartitionedCall(args=[*inputs, *captures], Tout=dtypes,
                                                  f=function)

    return call


@cache
def _scalar(value: int | bool, dtype: str) -> Any:
    """A scalar tensor made once per value (k and the exclusion flag of each call)."""
    import tensorflow as tf

    return tf.constant(value, dtype)


@dataclass
class Recommendations:
    """The answer to a request.

    Attributes:
        users: original user ids per row, or None for one anonymous user.
        items: original item ids, one list per user, best first (excluded tail dropped).
        scores: the matching float scores.
    """

    users: list[Any] | None
    items: list[list[Any]]
    scores: list[list[float]]


def score_request(recommender: Recommender, request: Request, k: int, exclude_seen: bool = True,
              advance: Callable[[int], None] | None = None) -> Recommendations:
    """Score a request in batches of :data:`BATCH_USERS`; ``advance(n_users)`` after each."""
    items: list[list[Any]] = []
    scores: list[list[float]] = []
    for columns, values in recommender.batches(request.seen, k, exclude_seen):
        # Excluded slots (column -1) are only ever at the end of a row: cut each at its count.
        counts = (columns >= 0).sum(axis=1).tolist()
        for ids, row, count in zip(recommender.item_map.originals(columns), values.tolist(),
                                   counts, strict=True):
            items.append(ids[:count])
            scores.append(row[:count])
        if advance is not None:
            advance(columns.shape[0])
    return Recommendations(request.users, items, scores)

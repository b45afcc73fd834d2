"""Recommendations for users the model has never seen (the VAE's fold-in), from original ids.

A request is a set of users, each given as the original ids of items they interacted with
(ints or strings, as in the training input). Ids go through the run's item map (unknown ones are
reported and skipped), each user's row is L2-normalised, the model scores every item with its
mean (z = mu, no sampling), the user's own items are excluded unless asked otherwise, and the
top k are kept.

Single users and batches take the same path: :meth:`Recommender.top_k` on a CSR matrix, one
``tf.function`` with a fixed signature (sparse first layer, dense decoder, exclusion by
scattering -inf onto the user's items, an exact blocked top-k), so its graph is traced once per
process whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse

from vaecf.errors import VaecfError
from vaecf.ingest import ColumnSpec, read_file

# Users per scoring batch in batch mode: the (batch, n_items) float32 logits of 4,096 users of a
# 20k-item model take 330 MB, large enough that the decoder GEMM runs at full speed.
BATCH_USERS = 4096
_INTEGER = r"^\s*[-+]?\d+\s*$"
# Items per block of blocked_top_k: 16 measured best for k = 10 and 100 on 20k items here.
TOP_K_BLOCK = 16


def coerce_ids(values: pa.Array | pa.ChunkedArray, id_type: pa.DataType) -> pa.Array:
    """Original ids in the type of the run's item ids; values that cannot be one become null.

    An int64 model accepts "42" (and " 42 "), a string model accepts 42 as "42", so a request
    file whose column was read as the other type still maps.

    Args:
        values: ids, shape (n,), int64 or string.
        id_type: the item map's type (int64 or string).
    Returns:
        shape (n,), of ``id_type``, nulls where the value is no such id.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.type == id_type:
        return values
    if pa.types.is_integer(id_type):
        strings = pc.utf8_trim_whitespace(values.cast(pa.string()))
        integral = pc.match_substring_regex(strings, _INTEGER)
        # Non-integers become null first so the cast never fails.
        return pc.if_else(integral, strings, pa.scalar(None, pa.string())).cast(id_type)
    return values.cast(pa.string())


class ItemMap:
    """Original item id <-> model column.

    Attributes:
        ids: original id of each column, shape (n_items,), int64 or string.
    """

    def __init__(self, ids: pa.Array) -> None:
        self.ids = ids

    @property
    def n_items(self) -> int:
        return len(self.ids)

    def columns(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """int64 columns of ``values`` (shape (n,)), -1 where the id is not in the model."""
        found = pc.index_in(coerce_ids(values, self.ids.type), value_set=self.ids)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def originals(self, columns: np.ndarray) -> list[Any]:
        """Original ids (Python ints or strs) of columns, shape (n,); -1 gives None."""
        columns = np.asarray(columns, dtype=np.int64)
        taken = self.ids.take(pa.array(np.where(columns < 0, 0, columns)))
        return [None if c < 0 else v
                for c, v in zip(columns.tolist(), taken.to_pylist(), strict=True)]


@dataclass
class Request:
    """Users to score.

    Attributes:
        users: original user ids, one per row of ``seen``; None for one anonymous user
            (``--user-items``).
        seen: binary CSR (n_users, n_items) float32 of each user's known items.
        unknown: distinct item ids not in the model, as given (strings), in input order.
        skipped: original ids of users none of whose items are known (batch mode).
    """

    users: list[Any] | None
    seen: scipy.sparse.csr_matrix
    unknown: list[str] = field(default_factory=list)
    skipped: list[Any] = field(default_factory=list)


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_items: int) -> scipy.sparse.csr_matrix:
    """Binary CSR from (row, column) pairs; duplicates collapse to one."""
    matrix = scipy.sparse.csr_matrix(
        (np.ones(rows.shape[0], np.float32), (rows, cols)), shape=(n_rows, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _unknown(values: pa.Array, columns: np.ndarray) -> list[str]:
    """Distinct values whose column is -1, as strings, in first-seen order."""
    missing = values.filter(pa.array(columns < 0))
    return [str(v) for v in dict.fromkeys(missing.to_pylist())]


def request_from_items(text: str, item_map: ItemMap) -> Request:
    """One user from ``--user-items`` "ID,ID,...".

    Raises:
        VaecfError: no ids given, or none of them is an item the model knows.
    """
    tokens = [token.strip() for token in text.split(",") if token.strip()]
    if not tokens:
        raise VaecfError("--user-items: no item ids given (expected e.g. --user-items 1,50,260)")
    values = pa.array(tokens, pa.string())
    columns = item_map.columns(values)
    unknown = _unknown(values, columns)
    if len(unknown) == len(set(tokens)):
        raise VaecfError(f"--user-items: none of the {len(unknown)} item id(s) is known to "
                         f"the model ({_preview(unknown)}); nothing to recommend from")
    known = columns[columns >= 0]
    seen = _csr(np.zeros_like(known), known, 1, item_map.n_items)
    return Request(None, seen, unknown)


def request_from_file(path: Path, item_map: ItemMap, spec: ColumnSpec) -> Request:
    """Many users from a file of (user, item) rows, read like a training input.

    Every row counts as one interaction (``spec.rating`` is ignored: no rating filter); users
    keep their file order.

    Raises:
        VaecfError: the file cannot be read, a column is missing, or no user has a known item.
    """
    data = read_file(Path(path), ColumnSpec(spec.user, spec.item, None, spec.sep, spec.header))
    items = data.items.combine_chunks()
    columns = item_map.columns(items)
    # Number users by first appearance so the output follows the file.
    users = data.users.combine_chunks()
    first = pc.unique(users)
    codes = pc.index_in(users, value_set=first).to_numpy(zero_copy_only=False).astype(np.int64)
    known = columns >= 0
    has_known = np.bincount(codes[known], minlength=len(first)) > 0
    user_ids = first.to_pylist()
    skipped = [u for u, ok in zip(user_ids, has_known, strict=True) if not ok]
    if not has_known.any():
        raise VaecfError(f"{path}: none of the {len(first):,} user(s) has an item known to the "
                         f"model (unknown items: {_preview(_unknown(items, columns))})")
    row_of = np.cumsum(has_known) - 1
    seen = _csr(row_of[codes[known]], columns[known], int(has_known.sum()), item_map.n_items)
    kept = [u for u, ok in zip(user_ids, has_known, strict=True) if ok]
    return Request(kept, seen, _unknown(items, columns), skipped)


def _preview(values: list[Any], limit: int = 5) -> str:
    """"a, b, c and 7 more"."""
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit:,} more" if len(values) > limit else "")


def describe_problems(request: Request) -> list[str]:
    """Warning lines for unknown items and skipped users (empty when there are none)."""
    lines = []
    if request.unknown:
        lines.append(f"{len(request.unknown):,} unknown item id(s) skipped: "
                     f"{_preview(request.unknown)}")
    if request.skipped:
        lines.append(f"{len(request.skipped):,} user(s) skipped, none of their items is known "
                     f"to the model: {_preview(request.skipped)}")
    return lines


def input_columns(run: Any) -> ColumnSpec:
    """How the run's training input was read (user/item columns, separator, header), from its
    dataset's meta.json when that directory still exists, else from the run's settings."""
    from vaecf.dataset import Dataset

    try:
        columns = Dataset.open(run.dataset_path).meta["columns"]
        return ColumnSpec(columns["user"], columns["item"], None, columns["sep"],
                          columns["header"])
    except VaecfError:
        cfg = run.settings.prepare
        return ColumnSpec(cfg.user_col, cfg.item_col, None, cfg.sep, cfg.header)


def top_k_graph(model: Any, rows: Any, cols: Any, n_rows: Any, k: Any, exclude: Any):
    """The scoring graph shared by :class:`Recommender` and the exported SavedModel.

    Args:
        model: a MultVAE.
        rows, cols: int64 (nnz,) user row and model column of each known (user, item) pair,
            without duplicates.
        n_rows: int64 scalar, the number of users.
        k: int32 scalar, items to keep per user (<= n_items).
        exclude: bool scalar, whether the users' own items are excluded.
    Returns:
        (scores float32 (n_rows, k), columns int32 (n_rows, k)), best first; excluded items
        that still land in the top k have score -inf.
    """
    import tensorflow as tf

    # L2 normalisation of a binary row: every non-zero is 1/sqrt(row length).
    lengths = tf.math.bincount(tf.cast(rows, tf.int32), minlength=tf.cast(n_rows, tf.int32),
                               dtype=tf.float32)
    values = tf.gather(tf.math.rsqrt(tf.maximum(lengths, 1.0)), rows)
    indices = tf.stack([rows, cols], axis=1)
    x = tf.SparseTensor(indices, values, tf.stack([n_rows, tf.constant(model.n_items, tf.int64)]))
    logits = model(x, training=False)
    # Exclusion as an element-wise min with -inf (or +inf, a no-op): unlike a tf.cond
    # around tensor_scatter_nd_update it updates the (n_rows, n_items) logits in place.
    fill = tf.where(exclude, tf.constant(-np.inf, tf.float32), tf.constant(np.inf, tf.float32))
    logits = tf.tensor_scatter_nd_min(logits, indices, tf.fill(tf.shape(rows), fill))
    return blocked_top_k(logits, k)


def blocked_top_k(logits: Any, k: Any, block: int = TOP_K_BLOCK):
    """Exactly ``tf.math.top_k(logits, k)`` (values; tied items may come in another order),
    2-4x faster on CPU for k << n.

    Each row is cut into blocks of ``block`` items. An item in the top k is >= the k-th value,
    so its block's maximum is too, and at most k blocks have such a maximum: the top k items
    lie in the k blocks with the largest maxima. So: block maxima (one cheap pass), top k of
    those, then top k of the k·block candidates.

    Args:
        logits: float32 (B, n).
        k: int32 scalar, 1 <= k <= n.
    Returns:
        (values float32 (B, k), columns int32 (B, k)), best first.
    """
    import tensorflow as tf

    batch, n = tf.shape(logits)[0], tf.shape(logits)[1]
    n_blocks = (n + block - 1) // block
    padded = tf.pad(logits, [[0, 0], [0, n_blocks * block - n]], constant_values=-np.inf)
    blocks = tf.reshape(padded, [batch, n_blocks, block])
    _, best_blocks = tf.math.top_k(tf.reduce_max(blocks, axis=2), tf.minimum(k, n_blocks))
    candidates = tf.reshape(tf.gather(blocks, best_blocks, batch_dims=1), [batch, -1])
    values, where = tf.math.top_k(candidates, k)
    columns = tf.gather(best_blocks, where // block, batch_dims=1) * block + where % block
    # A -inf tie may pick a padding slot; keep every column a valid index.
    return values, tf.minimum(columns, n - 1)


class Recommender:
    """A trained Mult-VAE plus its item map, scoring CSR rows of known items.

    Args:
        model: a :class:`vaecf.model.MultVAE` with the weights to serve.
        item_map: the run's item map (column j <-> original id).
    """

    def __init__(self, model: Any, item_map: ItemMap) -> None:
        import tensorflow as tf

        self.model = model
        self.item_map = item_map
        self._top_k = tf.function(
            lambda *args: top_k_graph(model, *args),
            input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int64),
                             tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int32),
                             tf.TensorSpec([], tf.bool)],
            jit_compile=False)

    @classmethod
    def from_run(cls, path: Path | str) -> Recommender:
        """The best weights of the run directory ``path``."""
        from vaecf.rundir import RunDir

        run = RunDir.open(path)
        return cls(run.load_model(), ItemMap(run.item_ids))

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
        rows = np.repeat(np.arange(seen.shape[0], dtype=np.int64), np.diff(seen.indptr))
        scores, columns = self._top_k(rows, seen.indices.astype(np.int64),
                                      np.int64(seen.shape[0]), np.int32(k), exclude_seen)
        scores, columns = scores.numpy(), columns.numpy().astype(np.int64)
        columns[np.isneginf(scores)] = -1
        return columns, scores

    def batches(self, seen: scipy.sparse.csr_matrix, k: int, exclude_seen: bool = True,
                batch_users: int = BATCH_USERS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """:meth:`top_k` over consecutive blocks of ``batch_users`` rows, in order."""
        for start in range(0, seen.shape[0], batch_users):
            yield self.top_k(seen[start: start + batch_users], k, exclude_seen)


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
        keep = columns >= 0
        # One take for the whole batch; per-row lists are then cut by the rows' counts.
        flat_ids = recommender.item_map.originals(columns[keep])
        flat_scores = values[keep].tolist()
        ends = np.cumsum(keep.sum(axis=1)).tolist()
        for start, end in zip([0, *ends[:-1]], ends, strict=True):
            items.append(flat_ids[start:end])
            scores.append(flat_scores[start:end])
        if advance is not None:
            advance(columns.shape[0])
    return Recommendations(request.users, items, scores)

"""Requests in original ids: the item map (original id <-> model column) and the users to score.

A request is a set of users, each given as the original ids of items they interacted with
(ints or strings, as in the training input). Ids go through the run's item map; unknown ones are
reported and skipped. How ids are compared is decided once, in :func:`coerce_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse

from vaecf.data.readers import ColumnSpec, canonical_integers, read_file
from vaecf.errors import VaecfError, printable

# Inputs up to this many ids are mapped through a dict (see ItemMap.columns).
SMALL_LOOKUP = 4096


def coerce_ids(values: pa.Array | pa.ChunkedArray, id_type: pa.DataType) -> pa.Array:
    """Original ids in the type of the run's item ids; values that cannot be one become null.

    The id rule of ``prepare`` (docs/data-reliability.md) decides: ids are equal only when
    written the same. An int64 model accepts a string only when it is a canonical integer
    ("42"; not "042", "+42", "42.0" or " 42 "); a string model accepts the int 42 as "42"
    (an int was written canonically, so that is how it was written).

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
        strings = values.cast(pa.string())
        # Anything else becomes null first (also ids beyond int64), so the cast never fails.
        integral = canonical_integers(strings)
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

    @cached_property
    def _lookup(self) -> dict[Any, int]:
        """Every way a request may spell an id -> its column: the id itself (a Python int or
        str) and its other form under the id rule of :func:`coerce_ids` — the decimal text of
        an int id ("42"), the int of a string id that is a canonical integer. The first column
        wins a repeated id, as in ``pc.index_in``."""
        ids = self.ids.to_pylist()
        if pa.types.is_integer(self.ids.type):
            others = [str(v) for v in ids]
        else:
            canonical = canonical_integers(self.ids).to_pylist()
            others = [int(v) if ok else v for v, ok in zip(ids, canonical, strict=True)]
        lookup: dict[Any, int] = {}
        for column in reversed(range(len(ids))):
            lookup[others[column]] = lookup[ids[column]] = column
        return lookup

    def columns(self, values: pa.Array | pa.ChunkedArray | list[Any]) -> np.ndarray:
        """int64 columns of ``values`` (shape (n,)), -1 where the id is not in the model.

        A list (one user's ids as Python ints or strs, as ``--user-items`` and ``vaecf serve``
        give them) and an array of up to :data:`SMALL_LOOKUP` values are looked up in a dict
        built once per map, which holds both spellings of every id, so no conversion runs per
        call; ``pc.index_in`` rebuilds its hash table of every item on each call (~0.15 ms at
        3,700 items), which larger arrays amortise. Both give the same columns.
        """
        if isinstance(values, list) or len(values) <= SMALL_LOOKUP:
            ids = values if isinstance(values, list) else values.to_pylist()
            # map() calls dict.get from C, without a generator frame per id (14 vs 21 us for
            # 185 ids).
            return np.fromiter(map(self._lookup.get, ids, repeat(-1)), np.int64, len(ids))
        found = pc.index_in(coerce_ids(values, self.ids.type), value_set=self.ids)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def originals(self, columns: np.ndarray) -> list[Any]:
        """Original ids (Python ints or strs) of ``columns`` (any shape; nested lists for more
        than one dimension); -1 gives None."""
        return self._objects[np.asarray(columns, dtype=np.int64)].tolist()

    @cached_property
    def _objects(self) -> np.ndarray:
        """Original id of each column as a Python object, shape (n_items + 1,), with None last,
        where column -1 lands: one NumPy take answers :meth:`originals` (a pyarrow take and
        ``to_pylist`` cost ~0.2 ms per call, a tenth of a one-user call)."""
        objects = np.empty(self.n_items + 1, dtype=object)
        objects[: self.n_items] = self.ids.to_pylist()
        return objects


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

    Spaces around a comma belong to the separator ("1, 50" is "1" and "50"); each token is
    then an id exactly as written, matched by :func:`coerce_ids`.

    Raises:
        VaecfError: no ids given, or none of them is an item the model knows.
    """
    tokens = [token.strip() for token in text.split(",") if token.strip()]
    if not tokens:
        raise VaecfError("--user-items: no item ids given (expected e.g. --user-items 1,50,260)")
    return request_from_ids(tokens, item_map)


def request_from_ids(ids: list[Any], item_map: ItemMap,
                     source: str = "--user-items") -> Request:
    """One user from the original ids of their items (``--user-items`` split at commas, as
    strings, or the ``items`` of an HTTP request, ints or strings); ``source`` names them in
    the error.

    Raises:
        VaecfError: none of the ids is an item the model knows.
    """
    columns, unknown = known_columns(ids, item_map, source)
    return Request(None, rows_of_columns([columns], item_map.n_items), unknown)


def known_columns(ids: list[Any], item_map: ItemMap,
                  source: str = "--user-items") -> tuple[np.ndarray, list[str]]:
    """One user's known items as sorted distinct int32 columns, and the distinct ids the model
    does not know (as strings, in input order): :func:`request_from_ids` without the CSR, which
    ``vaecf serve`` builds once per batch (:func:`rows_of_columns`).

    Raises:
        VaecfError: none of the ids is an item the model knows.
    """
    columns = item_map.columns(ids)
    known = columns[columns >= 0]
    # What _unknown gives, in plain Python: the lists are one user's, short.
    unknown = [] if known.size == columns.size else list(dict.fromkeys(
        str(v) for v, c in zip(ids, columns.tolist(), strict=True) if c < 0))
    if not known.size:
        raise VaecfError(f"{source}: none of the {len(unknown)} item id(s) is known to "
                         f"the model ({_preview(unknown)}); nothing to recommend from")
    return np.unique(known).astype(np.int32), unknown


def rows_of_columns(rows: list[np.ndarray], n_items: int) -> scipy.sparse.csr_matrix:
    """Binary CSR (len(rows), n_items) float32 whose row i has ones at ``rows[i]`` (sorted
    distinct int32 columns): the CSR arrays directly, without :func:`_csr`'s COO round trip
    (one row: 20 us of scipy's checks, paid once per model call by ``vaecf serve``)."""
    indptr = np.zeros(len(rows) + 1, np.int32)
    np.cumsum([row.size for row in rows], out=indptr[1:])
    indices = rows[0] if len(rows) == 1 else np.concatenate(rows)
    return scipy.sparse.csr_matrix((np.ones(indices.size, np.float32), indices, indptr),
                                   shape=(len(rows), n_items))


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
    shown = ", ".join(printable(v, 60) for v in values[:limit])
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
    from vaecf.data.dataset import read_meta

    try:   # the header only: hashing the whole dataset would slow every recommend call
        columns = read_meta(run.dataset_path)["columns"]
        return ColumnSpec(columns["user"], columns["item"], None, columns["sep"],
                          columns["header"])
    except VaecfError:
        cfg = run.settings.prepare
        return ColumnSpec(cfg.user_col, cfg.item_col, None, cfg.sep, cfg.header)

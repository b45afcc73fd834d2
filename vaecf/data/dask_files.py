"""What dask workers write for ``prepare --dask``: the training shards, the held-out
matrices and the two tables, each file's sha256 computed by the worker that wrote it (see
:mod:`vaecf.data.dask_tasks` for the ranges of users these read from).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vaecf.data import split
from vaecf.data.dask_tasks import Users, runs, train_pairs, worker_backend
from vaecf.data.dataset import write_csr, write_table
from vaecf.data.readers import int64_arrow, repeated_strings
from vaecf.formats import file_sha256

Array = Any  # numpy.ndarray or cupy.ndarray


def train_piece(part: Users, column: Array, lo: int, hi: int,
                backend_name: str) -> tuple[Array, Array]:
    """The range's training rows [lo, hi) (local training-user ranks).

    Returns:
        (pairs per row of shape (hi - lo,), int32 columns of those rows' pairs in order).
    """
    xp = worker_backend(backend_name).xp
    is_train = part.labels == split.TRAIN
    rank = xp.cumsum(is_train) - 1
    pair_rank = rank[part.inverse]
    mask = train_pairs(part) & (pair_rank >= lo) & (pair_rank < hi)
    rows = pair_rank[mask] - lo
    return (xp.bincount(rows, minlength=hi - lo),
            column[part.items[mask]].astype(xp.int32))


def write_shard(directory: str, name: str, n_cols: int, backend_name: str,
                *pieces: tuple[Array, Array]) -> dict[str, Any]:
    """Write one training shard from its pieces (consecutive row ranges); its meta entry."""
    backend = worker_backend(backend_name)
    counts = np.concatenate([backend.to_numpy(c) for c, _ in pieces])
    indptr = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.concatenate([backend.to_numpy(i) for _, i in pieces])
    return write_csr(Path(directory), name, split.Csr(indptr, indices, (len(counts), n_cols)))


def train_ids(part: Users, backend_name: str) -> np.ndarray:
    """User codes of the range's training users, host int64."""
    backend = worker_backend(backend_name)
    return backend.to_numpy(part.ids[part.labels == split.TRAIN])


def heldout_piece(part: Users, offset: int, value: int,
                  column: Array) -> tuple[Array, Array, Array]:
    """The range's held-out pairs of one split whose item has a training column.

    Returns:
        (global kept-user codes, user codes, columns), one entry per pair, in order.
    """
    cols = column[part.items]
    mask = (part.labels[part.inverse] == value) & (cols >= 0)
    inverse = part.inverse[mask]
    return inverse.astype(np.int64) + offset, part.ids[inverse], cols[mask]


def write_heldout(directory: str, name: str, n_cols: int, n_chosen: int, seed: int,
                  fraction: float, backend_name: str,
                  *pieces: tuple[Array, Array, Array]) -> dict[str, Any]:
    """Fold-in and target matrices of one held-out split, as the single-process split makes
    them (users left with < 2 known items are dropped)."""
    backend = worker_backend(backend_name)
    xp = backend.xp
    users = xp.concatenate([p[0] for p in pieces])
    ids = xp.concatenate([p[1] for p in pieces])
    held = xp.concatenate([p[2] for p in pieces])
    _, inverse, counts = runs(xp, users)   # pieces in range order: users ascending
    keep = counts[inverse] >= 2
    users, ids, held = users[keep], ids[keep], held[keep]
    members, rows, _ = runs(xp, users)
    n_rows = int(members.shape[0])
    target = split.target_mask(xp, rows, held, n_rows, seed, fraction)

    def host(csr: split.Csr) -> split.Csr:
        return split.Csr(backend.to_numpy(csr.indptr), backend.to_numpy(csr.indices), csr.shape)

    foldin = host(split.to_csr(xp, rows[~target], held[~target], n_rows, n_cols))
    targets = host(split.to_csr(xp, rows[target], held[target], n_rows, n_cols))
    first = xp.ones(users.shape[0], dtype=bool)
    first[1:] = users[1:] != users[:-1]
    return {"foldin": write_csr(Path(directory), f"{name}-foldin", foldin),
            "target": write_csr(Path(directory), f"{name}-target", targets),
            "counts": {"users": n_rows, "foldin_interactions": int(foldin.indices.shape[0]),
                       "target_interactions": int(targets.indices.shape[0])},
            "ids": backend.to_numpy(ids[first]), "dropped": n_chosen - n_rows}


def write_items(directory: str, ids: pa.Array, train_per_item: Array,
                backend_name: str) -> str:
    """items.parquet (the training items' ids in column order); its sha256."""
    backend = worker_backend(backend_name)
    codes = np.flatnonzero(backend.to_numpy(train_per_item) > 0)
    path = Path(directory) / "items.parquet"
    write_table(path, {"item_id": ids.take(int64_arrow(codes))})
    return file_sha256(path)


def write_users(directory: str, ids: pa.Array, validation: np.ndarray, test: np.ndarray,
                *train: np.ndarray) -> str:
    """users.parquet: training users in id order, then validation, then test; its sha256."""
    parts = {"train": np.concatenate(train), "validation": validation, "test": test}
    path = Path(directory) / "users.parquet"
    write_table(path, {
        "user_id": pa.concat_arrays([ids.take(int64_arrow(c)) for c in parts.values()]),
        "split": repeated_strings(list(parts), [len(c) for c in parts.values()]),
        "row": int64_arrow(np.concatenate([np.arange(len(c)) for c in parts.values()])),
    })
    return file_sha256(path)


def heldout_ids(written: dict[str, Any]) -> np.ndarray:
    """User codes of a written held-out split's users, in row order."""
    return written["ids"]


def heldout_entries(written: dict[str, Any]) -> dict[str, Any]:
    """What the client needs of a written held-out split (no per-user arrays)."""
    return {key: value for key, value in written.items() if key != "ids"}

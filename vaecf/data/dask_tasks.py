"""What dask workers run for ``prepare --dask`` (see :mod:`vaecf.data.dask_prepare`).

Every function here runs on a worker, on one block or one partition of users, and returns
either a piece of data that stays on the cluster or a few numbers for the client. Array work
goes through the backend's ``xp`` (NumPy, or CuPy on dask-cuda workers) with the same
functions as the single-process split (:mod:`vaecf.data.split`), so the dataset is the same
byte for byte. Workers receive the backend's name and rebuild the backend themselves (a
backend holds modules, which do not pickle).

Users are partitioned into contiguous ranges of their codes (codes are ranks of the sorted
distinct ids), so a partition holds whole users, in id order. Kept users are numbered
globally by ``offset + local index``, the offset being the count of kept users in earlier
ranges; that number is the user code of the single-process split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vaecf.backend import Backend, select_backend
from vaecf.data import blocks, frames, split
from vaecf.data.dataset import write_csr, write_table
from vaecf.data.readers import (
    ColumnSpec,
    Encoded,
    encode,
    int64_arrow,
    read_file,
    string_arrow,
)
from vaecf.formats import file_sha256

Array = Any  # numpy.ndarray or cupy.ndarray


@functools.cache
def _backend(name: str) -> Backend:
    """The worker's backend, made once per worker process. pyarrow's own thread pool is
    limited to one thread: a worker's parallelism is its dask threads, each reading one
    block, and two pools on the same cores would only contend."""
    pa.set_cpu_count(1)
    return select_backend(name)


# -- reading: one block -> codes into the block's own sorted ids -----------------------------

def read_block(block: blocks.Block, spec: ColumnSpec, min_rating: float | None,
               backend_name: str) -> Encoded:
    """Read, check and threshold one block; codes index the block's own sorted distinct ids."""
    backend = _backend(backend_name)
    part = blocks.load(block)
    path = Path(block.path)
    if backend.native_reader == "cudf":
        frame = frames.read_file(backend.frames(), path, spec, min_rating, part)
        return frames.encode_frame(frame, len(frame))
    return encode(read_file(path, spec, part), min_rating)


def block_counts(enc: Encoded) -> tuple[int, int]:
    """(rows read, rows kept by the rating threshold)."""
    return enc.rows_read, int(enc.users.shape[0])


def user_ids(enc: Encoded) -> pa.Array:
    return enc.user_ids


def item_ids(enc: Encoded) -> pa.Array:
    return enc.item_ids


def _same_type(ids: pa.Array, like: pa.Array) -> pa.Array:
    # Blocks whose ids were integers while another's were strings: compare as strings.
    return ids if ids.type == like.type else ids.cast(pa.string())


def merge_ids(a: pa.Array, b: pa.Array) -> pa.Array:
    """Sorted distinct ids of two sorted id arrays (strings if either is)."""
    if a.type != b.type:
        a, b = a.cast(pa.string()), b.cast(pa.string())
    both = pc.unique(pa.concat_arrays([a, b]))
    return both.take(pc.sort_indices(both))


def count(ids: pa.Array) -> int:
    return len(ids)


def id_type(ids: pa.Array) -> str:
    return str(ids.type)


def encode_block(enc: Encoded, users: pa.Array, items: pa.Array, backend_name: str) -> Any:
    """A block's distinct pairs as a one-column frame of int64 keys, ``user * n_items +
    item`` in global codes, sorted: one column halves what the shuffle moves, and a range of
    keys is a range of users."""
    backend = _backend(backend_name)
    xp = backend.xp

    def remap(local: pa.Array, uniques: pa.Array) -> Array:
        codes = pc.index_in(_same_type(local, uniques), value_set=uniques)
        return backend.from_numpy(np.asarray(codes.to_numpy(zero_copy_only=False),
                                             dtype=np.int64))

    keys = remap(enc.user_ids, users)[enc.users] * len(items) + remap(enc.item_ids,
                                                                      items)[enc.items]
    return backend.frames().DataFrame({"key": xp.unique(keys)})


# -- one range of users ---------------------------------------------------------------------

@dataclass
class Users:
    """The interactions of one contiguous range of users.

    Attributes:
        items: item codes of unique pairs, shape (m,), sorted by user then item (int64 after
            the dedupe, int32 after the filters: the biggest thing a worker keeps).
        users: user code of each pair, int64, shape (m,); None after the filters (it is
            ``ids[inverse]``).
        ids: sorted distinct user codes of the range (after the count filters), shape (u,).
        inverse: int32 index into ``ids`` of each pair, shape (m,).
        labels: int8 split label of each of ``ids`` (TRAIN until labelled), shape (u,).
    """

    items: Array
    users: Array = None
    ids: Array = None
    inverse: Array = None
    labels: Array = None


def dedupe(frame: Any, n_items: int, backend_name: str) -> Users:
    """Unique pairs of one partition of the frame indexed by sorted pair key.

    Returns:
        Users with int64 ``users`` and ``items`` codes, shape (m,), sorted by user then item.
    """
    xp = _backend(backend_name).xp
    keys = xp.asarray(frame.index.values, dtype=xp.int64)
    first = xp.ones(keys.shape[0], dtype=bool)
    first[1:] = keys[1:] != keys[:-1]   # sorted by the shuffle: duplicates are adjacent
    keys = keys[first]
    return Users(keys % n_items, keys // n_items)


def _runs(xp: Any, codes: Array) -> tuple[Array, Array, Array]:
    """``xp.unique(codes, return_inverse=True, return_counts=True)`` for sorted codes, in one
    pass instead of a sort."""
    first = xp.ones(codes.shape[0], dtype=bool)
    first[1:] = codes[1:] != codes[:-1]
    starts = xp.flatnonzero(first)
    counts = xp.diff(xp.concatenate([starts, xp.asarray([codes.shape[0]])]))
    return codes[starts], xp.cumsum(first) - 1, counts


def n_pairs(part: Users) -> int:
    return int(part.items.shape[0])


def item_counts(part: Users, n_items: int, backend_name: str) -> Array:
    """Pairs per item code, shape (n_items,)."""
    return _backend(backend_name).xp.bincount(part.items, minlength=n_items)


def add(a: Array, b: Array) -> Array:
    return a + b


def count_filter(part: Users, per_item: Array, min_item: int, min_user: int,
                 backend_name: str) -> Users:
    """The reference preprocessing's filters: items with >= min_item pairs (counted over all
    ranges), then users with >= min_user of the remaining pairs (all in this range)."""
    xp = _backend(backend_name).xp
    keep = per_item[part.items] >= min_item
    users, items = part.users[keep], part.items[keep]
    _, inverse, per_user = _runs(xp, users)
    keep = per_user[inverse] >= min_user
    users, items = users[keep], items[keep]
    ids, inverse, _ = _runs(xp, users)
    return Users(items.astype(xp.int32), None, ids, inverse.astype(xp.int32),
                 xp.zeros(ids.shape[0], dtype=xp.int8))


def kept_counts(part: Users, backend_name: str) -> tuple[int, int, int]:
    """(pairs, users, users with >= 2 pairs) of a filtered range."""
    xp = _backend(backend_name).xp
    per_user = xp.bincount(part.inverse, minlength=part.ids.shape[0])
    return n_pairs(part), int(part.ids.shape[0]), int((per_user >= 2).sum())


def candidates(part: Users, offset: int, seed: int, wanted: int,
               backend_name: str) -> tuple[np.ndarray, np.ndarray]:
    """The range's ``wanted`` first eligible users in :func:`split.assign_users`' hash order.

    Returns:
        (global user codes, their hashes), host arrays of shape (<= wanted,).
    """
    backend = _backend(backend_name)
    xp = backend.xp
    per_user = xp.bincount(part.inverse, minlength=part.ids.shape[0])
    codes = xp.flatnonzero(per_user >= 2) + offset
    h = split.user_hash(xp, seed, codes)
    order = xp.lexsort(xp.stack([codes.astype(xp.uint64), h]))[:wanted]
    return backend.to_numpy(codes[order]), backend.to_numpy(h[order])


def label(part: Users, offset: int, test: np.ndarray, validation: np.ndarray,
          backend_name: str) -> Users:
    """Split labels of the range's users, from the chosen global codes (sorted arrays)."""
    backend = _backend(backend_name)
    xp = backend.xp
    codes = xp.arange(part.ids.shape[0], dtype=xp.int64) + offset
    labels = xp.zeros(part.ids.shape[0], dtype=xp.int8)
    for value, chosen in ((split.TEST, test), (split.VALIDATION, validation)):
        chosen = backend.from_numpy(chosen)
        if chosen.shape[0]:
            at = xp.minimum(xp.searchsorted(chosen, codes), chosen.shape[0] - 1)
            labels[chosen[at] == codes] = value
    return replace(part, labels=labels)


def _train(part: Users) -> Array:
    """Which pairs are training pairs, shape (m,)."""
    return part.labels[part.inverse] == split.TRAIN


def train_item_counts(part: Users, n_items: int, backend_name: str) -> Array:
    """Training pairs per item code, shape (n_items,)."""
    xp = _backend(backend_name).xp
    return xp.bincount(part.items[_train(part)], minlength=n_items)


def n_train_users(part: Users) -> int:
    return int((part.labels == split.TRAIN).sum())


def columns(train_per_item: Array, backend_name: str) -> Array:
    """Matrix column of each item code (-1: no training pair), shape (n_items,)."""
    xp = _backend(backend_name).xp
    present = train_per_item > 0
    return xp.where(present, xp.cumsum(present) - 1, -1)


def n_positive(values: Array) -> int:
    return int((values > 0).sum())


def train_piece(part: Users, column: Array, lo: int, hi: int,
                backend_name: str) -> tuple[Array, Array]:
    """The range's training rows [lo, hi) (local training-user ranks).

    Returns:
        (pairs per row of shape (hi - lo,), int32 columns of those rows' pairs in order).
    """
    xp = _backend(backend_name).xp
    is_train = part.labels == split.TRAIN
    rank = xp.cumsum(is_train) - 1
    pair_rank = rank[part.inverse]
    mask = _train(part) & (pair_rank >= lo) & (pair_rank < hi)
    rows = pair_rank[mask] - lo
    return (xp.bincount(rows, minlength=hi - lo),
            column[part.items[mask]].astype(xp.int32))


def write_shard(directory: str, name: str, n_cols: int, backend_name: str,
                *pieces: tuple[Array, Array]) -> dict[str, Any]:
    """Write one training shard from its pieces (consecutive row ranges); its meta entry."""
    backend = _backend(backend_name)
    counts = np.concatenate([backend.to_numpy(c) for c, _ in pieces])
    indptr = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.concatenate([backend.to_numpy(i) for _, i in pieces])
    return write_csr(Path(directory), name, split.Csr(indptr, indices, (len(counts), n_cols)))


def train_ids(part: Users, backend_name: str) -> np.ndarray:
    """User codes of the range's training users, host int64."""
    backend = _backend(backend_name)
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
    backend = _backend(backend_name)
    xp = backend.xp
    users = xp.concatenate([p[0] for p in pieces])
    ids = xp.concatenate([p[1] for p in pieces])
    held = xp.concatenate([p[2] for p in pieces])
    _, inverse, counts = _runs(xp, users)   # pieces in range order: users ascending
    keep = counts[inverse] >= 2
    users, ids, held = users[keep], ids[keep], held[keep]
    members, rows, _ = _runs(xp, users)
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
    backend = _backend(backend_name)
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
        "split": string_arrow([name for name, c in parts.items() for _ in range(len(c))]),
        "row": int64_arrow(np.concatenate([np.arange(len(c)) for c in parts.values()])),
    })
    return file_sha256(path)


def heldout_ids(written: dict[str, Any]) -> np.ndarray:
    """User codes of a written held-out split's users, in row order."""
    return written["ids"]


def heldout_entries(written: dict[str, Any]) -> dict[str, Any]:
    """What the client needs of a written held-out split (no per-user arrays)."""
    return {key: value for key, value in written.items() if key != "ids"}

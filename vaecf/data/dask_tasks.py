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
from vaecf.data.readers import ColumnSpec, Encoded, encode, read_file

Array = Any  # numpy.ndarray or cupy.ndarray


@functools.cache
def worker_backend(name: str) -> Backend:
    """The worker's backend, made once per worker process. pyarrow's own thread pool is
    limited to one thread: a worker's parallelism is its dask threads, each reading one
    block, and two pools on the same cores would only contend."""
    pa.set_cpu_count(1)
    return select_backend(name)


# -- reading: one block -> codes into the block's own sorted ids -----------------------------

def read_block(block: blocks.Block, spec: ColumnSpec, min_rating: float | None,
               backend_name: str) -> Encoded:
    """Read, check and threshold one block; codes index the block's own sorted distinct ids."""
    backend = worker_backend(backend_name)
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
    backend = worker_backend(backend_name)
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
    xp = worker_backend(backend_name).xp
    keys = xp.asarray(frame.index.values, dtype=xp.int64)
    first = xp.ones(keys.shape[0], dtype=bool)
    first[1:] = keys[1:] != keys[:-1]   # sorted by the shuffle: duplicates are adjacent
    keys = keys[first]
    return Users(keys % n_items, keys // n_items)


def runs(xp: Any, codes: Array) -> tuple[Array, Array, Array]:
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
    return worker_backend(backend_name).xp.bincount(part.items, minlength=n_items)


def add(a: Array, b: Array) -> Array:
    return a + b


def count_filter(part: Users, per_item: Array, min_item: int, min_user: int,
                 backend_name: str) -> Users:
    """The reference preprocessing's filters: items with >= min_item pairs (counted over all
    ranges), then users with >= min_user of the remaining pairs (all in this range)."""
    xp = worker_backend(backend_name).xp
    keep = per_item[part.items] >= min_item
    users, items = part.users[keep], part.items[keep]
    _, inverse, per_user = runs(xp, users)
    keep = per_user[inverse] >= min_user
    users, items = users[keep], items[keep]
    ids, inverse, _ = runs(xp, users)
    return Users(items.astype(xp.int32), None, ids, inverse.astype(xp.int32),
                 xp.zeros(ids.shape[0], dtype=xp.int8))


def kept_counts(part: Users, backend_name: str) -> tuple[int, int, int]:
    """(pairs, users, users with >= 2 pairs) of a filtered range."""
    xp = worker_backend(backend_name).xp
    per_user = xp.bincount(part.inverse, minlength=part.ids.shape[0])
    return n_pairs(part), int(part.ids.shape[0]), int((per_user >= 2).sum())


def candidates(part: Users, offset: int, seed: int, wanted: int,
               backend_name: str) -> tuple[np.ndarray, np.ndarray]:
    """The range's ``wanted`` first eligible users in :func:`split.assign_users`' hash order.

    Returns:
        (global user codes, their hashes), host arrays of shape (<= wanted,).
    """
    backend = worker_backend(backend_name)
    xp = backend.xp
    per_user = xp.bincount(part.inverse, minlength=part.ids.shape[0])
    codes = xp.flatnonzero(per_user >= 2) + offset
    h = split.user_hash(xp, seed, codes)
    order = xp.lexsort(xp.stack([codes.astype(xp.uint64), h]))[:wanted]
    return backend.to_numpy(codes[order]), backend.to_numpy(h[order])


def first_offers(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
                 wanted: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``wanted`` first of two offers (codes, hashes), in the same hash order."""
    codes, hashes = np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])
    order = np.lexsort(np.stack([codes.astype(np.uint64), hashes]))[:wanted]
    return codes[order], hashes[order]


def label(part: Users, offset: int, test: np.ndarray, validation: np.ndarray,
          backend_name: str) -> Users:
    """Split labels of the range's users, from the chosen global codes (sorted arrays)."""
    backend = worker_backend(backend_name)
    xp = backend.xp
    codes = xp.arange(part.ids.shape[0], dtype=xp.int64) + offset
    labels = xp.zeros(part.ids.shape[0], dtype=xp.int8)
    for value, chosen in ((split.TEST, test), (split.VALIDATION, validation)):
        chosen = backend.from_numpy(chosen)
        if chosen.shape[0]:
            at = xp.minimum(xp.searchsorted(chosen, codes), chosen.shape[0] - 1)
            labels[chosen[at] == codes] = value
    return replace(part, labels=labels)


def train_pairs(part: Users) -> Array:
    """Which pairs are training pairs, shape (m,)."""
    return part.labels[part.inverse] == split.TRAIN


def train_item_counts(part: Users, n_items: int, backend_name: str) -> Array:
    """Training pairs per item code, shape (n_items,)."""
    xp = worker_backend(backend_name).xp
    return xp.bincount(part.items[train_pairs(part)], minlength=n_items)


def n_train_users(part: Users) -> int:
    return int((part.labels == split.TRAIN).sum())


def columns(train_per_item: Array, backend_name: str) -> Array:
    """Matrix column of each item code (-1: no training pair), shape (n_items,)."""
    xp = worker_backend(backend_name).xp
    present = train_per_item > 0
    return xp.where(present, xp.cumsum(present) - 1, -1)


def n_positive(values: Array) -> int:
    return int((values > 0).sum())

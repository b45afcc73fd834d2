"""CSR rows → L2-normalised sparse batches → TensorFlow, on any backend, ahead of the model.

A batch is built with the backend's array namespace (NumPy + scipy.sparse on CPU, CuPy +
cupyx.scipy.sparse on GPU) and handed to TensorFlow once, by ``backend.to_tf`` (a copy on CPU,
DLPack on GPU; see :mod:`vaecf.backend`). Sparse matrices have no DLPack form, so a batch
travels as its COO arrays.

:func:`iterate` builds and converts batches on a background thread, a few batches ahead, so the
training step never waits for data (NumPy, SciPy and TF's conversion release the GIL).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaecf.backend import Backend


@dataclass(frozen=True)
class Batch:
    """One batch of users as COO arrays (backend arrays before ``backend.to_tf``, TF
    tensors after).

    Attributes:
        indices: int64 (nnz, 2), (row within the batch, item column), rows sorted.
        values: float32 (nnz,), each row L2-normalised (the model's input).
        targets: float32 (nnz,), the raw interaction values (the likelihood's x).
        size: number of users B (rows may be empty).
    """

    indices: Any
    values: Any
    targets: Any
    size: int


def epoch_order(n_rows: int, seed: int, rank: int, epoch: int) -> np.ndarray:
    """The seeded shuffle of epoch ``epoch`` on rank ``rank``: int64 (n_rows,) permutation.

    A pure function of its arguments, so a resumed run replays the same order, and ranks
    draw different orders of their own rows. Drawn on the host so every backend agrees.
    """
    return np.random.default_rng([seed, rank, epoch]).permutation(n_rows)


def entry_rows(xp: Any, indptr: Any) -> Any:
    """Row number of every stored entry of a CSR matrix: int64 (nnz,) from indptr (rows + 1,).

    searchsorted, not ``repeat(arange(rows), diff(indptr))``: CuPy < 14 (our gpu extra pins
    13.x) rejects array-valued ``repeats``.
    """
    nnz = int(indptr[-1])
    return xp.searchsorted(indptr[1:], xp.arange(nnz, dtype=indptr.dtype),
                           side="right").astype(xp.int64)


def make_batch(backend: Backend, matrix: Any, rows: Any) -> Batch:
    """Slice ``rows`` out of a CSR matrix (backend sparse, (N, I)) and L2-normalise each row.

    Args:
        rows: int array (B,) of row numbers, on the backend.
    """
    xp = backend.xp
    sub = matrix[rows]                                               # CSR (B, I)
    sub.sort_indices()
    row_of = entry_rows(xp, sub.indptr)
    targets = sub.data.astype(xp.float32)
    norms = xp.sqrt(xp.asarray(sub.multiply(sub).sum(axis=1), dtype=xp.float32).ravel())
    values = targets / xp.maximum(norms, xp.float32(1e-12))[row_of]
    indices = xp.stack([row_of, sub.indices.astype(xp.int64)], axis=1)
    return Batch(indices, values, targets, int(sub.shape[0]))


def steps_per_epoch(total_rows: int, world: int, batch_size: int) -> int:
    """Optimizer steps per epoch: enough batches of at most ``batch_size`` users for the
    largest rank's block (``ceil(total/world)`` rows), the same on every rank so collective
    calls pair up."""
    largest_block = -(-total_rows // world)          # ceiling division
    return max(1, -(-largest_block // batch_size))


def iterate(backend: Backend, matrix: Any, order: np.ndarray, n_batches: int,
            start: int = 0, prefetch: int = 3) -> Iterator[Batch]:
    """Yield TF-tensor batches of ``matrix``'s rows in ``order``, split into ``n_batches``
    near-equal batches (sizes differ by at most one), from batch number ``start``.

    Every row is in exactly one batch: nothing is dropped, and there is no tiny last batch
    whose few users would get a full-size gradient step. A daemon thread prepares up to
    ``prefetch`` batches ahead; leaving the loop early (break, exception, Ctrl-C) stops it.
    """
    convert = backend.to_tf
    device_order = backend.from_numpy(order)
    bounds = [len(order) * b // n_batches for b in range(n_batches + 1)]
    ready: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce() -> None:
        try:
            for b in range(start, n_batches):
                batch = make_batch(backend, matrix, device_order[bounds[b]:bounds[b + 1]])
                item: Any = Batch(convert(batch.indices), convert(batch.values),
                                  convert(batch.targets), batch.size)
                if not _put(ready, item, stop):
                    return
        except BaseException as error:  # re-raised in the consumer
            _put(ready, error, stop)
            return
        _put(ready, None, stop)

    worker = threading.Thread(target=produce, name="vaecf-batches", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _put(ready: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put with a timeout so a stopped consumer never leaves the producer blocked."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False

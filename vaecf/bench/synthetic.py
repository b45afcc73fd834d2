"""Synthetic interaction data shaped like MovieLens-20M, for benchmarks (never for accuracy).

Users' history lengths are log-normal (at least 20, like MovieLens); items are drawn from a
Zipf-like popularity curve, so a few items are very popular and most are rare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ML20M_SHAPE = {"rows": 20_000_263, "users": 138_493, "items": 26_744}


def interactions(
    n_rows: int, n_users: int, n_items: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) int64 arrays of about n_rows pairs, users ascending (duplicates possible).

    Returns:
        users: shape (~n_rows,), ids 1..n_users.
        items: shape (~n_rows,), ids 1..n_items, Zipf-like popularity (exponent 0.9).
    """
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    lengths = np.maximum(20, np.round(lengths / lengths.sum() * n_rows)).astype(np.int64)
    users = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), lengths)
    popularity = 1.0 / (np.arange(1, n_items + 1) + 10.0) ** 0.9
    cdf = np.cumsum(popularity / popularity.sum())
    ranks = np.searchsorted(cdf, rng.random(users.shape[0]), side="right")
    # Shuffle which item id gets which popularity rank, as real ids are not sorted by it.
    items = rng.permutation(n_items)[np.minimum(ranks, n_items - 1)] + 1
    return users, items.astype(np.int64)


def write_ratings_csv(path: Path, n_rows: int, n_users: int, n_items: int, seed: int = 0) -> int:
    """Write ``userId,movieId,rating,timestamp`` rows like MovieLens' ratings.csv.

    Returns:
        the number of rows written.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    users, items = interactions(n_rows, n_users, n_items, seed)
    rng = np.random.default_rng(seed + 1)
    table = pa.table({
        "userId": users,
        "movieId": items,
        "rating": rng.integers(1, 11, size=users.shape[0]) / 2.0,
        "timestamp": rng.integers(789_652_009, 1_427_784_002, size=users.shape[0]),
    })
    tmp = path.with_suffix(".tmp")
    pacsv.write_csv(table, tmp)
    tmp.rename(path)
    return table.num_rows

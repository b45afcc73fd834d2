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


def write_ratings_csv(path: Path, n_rows: int, n_users: int, n_items: int, seed: int = 0,
                      chunk_users: int = 50_000) -> int:
    """Write ``userId,movieId,rating,timestamp`` rows like MovieLens' ratings.csv, streamed in
    chunks of users so that memory stays flat in ``n_rows`` (a 300M-row file takes ~1 GB).

    Returns:
        the number of rows written.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    lengths = np.maximum(20, np.round(lengths / lengths.sum() * n_rows)).astype(np.int64)
    popularity = 1.0 / (np.arange(1, n_items + 1) + 10.0) ** 0.9
    cdf = np.cumsum(popularity / popularity.sum())
    # Which item id gets which popularity rank: real ids are not sorted by it.
    item_of_rank = rng.permutation(n_items) + 1
    tmp = path.with_suffix(".tmp")
    written = 0
    schema = pa.schema([("userId", pa.int64()), ("movieId", pa.int64()),
                        ("rating", pa.float64()), ("timestamp", pa.int64())])
    options = pacsv.WriteOptions(quoting_style="none")
    with pacsv.CSVWriter(tmp, schema, write_options=options) as writer:
        for first in range(0, n_users, chunk_users):
            chunk = np.random.default_rng([seed, first])
            sizes = lengths[first: first + chunk_users]
            users = np.repeat(np.arange(first + 1, first + 1 + len(sizes), dtype=np.int64),
                              sizes)
            ranks = np.searchsorted(cdf, chunk.random(users.shape[0]), side="right")
            writer.write_table(pa.table({
                "userId": users,
                "movieId": item_of_rank[np.minimum(ranks, n_items - 1)].astype(np.int64),
                "rating": chunk.integers(1, 11, size=users.shape[0]) / 2.0,
                "timestamp": chunk.integers(789_652_009, 1_427_784_002, size=users.shape[0]),
            }, schema=schema))
            written += users.shape[0]
    tmp.rename(path)
    return written

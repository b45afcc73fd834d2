"""Filtering and the strong-generalization split, written once for NumPy and CuPy.

Every function takes the array module ``xp`` and integer code arrays, and all randomness comes
from :func:`hash64` of (seed, salt, user, item) codes, so the CPU and GPU backends produce the
same split bit for bit (no library RNG, no float reductions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from vaecf.errors import VaecfError

Array = Any  # numpy.ndarray or cupy.ndarray

TRAIN, VALIDATION, TEST, DROPPED = 0, 1, 2, -1
SPLIT_NAMES = {TRAIN: "train", VALIDATION: "validation", TEST: "test"}
_SALT_USERS, _SALT_ITEMS = 1, 2
_MASK64 = (1 << 64) - 1


def _mix(xp: ModuleType, x: Array) -> Array:
    """splitmix64's finaliser: a bijection on uint64 with good avalanche (Steele et al. 2014)."""
    x = (x ^ (x >> xp.uint64(30))) * xp.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> xp.uint64(27))) * xp.uint64(0x94D049BB133111EB)
    return x ^ (x >> xp.uint64(31))


def hash64(xp: ModuleType, seed: int, salt: int, *keys: Array) -> Array:
    """A seeded uint64 hash of integer key arrays (all the same shape).

    Returns:
        uint64 array of the keys' shape.
    """
    # Reduced mod 2**64 in Python: seed * golden ratio overflows uint64 from seed 2 on.
    start = (seed * 0x9E3779B97F4A7C15 + salt) & _MASK64
    h = _mix(xp, xp.full(keys[0].shape, start, dtype=xp.uint64))
    for key in keys:
        h = _mix(xp, h ^ key.astype(xp.uint64))
    return h


def user_hash(xp: ModuleType, seed: int, codes: Array) -> Array:
    """The seeded hash that orders users for the held-out choice, shape of ``codes``."""
    return hash64(xp, seed, _SALT_USERS, codes)


def dedupe(xp: ModuleType, users: Array, items: Array, n_items: int) -> tuple[Array, Array]:
    """Unique (user, item) pairs, sorted by user then item.

    Args:
        users, items: int64 codes, shape (n,).
    Returns:
        (users, items), int64, shape (m,) with m <= n.
    """
    keys = xp.unique(users * n_items + items)
    return keys // n_items, keys % n_items


def count_filter(
    xp: ModuleType, users: Array, items: Array, n_users: int, n_items: int,
    min_user: int, min_item: int,
) -> Array:
    """Boolean mask, shape (n,): items with >= min_item pairs, then users with >= min_user
    of the remaining pairs (the reference preprocessing's order)."""
    keep = xp.bincount(items, minlength=n_items)[items] >= min_item
    per_user = xp.bincount(users[keep], minlength=n_users)
    return keep & (per_user[users] >= min_user)


def compact(xp: ModuleType, codes: Array, n: int) -> tuple[Array, Array]:
    """Renumber codes 0..k-1 keeping their order.

    Returns:
        (new codes of codes' shape, ``used`` bool mask of shape (n,) over the old codes).
    """
    used = xp.bincount(codes, minlength=n) > 0
    new = xp.cumsum(used) - 1
    return new[codes], used


def resolve_count(value: float, n_users: int, cap: int) -> int:
    """A user count from a whole number (taken as is) or a fraction of n_users (capped)."""
    if value >= 1:
        return int(value)
    return max(1, min(cap, round(value * n_users)))


def check_pairs_left(n_pairs: int, min_user: int, min_item: int) -> None:
    """Refuse filters that left nothing to split."""
    if n_pairs == 0:
        raise VaecfError(f"no interactions left after filtering (min_user_interactions="
                         f"{min_user}, min_item_interactions={min_item})")


def check_heldout(n_users: int, n_eligible: int, n_validation: int, n_test: int) -> None:
    """Refuse a split that cannot be made: every held-out user needs >= 2 interactions, and
    at least one user must be left for training."""
    wanted = n_validation + n_test
    if wanted > n_eligible or wanted >= n_users:
        raise VaecfError(
            f"too few users for the split: {n_users} users after filtering "
            f"({n_eligible} with 2+ interactions), asked for {n_validation} "
            f"validation + {n_test} test users and at least 1 training user"
        )


def check_shards(shards: int, train_users: int) -> None:
    """Every training shard needs at least one user."""
    if shards > train_users:
        raise VaecfError(f"--shards {shards:,} is more than the {train_users:,} training users "
                         f"(each shard needs at least one); use --shards {train_users:,} or "
                         "fewer")


def assign_users(
    xp: ModuleType, per_user: Array, seed: int, n_validation: int, n_test: int
) -> Array:
    """Choose held-out users by hash order among users with >= 2 interactions.

    Args:
        per_user: int64 interaction counts, shape (n_users,).
    Returns:
        int8 split label per user, shape (n_users,): TRAIN, VALIDATION or TEST.
    """
    n_users = int(per_user.shape[0])
    eligible = xp.flatnonzero(per_user >= 2)
    wanted = n_validation + n_test
    check_heldout(n_users, int(eligible.shape[0]), n_validation, n_test)
    h = user_hash(xp, seed, eligible)
    # Both keys uint64: stacking int64 with uint64 would promote to float64 and round the hash.
    order = eligible[xp.lexsort(xp.stack([eligible.astype(xp.uint64), h]))]
    labels = xp.zeros(n_users, dtype=xp.int8)
    labels[order[:n_test]] = TEST
    labels[order[n_test:wanted]] = VALIDATION
    return labels


def target_mask(
    xp: ModuleType, users: Array, items: Array, n_users: int, seed: int, fraction: float
) -> Array:
    """Which of a held-out user's pairs are targets: floor(fraction * n) of them (at least 1,
    at most n - 1), chosen by hash order, the rest are fold-in.

    Args:
        users, items: int64 codes of held-out pairs, shape (n,), users ascending.
    Returns:
        bool mask, shape (n,).
    """
    per_user = xp.bincount(users, minlength=n_users)
    # The tiny epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
    n_targets = xp.floor(per_user * fraction + 1e-9).astype(xp.int64)
    n_targets = xp.minimum(xp.maximum(n_targets, 1), per_user - 1)
    order = xp.lexsort(xp.stack([hash64(xp, seed, _SALT_ITEMS, users, items),
                                 users.astype(xp.uint64)]))
    starts = xp.cumsum(per_user) - per_user
    sorted_users = users[order]
    rank = xp.arange(users.shape[0]) - starts[sorted_users]
    mask = xp.zeros(users.shape[0], dtype=bool)
    mask[order] = rank < n_targets[sorted_users]
    return mask


@dataclass
class Csr:
    """A binary CSR matrix as plain arrays (data is implicitly all ones).

    Attributes:
        indptr: int64, shape (rows + 1,).
        indices: int32 column indices, shape (nnz,), ascending within each row.
        shape: (rows, cols).
    """

    indptr: Array
    indices: Array
    shape: tuple[int, int]


def to_csr(xp: ModuleType, rows: Array, cols: Array, n_rows: int, n_cols: int) -> Csr:
    """CSR from (row, col) pairs already sorted by row then column."""
    indptr = xp.zeros(n_rows + 1, dtype=xp.int64)
    indptr[1:] = xp.cumsum(xp.bincount(rows, minlength=n_rows))
    return Csr(indptr, cols.astype(xp.int32), (n_rows, n_cols))


def n_targets_expected(n: int, fraction: float) -> int:
    """The number of targets :func:`target_mask` picks for a user with n pairs (n >= 2)."""
    return min(max(math.floor(n * fraction + 1e-9), 1), n - 1)

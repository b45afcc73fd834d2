"""``vaecf prepare``: interaction files -> a dataset directory (see :mod:`vaecf.data.dataset`).

Read and encode ids on the dataframe side (pyarrow on CPU), then filter, split and build CSR
matrices with the array backend's ``xp`` only, then write atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vaecf.atomic import atomic_directory, check_apart, check_creatable, check_target
from vaecf.backend import Backend
from vaecf.data import split
from vaecf.data.dask_cluster import DaskOptions
from vaecf.data.dataset import dataset_meta, shard_name, write_csr, write_meta, write_table
from vaecf.data.readers import (
    ColumnSpec,
    Encoded,
    encode,
    expand_inputs,
    int64_arrow,
    read_inputs,
    repeated_strings,
    source_entry,
)
from vaecf.errors import VaecfError, printable
from vaecf.formats import file_sha256
from vaecf.progress import Steps
from vaecf.settings import PrepareSettings

BUNDLED = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = {
    # name -> (file, settings that read it the way the reference preprocessing does)
    "movielens-small": (
        BUNDLED / "movielens-small" / "ratings.csv",
        {"user_col": "userId", "item_col": "movieId", "rating_col": "rating",
         "min_rating": 3.5, "sep": ",", "header": True},
    ),
}


@dataclass
class Splits:
    """The split, as backend arrays.

    Attributes:
        train: CSR of training users (rows: users in id order), columns = training items.
        heldout: {"validation"|"test": (fold-in CSR, target CSR)}, same columns.
        user_rows: {split name: int64 user codes in row order}.
        item_codes: int64 codes (into Encoded.item_ids) of the training items, shape (n_items,).
        stats: counts for meta.json and the summary.
    """

    train: split.Csr
    heldout: dict[str, tuple[split.Csr, split.Csr]]
    user_rows: dict[str, Any]
    item_codes: Any
    stats: dict[str, Any]


def split_interactions(backend: Backend, enc: Encoded, cfg: PrepareSettings) -> Splits:
    """Dedupe, filter and split encoded interactions with the backend's array module."""
    xp = backend.xp
    n_users, n_items = len(enc.user_ids), len(enc.item_ids)
    users, items = split.dedupe(xp, backend.from_numpy(enc.users), backend.from_numpy(enc.items),
                                n_items)
    n_unique = int(users.shape[0])
    keep = split.count_filter(xp, users, items, n_users, n_items,
                              cfg.min_user_interactions, cfg.min_item_interactions)
    users, items = users[keep], items[keep]
    split.check_pairs_left(int(users.shape[0]), cfg.min_user_interactions,
                           cfg.min_item_interactions)
    users, user_used = split.compact(xp, users, n_users)
    n_kept_users = int(user_used.sum())
    per_user = xp.bincount(users, minlength=n_kept_users)
    n_test = split.resolve_count(cfg.test_users, n_kept_users, cfg.max_heldout_users)
    n_val = split.resolve_count(cfg.val_users, n_kept_users, cfg.max_heldout_users)
    labels = split.assign_users(xp, per_user, cfg.seed, n_val, n_test)
    pair_labels = labels[users]

    is_train = pair_labels == split.TRAIN
    train_items = xp.flatnonzero(xp.bincount(items[is_train], minlength=n_items) > 0)
    column = xp.full(n_items, -1, dtype=xp.int64)
    column[train_items] = xp.arange(train_items.shape[0])
    cols = column[items]
    n_cols = int(train_items.shape[0])
    user_codes = xp.flatnonzero(user_used)  # kept user -> original code

    def rows_of(mask: Any) -> tuple[Any, Any, Any]:
        """Row numbers of the masked pairs' users (in id order) and the users themselves."""
        masked = users[mask]
        members = xp.flatnonzero(xp.bincount(masked, minlength=n_kept_users) > 0)
        row = xp.full(n_kept_users, -1, dtype=xp.int64)
        row[members] = xp.arange(members.shape[0])
        return row[masked], members, int(members.shape[0])

    rows, members, n_rows = rows_of(is_train)
    train = split.to_csr(xp, rows, cols[is_train], n_rows, n_cols)
    user_rows = {"train": user_codes[members]}
    heldout: dict[str, tuple[split.Csr, split.Csr]] = {}
    dropped_users = 0
    for label, name in ((split.VALIDATION, "validation"), (split.TEST, "test")):
        mask = (pair_labels == label) & (cols >= 0)
        # Held-out users left with < 2 known items cannot give both fold-in and targets.
        counts = xp.bincount(users[mask], minlength=n_kept_users)
        mask &= counts[users] >= 2
        dropped_users += int(((labels == label) & (counts < 2)).sum())
        rows, members, n_rows = rows_of(mask)
        held = cols[mask]  # one gather over all pairs, not three
        target = split.target_mask(xp, rows, held, n_rows, cfg.seed, cfg.holdout_fraction)
        heldout[name] = (
            split.to_csr(xp, rows[~target], held[~target], n_rows, n_cols),
            split.to_csr(xp, rows[target], held[target], n_rows, n_cols),
        )
        user_rows[name] = user_codes[members]

    stats = {
        "rows_read": enc.rows_read,
        "rows_after_rating_filter": int(enc.users.shape[0]),
        "unique_pairs": n_unique,
        "pairs_after_count_filters": int(keep.sum()),
        "users_read": n_users,
        "items_read": n_items,
        "users_after_filters": n_kept_users,
        "items_after_filters": int((xp.bincount(items, minlength=n_items) > 0).sum()),
        "heldout_users_dropped": dropped_users,
        "items": n_cols,
    }
    return Splits(train, heldout, user_rows, train_items, stats)


def _counts(csr: split.Csr) -> dict[str, int]:
    return {"users": csr.shape[0], "interactions": int(csr.indices.shape[0])}


def write_dataset(
    directory: Path, splits: Splits, enc: Encoded, backend: Backend, cfg: PrepareSettings,
    sources: list[dict[str, Any]],
) -> dict[str, Any]:
    """Write every file of the format into ``directory``; returns the meta dict."""
    host = backend.to_numpy

    def host_csr(csr: split.Csr) -> split.Csr:
        return split.Csr(host(csr.indptr), host(csr.indices), csr.shape)

    matrices: dict[str, Any] = {}
    train = host_csr(splits.train)
    bounds = np.linspace(0, train.shape[0], cfg.shards + 1).round().astype(np.int64)
    shard_names = []
    for k in range(cfg.shards):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        indptr = train.indptr[lo: hi + 1]
        part = split.Csr(indptr - indptr[0], train.indices[indptr[0]: indptr[-1]],
                         (hi - lo, train.shape[1]))
        name = shard_name(k, cfg.shards)
        matrices[name] = write_csr(directory, name, part)
        shard_names.append(name)
    for name, (foldin, target) in splits.heldout.items():
        matrices[f"{name}-foldin"] = write_csr(directory, f"{name}-foldin", host_csr(foldin))
        matrices[f"{name}-target"] = write_csr(directory, f"{name}-target", host_csr(target))

    write_table(directory / "items.parquet",
                {"item_id": enc.item_ids.take(int64_arrow(host(splits.item_codes)))})
    user_ids, row_col = [], []
    for codes in splits.user_rows.values():
        codes = host(codes)
        user_ids.append(enc.user_ids.take(int64_arrow(codes)))
        row_col.append(np.arange(len(codes), dtype=np.int64))
    # Arrow builders throughout: pa.array() on NumPy or lists imports pandas (1.5 s).
    write_table(directory / "users.parquet", {
        "user_id": pa.concat_arrays(user_ids),
        "split": repeated_strings(list(splits.user_rows), [len(r) for r in row_col]),
        "row": int64_arrow(np.concatenate(row_col)),
    })

    counts: dict[str, Any] = {"items": train.shape[1], "train": _counts(train)}
    for name, (foldin, target) in splits.heldout.items():
        counts[name] = {"users": foldin.shape[0],
                        "foldin_interactions": int(foldin.indices.shape[0]),
                        "target_interactions": int(target.indices.shape[0])}
    tables = {name: file_sha256(directory / name) for name in ("items.parquet", "users.parquet")}
    meta = dataset_meta(cfg, sources, splits.stats, counts, shard_names, matrices, tables,
                        (str(enc.user_ids.type), str(enc.item_ids.type)))
    write_meta(directory, meta)
    return meta


def encode_inputs(paths: list[Path], spec: ColumnSpec, min_rating: float | None,
                  backend: Backend) -> Encoded:
    """Read and encode in this process: cuDF on a GPU backend with cuDF installed (else the
    split still runs on the GPU after the pyarrow reader), pyarrow on the CPU. Both give the
    same Encoded, hence the same bytes."""
    if backend.native_reader == "cudf":
        from vaecf.data import frames

        return frames.read_encoded(backend.frames(), paths, spec, min_rating)
    return encode(read_inputs(paths, spec), min_rating)


def check_out(out: Path) -> None:
    """Refuse, before any work, an ``--out`` that is a file or cannot be created."""
    if out.exists() and not out.is_dir():
        raise VaecfError(f"--out {printable(out)} exists and is not a directory")
    check_creatable(out, f"cannot create --out {printable(out)}")


def prepare(
    inputs: list[str], out: Path, cfg: PrepareSettings, backend: Backend,
    force: bool = False, quiet: bool = False, dask: DaskOptions | None = None,
    report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the whole stage; returns the written meta.json content.

    Args:
        dask: run every step on a dask cluster (see :mod:`vaecf.data.dask_prepare`), or None
            for this process.
        report: if given, receives ``stages`` (seconds of each step) and, with dask,
            ``worker_peak_rss_gb``.
    Raises:
        VaecfError: bad input, named in one line; nothing is left behind.
    """
    paths = expand_inputs(inputs)
    check_apart(out, paths)
    check_target(out, force, marker="meta.json", kind="vaecf dataset")
    check_out(out)
    spec = ColumnSpec(cfg.user_col, cfg.item_col, cfg.rating_col, cfg.sep, cfg.header)
    if cfg.min_rating is not None and cfg.rating_col is None:
        raise VaecfError("--min-rating needs --rating-col")
    report = {} if report is None else report
    with Steps(quiet) as steps:
        try:
            if dask is not None:
                from vaecf.data.dask_prepare import prepare_on_cluster

                meta = prepare_on_cluster(paths, out, spec, cfg, backend, dask, steps, force,
                                          report)
            else:
                meta = _prepare_here(paths, out, spec, cfg, backend, steps, force)
        except OSError as error:  # disk full, quota, a directory removed under us
            raise VaecfError(f"cannot write dataset {printable(out)}: "
                             f"{printable(error.strerror or error)}; nothing was written"
                             ) from None
        report["stages"] = dict(steps.seconds)
    return meta


def _prepare_here(paths: list[Path], out: Path, spec: ColumnSpec, cfg: PrepareSettings,
                  backend: Backend, steps: Steps, force: bool) -> dict[str, Any]:
    with steps.step(f"hashing {len(paths)} file(s)", total=len(paths),
                    key="hash") as advance:
        sources = []
        for path in paths:
            sources.append(source_entry(path))
            advance()
    reader = backend.native_reader or "pyarrow"
    with steps.step(f"reading and encoding ids ({reader})", key="read"):
        enc = encode_inputs(paths, spec, cfg.min_rating, backend)
    with steps.step(f"filtering and splitting ({backend.name})", key="split"):
        splits = split_interactions(backend, enc, cfg)
    split.check_shards(cfg.shards, int(splits.train.shape[0]))
    with steps.step("writing dataset", key="write"), atomic_directory(out, force) as tmp:
        return write_dataset(tmp, splits, enc, backend, cfg, sources)

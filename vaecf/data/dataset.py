"""The dataset directory format (version 1), written by ``prepare`` and read by every later stage.

::

    meta.json                          format, version, sources (sha256), columns, filters,
                                       seed, counts per split, matrices (shape, nnz, files, sha256),
                                       tables (file name -> sha256 of the two Parquet files)
    items.parquet                      item_id: column j of every matrix -> original item id
    users.parquet                      user_id, split (train|validation|test), row in its matrix
    train-00000-of-0000N.indptr.npy    int64, rows + 1   } training users, row shard k of N
    train-00000-of-0000N.indices.npy   int32, nnz        } (contiguous blocks of users)
    validation-foldin.*.npy / validation-target.*.npy     held-out users' fold-in and targets
    test-foldin.*.npy / test-target.*.npy

Matrices are binary CSR with sorted column indices; values are implicitly 1. Plain ``.npy``
files keep the output byte-identical across runs and backends and can be memory-mapped.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vaecf import __version__
from vaecf.atomic import recover
from vaecf.data.split import Csr
from vaecf.errors import VaecfError
from vaecf.formats import file_sha256, read_header, read_parquet_column, verify_files
from vaecf.settings import PrepareSettings

FORMAT = "vaecf-dataset"
VERSION = 1
HELDOUT_SPLITS = ("validation", "test")


def shard_name(k: int, n: int) -> str:
    """File stem of training shard k of n."""
    return f"train-{k:05d}-of-{n:05d}"


def write_csr(directory: Path, stem: str, csr: Csr) -> dict[str, Any]:
    """Write one CSR matrix as two .npy files; returns its meta.json entry."""
    entry: dict[str, Any] = {"rows": csr.shape[0], "cols": csr.shape[1],
                             "nnz": int(csr.indices.shape[0]), "files": {}}
    for part in ("indptr", "indices"):
        path = directory / f"{stem}.{part}.npy"
        np.save(path, np.ascontiguousarray(getattr(csr, part)), allow_pickle=False)
        entry["files"][part] = {"name": path.name, "sha256": file_sha256(path)}
    return entry


def write_table(path: Path, columns: dict[str, Any]) -> None:
    """Write a small Parquet table deterministically (no pandas metadata, no timestamps)."""
    pq.write_table(pa.table(columns), path, compression="zstd", store_schema=False)


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """meta.json, keys sorted, so equal content gives equal bytes."""
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    (directory / "meta.json").write_text(text, encoding="utf-8")


def dataset_meta(cfg: PrepareSettings, sources: list[dict[str, Any]], stats: dict[str, Any],
                 counts: dict[str, Any], shard_names: list[str], matrices: dict[str, Any],
                 tables: dict[str, str], id_types: tuple[str, str]) -> dict[str, Any]:
    """meta.json's content, the same whichever path (one process or dask) made the files.

    Args:
        id_types: the Arrow types of the user and item ids ("int64" or "string").
    """
    return {
        "format": FORMAT,
        "version": VERSION,
        "created_by": f"vaecf {__version__}",
        "sources": sources,
        "columns": {"user": cfg.user_col, "item": cfg.item_col, "rating": cfg.rating_col,
                    "sep": cfg.sep, "header": cfg.header,
                    "user_id_type": id_types[0], "item_id_type": id_types[1]},
        "filters": {"min_rating": cfg.min_rating,
                    "min_user_interactions": cfg.min_user_interactions,
                    "min_item_interactions": cfg.min_item_interactions},
        "split": {"seed": cfg.seed, "holdout_fraction": cfg.holdout_fraction,
                  "val_users": cfg.val_users, "test_users": cfg.test_users,
                  "max_heldout_users": cfg.max_heldout_users},
        "stats": stats,
        "counts": counts,
        "train_shards": shard_names,
        "matrices": matrices,
        "tables": tables,
    }


def checksums(meta: dict[str, Any]) -> dict[str, str]:
    """File name -> sha256 of every file a dataset's meta.json records: the matrices' arrays
    and (datasets written since the tables were covered) items.parquet and users.parquet."""
    sums = {part["name"]: part["sha256"] for entry in meta["matrices"].values()
            for part in entry["files"].values()}
    sums.update(meta.get("tables", {}))
    return sums


def read_meta(path: Path) -> dict[str, Any]:
    """A dataset's meta.json alone, without verifying its files: for callers that only need
    how the data was read (e.g. recommend's column names), not the data itself.

    Raises:
        VaecfError: not a dataset this vaecf reads.
    """
    recover(path)
    return read_header(path, "meta.json", FORMAT, VERSION, "vaecf dataset", "vaecf prepare")


@functools.cache
def _verify(path: Path, stamp: int, meta_text: str) -> None:
    verify_files(path, checksums(json.loads(meta_text)), "re-run `vaecf prepare` to rebuild it")


@dataclass
class Dataset:
    """A prepared dataset directory, opened lazily.

    Attributes:
        path: the directory.
        meta: the parsed meta.json.
    """

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: Path | str) -> Dataset:
        """Open a dataset directory and verify every file meta.json lists against its sha256
        (once per process and directory state; ~0.2 s per GB of arrays).

        Raises:
            VaecfError: not a dataset this vaecf reads, or a file missing or damaged.
        """
        path = Path(path)
        meta = read_meta(path)
        _verify(path.resolve(), (path / "meta.json").stat().st_mtime_ns, json.dumps(meta))
        return cls(path, meta)

    @property
    def n_items(self) -> int:
        """Number of items (columns of every matrix)."""
        return int(self.meta["counts"]["items"])

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of meta.json, which itself holds the sha256 of every other file."""
        return file_sha256(self.path / "meta.json")

    @cached_property
    def item_ids(self) -> pa.Array:
        """Original item id of each column, shape (n_items,)."""
        return read_parquet_column(self.path / "items.parquet", "item_id")

    @cached_property
    def users(self) -> pa.Table:
        """user_id, split, row for every kept user."""
        return pq.read_table(self.path / "users.parquet")

    def _load(self, name: str, mmap: bool = True):
        """One matrix from meta['matrices'][name] as scipy.sparse.csr_matrix (float32 ones)."""
        import scipy.sparse

        entry = self.meta["matrices"][name]
        mode = "r" if mmap else None
        indptr = np.load(self.path / entry["files"]["indptr"]["name"], mmap_mode=mode)
        indices = np.load(self.path / entry["files"]["indices"]["name"], mmap_mode=mode)
        data = np.ones(indices.shape[0], dtype=np.float32)
        return scipy.sparse.csr_matrix(
            (data, np.asarray(indices), np.asarray(indptr)), shape=(entry["rows"], entry["cols"])
        )

    @property
    def shard_names(self) -> list[str]:
        """Training shard names in row order."""
        return list(self.meta["train_shards"])

    def train_matrix(self):
        """All training users, shape (n_train_users, n_items), as one CSR matrix."""
        import scipy.sparse

        return scipy.sparse.vstack([self._load(name) for name in self.shard_names], format="csr")

    def train_rows_for_rank(self, rank: int, world: int):
        """The training rows rank ``rank`` of ``world`` owns: a contiguous, balanced block of
        users, read only from the shards that overlap it (any shard count vs any rank count).

        Returns:
            scipy.sparse.csr_matrix, shape (~n_train_users / world, n_items).
        """
        import scipy.sparse

        sizes = [self.meta["matrices"][name]["rows"] for name in self.shard_names]
        bounds = np.cumsum([0, *sizes])
        total = int(bounds[-1])
        start, stop = total * rank // world, total * (rank + 1) // world
        parts = []
        for k, name in enumerate(self.shard_names):
            lo, hi = max(start, bounds[k]), min(stop, bounds[k + 1])
            if lo < hi:
                parts.append(self._load(name)[lo - bounds[k]: hi - bounds[k]])
        return scipy.sparse.vstack(parts, format="csr")

    def heldout(self, split: str):
        """(fold-in, targets) CSR matrices of the validation or test users, same row order,
        each of shape (n_split_users, n_items)."""
        if split not in HELDOUT_SPLITS:
            raise VaecfError(f"unknown split {split!r} (choose validation or test)")
        return self._load(f"{split}-foldin"), self._load(f"{split}-target")

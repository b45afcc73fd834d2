"""``prepare --dask``: every step of ``prepare`` on a dask cluster, the client's memory flat.

The steps, each a set of tasks on the workers (:mod:`vaecf.data.dask_tasks`); what the client
gathers is named on each line, and none of it grows with the number of interactions:

1. read: each block (:mod:`vaecf.data.blocks`) is read, checked and thresholded on a worker
   and coded into its own sorted ids; the blocks' ids are merged pairwise on the workers into
   the sorted distinct user and item ids (the id maps stay there); each block's codes are
   then renumbered into them. Gathered: rows per block, the numbers of users and items.
2. shuffle: each block's distinct pairs, as sorted keys ``user * n_items + item``, go
   through dask's ``set_index`` with ranges of users as divisions (tasks or p2p shuffle), so
   each partition holds whole users in id order, sorted, and its duplicates are adjacent.
   Gathered: pairs per partition.
3. filter: items' pair counts are summed over partitions on the workers, then each
   partition keeps its items and users. Gathered: pairs, users and eligible users per
   partition.
4. split: each partition offers its first eligible users in the split's hash order; the
   offers are merged pairwise on the workers into the held-out users (at most validation +
   test users reach the client). Partitions label their users; training items' counts are
   summed on the workers into the column of each item. Gathered: the held-out users,
   training users per partition.
5. write: the training shards (each a contiguous block of training users, gathered from the
   partitions that hold it), the held-out matrices, items.parquet and users.parquet are
   written by the workers into the dataset's temporary directory, each with its sha256
   computed where it was written. Gathered: the files' meta entries; the client writes
   meta.json and commits the directory.

Nothing depends on where dask places a row: a partition is a range of user codes, and every
global number (kept-user codes, training rows, columns) is a count over ranges in code order.
So the dataset is byte-identical to the single-process one for any block size, worker count
or shuffle method. The inputs and the output's parent directory must be visible to every
worker at the same paths.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vaecf.atomic import atomic_directory
from vaecf.backend import Backend
from vaecf.data import blocks, split
from vaecf.data import dask_files as files
from vaecf.data import dask_tasks as tasks
from vaecf.data.dask_cluster import (
    DaskOptions,
    cluster_errors,
    dask_client,
    n_threads,
    worker_peak_rss,
)
from vaecf.data.dataset import dataset_meta, shard_name, write_meta
from vaecf.data.readers import ColumnSpec, source_entry
from vaecf.errors import VaecfError, printable
from vaecf.progress import Steps
from vaecf.settings import PrepareSettings


def _tree(client: Any, func: Callable[..., Any], futures: list[Any], **kwargs: Any) -> Any:
    """Combine futures pairwise on the workers (depth log2 n); one future."""
    while len(futures) > 1:
        paired = [client.submit(func, a, b, **kwargs)
                  for a, b in zip(futures[::2], futures[1::2], strict=False)]
        futures = paired + futures[len(paired) * 2:]
    return futures[0]


def _wait(futures: list[Any], advance: Callable[[int], None]) -> None:
    from dask.distributed import as_completed

    for _ in as_completed(futures):
        advance(1)


def _divisions(n_users: int, parts: int) -> list[int]:
    """set_index divisions over user codes 0..n_users-1: ranges of near-equal size."""
    cuts = np.unique(np.linspace(0, n_users - 1, max(1, parts) + 1).round().astype(np.int64))
    return [int(c) for c in cuts] if len(cuts) > 1 else [0, max(0, n_users - 1)]


def _check_rows(plan: list[blocks.Block], counts: list[tuple[int, int]]) -> None:
    """A file read in blocks must have rows, as a file read whole."""
    rows: dict[str, int] = {}
    for block, (read, _) in zip(plan, counts, strict=True):
        rows[block.path] = rows.get(block.path, 0) + read
    for path, read in rows.items():
        if read == 0:
            raise VaecfError(f"{printable(path)}: the file has no rows")


def _read(client: Any, paths: list[Path], spec: ColumnSpec, cfg: PrepareSettings,
          options: DaskOptions, name: str, steps: Steps) -> dict[str, Any]:
    plan = blocks.plan(paths, options.blocksize)
    with steps.step(f"reading {len(plan):,} block(s) on {n_threads(client)} worker "
                    "thread(s)", total=len(plan), key="read") as advance:
        encoded = client.map(tasks.read_block, plan, spec=spec, min_rating=cfg.min_rating,
                             backend_name=name)
        _wait(encoded, advance)
        counts = client.gather(client.map(tasks.block_counts, encoded))
        _check_rows(plan, counts)
    with steps.step("merging ids", key="merge ids"):
        users = _tree(client, tasks.merge_ids, client.map(tasks.user_ids, encoded))
        items = _tree(client, tasks.merge_ids, client.map(tasks.item_ids, encoded))
        n_users, n_items = client.gather([client.submit(tasks.count, users),
                                          client.submit(tasks.count, items)])
        # Every row below --min-rating: nothing to shuffle.
        split.check_pairs_left(n_users, cfg.min_user_interactions, cfg.min_item_interactions)
        codes = client.map(tasks.encode_block, encoded, users=users, items=items,
                           backend_name=name)
        del encoded   # the blocks' own codes are freed once renumbered
    return {"plan": plan, "codes": codes, "users": users, "items": items, "n_users": n_users,
            "n_items": n_items, "rows_read": sum(r for r, _ in counts),
            "rows_kept": sum(k for _, k in counts)}


def _shuffle(client: Any, read: dict[str, Any], backend: Backend, options: DaskOptions,
             steps: Steps) -> list[Any]:
    import dask
    import dask.dataframe as dd

    fm = backend.frames()
    frame = dd.from_delayed(read.pop("codes"), meta=fm.DataFrame(
        {"key": fm.Series([], dtype="int64")}), verify_meta=False)
    parts = min(max(len(read["plan"]), n_threads(client)), read["n_users"])
    n_items = read["n_items"]
    # Ranges of users as ranges of pair keys (user * n_items + item).
    divisions = [d * n_items for d in _divisions(read["n_users"], parts)]
    divisions[-1] += n_items - 1
    by_user = frame.set_index("key", divisions=divisions, shuffle_method=options.shuffle)
    with steps.step(f"shuffling by user ({options.shuffle}) into {by_user.npartitions:,} "
                    "partitions", total=by_user.npartitions, key="shuffle") as advance:
        deduped = client.compute([dask.delayed(tasks.dedupe)(part, read["n_items"],
                                                             backend.name)
                                  for part in by_user.to_delayed()])
        _wait(deduped, advance)
    return deduped


def _split(client: Any, parts: list[Any], read: dict[str, Any], cfg: PrepareSettings,
           name: str, steps: Steps) -> dict[str, Any]:
    n_items = read["n_items"]
    with steps.step("filtering", key="filter"):
        n_unique = sum(client.gather(client.map(tasks.n_pairs, parts)))
        per_item = _tree(client, tasks.add, client.map(tasks.item_counts, parts,
                                                       n_items=n_items, backend_name=name))
        kept = client.map(tasks.count_filter, parts, per_item=per_item,
                          min_item=cfg.min_item_interactions, min_user=cfg.min_user_interactions,
                          backend_name=name)
        del parts, per_item
        counts = client.gather(client.map(tasks.kept_counts, kept, backend_name=name))
        n_pairs = sum(c[0] for c in counts)
        split.check_pairs_left(n_pairs, cfg.min_user_interactions, cfg.min_item_interactions)
        items_left = client.submit(tasks.n_positive, _tree(
            client, tasks.add, client.map(tasks.item_counts, kept, n_items=n_items,
                                          backend_name=name))).result()
    with steps.step("choosing held-out users", key="split"):
        n_users = sum(c[1] for c in counts)
        offsets = np.cumsum([0] + [c[1] for c in counts])[:-1].tolist()
        n_test = split.resolve_count(cfg.test_users, n_users, cfg.max_heldout_users)
        n_val = split.resolve_count(cfg.val_users, n_users, cfg.max_heldout_users)
        split.check_heldout(n_users, sum(c[2] for c in counts), n_val, n_test)
        offers = client.map(tasks.candidates, kept, offsets, seed=cfg.seed,
                            wanted=n_val + n_test, backend_name=name)
        chosen, _ = _tree(client, tasks.first_offers, offers, wanted=n_val + n_test).result()
        test = client.scatter(np.sort(chosen[:n_test]))
        validation = client.scatter(np.sort(chosen[n_test:n_test + n_val]))
        labelled = client.map(tasks.label, kept, offsets, test=test, validation=validation,
                              backend_name=name)
        del kept
        train_per_item = _tree(client, tasks.add, client.map(
            tasks.train_item_counts, labelled, n_items=n_items, backend_name=name))
        train_users = client.gather(client.map(tasks.n_train_users, labelled))
        n_cols = client.submit(tasks.n_positive, train_per_item).result()
    split.check_shards(cfg.shards, sum(train_users))
    stats = {"rows_read": read["rows_read"], "rows_after_rating_filter": read["rows_kept"],
             "unique_pairs": n_unique, "pairs_after_count_filters": n_pairs,
             "users_read": read["n_users"], "items_read": n_items,
             "users_after_filters": n_users, "items_after_filters": items_left,
             "items": n_cols}
    return {"parts": labelled, "offsets": offsets, "train_users": train_users,
            "train_per_item": train_per_item, "n_cols": n_cols, "stats": stats,
            "chosen": {split.VALIDATION: n_val, split.TEST: n_test}}


def _write(client: Any, directory: str, read: dict[str, Any], done: dict[str, Any],
           cfg: PrepareSettings, name: str) -> dict[str, Any]:
    """Every file but meta.json, written by the workers; their meta entries."""
    parts, n_cols = done["parts"], done["n_cols"]
    column = client.submit(tasks.columns, done["train_per_item"], backend_name=name)
    starts = np.cumsum([0] + done["train_users"])
    bounds = np.linspace(0, starts[-1], cfg.shards + 1).round().astype(np.int64)
    shards = []
    for k in range(cfg.shards):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        pieces = [client.submit(files.train_piece, parts[p], column,
                                max(lo, starts[p]) - starts[p], min(hi, starts[p + 1]) - starts[p],
                                backend_name=name)
                  for p in range(len(parts)) if starts[p] < hi and starts[p + 1] > lo]
        shards.append(client.submit(files.write_shard, directory, shard_name(k, cfg.shards),
                                    n_cols, name, *pieces))
    heldout = {}
    for value, split_name in ((split.VALIDATION, "validation"), (split.TEST, "test")):
        pieces = client.map(files.heldout_piece, parts, done["offsets"], value=value,
                            column=column)
        heldout[split_name] = client.submit(
            files.write_heldout, directory, split_name, n_cols, done["chosen"][value],
            cfg.seed, cfg.holdout_fraction, name, *pieces)
    ids = {key: client.submit(files.heldout_ids, future) for key, future in heldout.items()}
    tables = {
        "items.parquet": client.submit(files.write_items, directory, read["items"],
                                       done["train_per_item"], name),
        "users.parquet": client.submit(files.write_users, directory, read["users"],
                                       ids["validation"], ids["test"],
                                       *client.map(files.train_ids, parts, backend_name=name)),
    }
    held = {key: client.submit(files.heldout_entries, future) for key, future in heldout.items()}
    return client.gather({"shards": shards, "heldout": held, "tables": tables,
                          "types": [client.submit(tasks.id_type, read["users"]),
                                    client.submit(tasks.id_type, read["items"])]})


def prepare_on_cluster(paths: list[Path], out: Path, spec: ColumnSpec, cfg: PrepareSettings,
                       backend: Backend, options: DaskOptions, steps: Steps, force: bool,
                       report: dict[str, Any]) -> dict[str, Any]:
    """The whole stage on a cluster; returns the meta.json written. ``report`` receives each
    worker's peak resident memory (GB).

    Workers may run in other directories, so they get absolute paths; meta.json and error
    messages keep the paths as given, as in one process.
    """
    absolute = [path.resolve() for path in paths]
    try:
        return _on_cluster(paths, absolute, out, spec, cfg, backend, options, steps, force,
                           report)
    except VaecfError as error:
        message = str(error)
        for full, path in zip(absolute, paths, strict=True):
            message = message.replace(printable(full), printable(path))
        raise VaecfError(message) from None


def _on_cluster(given: list[Path], paths: list[Path], out: Path, spec: ColumnSpec,
                cfg: PrepareSettings, backend: Backend, options: DaskOptions, steps: Steps,
                force: bool, report: dict[str, Any]) -> dict[str, Any]:
    with dask_client(backend, options) as client, cluster_errors(options):
        # The inputs' sha256 are computed by the workers, beside the other steps.
        sources = client.map(source_entry, paths)
        read = _read(client, paths, spec, cfg, options, backend.name, steps)
        parts = _shuffle(client, read, backend, options, steps)
        done = _split(client, parts, read, cfg, backend.name, steps)
        del parts
        with steps.step("writing dataset", key="write"), atomic_directory(out, force) as tmp:
            files = _write(client, str(tmp.resolve()), read, done, cfg, backend.name)
            train_nnz = sum(entry["nnz"] for entry in files["shards"])
            matrices = {shard_name(k, cfg.shards): entry
                        for k, entry in enumerate(files["shards"])}
            counts: dict[str, Any] = {"items": done["n_cols"], "train": {
                "users": int(sum(done["train_users"])), "interactions": train_nnz}}
            dropped = 0
            for key, held in files["heldout"].items():
                matrices[f"{key}-foldin"], matrices[f"{key}-target"] = held["foldin"], \
                    held["target"]
                counts[key] = held["counts"]
                dropped += held["dropped"]
            stats = {**done["stats"], "heldout_users_dropped": dropped}
            sources = [{**entry, "path": str(path)}
                       for entry, path in zip(client.gather(sources), given, strict=True)]
            meta = dataset_meta(cfg, sources, stats, counts, list(matrices)[:cfg.shards],
                                matrices, files["tables"], tuple(files["types"]))
            write_meta(tmp, meta)
        report["worker_peak_rss_gb"] = worker_peak_rss(client)
    return meta

"""Rich tables that summarise a stage's output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table


def dataset_table(meta: dict[str, Any], path: Path) -> Table:
    """Users, items, interactions and density per split of a dataset's meta.json."""
    counts = meta["counts"]
    n_items = counts["items"]
    table = Table(title=f"dataset {path}  ({n_items:,} items, seed {meta['split']['seed']})")
    for column in ("split", "users", "interactions", "fold-in", "targets", "density"):
        table.add_column(column, justify="left" if column == "split" else "right")
    train = counts["train"]
    table.add_row("train", f"{train['users']:,}", f"{train['interactions']:,}", "", "",
                  f"{train['interactions'] / max(1, train['users'] * n_items):.3%}")
    for name in ("validation", "test"):
        c = counts[name]
        total = c["foldin_interactions"] + c["target_interactions"]
        table.add_row(name, f"{c['users']:,}", f"{total:,}", f"{c['foldin_interactions']:,}",
                      f"{c['target_interactions']:,}",
                      f"{total / max(1, c['users'] * n_items):.3%}")
    stats = meta["stats"]
    table.caption = (f"{stats['rows_read']:,} rows read, {stats['unique_pairs']:,} unique pairs "
                     f"kept by rating, {stats['pairs_after_count_filters']:,} after count filters; "
                     f"{stats['heldout_users_dropped']} held-out users dropped (< 2 known items)")
    return table

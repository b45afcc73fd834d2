"""Rich tables that summarise a stage's output (the CLI layer owns every table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from vaecf.evaluation.metrics import SELECTION_METRIC
from vaecf.serving.output import rows_of


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


def stop_reason(run: Any) -> str:
    """Why training ended, in a few words, from the run's status and settings."""
    from vaecf.training.schedule import schedule_of

    t = run.settings.train
    last = run.history[-1] if run.history else {"epoch": 0, "step": 0}
    schedule = schedule_of(t, last["step"] // max(1, last["epoch"]))
    if run.status == "early-stopped":
        if schedule.automatic:
            return (f"no better validation {SELECTION_METRIC} in {schedule.patience} "
                    f"validations once β had reached its cap (epoch {schedule.earliest_stop}): "
                    f"automatic schedule, epoch {last['epoch']} of at most {t.max_epochs}")
        return (f"no better validation {SELECTION_METRIC} in {t.patience} validations "
                f"(patience), epoch {last['epoch']} of {t.epochs}")
    if run.status == "complete":
        flag = "--max-epochs" if schedule.automatic else "--epochs"
        # The history, not the settings: `--resume --epochs N` extends a run past them.
        if run.best and run.best["epoch"] >= last["epoch"] - t.validate_every:
            return (f"reached the last epoch ({last['epoch']}) still improving: "
                    f"try a larger {flag}")
        return f"reached the last epoch ({last['epoch']})"
    if run.status == "interrupted":
        return f"interrupted at epoch {run.progress.epoch} (resume with --resume)"
    return run.status


def summary_table(run: Any) -> Table:
    """Best validation metrics, epochs, time and status of a run directory."""
    history, best = run.history, run.best
    table = Table(title=f"run {run.path}  ({run.status})")
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    seconds = sum(record["seconds"] for record in history)
    rows = [("epochs trained", f"{len(history)}"), ("optimizer steps", f"{run.progress.step:,}"),
            ("training time", f"{seconds:,.1f} s")]
    if history:
        last = history[-1]
        speed = sum(r["users_per_s"] for r in history) / len(history)
        rows += [("last loss (nll + β·KL)", f"{last['loss']:.3f}"),
                 ("last β", f"{last['beta']:.3f}"), ("mean users/s", f"{speed:,.0f}")]
    rows.append(("stopped because", stop_reason(run)))
    if best:
        rows.append((f"best epoch (by validation {SELECTION_METRIC})", f"{best['epoch']}"))
        rows += [(f"validation {name}", f"{value:.4f}")
                 for name, value in best["metrics"].items() if "@" in name]
    for name, value in rows:
        table.add_row(name, value)
    return table


def to_table(recs: Any, names: list[str | None] | None, item_map: Any,
             title: str | None = None, name_header: str = "name") -> Table:
    """Recommendations (:class:`vaecf.serving.recommender.Recommendations`) as a Rich table:
    (user,) rank, item, (name,) score; a user's id only on its first row."""
    table = Table(title=title)
    if recs.users is not None:
        table.add_column("user", justify="right")
    table.add_column("#", justify="right")
    table.add_column("item", justify="right")
    if names is not None:
        table.add_column(name_header)
    table.add_column("score", justify="right")
    for row in rows_of(recs, names, item_map):
        cells = [] if recs.users is None else [str(row["user"]) if row["rank"] == 1 else ""]
        cells += [str(row["rank"]), str(row["item"])]
        if names is not None:
            cells.append(row["name"] or "")
        cells.append(f"{row['score']:.3f}")
        table.add_row(*cells)
    return table

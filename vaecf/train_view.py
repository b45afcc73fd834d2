"""What ``vaecf train`` shows: a Rich epoch bar (loss, KL, β, users/s), one line per
validation, a summary table at the end; nothing at all when quiet."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vaecf.metrics import SELECTION_METRIC
from vaecf.progress import console

TRIO = ("ndcg@100", "recall@20", "recall@50")   # the paper's reported metrics


def _metrics_text(metrics: dict[str, float]) -> str:
    return "  ".join(f"{name} {metrics[name]:.4f}" for name in TRIO if name in metrics)


class TrainView:
    """Progress of one training run (only the chief rank makes a visible one)."""

    def __init__(self, epochs: int, quiet: bool) -> None:
        self.epochs = epochs
        self.quiet = quiet
        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.2f}  KL {task.fields[kl]:.2f}  "
                       "β {task.fields[beta]:.3f}  {task.fields[speed]:,.0f} users/s"),
            TimeElapsedColumn(), console=console, disable=quiet, transient=True)
        self._task: Any = None

    def __enter__(self) -> TrainView:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def say(self, line: str) -> None:
        if not self.quiet:
            self._progress.console.print(line, markup=False, highlight=False)

    def start_epoch(self, epoch: int, batches: int, done: int) -> None:
        """Show epoch ``epoch`` (1-based) of ``batches`` steps, ``done`` already taken."""
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task("", total=batches, completed=done, epoch=epoch,
                                             epochs=self.epochs, loss=0.0, kl=0.0, beta=0.0,
                                             speed=0.0)

    def advance(self, loss: float, kl: float, beta: float, speed: float) -> None:
        self._progress.update(self._task, advance=1, loss=loss, kl=kl, beta=beta, speed=speed)

    def epoch_done(self, record: dict[str, Any], best: bool) -> None:
        """One line per epoch that was validated (the bar alone covers the others)."""
        if "validation" not in record:
            return
        mark = "  (best)" if best else ""
        self.say(f"epoch {record['epoch']:>3}  loss {record['loss']:.1f}  "
                 f"β {record['beta']:.3f}  {record['users_per_s']:,.0f} users/s  "
                 f"{_metrics_text(record['validation'])}{mark}")


def summary_table(run: Any) -> Table:
    """Best validation metrics, epochs, time and status of a run directory."""
    history, best = run.history, run.best
    table = Table(title=f"run {run.path}  ({run.status})")
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    seconds = sum(record["seconds"] for record in history)
    rows = [("epochs trained", f"{len(history)}"), ("optimizer steps", f"{run.progress['step']:,}"),
            ("training time", f"{seconds:,.1f} s")]
    if history:
        last = history[-1]
        speed = sum(r["users_per_s"] for r in history) / len(history)
        rows += [("last loss (nll + β·KL)", f"{last['loss']:.3f}"),
                 ("last β", f"{last['beta']:.3f}"), ("mean users/s", f"{speed:,.0f}")]
    if best:
        rows.append((f"best epoch (by validation {SELECTION_METRIC})", f"{best['epoch']}"))
        rows += [(f"validation {name}", f"{value:.4f}")
                 for name, value in best["metrics"].items() if "@" in name]
    for name, value in rows:
        table.add_row(name, value)
    return table

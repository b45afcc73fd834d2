"""What ``vaecf train`` shows while it runs: a Rich epoch bar (loss, KL, β, users/s) and one
log line per validation; no bar when quiet or on ranks other than 0."""

from __future__ import annotations

import logging
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vaecf.progress import console
from vaecf.training.schedule import Schedule

log = logging.getLogger("vaecf")

TRIO = ("ndcg@100", "recall@20", "recall@50")   # the paper's reported metrics


def _metrics_text(metrics: dict[str, float]) -> str:
    return "  ".join(f"{name} {metrics[name]:.4f}" for name in TRIO if name in metrics)


class TrainView:
    """Progress of one training run (only the chief rank makes a visible one)."""

    def __init__(self, schedule: Schedule, quiet: bool) -> None:
        # The automatic schedule ends by validation: show its limit as one ("≤1000").
        self.epochs = f"≤{schedule.last_epoch}" if schedule.automatic else str(schedule.last_epoch)
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
        log.info("epoch %3d  loss %.1f  β %.3f  %s users/s  %s%s", record["epoch"],
                 record["loss"], record["beta"], f"{record['users_per_s']:,.0f}",
                 _metrics_text(record["validation"]), mark)

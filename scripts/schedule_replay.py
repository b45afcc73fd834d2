"""Replay the automatic training schedule on finished fixed-epoch runs: where would it have
stopped, and with which best validation NDCG@100?

A run trained for a fixed N epochs follows, epoch for epoch, the trajectory the automatic
schedule would follow with ``--plan-epochs N`` (same β annealing, same seeds), so its history
tells exactly where ``vaecf.training.schedule`` stops it (as long as that is within the N
epochs). Prints a Markdown table.

Usage (from a checkout)::

    python scripts/schedule_replay.py /work/exp/runs/ml1m-noise-0-01 /work/exp/recvae/ml1m-default
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vaecf.evaluation.metrics import SELECTION_METRIC
from vaecf.model.rundir import RunDir
from vaecf.training.schedule import schedule_of


def replay(path: Path) -> dict:
    """The automatic schedule's stop on the run in ``path`` (validation records only)."""
    run = RunDir.open(path)
    t = run.settings.train
    steps = run.history[-1]["step"] // run.history[-1]["epoch"]
    schedule = schedule_of(t.model_copy(update={"epochs": None, "plan_epochs": t.epochs}),
                           steps)
    best, best_epoch, bad, stop = -1.0, 0, 0, None
    for record in run.history:
        if "validation" not in record:
            continue
        value = record["validation"][SELECTION_METRIC]
        best, best_epoch, bad = (value, record["epoch"], 0) if value > best else (best,
                                                                                  best_epoch,
                                                                                  bad + 1)
        if schedule.stops(record["epoch"], bad):
            stop = record["epoch"]
            break
    overall = max((r for r in run.history if "validation" in r),
                  key=lambda r: r["validation"][SELECTION_METRIC])
    seconds = [r["seconds"] for r in run.history]
    end = stop or run.history[-1]["epoch"]
    return {"run": path.name, "model": run.settings.model.name, "epochs": t.epochs,
            "best": overall["validation"][SELECTION_METRIC], "best_epoch": overall["epoch"],
            "stop": stop, "auto_best": best, "auto_best_epoch": best_epoch,
            "time_share": sum(seconds[:end]) / sum(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (fixed --epochs)")
    args = parser.parse_args()
    print("| run | model | fixed: best val NDCG@100 (epoch) | automatic: stops at | "
          "automatic: best val NDCG@100 (epoch) | training time |")
    print("|---|---|---|---|---|---|")
    for path in args.runs:
        r = replay(path)
        stop = f"epoch {r['stop']}" if r["stop"] else f"not before {r['epochs']}"
        print(f"| {r['run']} | {r['model']} | {r['best']:.4f} ({r['best_epoch']}) | {stop} | "
              f"{r['auto_best']:.4f} ({r['auto_best_epoch']}) | {r['time_share']:.0%} |")


if __name__ == "__main__":
    main()

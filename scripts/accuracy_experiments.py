"""Run Mult-VAE training variants one after another and print a Markdown table of their best
validation NDCG@100 (never test users), best epoch and training time.

Usage (from a checkout, datasets prepared as in docs/accuracy.md)::

    python scripts/accuracy_experiments.py --data ml1m=/work/exp/ml1m --runs /work/exp/runs \\
        --variant "defaults=" --variant "noise 0.01=--noise-std 0.01" ...

Each variant is ``NAME=FLAGS``: extra ``vaecf train`` flags. Runs are sequential (one training
job at a time); each run's per-epoch log is kept as ``RUNS/<data>-<slug>.jsonl`` and a run
already logged to the end is not trained again.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def summarise(log: Path) -> dict:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    validated = [r for r in records if "validation" in r]
    best = max(validated, key=lambda r: r["validation"]["ndcg@100"])
    return {"best": best["validation"]["ndcg@100"], "epoch": best["epoch"],
            "epochs": records[-1]["epoch"], "steps": records[-1]["step"],
            "seconds": sum(r["seconds"] for r in records),
            "last": validated[-1]["validation"]["ndcg@100"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True, help="NAME=DATASET_DIR")
    parser.add_argument("--variant", action="append", required=True, help="NAME=FLAGS")
    parser.add_argument("--runs", type=Path, required=True, help="folder for runs and logs")
    parser.add_argument("--common", default="", help="flags added to every run")
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    print("| data | setting | best val NDCG@100 | best epoch | epochs run | steps | last val "
          "NDCG@100 | train time |")
    print("|---|---|---|---|---|---|---|---|")
    for data in args.data:
        data_name, data_dir = data.split("=", 1)
        for variant in args.variant:
            name, flags = variant.split("=", 1)
            stem = f"{data_name}-{slug(name) or 'defaults'}"
            log = args.runs / f"{stem}.jsonl"
            if not (args.runs / stem / "run.json").exists() or not log.exists():
                log.unlink(missing_ok=True)
                command = [sys.executable, "-m", "vaecf", "train", "--data", data_dir,
                           "--out", str(args.runs / stem), "--force", "--quiet",
                           "--log-json", str(log), *shlex.split(args.common),
                           *shlex.split(flags)]
                started = time.perf_counter()
                subprocess.run(command, check=True)
                print(f"<!-- {stem}: {time.perf_counter() - started:.0f} s wall -->",
                      file=sys.stderr)
            s = summarise(log)
            print(f"| {data_name} | {name} | {s['best']:.4f} | {s['epoch']} | {s['epochs']} | "
                  f"{s['steps']:,} | {s['last']:.4f} | {s['seconds']:.0f} s |", flush=True)


if __name__ == "__main__":
    main()

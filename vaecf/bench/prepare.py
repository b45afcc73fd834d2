"""``vaecf bench prepare``: time ``vaecf prepare`` end to end on a synthetic ML-20M-shaped CSV.

The CSV is generated once and cached. ``prepare`` runs as a child process (the real CLI, start-up
included) so its peak resident memory can be read from the kernel (``wait4`` rusage). Beside it,
in the same run, a bare multithreaded ``pyarrow.csv.read_csv`` of the same file (no filter, no
split, nothing written): prepare's rows/s as a share of that read is comparable across machines.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vaecf.atomic import make_directory
from vaecf.bench.synthetic import ML20M_SHAPE, write_ratings_csv

log = logging.getLogger("vaecf")


def run(workdir: Path, rows: int, backend: str = "cpu") -> dict[str, Any]:
    """Generate (if needed) and prepare the synthetic file; returns the measured figures."""
    make_directory(workdir, "--workdir")
    scale = rows / ML20M_SHAPE["rows"]
    n_users = max(100, round(ML20M_SHAPE["users"] * scale))
    n_items = max(100, round(ML20M_SHAPE["items"] * min(1.0, scale * 4)))
    source = workdir / f"synthetic-{rows}.csv"
    if not source.exists():
        log.info(f"generating {source} ({rows:,} rows, {n_users:,} users, {n_items:,} items)...")
        write_ratings_csv(source, rows, n_users, n_items)
    out = workdir / "prepared"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "vaecf", "prepare", str(source), "--rating-col", "rating",
               "--min-rating", "3.5", "--out", str(out), "--backend", backend, "--quiet",
               "--force"]
    start = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"prepare failed with exit code {child.returncode}")
    import json

    import pyarrow.csv as pacsv

    started = time.perf_counter()
    bare_rows = pacsv.read_csv(source).num_rows
    bare_seconds = time.perf_counter() - started
    meta = json.loads((out / "meta.json").read_text())
    n = meta["stats"]["rows_read"]
    return {
        "rows": n,
        "seconds": seconds,
        "rows_per_s": n / seconds,
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,  # ru_maxrss is in KiB on Linux
        "file_mb": source.stat().st_size / 1e6,
        "train_users": meta["counts"]["train"]["users"],
        "items": meta["counts"]["items"],
        "bare_read_seconds": bare_seconds,
        "bare_read_rows_per_s": bare_rows / bare_seconds,
        "of_bare_read": (n / seconds) / (bare_rows / bare_seconds),
    }

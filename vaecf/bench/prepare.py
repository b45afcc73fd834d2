"""``vaecf bench prepare``: time ``vaecf prepare`` end to end on a synthetic ML-20M-shaped CSV.

The CSV is generated once and cached. ``prepare`` runs as a child process (the real CLI, start-up
included); it reports each step's seconds and its own peak resident memory through
``--timings`` (with a local dask cluster, the scheduler runs in that process and counts, and
each worker reports its own peak). Beside it, in the same run, a bare multithreaded
``pyarrow.csv.read_csv`` of the same file (no filter, no split, nothing written): prepare's
rows/s as a share of that read is comparable across machines. With ``--dask`` the
single-process path runs too, on the same file, and the two datasets are compared file by
file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vaecf.atomic import make_directory
from vaecf.bench.synthetic import ML20M_SHAPE

log = logging.getLogger("vaecf")


SINGLE, DASK = "prepared", "prepared-dask"   # the datasets run() writes in the workdir


def _source(workdir: Path, rows: int) -> Path:
    return workdir / f"synthetic-{rows}.csv"


def _timings(out: Path) -> Path:
    return out.with_name(out.name + "-timings.json")


def work_paths(workdir: Path, rows: int) -> list[Path]:
    """What :func:`run` reads and writes in ``workdir`` for ``rows`` rows (no other output of
    the benchmark may be one of them): the cached CSV, the datasets and their timings."""
    outs = [workdir / SINGLE, workdir / DASK]
    return [_source(workdir, rows), *outs, *map(_timings, outs)]


def synthetic_file(workdir: Path, rows: int) -> Path:
    """The cached synthetic CSV of about ``rows`` rows (users and items scale with it)."""
    make_directory(workdir, "--workdir")
    scale = rows / ML20M_SHAPE["rows"]
    n_users = max(100, round(ML20M_SHAPE["users"] * scale))
    n_items = max(100, round(ML20M_SHAPE["items"] * min(1.0, scale * 4)))
    source = _source(workdir, rows)
    if not source.exists():
        log.info(f"generating {source} ({rows:,} rows, {n_users:,} users, {n_items:,} items)...")
        # In a child process: a child's peak RSS starts from its parent's at the fork, so
        # the generator's memory would otherwise show up as prepare's.
        code = ("import sys; from pathlib import Path; from vaecf.bench.synthetic import "
                "write_ratings_csv; write_ratings_csv(Path(sys.argv[1]), *map(int, sys.argv[2:]))")
        subprocess.run([sys.executable, "-c", code, str(source), str(rows), str(n_users),
                        str(n_items)], check=True)
    return source


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir())}


def prepare_once(source: Path, out: Path, backend: str, dask: list[str] | None) -> dict[str, Any]:
    """One ``vaecf prepare`` child process on ``source``; its figures."""
    shutil.rmtree(out, ignore_errors=True)
    timings = _timings(out)
    command = [sys.executable, "-m", "vaecf", "prepare", str(source), "--rating-col", "rating",
               "--min-rating", "3.5", "--out", str(out), "--backend", backend, "--quiet",
               "--force", "--timings", str(timings), *(["--dask", *dask] if dask is not None
                                                      else [])]
    start = time.perf_counter()
    code = subprocess.run(command).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"prepare failed with exit code {code}")
    report = json.loads(timings.read_text())
    timings.unlink()
    meta = json.loads((out / "meta.json").read_text())
    n = meta["stats"]["rows_read"]
    return {"rows": n, "seconds": seconds, "rows_per_s": n / seconds,
            "peak_rss_gb": report["peak_rss_gb"],
            "worker_peak_rss_gb": report.get("worker_peak_rss_gb", []),
            "stages": report["stages"], "train_users": meta["counts"]["train"]["users"],
            "items": meta["counts"]["items"]}


def run(workdir: Path, rows: int, backend: str = "cpu",
        dask: list[str] | None = None, single: bool = True) -> dict[str, Any]:
    """Generate (if needed) and prepare the synthetic file; returns the measured figures.

    Args:
        dask: ``prepare --dask`` flags (workers, memory, block size, shuffle), or None for
            the single-process path only.
        single: with ``dask``, also run the single-process path and compare the datasets.
    """
    source = synthetic_file(workdir, rows)
    result: dict[str, Any] = {"file_mb": source.stat().st_size / 1e6}
    if dask is None or single:
        result["single"] = prepare_once(source, workdir / SINGLE, backend, None)
    if dask is not None:
        result["dask"] = prepare_once(source, workdir / DASK, backend, dask)
        result["dask"]["flags"] = dask
        if single:
            result["dask"]["of_single"] = (result["dask"]["rows_per_s"]
                                           / result["single"]["rows_per_s"])
            result["identical"] = (_digests(workdir / SINGLE)
                                   == _digests(workdir / DASK))
    result["rows"] = (result.get("single") or result["dask"])["rows"]
    if single:   # the bare read holds the whole table: skipped with the single path
        import pyarrow.csv as pacsv

        started = time.perf_counter()
        bare_rows = pacsv.read_csv(source).num_rows
        result["bare_read_rows_per_s"] = bare_rows / (time.perf_counter() - started)
        for key in ("single", "dask"):
            if key in result:
                result[key]["of_bare_read"] = (result[key]["rows_per_s"]
                                               / result["bare_read_rows_per_s"])
    return result

"""``vaecf bench prepare``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from vaecf.cli.common import bench_app, summary

HELP = """Time `vaecf prepare` end to end on a synthetic MovieLens-20M-shaped CSV and report rows/s,
peak memory and each step's seconds; with --dask, the dask path beside the single-process one
on the same file, each worker's peak memory, and whether the two datasets are identical.

Example: [bold]vaecf bench prepare --rows 100000000 --dask --workers 2 --worker-memory 4GB[/]"""


@bench_app.command("prepare", help=HELP, short_help=summary(HELP))
def bench_prepare(
    rows: Annotated[int, typer.Option(help="Rows of the synthetic ML-20M-shaped CSV "
                                      "(users and items scale with it).")] = 20_000_263,
    workdir: Annotated[Path, typer.Option(
        help="Where the CSV (cached) and the datasets go.")] = Path("/tmp/vaecf-bench"),
    backend: Annotated[Literal["cpu", "gpu"], typer.Option(
        help="Backend prepare runs on.")] = "cpu",
    dask: Annotated[bool, typer.Option(
        "--dask", metavar="", help="Also time `prepare --dask` on a local cluster.")] = False,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="--dask: worker processes (one thread each).",
        show_default="prepare's")] = None,
    worker_memory: Annotated[str | None, typer.Option(
        "--worker-memory", help="--dask: memory limit of each worker, e.g. 4GB.",
        show_default="prepare's")] = None,
    blocksize: Annotated[str | None, typer.Option(
        "--blocksize", help="--dask: bytes of CSV per partition, e.g. 64MB.",
        show_default="prepare's")] = None,
    shuffle: Annotated[Literal["tasks", "p2p"] | None, typer.Option(
        "--shuffle", help="--dask: dask's shuffle method.", show_default="prepare's")] = None,
    single: Annotated[bool, typer.Option(
        "--single/--no-single", metavar="", help="With --dask, also run the single-process "
        "path (and the bare read) on the same file; --no-single for inputs too big for one "
        "process.")] = True,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results to this JSON file.", dir_okay=False)] = None,
) -> None:
    import json

    from vaecf.atomic import check_outputs, write_text
    from vaecf.bench.prepare import run, work_paths
    from vaecf.errors import VaecfError
    from vaecf.progress import console

    if rows < 1:
        raise VaecfError(f"--rows must be at least 1, got {rows:,}")
    flags = {"--workers": workers, "--worker-memory": worker_memory, "--blocksize": blocksize,
             "--shuffle": shuffle}
    if not dask and any(v is not None for v in flags.values()):
        raise VaecfError("--workers, --worker-memory, --blocksize and --shuffle need --dask")
    if not dask and not single:
        raise VaecfError("--no-single needs --dask (there would be nothing to time)")
    check_outputs({"--json": json_out}, work_paths(workdir, rows))
    dask_flags = ([item for key, value in flags.items() if value is not None
                   for item in (key, str(value))] if dask else None)
    result = run(workdir, rows, backend, dask_flags, single)
    console.print(_table(result))
    if json_out is not None:
        write_text(json_out, json.dumps(result, indent=2) + "\n")


def _table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    paths = [key for key in ("single", "dask") if key in result]
    table = Table(title=f"vaecf bench prepare: {result['rows']:,} rows, "
                  f"{result['file_mb']:,.0f} MB CSV")
    table.add_column("measure")
    for key in paths:
        table.add_column("one process" if key == "single" else "dask "
                         + " ".join(result[key]["flags"]), justify="right")

    def row(label: str, cell) -> None:
        table.add_row(label, *[cell(result[key]) for key in paths])

    row("wall time (CLI start-up included)", lambda r: f"{r['seconds']:.2f} s")
    row("throughput", lambda r: f"{r['rows_per_s']:,.0f} rows/s")
    if "bare_read_rows_per_s" in result:
        row("share of a bare pyarrow read "
            f"({result['bare_read_rows_per_s']:,.0f} rows/s, same run)",
            lambda r: f"{r['of_bare_read']:.0%}")
    row("peak resident memory, prepare (client) process",
        lambda r: f"{r['peak_rss_gb']:.2f} GB")
    row("peak resident memory, each worker", lambda r: ", ".join(
        f"{gb:.2f}" for gb in r["worker_peak_rss_gb"]) + " GB" if r["worker_peak_rss_gb"]
        else "")
    stages = list(dict.fromkeys(s for key in paths for s in result[key]["stages"]))
    for stage in stages:
        row(f"  step: {stage}", lambda r, s=stage: f"{r['stages'][s]:.2f} s"
            if s in r["stages"] else "")
    row("training users / items", lambda r: f"{r['train_users']:,} / {r['items']:,}")
    if "dask" in result and "of_single" in result["dask"]:
        table.add_row("dask / one process, rows/s", "", f"{result['dask']['of_single']:.2f}x")
        table.add_row("datasets byte-identical", "", "yes" if result["identical"] else "NO")
    return table

"""``vaecf bench prepare``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from vaecf.cli.common import bench_app, summary

HELP = """Time `vaecf prepare` end to end on a synthetic MovieLens-20M-shaped CSV and report rows/s
and peak memory (target on a 2-core CPU: >= 1,000,000 rows/s, < 4 GB)."""


@bench_app.command("prepare", help=HELP, short_help=summary(HELP))
def bench_prepare(
    rows: Annotated[int, typer.Option(help="Rows of the synthetic ML-20M-shaped CSV "
                                      "(users and items scale with it).")] = 20_000_263,
    workdir: Annotated[Path, typer.Option(
        help="Where the CSV (cached) and the dataset go.")] = Path("/tmp/vaecf-bench"),
    backend: Annotated[Literal["cpu", "gpu"], typer.Option(
        help="Backend prepare runs on.")] = "cpu",
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results to this JSON file.", dir_okay=False)] = None,
) -> None:
    import json

    from rich.table import Table

    from vaecf.atomic import check_writable, write_text
    from vaecf.bench.prepare import run
    from vaecf.errors import VaecfError
    from vaecf.progress import console

    if rows < 1:
        raise VaecfError(f"--rows must be at least 1, got {rows:,}")

    check_writable(json_out, "--json")
    result = run(workdir, rows, backend)
    table = Table(title="vaecf bench prepare")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("input rows", f"{result['rows']:,}")
    table.add_row("input size", f"{result['file_mb']:,.0f} MB")
    table.add_row("wall time (CLI start-up included)", f"{result['seconds']:.2f} s")
    table.add_row("throughput", f"{result['rows_per_s']:,.0f} rows/s")
    table.add_row("bare pyarrow read of the same file (same run)",
                  f"{result['bare_read_rows_per_s']:,.0f} rows/s")
    table.add_row("prepare / bare read", f"{result['of_bare_read']:.0%}")
    table.add_row("peak resident memory", f"{result['peak_rss_gb']:.2f} GB")
    table.add_row("training users / items", f"{result['train_users']:,} / {result['items']:,}")
    console.print(table)
    if json_out is not None:
        write_text(json_out, json.dumps(result, indent=2) + "\n")

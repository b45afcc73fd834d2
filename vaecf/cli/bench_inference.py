"""``vaecf bench inference``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vaecf.cli.common import bench_app, summary

HELP = """Serving speed of a trained run on this machine: large-batch throughput (users/s, top-k
included) as a fraction of the measured matmul FLOP ceiling, and single-user latency
p50/p90/p99 of the call `vaecf recommend` makes.

Examples: [bold]vaecf bench inference --run runs/ml --json bench-inference.json[/]
[bold]vaecf bench inference --synthetic[/]  (a 20,000-item model, built once)"""


@bench_app.command("inference", help=HELP, short_help=summary(HELP))
def bench_inference(
    run: Annotated[Path | None, typer.Option(
        "--run", help="Run directory written by `vaecf train`.", file_okay=False,
        show_default=False)] = None,
    synthetic: Annotated[bool, typer.Option(
        "--synthetic",
        metavar="", help="Instead of --run: a 20,000-item model trained one epoch on "
        "synthetic data (built once into --workdir).")] = False,
    workdir: Annotated[Path, typer.Option(
        help="Where --synthetic keeps its data and run.")] = Path("/tmp/vaecf-bench"),
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Users per batch for the throughput figure.")] = 24576,
    top_k: Annotated[int, typer.Option(
        "--top-k", min=1, help="Items selected per user in the throughput figure.")] = 100,
    single_calls: Annotated[int, typer.Option(
        "--single-calls", min=200, help="Single-user calls timed for the latency figures.")] = 200,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the figures to this JSON file.", dir_okay=False,
        show_default=False)] = None,
) -> None:
    from rich.table import Table

    from vaecf.atomic import check_writable, write_text
    from vaecf.bench.inference import run as run_bench
    from vaecf.bench.inference import synthetic_run
    from vaecf.errors import VaecfError
    from vaecf.progress import console

    check_writable(json_out, "--json")


    if (run is None) == (not synthetic):
        raise VaecfError("give exactly one of --run RUN or --synthetic")
    if synthetic:
        run = synthetic_run(workdir)
    r = run_bench(run, batch_size, top_k, single_calls)
    table = Table(title=f"vaecf bench inference  ({r['items']:,} items, H={r['hidden']}, "
                        f"L={r['latent']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    lat = r["latency_ms"]
    for name, value in [
        (f"throughput, batch {r['batch_size']:,}, top {r['top_k']}",
         f"{r['users_per_s']:,.0f} users/s"),
        ("model FLOP/s in those batches", f"{r['gflops']:.1f} GFLOP/s"),
        ("matmul ceiling (decoder shape, same run)", f"{r['ceiling_gflops']:.1f} GFLOP/s"),
        ("fraction of ceiling", f"{r['fraction_of_ceiling']:.0%}"),
        (f"single user p50 / p90 / p99 ({r['single_calls']} calls, top {r['single_top_k']})",
         f"{lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f} ms"),
        ("memory floor of one user (bytes read / bandwidth)",
         f"{r['weight_mb']:.1f} MB / {r['memory_gb_per_s']:.1f} GB/s = "
         f"{r['latency_floor_ms']:.2f} ms"),
    ]:
        table.add_row(name, value)
    console.print(table)
    if json_out is not None:
        write_text(json_out, json.dumps(r, indent=2) + "\n")

"""``vaecf bench inference``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from vaecf.cli.common import bench_app, run_inputs, summary

HELP = """Serving speed of a trained run on this machine: large-batch throughput (users/s, top-k
included) as a fraction of the measured matmul FLOP ceiling, and single-user latency
p50/p90/p99 of the call `vaecf recommend` makes beside a bare one-user forward (the same
matmuls, nothing else) and the memory floor, all measured in the same run. With --precision bf16
fp32 is measured too, interleaved, and the agreement of the two on the run's test users.

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
    precision: Annotated[Literal["fp32", "bf16"], typer.Option(
        "--precision", help="Weights served in fp32 or bf16 (bf16 is compared with fp32).")
                         ] = "fp32",
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the figures to this JSON file.", dir_okay=False,
        show_default=False)] = None,
) -> None:
    from rich.table import Table

    from vaecf.atomic import check_outputs, write_text
    from vaecf.bench.inference import run as run_bench
    from vaecf.bench.inference import synthetic_paths, synthetic_run
    from vaecf.errors import VaecfError
    from vaecf.progress import console

    if (run is None) == (not synthetic):
        raise VaecfError("give exactly one of --run RUN or --synthetic")
    check_outputs({"--json": json_out},
                  synthetic_paths(workdir) if synthetic else run_inputs(run))
    if synthetic:
        run = synthetic_run(workdir)
    r = run_bench(run, batch_size, top_k, single_calls, precision=precision)
    table = Table(title=f"vaecf bench inference  ({r['items']:,} items, H={r['hidden']}, "
                        f"L={r['latent']})")
    table.add_column("figure")
    shown = [r] + ([r["fp32"]] if "fp32" in r else [])
    for f in shown:
        table.add_column(f["precision"], justify="right")

    def row(name, cell):
        table.add_row(name, *[cell(f) for f in shown])

    row(f"throughput, {r['batch_size']:,} users in batches of {r['scoring_batch']:,}, "
        f"top {r['top_k']}", lambda f: f"{f['users_per_s']:,.0f} users/s")
    row("model FLOP/s in those batches", lambda f: f"{f['gflops']:.1f} GFLOP/s")
    row("matmul ceiling (decoder shape, same run)", lambda f: f"{f['ceiling_gflops']:.1f} GFLOP/s")
    row("fraction of ceiling", lambda f: f"{f['fraction_of_ceiling']:.0%}")
    row(f"single user p50 / p90 / p99 ({r['single_calls']} calls, top {r['single_top_k']})",
        lambda f: " / ".join(f"{f['latency_ms'][q]:.2f}" for q in ("p50", "p90", "p99")) + " ms")
    row("bare one-user forward p50 (same matmuls, interleaved)",
        lambda f: f"{f['bare_forward_p50_ms']:.2f} ms")
    row("single user p50 / bare forward p50", lambda f: f"{f['p50_over_bare_forward']:.2f}x")
    row(f"memory floor of one user (bytes read / {r['memory_gb_per_s']:.1f} GB/s)",
        lambda f: f"{f['weight_mb']:.1f} MB = {f['latency_floor_ms']:.2f} ms")
    if "fp32" in r:
        table.add_row(f"{precision} / fp32: single user p50, throughput",
                      f"{r['p50_over_fp32']:.2f}x, {r['throughput_over_fp32']:.2f}x", "")
        if "agreement" in r:
            a = r["agreement"]
            table.add_row(f"top-{a['overlap_k']} overlap with fp32 ({a['users']:,} test users)",
                          f"{a['top_k_overlap']:.1%}", "")
            table.add_row(f"test NDCG@{a['ndcg_cutoff']} (difference)",
                          f"{a['ndcg']:.4f} ({a['ndcg_difference']:+.4f})",
                          f"{a['ndcg_reference']:.4f}")
    console.print(table)
    if json_out is not None:
        write_text(json_out, json.dumps(r, indent=2) + "\n")

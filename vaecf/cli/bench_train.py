"""``vaecf bench train``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from vaecf.cli.common import BackendOption, ConfigOption, bench_app, summary

HELP = """Training throughput (users/s) and the fraction of this machine's dense-matmul FLOP/s
ceiling (measured in the same run) it reaches, on a dataset or on synthetic data shaped like
MovieLens-20M (20,000 items, ~70 items per user).

Example: [bold]vaecf bench train --synthetic 4000 --batch-size 500,2000 --compare[/]"""


@bench_app.command("train", help=HELP, short_help=summary(HELP))
def bench_train(
    data: Annotated[Path | None, typer.Option(
        "--data", "-d", help="Dataset directory whose training users are used.",
        file_okay=False)] = None,
    synthetic: Annotated[int | None, typer.Option(
        "--synthetic", help="Instead of --data: this many synthetic ML-20M-shaped users "
        "(20,000 items, ~70 items each).", show_default=False)] = None,
    batch_size: Annotated[str, typer.Option(
        "--batch-size", help="Comma-separated batch sizes to time.")] = "500",
    model: Annotated[Literal["multvae", "recvae"] | None, typer.Option(
        "--model", help="multvae or recvae (RecVAE's steps are timed in its cycle's "
        "proportion of encoder and decoder steps).", show_default="multvae")] = None,
    amp: Annotated[bool, typer.Option(
        "--amp/--no-amp",
        metavar="", help="Mixed precision (bfloat16 on this CPU, float16 on GPU).")
                   ] = False,
    compare: Annotated[bool, typer.Option(
        "--compare",
        metavar="", help="Time float32 and mixed precision side by side (rounds interleaved), "
        "each against the ceiling of its own compute dtype.")] = False,
    xla: Annotated[bool, typer.Option("--xla/--no-xla",
        metavar="", help="XLA-compile the step.")] = False,
    steps: Annotated[int, typer.Option(min=1, help="Timed steps per round.")] = 10,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds per batch size (best kept).")] = 3,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results to this JSON file.", dir_okay=False)] = None,
    backend: BackendOption = None,
    np: Annotated[int | None, typer.Option(
        "--np", help="Time N data-parallel CPU ranks (Horovod over Gloo), each on its share of "
        "the users with --batch-size users per step; users/s is the whole job's.",
        show_default="1")] = None,
    config: ConfigOption = None,
) -> None:
    import logging

    from rich.console import Console
    from rich.table import Table

    from vaecf.atomic import check_outputs, write_text
    from vaecf.bench.train import bench, synthetic_matrix
    from vaecf.data.dataset import Dataset
    from vaecf.errors import VaecfError
    from vaecf.settings import load_settings
    from vaecf.training.distributed import communicator
    from vaecf.training.launch import enter_job

    check_outputs({"--json": json_out}, [data, config])

    try:
        sizes = [int(part) for part in batch_size.split(",") if part.strip()]
    except ValueError:
        raise VaecfError(f"--batch-size: expected comma-separated integers, got {batch_size!r}"
                         ) from None
    if not sizes or min(sizes) < 1:
        raise VaecfError(f"--batch-size: batch sizes must be positive, got {batch_size!r}")
    if (data is None) == (synthetic is None):
        raise VaecfError("give either --data DIR or --synthetic USERS")
    if synthetic is not None and synthetic < max(sizes):
        raise VaecfError(f"--synthetic {synthetic}: need at least one full batch "
                         f"({max(sizes)} users)")
    settings = load_settings(config, train=dict(amp=amp, xla=xla, backend=backend),
                             model=dict(name=model))
    entered = enter_job(settings, sys.argv[1:], np=np)
    if entered is None:   # this process only started the ranks, which re-ran this command
        return
    settings, chosen = entered
    comm = communicator()
    # Each rank times its own contiguous share of the users, as in training.
    if synthetic is not None:
        matrix = synthetic_matrix(synthetic)[synthetic * comm.rank // comm.size:
                                             synthetic * (comm.rank + 1) // comm.size]
    else:
        matrix = Dataset.open(data).train_rows_for_rank(comm.rank, comm.size)
    if matrix.shape[0] < max(sizes):
        raise VaecfError(f"{data or 'synthetic'}: {matrix.shape[0]} training users per rank, "
                         f"fewer than one batch of {max(sizes)}")
    source = f"synthetic ML-20M shape, {synthetic:,} users" if data is None else str(data)
    logging.getLogger("vaecf").info("%s: %s items, %.1f items/user", source,
                                    f"{matrix.shape[1]:,}", matrix.nnz / matrix.shape[0])
    results = bench(matrix, settings, sizes, chosen, steps, rounds, comm=comm,
                    precisions=["fp32", "amp"] if compare else None)
    if not comm.is_chief:
        return
    ranks = f", {comm.size} ranks" if comm.size > 1 else ""
    table = Table(title=f"vaecf bench train  ({settings.model.name}, {source}, "
                        f"H={settings.model.hidden}, "
                        f"L={settings.model.latent}{ranks})")
    for column in ("precision", "batch", "users/s", "MFLOP/user", "GFLOP/s",
                   "ceiling GFLOP/s", "of ceiling"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r["precision"], f"{r['batch_size']:,}", f"{r['users_per_s']:,.0f}",
                      f"{r['flops_per_user'] / 1e6:.1f}", f"{r['gflops']:.1f}",
                      f"{r['ceiling_gflops']:.1f}", f"{r['fraction']:.0%}")
    by_batch: dict[int, dict[str, float]] = {}
    for r in results:
        by_batch.setdefault(r["batch_size"], {})[r["precision"]] = r["users_per_s"]
    ratios = [f"batch {b:,}: {p} {v[p] / v['float32']:.2f}x float32"
              for b, v in by_batch.items() if "float32" in v for p in v if p != "float32"]
    if ratios:
        table.caption = "; ".join(ratios)
    Console().print(table)   # the result goes to stdout, progress to stderr
    if json_out is not None:
        write_text(json_out, json.dumps(results, indent=2) + "\n")

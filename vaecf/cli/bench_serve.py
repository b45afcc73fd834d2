"""``vaecf bench serve``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from vaecf.cli.common import bench_app, run_inputs, summary

HELP = (
    "The HTTP service under load: starts `vaecf serve` on a free loopback port, drives it with "
    "N requests per concurrency level from async HTTP clients, and prints requests/s, latency "
    "p50/p90/p99, mean users per model call (dynamic batching), errors, the server's memory "
    "before and after, the round trip of an empty endpoint, and the in-process one-user "
    "latency of the same model."
    "\n\n"
    "Example: [bold]vaecf bench serve --run runs/ml --concurrency 1,8,64 --requests 20000[/]"
)


@bench_app.command("serve", help=HELP, short_help=summary(HELP))
def bench_serve(
    run: Annotated[Path, typer.Option("--run", help="Run directory written by `vaecf train`.",
                                      file_okay=False)] = ...,
    concurrency: Annotated[str, typer.Option(
        "--concurrency", help="Comma-separated numbers of concurrent clients.")] = "1,8,64",
    requests: Annotated[int, typer.Option(
        "--requests", help="Requests per concurrency level (at least the largest level).")
    ] = 2000,
    max_batch: Annotated[int, typer.Option(
        "--max-batch", help="The server's --max-batch.")] = 256,
    max_wait_ms: Annotated[float, typer.Option(
        "--max-wait-ms", help="The server's --max-wait-ms.")] = 2.0,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", help="The server's --max-queue.")] = 1024,
    precision: Annotated[Literal["fp32", "bf16"], typer.Option(
        "--precision", help="The server's --precision (and the in-process figure's).")
                         ] = "fp32",
    workers: Annotated[int, typer.Option(
        "--workers", help="The server's --workers (processes on the port).")] = 1,
    client: Annotated[Literal["httptools", "h11", "httpx"], typer.Option(
        "--client", help="Load client: httptools (requests written whole, responses parsed by "
        "httptools' C parser, 0.03-0.06 ms of CPU per request), h11 (h11 over asyncio streams, "
        "0.12-0.3 ms) or httpx (httpx.AsyncClient, 1.5-3 ms per request on a 2-core machine: "
        "then the client, not the server, is measured).")] = "httptools",
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the figures to this JSON file.", dir_okay=False,
        show_default=False)] = None,
) -> None:
    from rich.table import Table

    from vaecf.atomic import check_outputs, write_text
    from vaecf.bench.serve import run as run_bench
    from vaecf.errors import VaecfError
    from vaecf.progress import console

    check_outputs({"--json": json_out}, run_inputs(run))
    try:
        levels = [int(part) for part in concurrency.split(",") if part.strip()]
    except ValueError:
        raise VaecfError(f"--concurrency: expected comma-separated integers, got "
                         f"{concurrency!r}") from None
    if not levels or min(levels) < 1:
        raise VaecfError(f"--concurrency: levels must be positive, got {concurrency!r}")
    if requests < max(levels):
        raise VaecfError(f"--requests {requests} is fewer than the largest concurrency level "
                         f"({max(levels)})")
    r = run_bench(run, levels, requests, ["--max-batch", str(max_batch), "--max-wait-ms",
                                          str(max_wait_ms), "--max-queue", str(max_queue),
                                          "--precision", precision, "--workers", str(workers)],
                  client, precision)

    table = Table(title=f"vaecf bench serve  ({r['items']:,} items, H={r['hidden']}, "
                        f"L={r['latent']}, {precision}; top {r['top_k']}; max batch "
                        f"{max_batch}, max wait "
                        f"{max_wait_ms:g} ms; {workers} worker{'s' * (workers > 1)}; client "
                        f"{r['client']})")
    for name in ("clients", "requests", "requests/s", "p50 ms", "p90 ms", "p99 ms",
                 "users/model call", "errors"):
        table.add_column(name, justify="right")
    for level in r["levels"]:
        lat = level["latency_ms"]
        table.add_row(str(level["concurrency"]), f"{level['requests']:,}",
                      f"{level['requests_per_s']:,.0f}", f"{lat['p50']:.2f}",
                      f"{lat['p90']:.2f}", f"{lat['p99']:.2f}",
                      f"{level['mean_batch_size']:.1f}", str(level["errors"]))
    console.print(table)

    facts = Table(title=f"{r['cpu']}, {r['cores']} cores, {r['date']}")
    facts.add_column("figure")
    facts.add_column("value", justify="right")
    floor, inproc, rss = r["empty_round_trip_ms"], r["in_process_one_user_ms"], r["rss_mb"]
    rows = [
        ("empty round trip (GET /healthz, one client) p50",
         f"{floor['p50']:.2f} ms"),
        ("in-process one-user p50 (as `bench inference`)", f"{inproc['p50']:.2f} ms"),
        ("server RSS: listening / after warm-up / after",
         f"{rss['listening']:,.0f} / {rss['warm']:,.0f} / {rss['after']:,.0f} MB"),
        ("memory after / after warm-up", f"{r['checks']['memory_after_over_warm']:.3f}"),
        ("server exit code on SIGTERM", str(r["server_exit_code"])),
        ("machine load average (1 min) before / after",
         f"{r['load_average']['before']:.1f} / {r['load_average']['after']:.1f}"),
    ]
    checks = r["checks"]
    for key, value in checks.items():
        if key.startswith("speedup_"):
            rows.append((f"requests/s, {key.split('_')[1]} clients over 1", f"{value:.1f}x"))
        elif key.startswith("p99_ms_at_"):
            rows.append((f"p99 at {key.rsplit('_', 1)[1]} clients", f"{value:.2f} ms"))
    if "one_client_p50_ms" in checks:
        rows.append(("one client p50 vs 1.5 x in-process p50 + empty round trip",
                     f"{checks['one_client_p50_ms']:.2f} vs "
                     f"{checks['one_client_p50_bound_ms']:.2f} ms"))
    for name, value in rows:
        facts.add_row(name, value)
    console.print(facts)
    if json_out is not None:
        write_text(json_out, json.dumps(r, indent=2) + "\n")

"""``vaecf serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from vaecf.cli.common import app, summary

MAX_K = 1000  # vaecf.serving.http.MAX_K, without importing FastAPI for --help

# Paragraphs after the first keep their line breaks in Typer's rich help: one source string each.
HELP = (
    "Serve a trained run over HTTP: JSON recommendations for users given as the items they "
    "interacted with, concurrent requests batched into shared model calls (dynamic batching)."
    "\n\n"
    "Endpoints: POST /v1/recommend, POST /v1/recommend:batch, GET /v1/model, GET /healthz, "
    "GET /readyz, GET /metrics (Prometheus); the OpenAPI schema is at /openapi.json, browsable "
    "at /docs. The model is loaded and warmed up before the server says where it listens. "
    "SIGTERM or Ctrl-C stops accepting, finishes the requests in flight and exits 0."
    "\n\n"
    "[bold]Throughput:[/] one process answers at most what one Python interpreter can (about "
    "2,500 requests/s for an ML-1M model on 2 cores, using about 1.1 of them); --workers N runs "
    "N processes on the same port, each with the model loaded (N times the memory), for up to "
    "about twice that on 2 cores. See docs/serving-http.md."
    "\n\n"
    "[bold]Who gets in:[/] it listens on 127.0.0.1 (this machine only) by default. Any other "
    "--host needs an API key, --api-key-env NAME (clients send [bold]Authorization: Bearer "
    "KEY[/]), or an explicit --no-auth."
    "\n\n"
    "Examples:\n"
    "[bold]vaecf serve --run runs/ml[/]\n"
    "[bold]API_KEY=$(openssl rand -hex 32) vaecf serve --run runs/ml --host 0.0.0.0 "
    "--api-key-env API_KEY[/]"
)


@app.command(help=HELP, short_help=summary(HELP))
def serve(
    run: Annotated[Path, typer.Option("--run", help="Run directory written by `vaecf train`.",
                                      file_okay=False)] = ...,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on. Anything but a loopback address needs "
        "--api-key-env or --no-auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        "--port", help="TCP port, 0-65535 (0: any free port, printed at start).")] = 8000,
    max_batch: Annotated[int, typer.Option(
        "--max-batch", help="Most users scored in one model call (1-4096).")] = 256,
    max_wait_ms: Annotated[float, typer.Option(
        "--max-wait-ms", help="Longest a batch waits to fill, in milliseconds (0-1000; it "
        "closes sooner once as large as the previous one).")] = 2.0,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", help="Most users waiting for the model (>= 1); beyond it requests get "
        "503 with Retry-After.")] = 1024,
    top_k: Annotated[int, typer.Option(
        "--top-k", help="Items per user when a request gives no k (1-1000).")] = 10,
    api_key_env: Annotated[str | None, typer.Option(
        "--api-key-env", help="Require 'Authorization: Bearer KEY' on every endpoint but "
        "/healthz, /readyz and the API docs, with KEY read from this environment variable.",
        show_default=False)] = None,
    precision: Annotated[Literal["fp32", "bf16"], typer.Option(
        "--precision", help="Weights served in fp32 (as trained) or bf16 (half the memory "
        "traffic; top lists may differ slightly, see `vaecf bench inference --precision`).")
                         ] = "fp32",
    workers: Annotated[int, typer.Option(
        "--workers", help="Server processes on the port, each with its own copy of the model "
        "and its own batches (1-64; about one per core pays, see above).")] = 1,
    no_auth: Annotated[bool, typer.Option(
        "--no-auth", metavar="", help="Allow a non-loopback --host without an API key "
        "(anyone who can reach the port can use it).")] = False,
) -> None:
    import ipaddress
    import os
    import sys
    import time

    from vaecf.errors import VaecfError

    for flag, value, low, high in (("--port", port, 0, 65535), ("--max-batch", max_batch, 1, 4096),
                                   ("--max-wait-ms", max_wait_ms, 0, 1000),
                                   ("--max-queue", max_queue, 1, None),
                                   ("--top-k", top_k, 1, MAX_K), ("--workers", workers, 1, 64)):
        # `not low <= value`: nan compares false with everything, so it is refused too.
        if not low <= value or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"from {low} to {high}"
            raise VaecfError(f"{flag} {value:g}: must be {bounds}")
    if workers > 1 and not sys.platform.startswith("linux"):
        raise VaecfError("--workers: more than one worker needs Linux (the kernel's "
                         "SO_REUSEPORT spreads connections over the workers)")
    if api_key_env is not None and no_auth:
        raise VaecfError("give --api-key-env NAME or --no-auth, not both")
    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env, "")
        if not api_key.strip():
            raise VaecfError(f"--api-key-env: environment variable {api_key_env} is not set "
                             "or empty")
        api_key = api_key.strip()
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and api_key is None and not no_auth:
        raise VaecfError(f"--host {host} is reachable from other machines: give "
                         "--api-key-env NAME (clients send 'Authorization: Bearer KEY') or "
                         "--no-auth")

    from vaecf.model.rundir import RunDir
    from vaecf.serving.http import ServeConfig, bind, load_service
    from vaecf.serving.http import serve as serve_app

    run_dir = RunDir.open(run)
    if run_dir.best is None:
        raise VaecfError(f"{run}: the run has no best weights yet (no validation finished)")
    if top_k > run_dir.n_items:
        raise VaecfError(f"--top-k {top_k} is more than the model's {run_dir.n_items:,} items")
    _stop_while_loading()
    sock = bind(host, port, listen=workers == 1)
    start = time.perf_counter()
    auth = (f"API key from ${api_key_env}" if api_key is not None
            else "none" + (" (--no-auth)" if no_auth else " (loopback only)"))

    def listening(url: str, info: dict) -> None:
        processes = f"; {workers} workers" if workers > 1 else ""
        print(f"vaecf serve: {run} ({info['kind']}, {info['items']:,} items, H={info['hidden']}, "
              f"L={info['latent']}, {precision}, best epoch {info['best_epoch']}) loaded and "
              f"warmed up in {time.perf_counter() - start:.1f} s; batches of up to {max_batch} "
              f"users, wait "
              f"<= {max_wait_ms:g} ms, queue {max_queue:,}{processes}; auth: {auth}", flush=True)
        print(f"listening on {url}", flush=True)

    config = ServeConfig(max_batch, max_wait_ms, max_queue, top_k, api_key)
    if workers == 1:
        application, info = load_service(run_dir, precision, config)
        serve_app(application, sock, lambda url: listening(url, info))
        return

    from dataclasses import replace

    from vaecf.serving.workers import Supervisor, WorkerSpec

    spec = WorkerSpec(str(run), precision, replace(config, api_key=None), api_key_env)
    code = Supervisor(spec, sock, workers).run(listening)
    if code:
        raise typer.Exit(code)


def _stop_while_loading() -> None:
    """SIGTERM or SIGHUP while the model loads and warms up (before the server takes the
    signals over): one line and exit 128 + the signal, instead of dying by it in silence."""
    import signal
    import sys

    def stop(sig: int, frame: object) -> None:
        print(f"vaecf serve: {signal.Signals(sig).name} while loading; stopped",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + sig)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)

"""``vaecf bench serve``: the HTTP service under load, measured from outside.

The server is the real one (``python -m vaecf serve`` in a subprocess on a free 127.0.0.1 port,
this checkout's code), driven by async clients in this process, each with one keep-alive
connection: :class:`HttptoolsClient` (whole requests written, responses parsed by httptools) by
default, :class:`H11Client` (h11 over asyncio streams, ``--client h11``), or
``httpx.AsyncClient`` (``--client httpx``; it spends far more CPU per request than the server
does). Figures:

- **empty round trip**: p50 of ``GET /healthz`` from one client — what HTTP, uvicorn, the
  middleware and the client cost with no model work;
- per concurrency level ``c``: ``requests`` calls of ``POST /v1/recommend`` (top
  :data:`TOP_K`) made by ``c`` clients, each sending its next request when the last one is
  answered (closed loop); requests/s, latency p50/p90/p99 as the client sees it, errors (any
  answer but 200, or a transport error), and the mean users per model call, from the server's
  own ``/metrics`` (``vaecf_batch_size_users`` sum / count over the level);
- server memory (RSS, psutil, summed over its processes under ``--workers``): once listening,
  after a warm-up of every level (the reference: caches and allocator arenas are full), and at
  the end;
- **in-process one-user p50**: the one-user latency ``vaecf bench inference`` reports (the
  same :func:`vaecf.serving.recommender.score_request` call on the same users), measured in
  this process after the server has stopped, so the two never share the CPU.

Users are the run's training users (their original item ids) when its dataset directory still
exists, else random sets of 50 items.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from vaecf.bench.inference import latency_percentiles, one_user_seconds
from vaecf.errors import VaecfError

TOP_K = 10
FLOOR_CALLS = 1000
IN_PROCESS_CALLS = 500
START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 30
_LISTENING = re.compile(r"listening on (http://\S+)")
log = logging.getLogger("vaecf")
_BATCH = re.compile(r"^vaecf_batch_size_users_(sum|count) (\S+)$", re.M)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


class Server:
    """``vaecf serve`` in a subprocess; a context manager that always stops it.

    Args:
        run: the run directory.
        args: further ``vaecf serve`` options (e.g. ["--max-batch", "64"]).
        env: extra environment variables.
    """

    def __init__(self, run: Path | str, args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        root = str(Path(__file__).resolve().parents[2])
        environ = {**os.environ, **(env or {})}
        environ["PYTHONPATH"] = os.pathsep.join(
            [root, *filter(None, environ.get("PYTHONPATH", "").split(os.pathsep))])
        environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # The server runs from the package's root: a relative --run is made absolute here.
        self.command = [sys.executable, "-m", "vaecf", "serve", "--run",
                        str(Path(run).resolve()), "--port", "0",
                        *(args or [])]
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=environ,
                                        cwd=root)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.url = self._wait_listening()

    def _wait_listening(self) -> str:
        found: dict[str, str] = {}
        ready = threading.Event()

        def read_stdout() -> None:
            for line in self.process.stdout:
                self.stdout.append(line)
                match = _LISTENING.search(line)
                if match and not ready.is_set():
                    found["url"] = match.group(1)
                    ready.set()
            ready.set()

        def read_stderr() -> None:
            for line in self.process.stderr:
                self.stderr.append(line)

        threading.Thread(target=read_stdout, daemon=True).start()
        threading.Thread(target=read_stderr, daemon=True).start()
        ready.wait(START_TIMEOUT_S)
        if "url" not in found:
            self.stop()
            last = ("".join(self.stderr).strip().splitlines() or ["(no output)"])[-1]
            raise VaecfError(f"vaecf serve did not start: {last.removeprefix('error: ')}")
        return found["url"]

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int:
        """Resident memory of the server, bytes: its processes together (``--workers``)."""
        import psutil

        process = psutil.Process(self.pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return total

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, wait for the drained exit; returns the exit code (kills after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def user_items(run: Any, n: int = 1000) -> list[list[Any]]:
    """Original item ids of ``n`` users, drawn as ``vaecf bench inference`` draws them
    (:func:`vaecf.bench.inference.sample_users`)."""
    from vaecf.bench.inference import sample_users
    from vaecf.serving.items import ItemMap

    item_map = ItemMap(run.item_ids)
    rows = sample_users(run, n)
    return [item_map.originals(rows.indices[rows.indptr[i]: rows.indptr[i + 1]])
            for i in range(rows.shape[0])]


def _batch_totals(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of vaecf_batch_size_users in a /metrics text."""
    found = dict(_BATCH.findall(metrics_text))
    return float(found.get("sum", 0)), float(found.get("count", 0))


class H11Client:
    """One keep-alive HTTP/1.1 connection: h11 (the protocol engine httpx is built on) over
    asyncio streams. The default load client: it costs 0.15-0.3 ms of CPU per request here, where an
    ``httpx.AsyncClient`` costs 1.5-3 ms, several times what the server itself spends, so with
    httpx on a 2-core machine the benchmark would mostly measure httpx."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        import h11

        self._h11 = h11
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.headers = [("host", parts.netloc), *(headers or {}).items()]
        self._conn: Any = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._conn = self._h11.Connection(self._h11.CLIENT)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """(status, body) of one request; reconnects if the server closed the connection."""
        h11 = self._h11
        if self._conn is None or self._conn.our_state is not h11.IDLE:
            await self.aclose()
            await self._connect()
        headers = [*self.headers, ("content-length", str(len(body)))]
        if body:
            headers.append(("content-type", "application/json"))
        conn = self._conn
        self._writer.write(conn.send(h11.Request(method=method, target=path, headers=headers))
                           + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        status, chunks = 0, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self._reader.read(1 << 16)
                if not data:
                    raise ConnectionError("the server closed the connection")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        return status, b"".join(chunks)

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._conn = self._reader = self._writer = None


class _ResponseReader(asyncio.Protocol):
    """The reading side of :class:`HttptoolsClient`: feeds what arrives to httptools' response
    parser and resolves the pending exchange when a whole response is in."""

    def __init__(self) -> None:
        import httptools

        self._httptools = httptools
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future | None = None
        self._chunks: list[bytes] = []
        self.closed = False

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send a whole request; (status, body) of its response."""
        self._waiter = asyncio.get_running_loop().create_future()
        self._chunks = []
        self._transport.write(request)
        return await self._waiter

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except self._httptools.HttpParserError as error:
            self._fail(ConnectionError(f"unparsable response: {error}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("the server closed the connection"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self._parser.get_status_code(), b"".join(self._chunks)))

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)


class HttptoolsClient:
    """One keep-alive HTTP/1.1 connection: each request written whole in one call, responses
    parsed by httptools (the C parser uvicorn serves with) in an :class:`asyncio.Protocol`. It
    spends a fraction of :class:`H11Client`'s CPU per request (h11 is pure Python; see
    docs/serving-http.md), so on a small machine more of the cores is left to the server."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self._headers = "".join(f"{name}: {value}\r\n" for name, value in
                                [("host", parts.netloc), *(headers or {}).items()]).encode()
        self._reader: _ResponseReader | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """(status, body) of one request; reconnects if the server closed the connection."""
        if self._reader is None or self._reader.closed:
            await self.aclose()
            _, self._reader = await asyncio.get_running_loop().create_connection(
                _ResponseReader, self.host, self.port)
        head = (f"{method} {path} HTTP/1.1\r\n".encode() + self._headers
                + b"content-length: %d\r\n" % len(body)
                + (b"content-type: application/json\r\n" if body else b"") + b"\r\n")
        return await self._reader.exchange(head + body)

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = None


class HttpxClient:
    """The same interface over an ``httpx.AsyncClient`` with one keep-alive connection."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        import httpx

        self._client = httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S,
                                         headers={"content-type": "application/json",
                                                  **(headers or {})},
                                         limits=httpx.Limits(max_connections=1))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        response = await self._client.request(method, path, content=body or None)
        return response.status_code, response.content

    async def aclose(self) -> None:
        await self._client.aclose()


CLIENTS = {"h11": H11Client, "httptools": HttptoolsClient, "httpx": HttpxClient}


@contextlib.contextmanager
def _no_collector_pauses() -> Iterator[None]:
    """This process's long-lived objects (TensorFlow's and the run's, millions) out of reach of
    Python's cyclic GC while clients are timed: a full collection over them took ~60 ms, during
    which no response was read, and every request in flight counted it as server latency
    (measured at 64 clients: p99 32.5 ms, max 90 ms; with them frozen, 29.3 and 32 ms)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _run_async(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """``coroutine`` run to the end on a fresh event loop: uvloop's where it is installed (as
    the server's), which spends less of the client's CPU per request than asyncio's own."""
    try:
        import uvloop
    except ImportError:  # Windows
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


async def _drive(url: str, bodies: list[bytes], concurrency: int, requests: int,
                 client: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """``requests`` POST /v1/recommend of ``bodies`` (JSON, encoded beforehand, used in turn)
    from ``concurrency`` closed-loop clients, each with its own keep-alive connection."""
    make = CLIENTS[client]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0

    async def worker() -> None:
        nonlocal issued
        http = make(url, headers)
        try:
            while issued < requests:
                body = bodies[issued % len(bodies)]
                issued += 1
                start = time.perf_counter()
                try:
                    # Not asyncio.wait_for: that runs each request in a task of its own.
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        status, _ = await http.request("POST", "/v1/recommend", body)
                    kind = None if status == 200 else str(status)
                except Exception as error:  # noqa: BLE001 - any failure counts as an error
                    kind = type(error).__name__
                    await http.aclose()
                    http = make(url, headers)
                latencies.append(time.perf_counter() - start)
                if kind is not None:
                    errors[kind] = errors.get(kind, 0) + 1
        finally:
            await http.aclose()

    async def batch_totals() -> tuple[float, float]:
        scrape = make(url, headers)  # a fresh connection: an idle one may have timed out
        try:
            return _batch_totals((await scrape.request("GET", "/metrics"))[1].decode())
        finally:
            await scrape.aclose()

    before = await batch_totals()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    after = await batch_totals()
    calls = after[1] - before[1]
    return {
        "concurrency": concurrency, "requests": len(latencies), "seconds": seconds,
        "requests_per_s": len(latencies) / seconds,
        "latency_ms": latency_percentiles(latencies),
        "mean_batch_size": (after[0] - before[0]) / calls if calls else 0.0,
        "model_calls": int(calls),
        "errors": sum(errors.values()), "error_kinds": errors,
    }


async def _floor(url: str, calls: int, client: str,
                 headers: dict[str, str] | None = None) -> dict[str, float]:
    """Latency of GET /healthz from one client (the HTTP round trip with no model work)."""
    http = CLIENTS[client](url, headers)
    latencies = []
    try:
        for _ in range(calls // 10):
            await http.request("GET", "/healthz")
        for _ in range(calls):
            start = time.perf_counter()
            status, _ = await http.request("GET", "/healthz")
            latencies.append(time.perf_counter() - start)
            if status != 200:
                raise VaecfError(f"GET /healthz answered {status}")
    finally:
        await http.aclose()
    return latency_percentiles(latencies)


def in_process_p50(run: Any, users: list[list[Any]], calls: int = IN_PROCESS_CALLS,
                   precision: str = "fp32") -> dict[str, float]:
    """One-user latency of :func:`score_request` in this process (as ``vaecf bench inference``
    times it: the user's CSR built beforehand), over ``calls`` calls after 20 warm-up calls."""
    from vaecf.serving.items import ItemMap, request_from_ids
    from vaecf.serving.recommender import Recommender

    recommender = Recommender(run.load_model(), ItemMap(run.item_ids), precision)
    requests = [request_from_ids([str(i) for i in items], recommender.item_map)
                for items in users[: min(calls, len(users))]]
    for request in requests[:20]:
        one_user_seconds(recommender, request.seen, TOP_K)
    return latency_percentiles([one_user_seconds(recommender, requests[i % len(requests)].seen,
                                                 TOP_K) for i in range(calls)])


def run(run_path: Path | str, concurrency: list[int], requests: int = 2000,
        server_args: list[str] | None = None, client: str = "httptools",
        precision: str = "fp32") -> dict[str, Any]:
    """Start the server, measure it (see the module docstring), stop it; returns the figures.

    Raises:
        VaecfError: not a usable run, a bad level, or the server failed to start.
    """
    from vaecf.model.rundir import RunDir

    if client not in CLIENTS:
        raise VaecfError(f"--client: unknown client {client!r} (choose {', '.join(CLIENTS)})")
    if not concurrency or min(concurrency) < 1 or requests < max(concurrency):
        raise VaecfError("--concurrency needs positive levels and --requests at least the "
                         "largest level")
    run_dir = RunDir.open(run_path)
    if run_dir.best is None:
        raise VaecfError(f"{run_path}: the run has no best weights yet")
    load_before = os.getloadavg()
    users = user_items(run_dir)
    bodies = [json.dumps({"items": items, "k": TOP_K}).encode() for items in users]
    log.info(f"starting vaecf serve on {run_path} ({run_dir.n_items:,} items; {len(users):,} "
             f"users with {np.mean([len(u) for u in users]):.1f} items on average)...")
    with Server(run_path, server_args) as server, _no_collector_pauses():
        rss_started = server.rss()
        log.info(f"server pid {server.pid} at {server.url}; warming up every level...")
        for level in concurrency:
            _run_async(_drive(server.url, bodies, level, max(200, 4 * level), client))
        rss_warm = server.rss()
        log.info(f"timing {FLOOR_CALLS} empty round trips (GET /healthz)...")
        floor = _run_async(_floor(server.url, FLOOR_CALLS, client))
        levels = []
        for level in concurrency:
            log.info(f"{requests:,} requests from {level} concurrent client(s)...")
            result = _run_async(_drive(server.url, bodies, level, requests, client))
            lat = result["latency_ms"]
            log.info(f"  {result['requests_per_s']:,.0f} requests/s, p50 {lat['p50']:.2f} ms, "
                     f"p99 {lat['p99']:.2f} ms, {result['mean_batch_size']:.1f} users per model "
                     f"call, {result['errors']} errors")
            levels.append(result)
        rss_after = server.rss()
        exit_code = server.stop()
    log.info(f"server stopped (exit code {exit_code}); timing {IN_PROCESS_CALLS} in-process "
             "one-user calls...")
    in_process = in_process_p50(run_dir, users, precision=precision)

    one = next((r for r in levels if r["concurrency"] == 1), None)
    top = max(levels, key=lambda r: r["concurrency"])
    checks: dict[str, Any] = {
        "zero_errors": all(r["errors"] == 0 for r in levels),
        "memory_after_over_warm": rss_after / rss_warm,
    }
    if one is not None and top is not one:
        checks[f"speedup_{top['concurrency']}_vs_1"] = (top["requests_per_s"]
                                                       / one["requests_per_s"])
        checks[f"p99_ms_at_{top['concurrency']}"] = top["latency_ms"]["p99"]
    if one is not None:
        bound = 1.5 * in_process["p50"] + floor["p50"]
        checks["one_client_p50_ms"] = one["latency_ms"]["p50"]
        checks["one_client_p50_bound_ms"] = bound
    return {
        "run": str(run_path), "items": run_dir.n_items,
        "hidden": run_dir.meta["model"]["hidden"], "latent": run_dir.meta["model"]["latent"],
        "cpu": cpu_model(), "cores": os.cpu_count(), "date": date.today().isoformat(),
        "top_k": TOP_K, "requests_per_level": requests, "client": client,
        "precision": precision,
        "server_args": server_args or [], "server_exit_code": exit_code,
        "empty_round_trip_ms": floor, "in_process_one_user_ms": in_process,
        "levels": levels,
        # The 1-minute load average of the machine (other processes compete for the cores).
        "load_average": {"before": load_before[0], "after": os.getloadavg()[0]},
        "rss_mb": {"listening": rss_started / 1e6, "warm": rss_warm / 1e6,
                   "after": rss_after / 1e6},
        "checks": checks,
    }

"""``vaecf serve --workers N``: N server processes answering on one port.

One process answers at most what one Python interpreter can parse and answer: its event loop
and the Python part of its model calls share one GIL (about 0.25 ms per request for an ML-1M
user), so at 64 clients it tops out near 2,500 requests/s while it uses only 1.1 of a 2-core
machine's cores (docs/serving-http.md). Each worker loads the model, warms it up and runs the
same app (:func:`vaecf.serving.http.load_service`) on a listening socket of its own on the port
the supervisor holds (SO_REUSEPORT, so Linux only): the kernel spreads new connections evenly
over the workers, and each batches its own connections' requests.

The supervisor (:class:`Supervisor`, the ``vaecf serve`` process itself) loads no model. It

- starts each worker in a session of its own, so a terminal's Ctrl-C reaches only the
  supervisor, which then stops every worker once, with SIGTERM; each drains its requests;
- says where it listens only when every worker is warmed up; a worker that fails to start
  stops the others, and its error becomes the supervisor's;
- replaces a worker that dies while serving (one line on stderr); a replacement that dies
  before it is ready stops the server (a crash loop is not served);
- gives each worker ``cores // N`` TensorFlow intra-op threads (at least one), so that one
  worker's model call does not wait for threads another worker's event loop holds;
- gives the workers one directory for prometheus-client's multiprocess files, so ``/metrics``
  sums every worker whichever one answers the scrape; it is removed at the end.

A worker's stdin is a pipe from the supervisor. End of file there means the supervisor is gone
(even by ``kill -9``), and the worker stops as on SIGTERM: no orphan keeps the port.

Run as ``python -m vaecf.serving.workers SPEC FD`` by the supervisor only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaecf.errors import VaecfError

if TYPE_CHECKING:   # imported where used: a worker sets TensorFlow's log level first
    from vaecf.serving.http import ServeConfig

READY = "ready "   # a worker's stdout line once it listens, followed by its model's info (JSON)
STOP_TIMEOUT_S = 60  # a worker still running this long after SIGTERM is killed
POLL_S = 0.2


@dataclass
class WorkerSpec:
    """What every worker serves, passed to it as JSON. ``config.api_key`` is None here: a
    worker reads the key from the environment variable ``api_key_env``, never from a command
    line that ``ps`` shows. ``threads``: TensorFlow intra-op threads, chosen by the
    :class:`Supervisor` from the cores."""

    run: str
    precision: str
    config: ServeConfig
    api_key_env: str | None
    threads: int = 1


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS
        return os.cpu_count() or 1


class Worker:
    """One ``python -m vaecf.serving.workers`` process and the threads reading its output."""

    def __init__(self, spec: WorkerSpec, fd: int, env: dict[str, str]) -> None:
        self.ready = threading.Event()
        self.info: dict[str, Any] = {}
        self.last_error = ""
        root = str(Path(__file__).resolve().parents[2])
        env = {**env, "PYTHONPATH": os.pathsep.join(
            [root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vaecf.serving.workers", json.dumps(asdict(spec)), str(fd)],
            pass_fds=[fd], start_new_session=True, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self._readers = [threading.Thread(target=read, daemon=True)
                         for read in (self._read_stdout, self._read_stderr)]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            if line.startswith(READY):
                self.info = json.loads(line[len(READY):])
                self.ready.set()
            else:
                print(line, end="", flush=True)

    def _read_stderr(self) -> None:
        """Relay the worker's stderr once it serves. Before that only its last line is kept:
        every worker says the same while starting, and a worker that fails to start becomes
        the supervisor's one-line error."""
        for line in self.process.stderr:
            if line.strip():
                self.last_error = line.strip()
            if self.ready.is_set():
                print(line, end="", file=sys.stderr, flush=True)

    def stop(self) -> None:
        """SIGTERM: the worker stops accepting and drains."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """The exit code, killing the worker if it has not exited within ``timeout`` s."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def failure(self) -> str:
        """Why the worker stopped before it was ready: its last line on stderr, or its exit
        code."""
        for reader in self._readers:   # its last lines may still be on their way
            reader.join(timeout=5)
        message = self.last_error.removeprefix("error: ")
        return message or f"exit code {self.process.returncode}"


class Supervisor:
    """Starts ``n`` workers on ``sock`` and keeps them serving until SIGTERM or Ctrl-C.

    Args:
        spec: what each worker serves (``threads`` is set here from the cores).
        sock: the socket holding the port (``bind(..., listen=False)``); each worker opens a
            listener of its own beside it (:func:`vaecf.serving.http.listener`).
        n: number of workers (>= 2).
    """

    def __init__(self, spec: WorkerSpec, sock: Any, n: int) -> None:
        self.spec = replace(spec, threads=max(1, cores() // n))
        self.sock = sock
        self.n = n
        self.stopping = threading.Event()
        self.workers: list[Worker] = []

    def run(self, on_listening: Callable[[str, dict[str, Any]], None]) -> int:
        """Serve until stopped; returns 0 when every worker drained and exited cleanly, 130
        when stopped before they were all ready (as Ctrl-C stops other commands), else 1.
        ``on_listening(url, info)`` is called once every worker is ready.

        Raises:
            VaecfError: a worker could not start (its own error message).
        """
        from prometheus_client import multiprocess

        from vaecf.serving.http import url_of

        shared = tempfile.mkdtemp(prefix="vaecf-serve-metrics-")
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": shared}
        # SIGHUP (the terminal or ssh session closed) drains like SIGTERM.
        previous = {s: signal.signal(s, self._on_signal)
                    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            self.workers = [Worker(self.spec, self.sock.fileno(), env) for _ in range(self.n)]
            if not self._wait_ready(self.workers):   # stopped while starting, as Ctrl-C
                self._stop()
                return 130
            on_listening(url_of(self.sock), self.workers[0].info)
            while not self.stopping.wait(POLL_S):
                for i, worker in enumerate(self.workers):
                    if worker.process.poll() is None or self.stopping.is_set():
                        continue
                    # What it said on the way out was relayed to stderr already.
                    print(f"vaecf serve: worker {i + 1} (pid {worker.pid}) stopped (exit code "
                          f"{worker.process.returncode}); starting another", file=sys.stderr,
                          flush=True)
                    multiprocess.mark_process_dead(worker.pid, shared)
                    self.workers[i] = replacement = Worker(self.spec, self.sock.fileno(), env)
                    if not self._wait_ready([replacement]):
                        break
            return self._stop()
        finally:
            for worker in self.workers:   # only after an error: _stop() waited for each
                if worker.process.poll() is None:
                    worker.process.kill()
                    worker.process.wait()
            for s, handler in previous.items():
                signal.signal(s, handler)
            shutil.rmtree(shared, ignore_errors=True)

    def _on_signal(self, sig: int, frame: Any) -> None:
        if not self.stopping.is_set():
            print("vaecf serve: stopping; finishing the requests in flight", flush=True)
        self.stopping.set()

    def _wait_ready(self, workers: list[Worker]) -> bool:
        """True once every one of ``workers`` is ready; False if stopped first.

        Raises:
            VaecfError: one of them exited first.
        """
        while not all(worker.ready.is_set() for worker in workers):
            for worker in workers:
                if worker.process.poll() is not None and not worker.ready.is_set():
                    self._stop()
                    raise VaecfError(f"a server worker did not start: {worker.failure()}")
            if self.stopping.wait(POLL_S):
                return False
        return True

    def _stop(self) -> int:
        for worker in self.workers:
            worker.stop()
        codes = [worker.wait(STOP_TIMEOUT_S) for worker in self.workers]
        return 0 if all(code == 0 for code in codes) else 1


def _stop_with_supervisor() -> None:
    """Block on stdin (the supervisor's pipe); at end of file, stop this worker as SIGTERM
    does: the supervisor is gone and nothing else would stop it."""
    sys.stdin.read()
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str]) -> int:
    """A worker: load, warm up, serve on the inherited socket until SIGTERM."""
    import socket

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")   # before anything imports TensorFlow
    import tensorflow as tf

    from vaecf.model.rundir import RunDir
    from vaecf.serving.http import ServeConfig, listener, load_service, serve

    fields = json.loads(argv[0])
    spec = WorkerSpec(**{**fields, "config": ServeConfig(**fields["config"])})
    holder = socket.socket(fileno=int(argv[1]))
    sock = listener(holder)
    holder.close()
    threading.Thread(target=_stop_with_supervisor, daemon=True).start()
    tf.config.threading.set_intra_op_parallelism_threads(spec.threads)
    config = replace(spec.config, api_key=os.environ[spec.api_key_env].strip()
                     if spec.api_key_env else None)
    try:
        app, info = load_service(RunDir.open(spec.run), spec.precision, config)
    except VaecfError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    serve(app, sock, lambda url: print(READY + json.dumps(info), flush=True),
          announce_stop=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`vaecf serve --workers N`: several server processes on one port answer as one process does,
/metrics sums every worker, SIGTERM drains them all, a worker that dies is replaced, a worker
that cannot start is the supervisor's one-line error, and a supervisor killed with kill -9 takes
its workers with it (no orphan keeps the port).

Every server is a real `python -m vaecf serve` subprocess on a free loopback port, stopped by its
context manager; every request and wait has a timeout.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
import time

import httpx
import psutil
import pytest
from test_serve import (
    TIMEOUT,
    _value,
    assert_same_answer,
    concurrent_answers,
    expected,
    user_items,
)

from vaecf.bench.serve import Server

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="--workers needs Linux (SO_REUSEPORT)")


@pytest.fixture(scope="module")
def recommender(serve_run):
    from vaecf.serving.recommender import Recommender

    return Recommender.from_run(serve_run)


@pytest.fixture(scope="session")
def serve_run(runs):
    return runs["int"]


def _workers(supervisor_pid: int) -> list[psutil.Process]:
    return psutil.Process(supervisor_pid).children()


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _served_by_both(url: str, workers: list[psutil.Process], connections: int = 16) -> None:
    """Hold ``connections`` open at once; the kernel spreads them over the workers."""
    clients = [httpx.Client(base_url=url, timeout=TIMEOUT) for _ in range(connections)]
    try:
        for client in clients:
            assert client.get("/healthz").status_code == 200
        held = [len([c for c in worker.net_connections() if c.status == "ESTABLISHED"])
                for worker in workers]
        assert all(count > 0 for count in held), held
    finally:
        for client in clients:
            client.close()


def test_two_workers_answer_as_one_process_sum_their_metrics_and_drain(serve_run, recommender):
    users = [1 + i % 50 for i in range(96)]
    wants = {u: expected(recommender, user_items(u), 10) for u in set(users)}
    with Server(serve_run, ["--workers", "2", "--max-batch", "1"]) as running:
        assert "2 workers" in "".join(running.stdout)
        workers = _workers(running.pid)
        assert len(workers) == 2
        _served_by_both(running.url, workers)

        answers = concurrent_answers(running.url, users)
        assert len(answers) == len(users)
        for user, got in answers:
            assert_same_answer(got, wants[user])
        # Whichever worker answers the scrape, it counts the requests of both.
        for _ in range(4):
            metrics = httpx.get(running.url + "/metrics", timeout=TIMEOUT).text
            assert _value(metrics, 'vaecf_http_requests_total{endpoint="/v1/recommend",'
                                   'status="200"}') == len(users)
            assert _value(metrics, "vaecf_batch_size_users_sum") == len(users)
            assert _value(metrics, "vaecf_queue_depth") == 0

        # A request in flight when SIGTERM comes is still answered in full: 600 users, one
        # model call each (--max-batch 1).
        body = {"users": [{"items": user_items(1 + i % 50)} for i in range(600)], "k": 5}
        answer: dict[str, object] = {}

        def call() -> None:
            answer["response"] = httpx.post(running.url + "/v1/recommend:batch",
                                            content=json.dumps(body), timeout=TIMEOUT)

        thread = threading.Thread(target=call)
        thread.start()
        _wait_until(lambda: _value(httpx.get(running.url + "/metrics", timeout=TIMEOUT).text,
                                   "vaecf_queue_depth") >= 1, "the request to be queued")
        running.process.send_signal(signal.SIGTERM)
        thread.join(TIMEOUT)
        code = running.process.wait(TIMEOUT)
        assert code == 0, "".join(running.stderr)
        response = answer["response"]
        assert response.status_code == 200 and len(response.json()["results"]) == 600
        assert "".join(running.stdout).count("finishing the requests in flight") == 1
        assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
                       for worker in workers)


def test_a_dead_worker_is_replaced_and_a_killed_supervisor_leaves_no_worker(serve_run,
                                                                           tmp_path):
    # kill -9 leaves the supervisor's metrics directory behind: in tmp_path, not in /tmp.
    with Server(serve_run, ["--workers", "2"], env={"TMPDIR": str(tmp_path)}) as running:
        first, second = _workers(running.pid)
        first.kill()
        _wait_until(lambda: "starting another" in "".join(running.stderr), "the replacement")
        assert f"pid {first.pid}" in "".join(running.stderr)
        _wait_until(lambda: len(_workers(running.pid)) == 2
                    and first.pid not in {w.pid for w in _workers(running.pid)},
                    "two workers again")
        replacement = next(w for w in _workers(running.pid) if w.pid != second.pid)
        # The replacement serves once warmed up; until then its connections wait, none fails.
        _wait_until(lambda: any(c.status == "LISTEN" for c in replacement.net_connections()),
                    "the replacement to listen")
        for _ in range(20):
            got = httpx.post(running.url + "/v1/recommend", json={"items": [1, 50]},
                             timeout=TIMEOUT)
            assert got.status_code == 200
        workers = _workers(running.pid)
        running.process.kill()   # kill -9: no chance to stop the workers itself
        running.process.wait(TIMEOUT)
        for worker in workers:
            worker.wait(TIMEOUT)   # psutil.TimeoutExpired if a worker outlived it
        with pytest.raises(httpx.ConnectError):
            httpx.get(running.url + "/healthz", timeout=TIMEOUT)
    assert len(list(tmp_path.glob("vaecf-serve-metrics-*"))) == 1


def test_a_worker_that_cannot_start_is_one_line_exit_2(serve_run, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(serve_run, run)
    weights = run / json.loads((run / "run.json").read_text())["best"]["weights"]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = cli("serve", "--run", run, "--port", "0", "--workers", "2")
    assert result.code == 2
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "a server worker did not start" in lines[0] \
        and "is damaged" in lines[0], result.err
    assert "Traceback" not in result.err


def test_workers_refuse_a_port_another_server_shares(serve_run, cli):
    """SO_REUSEPORT lets sockets of one user bind a port together: a second server must not
    quietly join the first one's port."""
    import socket

    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = cli("serve", "--run", serve_run, "--port", port, "--workers", "2")
    assert result.code == 2
    assert result.err.strip() == (f"error: cannot listen on 127.0.0.1:{port}: another server "
                                  "is listening there"), result.err


def test_sighup_stops_the_supervisor_and_its_workers_cleanly(serve_run, tmp_path):
    """The terminal or ssh session closing drains like SIGTERM: exit 0, no worker left, and
    the metrics directory (in tmp_path via TMPDIR) removed."""
    with Server(serve_run, ["--workers", "2"], env={"TMPDIR": str(tmp_path)}) as running:
        workers = _workers(running.pid)
        assert len(workers) == 2
        assert len(list(tmp_path.glob("vaecf-serve-metrics-*"))) == 1
        running.process.send_signal(signal.SIGHUP)
        code = running.process.wait(TIMEOUT)
        for worker in workers:
            worker.wait(TIMEOUT)
    assert code == 0, "".join(running.stderr)
    assert "".join(running.stdout).count("finishing the requests in flight") == 1
    assert list(tmp_path.glob("vaecf-serve-metrics-*")) == []

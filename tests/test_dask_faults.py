"""``prepare --scheduler`` on a cluster started as a user starts one (``dask scheduler``,
``dask worker``, separate processes on loopback), and what happens when a worker, the
scheduler or the client is killed mid-run. Every kill is checked to have landed: the victim
is gone and prepare was still running when it went."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ML_100K, ROOT, need

pytest.importorskip("distributed", reason="dask is not installed (pip install 'vaecf[dask]')")

BIN = Path(sys.executable).parent
ARGS = ["--rating-col", "rating", "--min-rating", "3.5", "--backend", "cpu", "-q",
        "--blocksize", "1MB", "--shards", "4"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Cluster:
    """A scheduler and two one-thread workers (each under its nanny), as separate process
    groups on loopback; stopped (all of them) when the test ends."""

    def __init__(self, directory: Path) -> None:
        self.file = directory / "scheduler.json"
        self.procs: list[subprocess.Popen] = []
        loopback = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
        self.scheduler = self._spawn("scheduler", "--port", "0", "--scheduler-file",
                                     str(self.file), *loopback)
        deadline = time.monotonic() + 60
        while not self.file.exists():
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]
        for _ in range(2):
            self._spawn("worker", self.address, "--nthreads", "1", *loopback)
        from dask.distributed import Client

        self.client = Client(self.address, timeout="30s")
        self.client.wait_for_workers(2, timeout=60)

    def _spawn(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([str(BIN / "dask"), *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, env=_env())
        self.procs.append(proc)
        return proc

    def worker_pids(self) -> list[int]:
        return sorted(self.client.run(os.getpid).values())

    def busy(self) -> bool:
        return any(self.client.processing().values())

    def close(self) -> None:
        self.client.close(timeout=5)
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture()
def cluster(tmp_path) -> Iterator[Cluster]:
    started = Cluster(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def ratings(tmp_path_factory) -> Path:
    """A 1M-row ratings CSV (about 25 MB, 25 blocks of 1 MB)."""
    from vaecf.bench.synthetic import write_ratings_csv

    path = tmp_path_factory.mktemp("ratings") / "ratings.csv"
    write_ratings_csv(path, 1_000_000, 7_000, 5_000)
    return path


@pytest.fixture(scope="module")
def expected(ratings, tmp_path_factory) -> dict[str, bytes]:
    """The single-process dataset of ``ratings``, file by file."""
    out = tmp_path_factory.mktemp("expected") / "data"
    subprocess.run([sys.executable, "-m", "vaecf", "prepare", str(ratings), "--out", str(out),
                    *ARGS], check=True, env=_env())
    return _files(out)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _prepare(source: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vaecf", "prepare", str(source), "--out",
                             str(out), *ARGS, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


def _until(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_scheduler_and_workers_started_by_hand(tmp_path, cli, cluster):
    source = need(ML_100K)
    args = ["--no-header", "--user-col", "0", "--item-col", "1", "--backend", "cpu", "-q"]
    assert cli("prepare", source, *args, "--out", tmp_path / "cpu").code == 0
    result = cli("prepare", source, *args, "--scheduler", cluster.address,
                 "--blocksize", "100KB", "--out", tmp_path / "dask")
    assert result.code == 0, result.err
    assert _files(tmp_path / "dask") == _files(tmp_path / "cpu")


def test_a_worker_killed_mid_run_gives_the_same_bytes_or_one_line(tmp_path, cluster, ratings,
                                                                  expected):
    out = tmp_path / "data"
    child = _prepare(ratings, out, "--scheduler", cluster.address)
    _until(cluster.busy)
    victim = cluster.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert child.poll() is None, "prepare finished before the kill"
    _until(lambda: not _alive(victim), 10)
    _, err = child.communicate(timeout=240)
    if child.returncode == 0:   # dask recomputed the lost worker's tasks
        assert _files(out) == expected
    else:
        assert child.returncode == 2 and err.strip().count("\n") == 0, err
        assert err.startswith("error: ") and not out.exists()
    assert _leftovers(out) == []


def test_the_scheduler_killed_mid_run_is_one_line_and_leaves_nothing(tmp_path, cluster,
                                                                     ratings):
    out = tmp_path / "data"
    child = _prepare(ratings, out, "--scheduler", cluster.address)
    _until(cluster.busy)
    os.killpg(cluster.scheduler.pid, signal.SIGKILL)
    assert child.poll() is None, "prepare finished before the kill"
    cluster.scheduler.wait(timeout=10)
    _, err = child.communicate(timeout=180)
    assert child.returncode == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert f"the dask scheduler {cluster.address}" in err
    assert not out.exists() and _leftovers(out) == []


def _workers_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (a local cluster's nannies and their workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_the_client_killed_or_interrupted_leaves_no_dataset(tmp_path, ratings, expected, how):
    """kill -9 or Ctrl-C of `prepare --dask` with its own local cluster: its workers go with
    it, no dataset is left, and the next run leaves no temporaries either."""
    out = tmp_path / "data"
    child = _prepare(ratings, out, "--dask", "--workers", "2")
    _until(lambda: len(_workers_of(child.pid)) >= 2)
    time.sleep(1.0)   # into the read, with the workers started
    children = _workers_of(child.pid)
    children += [pid for parent in children for pid in _workers_of(parent)]
    # The two worker processes (their nannies run inside prepare) and multiprocessing's
    # resource tracker.
    assert len(children) >= 3
    assert child.poll() is None, "prepare finished before the signal"
    child.send_signal(how)
    _, err = child.communicate(timeout=120)
    assert child.returncode == (-9 if how == signal.SIGKILL else 130), err
    _until(lambda: not any(_alive(pid) for pid in children), 60)
    assert not out.exists()
    if how == signal.SIGINT:
        assert "interrupted" in err and _leftovers(out) == []
    rerun = _prepare(ratings, out)
    assert rerun.wait(timeout=120) == 0
    assert _files(out) == expected and _leftovers(out) == []

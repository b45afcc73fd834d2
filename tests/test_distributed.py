"""Data-parallel training with Horovod, run for real with Gloo ranks on this machine's CPUs.

The ``dist`` tests start real multi-process jobs (``horovodrun --gloo`` / ``vaecf train --np``)
and skip, saying why, when Horovod is not installed. The launcher's option checks need no
Horovod and always run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vaecf.backend.probe import pin_rank_gpu, visible_gpus
from vaecf.errors import VaecfError
from vaecf.training.launch import launcher_command, parse_hosts, plan

HAS_HOROVOD = importlib.util.find_spec("horovod") is not None
NO_HOROVOD = "Horovod is not installed (`make install` builds it from source)"
WORKER = Path(__file__).with_name("distributed_worker.py")
LAUNCHER_VARIABLES = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "HOROVOD_SIZE",
                      "HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK")


@pytest.fixture
def no_launcher(monkeypatch):
    """This test process as if started by hand, whatever launched pytest."""
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def run_vaecf(*args: object, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m vaecf ARGS`` in a fresh process (in ``cwd``, away from any settings.toml)."""
    done = subprocess.run([sys.executable, "-m", "vaecf", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# --- launcher options (no Horovod needed) -----------------------------------------------


def test_gpus_beyond_visible_fails_in_one_line(no_launcher, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(VaecfError, match=r"--gpus 2: 2 local rank\(s\) need one GPU each, "
                                         r"but 1 GPU\(s\) are visible"):
        plan(np=None, gpus=2, hosts=None)


def test_gpus_on_remote_hosts_are_not_counted_here(no_launcher, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    if HAS_HOROVOD:
        job = plan(np=None, gpus=4, hosts="gpu-a:2,gpu-b:2")
        assert (job.ranks, job.gpus, job.hosts) == (4, True, "gpu-a:2,gpu-b:2")
    with pytest.raises(VaecfError, match="0 GPU"):
        plan(np=None, gpus=3, hosts="localhost:1,gpu-b:2")


@pytest.mark.parametrize(("np_", "gpus", "hosts", "message"), [
    (2, 2, None, "either --np .* or --gpus"),
    (0, None, None, "--np must be at least 1"),
    (3, None, "a:1,b:1", "2 slots, fewer than the 3 ranks"),
    (2, None, "a:x", "'a:x' is not HOST:SLOTS"),
    (2, None, "a:0", "'a:0' is not HOST:SLOTS"),
])
def test_bad_launch_options(no_launcher, np_, gpus, hosts, message):
    with pytest.raises(VaecfError, match=message):
        plan(np=np_, gpus=gpus, hosts=hosts)


def test_one_rank_or_under_a_launcher_trains_in_process(no_launcher, monkeypatch):
    assert plan(np=None, gpus=None, hosts=None) is None
    assert plan(np=1, gpus=None, hosts=None) is None
    monkeypatch.setenv("HOROVOD_RANK", "1")           # one rank of someone's horovodrun
    assert plan(np=8, gpus=None, hosts=None) is None


def test_launcher_command_reruns_vaecf_as_every_rank(no_launcher):
    from vaecf.training.launch import Job

    cpu = launcher_command(Job(2, False, "localhost:2"), ["train", "--np", "2"])
    assert cpu[1:8] == ["-m", "horovod.runner.launch", "-np", "2", "-H", "localhost:2", "--gloo"]
    assert cpu[-5:] == ["-m", "vaecf", "train", "--np", "2"]
    assert "--gloo" not in launcher_command(Job(16, True, "a:8,b:8"), ["train"])
    assert parse_hosts("a:8, b") == [("a", 8), ("b", 1)]


def test_visible_gpus_follows_cuda_visible_devices(monkeypatch):
    for mask, count in (("", 0), ("-1", 0), ("3", 1), ("0,1,2", 3), ("0,-1,2", 1)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mask)
        assert visible_gpus() == count, mask


def test_each_rank_pins_its_own_gpu(no_launcher, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setenv("HOROVOD_LOCAL_RANK", "2")
    pin_rank_gpu()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")      # --np jobs hide GPUs: nothing to pin
    pin_rank_gpu()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


# --- real multi-process jobs ------------------------------------------------------------


@pytest.mark.dist
@pytest.mark.skipif(not HAS_HOROVOD, reason=NO_HOROVOD)
def test_two_ranks_match_one_process_step_for_step(small_dataset, tmp_path, no_launcher):
    """Same global batches, no dropout, z = mu: 2 Gloo ranks (started from different seeds,
    so rank 0's broadcast matters) end where 1 process ends, and identical to each other."""
    global_batch, steps = 96, 5
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    args = [str(WORKER), small_dataset, None, global_batch, steps]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for out, prefix in ((single, []), (double, [sys.executable, "-m", "horovod.runner.launch",
                                               "--gloo", "-np", "2", "-H", "localhost:2"])):
        args[2] = out
        done = subprocess.run([*prefix, sys.executable, *map(str, args)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    one = np.load(single / "rank-0.npz")
    rank0, rank1 = np.load(double / "rank-0.npz"), np.load(double / "rank-1.npz")
    assert sorted(one.files) == sorted(rank0.files)
    iterations = [k for k in one.files if one[k].dtype == np.int64]
    assert [int(one[k]) for k in iterations] == [steps]          # Adam really stepped
    for key in one.files:
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=f"variable {key}")
        np.testing.assert_allclose(rank0[key], one[key], rtol=1e-4, atol=1e-6,
                                   err_msg=f"variable {key}")


@pytest.mark.dist
@pytest.mark.skipif(not HAS_HOROVOD, reason=NO_HOROVOD)
def test_two_rank_train_matches_one_process_quality(small_dataset, tmp_path, no_launcher):
    """vaecf train --np 2 writes one complete run whose test metrics are in line with a
    1-process run of the same global batch (100 per rank x 2 = 200) and epochs."""
    from vaecf.model.rundir import RunDir

    metrics = {}
    for name, flags in (("one", ["--batch-size", "200"]),
                        ("two", ["--batch-size", "100", "--np", "2"])):
        runs = tmp_path / name
        runs.mkdir()
        run_vaecf("train", "--data", small_dataset, "--out", runs / "run", "--epochs", 8,
                  "--backend", "cpu", "-q", *flags, cwd=tmp_path)
        assert [p.name for p in runs.iterdir()] == ["run"]        # one run dir, no leftovers
        run = RunDir.open(runs / "run")
        assert run.status == "complete" and len(run.history) == 8
        assert run.history[-1]["step"] == 8 * 3                    # ceil(484/200) steps/epoch
        run_vaecf("test", "--run", runs / "run", "--json", tmp_path / f"{name}.json",
                  "--backend", "cpu", cwd=tmp_path)
        metrics[name] = json.loads((tmp_path / f"{name}.json").read_text())["model"]
    for key in ("ndcg@100", "recall@20", "recall@50"):
        assert metrics["two"][key] > 0.1, metrics
        assert abs(metrics["two"][key] - metrics["one"][key]) < 0.05, (key, metrics)


def _rank_processes(launcher_pid: int) -> dict[int, object]:
    """rank -> the python process of that rank among the launcher's descendants."""
    import psutil

    ranks = {}
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            rank = child.environ().get("HOROVOD_RANK")
            if rank is not None and "vaecf" in child.cmdline() and \
                    child.name().startswith("python"):
                ranks[int(rank)] = child
        except psutil.Error:
            continue
    return ranks


def _wait_for_first_epoch(job: subprocess.Popen, log: Path, err: Path) -> None:
    deadline = time.monotonic() + 600
    while not (log.exists() and log.read_text().strip()):   # training is under way
        assert job.poll() is None, err.read_text()[-3000:]
        assert time.monotonic() < deadline, "no epoch finished within 10 minutes"
        time.sleep(0.2)


@pytest.mark.dist
@pytest.mark.skipif(not HAS_HOROVOD, reason=NO_HOROVOD)
def test_a_dead_rank_fails_the_job_with_a_message(small_dataset, tmp_path, no_launcher):
    """Killing rank 1 mid-training stops rank 0 too, and vaecf says so, within minutes."""
    log, err = tmp_path / "epochs.jsonl", tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        job = subprocess.Popen(
            [sys.executable, "-m", "vaecf", "train", "--data", str(small_dataset), "--out",
             str(tmp_path / "run"), "--epochs", "500", "--batch-size", "50", "--np", "2",
             "--backend", "cpu", "-q", "--log-json", str(log)],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        _wait_for_first_epoch(job, log, err)
        _rank_processes(job.pid)[1].send_signal(signal.SIGKILL)
        code = job.wait(timeout=180)     # a hang fails the test here instead of blocking CI
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert code == 2
    text = err.read_text()
    assert "distributed training failed: a rank of 2 exited with an error" in text
    assert len(log.read_text().splitlines()) < 500


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.skipif(not HAS_HOROVOD, reason=NO_HOROVOD)
def test_two_rank_run_resumed_mid_epoch_equals_uninterrupted(small_dataset, tmp_path,
                                                              no_launcher):
    """Ctrl-C (SIGINT to both ranks) mid-run saves a checkpoint; resuming with 2 ranks ends
    bit-identical to an uninterrupted 2-rank run; resuming with 1 rank mid-epoch is refused."""
    from vaecf.model.rundir import RunDir

    args = ["train", "--data", small_dataset, "--epochs", 3, "--batch-size", 50, "--np", 2,
            "--checkpoint-every", 100, "--backend", "cpu", "-q"]
    run_vaecf(*args, "--out", tmp_path / "straight", cwd=tmp_path)
    log, err = tmp_path / "epochs.jsonl", tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        job = subprocess.Popen(
            [sys.executable, "-m", "vaecf", *map(str, args), "--out", str(tmp_path / "resumed"),
             "--log-json", str(log)],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        _wait_for_first_epoch(job, log, err)
        for rank in _rank_processes(job.pid).values():
            rank.send_signal(signal.SIGINT)
        try:
            # Interrupted: the launching process exits 130 like a single-process run.
            assert job.wait(timeout=300) == 130, err.read_text()[-3000:]
        except subprocess.TimeoutExpired:
            pytest.fail("the interrupted job did not stop:\n" + err.read_text()[-3000:])
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    stopped = RunDir.open(tmp_path / "resumed")
    assert stopped.status == "interrupted" and stopped.progress.ranks == 2
    if stopped.progress.batch:
        refused = subprocess.run(
            [sys.executable, "-m", "vaecf", "train", "--data", str(small_dataset), "--out",
             str(tmp_path / "resumed"), "--resume", "--backend", "cpu", "-q"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert refused.returncode == 2
        assert "stopped mid-epoch with 2 rank(s); resume it with that many" in refused.stderr
    run_vaecf("train", "--data", small_dataset, "--out", tmp_path / "resumed", "--resume",
              "--np", 2, "--backend", "cpu", "-q", cwd=tmp_path)
    straight, resumed = RunDir.open(tmp_path / "straight"), RunDir.open(tmp_path / "resumed")
    assert resumed.status == "complete"
    # Epoch means of the interrupted epoch are summed in another order: equal to rounding.
    assert [(h["step"], pytest.approx(h["loss"], rel=1e-9)) for h in resumed.history] == [
        (h["step"], h["loss"]) for h in straight.history]
    a, b = straight.load_model("last"), resumed.load_model("last")
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

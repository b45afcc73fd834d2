"""Start a data-parallel job: ``vaecf train --np N`` (CPU, Gloo) or ``--gpus N`` (one GPU per rank).

The launching process re-runs its own command line under Horovod's launcher (``python -m
horovod.runner.launch``, i.e. ``horovodrun``); every rank then finds itself under a launcher
(:func:`vaecf.training.distributed.under_launcher`) and trains instead of launching again. A
job started by the user's own ``horovodrun`` / ``mpirun`` is therefore never launched twice.

Failure handling (measured here with Gloo): a rank that exits or is killed makes the others'
next collective fail at once ("Horovod has been shut down"), and the launcher terminates every
remaining rank as soon as one exits with a non-zero status; a frozen rank (SIGSTOP) fails the
job after Gloo's timeout (``HOROVOD_GLOO_TIMEOUT_SECONDS``, 30 s). Not detected: a rank alive
but stuck outside collectives (Horovod's ``HOROVOD_STALL_SHUTDOWN_TIME_SECONDS`` did not fire
in that test).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vaecf.backend import Backend
from vaecf.backend.probe import visible_gpus
from vaecf.errors import VaecfError
from vaecf.settings import Settings

HOROVOD_BUILD = ("HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 "
                 "HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 pip install "
                 "--no-build-isolation horovod==0.28.1")


@dataclass(frozen=True)
class Job:
    """What to start.

    Attributes:
        ranks: number of processes.
        gpus: one GPU per rank when True, CPU only (Gloo) when False.
        hosts: Horovod host list ``host:slots,...``.
    """

    ranks: int
    gpus: bool
    hosts: str


def parse_hosts(hosts: str) -> list[tuple[str, int]]:
    """``"a:8,b:8"`` -> ``[("a", 8), ("b", 8)]``; a host without ``:slots`` has one slot."""
    parsed = []
    for entry in hosts.split(","):
        name, _, slots = entry.strip().partition(":")
        if not name or (slots and not slots.isdigit()) or slots == "0":
            raise VaecfError(f"--hosts: {entry.strip()!r} is not HOST:SLOTS (e.g. a:8,b:8)")
        parsed.append((name, int(slots) if slots else 1))
    return parsed


def _is_local(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", os.uname().nodename)


# Launchers put the number of ranks in the job in one of these.
_SIZE_VARIABLES = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")


def _first_env_int(names: Sequence[str]) -> int | None:
    return next((int(os.environ[name]) for name in names if name in os.environ), None)


def launched_ranks() -> int:
    """Number of ranks of the job this process belongs to (1 outside a launcher), read from
    the launcher's environment so it is known before Horovod starts."""
    return _first_env_int(_SIZE_VARIABLES) or 1


def plan(np: int | None, gpus: int | None, hosts: str | None) -> Job | None:
    """Decide what to launch from ``--np`` / ``--gpus`` / ``--hosts``.

    Returns:
        None when this process should train itself: no option given, one rank on this host,
        or already one rank of a job (started by ``horovodrun``/``mpirun`` or by an earlier
        :func:`launch`).

    Raises:
        VaecfError: conflicting options, a bad host list, fewer local GPUs than asked for, or
            Horovod not installed.
    """
    from vaecf.training.distributed import under_launcher

    if under_launcher() or (np is None and gpus is None and hosts is None):
        return None
    if np is not None and gpus is not None:
        raise VaecfError("give either --np (CPU ranks) or --gpus (one GPU per rank), not both")
    for flag, value in (("--np", np), ("--gpus", gpus)):
        if value is not None and value < 1:
            raise VaecfError(f"{flag} must be at least 1, got {value}")
    host_slots = parse_hosts(hosts) if hosts is not None else None
    slots = sum(n for _, n in host_slots) if host_slots else None
    ranks = np or gpus or slots
    if slots is not None and ranks > slots:
        raise VaecfError(f"--hosts {hosts} has {slots} slots, fewer than the {ranks} ranks "
                         "asked for")
    if gpus is not None:
        # Horovod fills hosts in the order given; ranks on remote hosts are checked there.
        local, left = 0, gpus
        for host, n in host_slots or [("localhost", gpus)]:
            if _is_local(host):
                local += min(n, left)
            left -= min(n, left)
        have = visible_gpus()
        if local > 0 and have < local:
            raise VaecfError(f"--gpus {gpus}: {local} local rank(s) need one GPU each, but "
                             f"{have} GPU(s) are visible here (nvidia-smi -L / "
                             "CUDA_VISIBLE_DEVICES)")
    if ranks == 1 and host_slots is None:
        return None   # one process needs no launcher (and no Horovod)
    if importlib.util.find_spec("horovod") is None:
        raise VaecfError(f"multi-process training needs Horovod, which is not installed; "
                         f"build it with: {HOROVOD_BUILD}")
    return Job(ranks=ranks, gpus=gpus is not None, hosts=hosts or f"localhost:{ranks}")


def launcher_command(job: Job, argv: Sequence[str]) -> list[str]:
    """The ``horovodrun`` command line that runs ``vaecf <argv>`` as every rank."""
    command = [sys.executable, "-m", "horovod.runner.launch", "-np", str(job.ranks),
               "-H", job.hosts]
    if not job.gpus:
        # CPU ranks talk over Gloo (TCP); MPI may not even be installed.
        command.append("--gloo")
    return [*command, sys.executable, "-m", "vaecf", *argv]


def launch(job: Job, argv: Sequence[str]) -> None:
    """Run the job to completion, streaming the ranks' output.

    Args:
        job: from :func:`plan`.
        argv: this process's own arguments after ``vaecf`` (``sys.argv[1:]``); each rank
            parses them again and, being under a launcher, trains.

    Raises:
        VaecfError: when any rank failed (Horovod has then stopped the others).
    """
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if not job.gpus:
        # CPU ranks must not grab GPUs that may be present.
        env["CUDA_VISIBLE_DEVICES"] = ""
    code = subprocess.run(launcher_command(job, argv), env=env, check=False).returncode
    if code != 0:
        raise VaecfError(f"distributed training failed: a rank of {job.ranks} exited with an "
                         f"error (launcher exit status {code}); its output is above")


def enter_job(settings: Settings, argv: Sequence[str], *, np: int | None = None,
              gpus: int | None = None, hosts: str | None = None, scale_lr: bool = False,
              before_launch: Callable[[], object] | None = None
              ) -> tuple[Settings, Backend] | None:
    """Everything a command does before training: plan → launch → scale lr → pin → backend.

    Args:
        settings: the effective settings (``train.backend`` picks the backend).
        argv: this process's arguments after ``vaecf``, re-run by every rank when launching.
        np, gpus, hosts: the ``--np`` / ``--gpus`` / ``--hosts`` options.
        scale_lr: multiply ``train.lr`` by the number of ranks (the linear scaling rule).
        before_launch: a check to run once, in the launching process, before starting ranks
            (e.g. open the dataset, so a bad path fails once rather than once per rank).
    Returns:
        None when this process only launched the ranks (they have finished); otherwise the
        settings to train with and the backend, with this rank pinned to its GPU and
        TensorFlow configured for the backend.
    """
    from vaecf.backend import select_backend
    from vaecf.backend.probe import pin_rank_gpu

    job = plan(np, gpus, hosts)
    if job is not None:
        if before_launch is not None:
            before_launch()
        launch(job, argv)
        return None
    if scale_lr:
        train = settings.train
        settings = settings.model_copy(update={"train": train.model_copy(
            update={"lr": train.lr * launched_ranks()})})
    pin_rank_gpu()   # before CuPy or TensorFlow initialise CUDA
    backend = select_backend(settings.train.backend)
    backend.configure_tensorflow()
    return settings, backend

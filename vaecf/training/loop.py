"""The training loop (Mult-VAE or RecVAE), data parallel through
:mod:`vaecf.training.distributed`.

Each epoch (:meth:`_Session.run_epoch`) takes steps of the model's trainer
(:mod:`vaecf.training.registry`: :class:`vaecf.training.trainer.Trainer` for Mult-VAE, with
β = min(step / anneal_steps, anneal_cap); :class:`vaecf.training.recvae_trainer.RecVAETrainer`
for RecVAE, with its constant γ); after it, :meth:`_Session.end_epoch` validates,
logs, checkpoints and decides on early stopping. Every rank sees each of its users once per
epoch in a seeded shuffle; only the chief validates, logs and writes the run directory.

Defaults follow the paper's notebook (batch 500, Adam lr 1e-3, cap 0.2, best checkpoint by
validation NDCG@100) except how long training lasts (:mod:`vaecf.training.schedule`: by
validation unless ``--epochs`` is given) and ``anneal_steps``: the paper's 200,000 steps reach
β = 0.2 after 40,000 steps, which is 86% of 200 epochs on MovieLens-20M but never happens on
smaller data (ML-1M has ~2,000 steps in 200 epochs). The default instead makes β reach the cap
halfway through the planned epochs (``epochs``, or ``plan_epochs`` with the automatic
schedule), whatever the dataset size:
``anneal_steps = ceil(planned · steps_per_epoch · anneal_fraction / anneal_cap)`` (the
``train.anneal_fraction`` setting, 0.5 by default); the resolved value is stored in the run's
settings.json. The reparameterisation noise has std ``model.noise_std`` (0.01, not the paper's
1: better on validation on every dataset of docs/accuracy.md).

Reproducibility: weights are initialised from ``seed``; the shuffle of epoch e on rank r is
``default_rng([seed, r, e])``; dropout and z noise of step s are stateless draws keyed by
(hash(seed, r), s). A run is thus a pure function of its settings and data, and a resumed run
(even one stopped mid-epoch by Ctrl-C) ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from vaecf.atomic import (
    check_outputs,
    check_target,
    commit_directory,
    follow,
    write_text,
)
from vaecf.backend import Backend
from vaecf.data.dataset import Dataset
from vaecf.errors import VaecfError
from vaecf.evaluation.metrics import METRIC_KS, SELECTION_METRIC
from vaecf.model.batches import epoch_order, iterate, steps_per_epoch
from vaecf.model.progress import EpochSums, Progress
from vaecf.model.rundir import RUN_JSON, RunDir
from vaecf.settings import Settings
from vaecf.training.distributed import Comm, communicator
from vaecf.training.recvae_trainer import RecVAETrainer
from vaecf.training.registry import kl_weight, make_trainer
from vaecf.training.schedule import Schedule, planned_epochs, schedule_of
from vaecf.training.trainer import Trainer, precision_policy
from vaecf.training.view import TrainView

log = logging.getLogger("vaecf")
_DIVERGED = 1024.0   # added to the per-step stop signal by a rank whose loss is not finite


class Diverged(VaecfError):
    """The loss became non-finite; nothing from that step on is saved."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(f"training diverged in epoch {epoch} at step {step}: the loss is "
                         f"{loss}")
        self.epoch, self.step = epoch, step

ANNEAL_FRACTION = 0.5   # share of training after which β reaches its cap (default schedule)


def default_anneal_steps(total_steps: int, cap: float, fraction: float = ANNEAL_FRACTION) -> int:
    """Steps such that β = min(step / anneal_steps, cap) hits ``cap`` at ``fraction`` of
    ``total_steps``."""
    if cap <= 0:
        return 1
    return max(1, math.ceil(total_steps * fraction / cap))


@contextlib.contextmanager
def interrupt_flag() -> Iterator[threading.Event]:
    """A flag set by the first Ctrl-C (SIGINT), so the loop stops at a step boundary and saves;
    a second Ctrl-C interrupts at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        flag.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _resolve(settings: Settings, total_steps: int) -> Settings:
    """Settings with ``train.anneal_steps`` filled in (see the module docstring)."""
    t = settings.train
    steps = t.anneal_steps or default_anneal_steps(total_steps, t.anneal_cap, t.anneal_fraction)
    return settings.model_copy(update={"train": t.model_copy(update={"anneal_steps": steps})})


class _Session:
    """One call of :func:`train` on one rank: the model, the data and where training stands.

    Attributes:
        progress: the resume point; ``progress.partial`` holds the unfinished epoch's sums on
            the chief (whole-job sums after an interrupt) and this rank's own elsewhere.
        status: ``running`` until the loop ends, then how it ended.
    """

    def __init__(self, settings: Settings, run: RunDir | None,
                 trainer: Trainer | RecVAETrainer, rows: Any,
                 steps: int, schedule: Schedule, backend: Backend, comm: Comm, view: TrainView,
                 progress: Progress, status: str, validation: Any, log_file: IO[str] | None
                 ) -> None:
        self.settings, self.run, self.trainer, self.rows = settings, run, trainer, rows
        self.steps, self.backend, self.comm, self.view = steps, backend, comm, view
        self.schedule = schedule
        self.progress, self.status = progress, status
        self.validation, self.log_file = validation, log_file
        self.history = list(run.history) if run else []
        self.scorer: Any = None
        self.beta = kl_weight(settings, progress.step)

    def run_epoch(self, interrupted: threading.Event) -> bool:
        """Train the rest of epoch ``progress.epoch + 1``; True when stopped by Ctrl-C (the
        progress then records the position and the whole job's partial sums)."""
        t, comm, p = self.settings.train, self.comm, self.progress
        sums = p.partial or EpochSums()
        self.view.start_epoch(p.epoch + 1, self.steps, p.batch)
        order = epoch_order(self.rows.shape[0], t.seed, comm.rank, p.epoch)
        started = time.perf_counter()
        step = p.step
        for b, batch in enumerate(iterate(self.backend, self.rows, order, self.steps, p.batch),
                                  start=p.batch):
            self.beta = kl_weight(self.settings, step)
            loss, nll, kl = self.trainer.step(batch, self.beta, step)
            step += 1
            sums.add(loss, nll, kl, batch.size)
            elapsed = sums.seconds + time.perf_counter() - started
            self.view.advance(loss, kl, self.beta, sums.users * comm.size / elapsed)
            # One collective per step carries both stop reasons, so every rank stops together.
            stop = comm.allreduce_sum(float(interrupted.is_set())
                                      + (0.0 if math.isfinite(loss) else _DIVERGED))
            if stop >= _DIVERGED:
                raise Diverged(p.epoch + 1, step, loss)
            if stop > 0:
                whole = EpochSums(*(comm.allreduce_sum(getattr(sums, name))
                                    for name in ("loss", "nll", "kl", "users")), elapsed)
                self.progress = replace(p, batch=b + 1, step=step, partial=whole)
                return True
        sums.seconds += time.perf_counter() - started
        self.progress = replace(p, step=step, partial=sums)
        return False

    def end_epoch(self) -> None:
        """Close the epoch: log record, validation (chief), best weights, early stopping,
        periodic checkpoint."""
        t, comm, p = self.settings.train, self.comm, self.progress
        record = _epoch_record(p.epoch + 1, p.step, self.beta, p.partial, comm)
        self.progress = p = p.at_epoch_end(p.epoch + 1, p.step)
        improved, stop = False, False
        last = p.epoch == self.schedule.last_epoch
        if comm.is_chief and (p.epoch % t.validate_every == 0 or last):
            metrics = self._validate()
            record["validation"] = metrics
            best = -1.0 if p.best_metric is None else p.best_metric
            improved = metrics[SELECTION_METRIC] > best
            p.bad_validations = 0 if improved else p.bad_validations + 1
            if improved:
                p.best_metric = metrics[SELECTION_METRIC]
                self.run.save_best(self.trainer.model, p.epoch, p.step, metrics)
            stop = self.schedule.stops(p.epoch, p.bad_validations)
        self.history.append(record)
        self.view.epoch_done(record, improved)
        if self.log_file:
            try:
                self.log_file.write(json.dumps(record) + "\n")
                self.log_file.flush()
            except OSError as error:   # a full disk, or /dev/full: say which file
                raise VaecfError(f"--log-json {self.log_file.name}: cannot write "
                                 f"({error.strerror or error})") from None
        if comm.allreduce_sum(float(stop)) > 0:
            self.status = "early-stopped"
        if comm.is_chief and self.status == "running" and p.epoch % t.checkpoint_every == 0:
            self.save("running")

    def _validate(self) -> dict[str, float]:
        from vaecf.evaluation.protocol import evaluate, model_scorer

        self.scorer = self.scorer or model_scorer(self.trainer.model, self.backend)
        ks = sorted({*self.settings.evaluate.ks, *METRIC_KS})
        return evaluate(self.scorer, self.backend, *self.validation, ks,
                        self.settings.evaluate.batch_size)

    def save(self, status: str) -> None:
        """Checkpoint weights, optimizer, progress and history with ``status`` (chief only)."""
        self.run.save_checkpoint(self.trainer.model, self.trainer.optimizer, self.progress,
                                 self.history, status)


def train(settings: Settings, data: Path, out: Path, backend: Backend, *, resume: bool = False,
          force: bool = False, quiet: bool = False, log_json: Path | None = None,
          comm: Comm | None = None, extend_to: int | None = None) -> RunDir | None:
    """Train (or resume) a Mult-VAE or RecVAE (``model.name``) on the dataset directory
    ``data`` into run directory ``out``.

    With ``resume`` the run's own stored settings are used, not ``settings``; ``extend_to``
    raises its epoch count. With ``force`` over an existing run, the new run is built under a
    hidden name beside ``out`` and replaces the old one only once it has finished (complete or
    early-stopped); until then, and if it is interrupted or fails, ``out`` keeps the old run.

    Returns:
        The RunDir on the chief rank (its ``status`` says how training ended), None elsewhere.
    Raises:
        VaecfError: bad input; :class:`Diverged` when the loss becomes non-finite (the run
            keeps its last good checkpoint and best weights, status ``diverged``).
    """
    comm = comm or communicator()
    backend.configure_tensorflow()
    check_outputs({"--log-json": log_json}, [data], {"--out": out})
    dataset = Dataset.open(data)
    chief = comm.is_chief
    run: RunDir | None = None
    target = out
    if resume:
        run = RunDir.open(out)
        run.check_dataset(dataset)
        settings = run.settings
        if extend_to is not None:
            settings = settings.model_copy(update={"train": settings.train.model_copy(
                update={"epochs": extend_to})})
    else:
        check_target(out, force, "run directory", marker=RUN_JSON, kind="vaecf run directory")
        if out.exists():   # --force: the old run stays until the new one is done
            real = follow(out)   # built beside a symlink's target, which commit replaces
            target = real.parent / f".{real.name}.tmp-{os.getpid()}"
    rows = backend.csr(dataset.train_rows_for_rank(comm.rank, comm.size))
    total_rows = int(round(comm.allreduce_sum(float(rows.shape[0]))))
    steps = steps_per_epoch(total_rows, comm.size, settings.train.batch_size)
    if not resume:
        settings = _resolve(settings, planned_epochs(settings.train) * steps)
        run = RunDir.create(target, settings, dataset) if chief else None
        comm.barrier()
    t = settings.train
    schedule = schedule_of(t, steps)
    view = TrainView(schedule, quiet or not chief)
    trainer = make_trainer(settings, dataset.n_items, comm, precision_policy(t.amp, backend),
                           steps)
    if resume:
        progress = run.load_checkpoint(trainer.model, trainer.optimizer)
        if progress.best_metric is None and run.best and run.best["step"] <= progress.step:
            progress.best_metric = run.best["metrics"][SELECTION_METRIC]   # older runs
    else:
        progress = run.progress if run else Progress()
    # A mid-epoch position counts batches of one rank layout: resume it with the same ranks.
    if progress.batch and progress.ranks != comm.size:
        raise VaecfError(f"{out} stopped mid-epoch with {progress.ranks} rank(s); "
                         f"resume it with that many (--np/--gpus), not {comm.size}")
    progress.ranks = comm.size
    if not chief:   # a saved partial epoch holds the whole job's sums: rank 0's to carry
        progress.partial = None
    comm.broadcast_variables(trainer.state_variables)
    # An early-stopped run stays stopped unless --epochs asks for more.
    stopped = resume and run.status == "early-stopped" and extend_to is None
    log_file = _open_log(log_json, progress.epoch if resume else None) if chief else None
    session = _Session(settings, run if chief else None, trainer, rows, steps, schedule,
                       backend, comm, view, progress, "early-stopped" if stopped else "running",
                       dataset.heldout("validation") if chief else None, log_file)
    try:
        with view, interrupt_flag() as interrupted:
            while (session.progress.epoch < schedule.last_epoch
                   and session.status == "running"):
                if session.run_epoch(interrupted):
                    session.status = "interrupted"
                    break
                session.end_epoch()
        if session.status == "running":
            session.status = "complete"
        if chief and target != out and session.status == "interrupted":
            shutil.rmtree(target, ignore_errors=True)
            log.info("interrupted: the new run was discarded; %s still holds the previous run",
                     out)
            raise KeyboardInterrupt   # the CLI exits 130, as for any interrupted command
        if chief:
            session.save(session.status)
            if target != out:
                commit_directory(target, out)
                run = RunDir.open(out)
            if session.status == "interrupted":
                p = session.progress
                log.info("interrupted: checkpoint saved at epoch %d, step %d; continue with "
                         "`vaecf train --data %s --out %s --resume`", p.epoch, p.step, data, out)
    except Diverged as error:
        if chief and target != out:
            shutil.rmtree(target, ignore_errors=True)
            kept = f"{out} still holds the previous run"
        elif chief and run.meta["checkpoint"] is None and not resume:
            shutil.rmtree(out, ignore_errors=True)   # no weights worth keeping
            kept = f"nothing was saved (no checkpoint before step {error.step})"
        else:
            if chief:
                run.set_status("diverged")
            kept = f"{out} keeps its last checkpoint and best weights from before"
        raise VaecfError(f"{error}; {kept}; try a lower --lr") from None
    except BaseException:
        if chief and target != out:
            shutil.rmtree(target, ignore_errors=True)
        elif chief and not resume and run is not None and run.meta["checkpoint"] is None:
            # A new run that failed (a full disk, say) before its first checkpoint holds no
            # weights: leaving it would only take the space and block a plain rerun.
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if log_file:   # every record was flushed: a close error repeats a reported one
            with contextlib.suppress(OSError):
                log_file.close()
    return run if chief else None


def _open_log(path: Path | None, resumed_at: int | None) -> IO[str] | None:
    """The --log-json file, opened for appending. When resuming from the end of epoch
    ``resumed_at``, records of later epochs (written before an interruption, replayed now) are
    dropped first, so every epoch appears once."""
    if path is None:
        return None
    if resumed_at is not None and path.is_file():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                if _epoch_of(line) is None or _epoch_of(line) <= resumed_at]
        write_text(path, "".join(kept))
    try:
        return open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by train)
    except OSError as error:
        raise VaecfError(f"--log-json {path}: cannot write ({error.strerror})") from None


def _epoch_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


def _epoch_record(epoch: int, step: int, beta: float, sums: EpochSums,
                  comm: Comm) -> dict[str, Any]:
    """The per-epoch log entry: user-weighted means over all ranks' users."""
    users = comm.allreduce_sum(float(sums.users))
    mean = {name: comm.allreduce_sum(getattr(sums, name)) / max(users, 1.0)
            for name in ("loss", "nll", "kl")}
    seconds = sums.seconds
    return {"epoch": epoch, "step": step, **mean, "beta": beta,
            "users_per_s": users / max(seconds, 1e-9), "seconds": seconds}

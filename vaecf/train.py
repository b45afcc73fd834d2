"""The Mult-VAE training loop: one straight line, data parallel through ``vaecf.distributed``.

Per step (Liang et al. 2018, Algorithm 1): a batch of this rank's users, L2-normalised, goes
through the network with input dropout and a sampled z; loss = multinomial NLL + β·KL with
β = min(step / anneal_steps, anneal_cap); gradients are averaged over ranks (float32
allreduce) and Adam applies them. Every rank sees each of its users once per epoch in a seeded
shuffle; only the chief validates, logs and writes the run directory.

Defaults follow the paper's notebook (batch 500, Adam lr 1e-3, cap 0.2, 200 epochs, best
checkpoint by validation NDCG@100) except ``anneal_steps``: the paper's 200,000 steps reach
β = 0.2 after 40,000 steps, which is 86% of 200 epochs on MovieLens-20M but never happens on
smaller data (ML-1M has ~2,000 steps in 200 epochs). The default instead makes β reach the cap
halfway through training, whatever the dataset size:
``anneal_steps = ceil(epochs · steps_per_epoch · ANNEAL_FRACTION / anneal_cap)``; the resolved
value is stored in the run's settings.json.

Reproducibility: weights are initialised from ``seed``; the shuffle of epoch e on rank r is
``default_rng([seed, r, e])``; dropout and z noise of step s are stateless draws keyed by
(hash(seed, r), s). A run is thus a pure function of its settings and data, and a resumed run
(even one stopped mid-epoch by Ctrl-C) ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vaecf.backend import Backend, share_gpu_with_tensorflow
from vaecf.batches import Batch, epoch_order, iterate, steps_per_epoch, to_backend_csr
from vaecf.dataset import Dataset
from vaecf.distributed import Comm, communicator
from vaecf.errors import VaecfError
from vaecf.metrics import METRIC_KS, SELECTION_METRIC
from vaecf.rundir import RunDir
from vaecf.settings import Settings
from vaecf.train_view import TrainView

ANNEAL_FRACTION = 0.5   # share of training after which β reaches its cap (default schedule)


def default_anneal_steps(total_steps: int, cap: float) -> int:
    """Steps such that β = min(step / anneal_steps, cap) hits ``cap`` at ANNEAL_FRACTION of
    ``total_steps``."""
    if cap <= 0:
        return 1
    return max(1, math.ceil(total_steps * ANNEAL_FRACTION / cap))


def cpu_has_bf16() -> bool:
    """Whether this CPU executes bfloat16 natively (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_policy(amp: bool, say: Callable[[str], None]) -> str:
    """The Keras dtype policy: float32, or with ``amp`` mixed_float16 on a GPU and
    mixed_bfloat16 on a CPU with bfloat16 instructions (float32 elsewhere, said once)."""
    import tensorflow as tf

    if not amp:
        return "float32"
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    if cpu_has_bf16():
        return "mixed_bfloat16"
    say("--amp: this CPU has no bfloat16 instructions; training in float32")
    return "float32"


def noise_key(seed: int, rank: int) -> int:
    """First half of every step's stateless seed: distinct per rank, fixed by ``seed``."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0] >> 1)


class Trainer:
    """The model, its optimizer and the compiled training step of one rank.

    Args:
        settings: resolved settings (``train.anneal_steps`` set).
        n_items: I.
        comm: the process group (gradients are averaged through it).
        policy: Keras dtype policy from :func:`precision_policy`.
    """

    def __init__(self, settings: Settings, n_items: int, comm: Comm, policy: str) -> None:
        import keras
        import tensorflow as tf

        from vaecf.model import MultVAE, kl_divergence, multinomial_nll

        m, t = settings.model, settings.train
        self.model = MultVAE(n_items, m.hidden, m.latent, m.dropout, m.activation,
                             seed=t.seed, dtype=policy, xla=t.xla)
        optimizer = keras.optimizers.Adam(t.lr)
        if policy == "mixed_float16":   # float16 gradients underflow without loss scaling
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(self.model.trainable_variables)
        self.optimizer = optimizer
        self.noise_key = noise_key(t.seed, comm.rank)
        model, variables = self.model, self.model.trainable_variables
        spec = [tf.TensorSpec([None, 2], tf.int64), tf.TensorSpec([None], tf.float32),
                tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.int64),
                tf.TensorSpec([], tf.float32), tf.TensorSpec([2], tf.int64)]

        # XLA compiles the forward/backward pass only: Horovod's allreduce has no XLA kernel.
        @tf.function(jit_compile=t.xla, reduce_retracing=True)
        def gradients(indices, values, targets, size, beta, seed):
            shape = tf.stack([size, n_items])
            with tf.GradientTape() as tape:
                logits, mu, logvar = model.forward(tf.SparseTensor(indices, values, shape),
                                                   training=True, seed=seed)
                nll = multinomial_nll(logits, tf.SparseTensor(indices, targets, shape))
                kl = kl_divergence(mu, logvar)
                loss = nll + beta * kl
                scaled = optimizer.scale_loss(loss)
            return loss, nll, kl, tape.gradient(scaled, variables)

        # Adam is a chain of elementwise passes over every weight (memory-bound, ~20% of a
        # batch-500 step); XLA fuses them into one.
        @tf.function(jit_compile=t.xla, reduce_retracing=True)
        def apply(grads):
            optimizer.apply(grads, variables)

        @tf.function(input_signature=spec, reduce_retracing=True)
        def step(indices, values, targets, size, beta, seed):
            loss, nll, kl, grads = gradients(indices, values, targets, size, beta, seed)
            # Dense float32 gradients: what allreduce accepts and Adam updates anyway.
            grads = comm.allreduce_mean([tf.cast(tf.convert_to_tensor(g), tf.float32)
                                         for g in grads])
            apply(grads)
            return loss, nll, kl

        self._step = step

    def step(self, batch: Batch, beta: float, step: int) -> tuple[float, float, float]:
        """One optimizer step on ``batch`` (TF tensors); returns (loss, nll, kl) floats."""
        import tensorflow as tf

        out = self._step(batch.indices, batch.values, batch.targets,
                         tf.constant(batch.size, tf.int64), tf.constant(beta, tf.float32),
                         tf.constant([self.noise_key, step], tf.int64))
        return tuple(float(v) for v in out)

    @property
    def state_variables(self) -> list[Any]:
        """Everything rank 0 broadcasts: weights and optimizer state."""
        return [*self.model.weights, *self.optimizer.variables]


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
    steps = t.anneal_steps or default_anneal_steps(total_steps, t.anneal_cap)
    return settings.model_copy(update={"train": t.model_copy(update={"anneal_steps": steps})})


def train(settings: Settings, data: Path, out: Path, backend: Backend, *, resume: bool = False,
          force: bool = False, quiet: bool = False, log_json: Path | None = None,
          comm: Comm | None = None, extend_to: int | None = None) -> RunDir | None:
    """Train (or resume) a Mult-VAE on the dataset directory ``data`` into run directory ``out``.

    With ``resume`` the run's own stored settings are used, not ``settings``; ``extend_to``
    raises its epoch count.
    Returns the RunDir on the chief rank, None elsewhere. Raises VaecfError on bad input.
    """
    comm = comm or communicator()
    share_gpu_with_tensorflow(backend)
    dataset = Dataset.open(data)
    chief = comm.is_chief
    if resume:
        run = RunDir.open(out)
        run.check_dataset(dataset)
        settings = run.settings
        if extend_to is not None:
            settings = settings.model_copy(update={"train": settings.train.model_copy(
                update={"epochs": extend_to})})
    elif out.exists() and not force:
        raise VaecfError(f"run directory {out} already exists (use --resume to continue it "
                         "or --force to replace it)")
    view = TrainView(settings.train.epochs, quiet or not chief)
    rows = to_backend_csr(backend, dataset.train_rows_for_rank(comm.rank, comm.size))
    total_rows = int(round(comm.allreduce_sum(float(rows.shape[0]))))
    steps = steps_per_epoch(total_rows, comm.size, settings.train.batch_size)
    if not resume:
        settings = _resolve(settings, settings.train.epochs * steps)
        run = RunDir.create(out, settings, dataset, force) if chief else None
        comm.barrier()
    t = settings.train
    trainer = Trainer(settings, dataset.n_items, comm, precision_policy(t.amp, view.say))
    progress = run.load_checkpoint(trainer.model, trainer.optimizer) if resume else dict(
        run.progress if run else {"epoch": 0, "batch": 0, "step": 0, "bad_validations": 0,
                                  "partial": None})
    # A mid-epoch position counts batches of one rank layout: resume it with the same ranks.
    if progress["batch"] and progress.get("ranks", 1) != comm.size:
        raise VaecfError(f"{out} stopped mid-epoch with {progress.get('ranks', 1)} rank(s); "
                         f"resume it with that many (--np/--gpus), not {comm.size}")
    progress["ranks"] = comm.size
    comm.broadcast_variables(trainer.state_variables)
    validation = dataset.heldout("validation") if chief else None
    scorer = None
    history = list(run.history) if run else []
    log = open(log_json, "a", encoding="utf-8") if (log_json and chief) else None  # noqa: SIM115
    # An early-stopped run stays stopped unless --epochs asks for more.
    stopped = resume and run.status == "early-stopped" and extend_to is None
    status = "early-stopped" if stopped else "running"
    epoch, start_batch, step = progress["epoch"], progress["batch"], progress["step"]
    # A saved partial epoch holds the whole job's sums (see the interrupt below): rank 0's.
    partial = (progress["partial"] if chief else None) or {
        "loss": 0.0, "nll": 0.0, "kl": 0.0, "users": 0, "seconds": 0.0}
    beta = min(step / t.anneal_steps, t.anneal_cap)
    try:
        with view, interrupt_flag() as interrupted:
            while epoch < t.epochs and status == "running":
                view.start_epoch(epoch + 1, steps, start_batch)
                order = epoch_order(rows.shape[0], t.seed, comm.rank, epoch)
                started = time.perf_counter()
                for b, batch in enumerate(iterate(backend, rows, order, steps, start_batch),
                                          start=start_batch):
                    beta = min(step / t.anneal_steps, t.anneal_cap)
                    loss, nll, kl = trainer.step(batch, beta, step)
                    step += 1
                    for name, value in (("loss", loss), ("nll", nll), ("kl", kl)):
                        partial[name] += value * batch.size
                    partial["users"] += batch.size
                    elapsed = partial["seconds"] + time.perf_counter() - started
                    view.advance(loss, kl, beta, partial["users"] * comm.size / elapsed)
                    if comm.allreduce_sum(float(interrupted.is_set())) > 0:
                        partial = {name: comm.allreduce_sum(partial[name])
                                   for name in ("loss", "nll", "kl", "users")}
                        partial["seconds"] = elapsed
                        progress = {**progress, "epoch": epoch, "batch": b + 1, "step": step,
                                    "partial": partial}
                        status = "interrupted"
                        break
                if status == "interrupted":
                    break
                record = _epoch_record(epoch + 1, step, beta, partial, comm,
                                       partial["seconds"] + time.perf_counter() - started)
                epoch, start_batch = epoch + 1, 0
                partial = {"loss": 0.0, "nll": 0.0, "kl": 0.0, "users": 0, "seconds": 0.0}
                improved, stop = False, False
                if chief and (epoch % t.validate_every == 0 or epoch == t.epochs):
                    from vaecf.evaluate import evaluate, model_scorer

                    scorer = scorer or model_scorer(trainer.model, backend)
                    ks = sorted({*settings.evaluate.ks, *METRIC_KS})
                    metrics = evaluate(scorer, backend, *validation, ks,
                                       settings.evaluate.batch_size)
                    record["validation"] = metrics
                    best = run.best["metrics"][SELECTION_METRIC] if run.best else -1.0
                    improved = metrics[SELECTION_METRIC] > best
                    progress["bad_validations"] = 0 if improved else (
                        progress["bad_validations"] + 1)
                    if improved:
                        run.save_best(trainer.model, epoch, step, metrics)
                    stop = bool(t.patience and progress["bad_validations"] >= t.patience)
                history.append(record)
                view.epoch_done(record, improved)
                if log:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if comm.allreduce_sum(float(stop)) > 0:
                    status = "early-stopped"
                progress = {**progress, "epoch": epoch, "batch": 0, "step": step,
                            "partial": None}
                if chief and status == "running" and epoch % t.checkpoint_every == 0:
                    run.save_checkpoint(trainer.model, trainer.optimizer, progress, history,
                                        "running")
        if status == "running":
            status = "complete"
        if chief:
            run.save_checkpoint(trainer.model, trainer.optimizer, progress, history, status)
            if status == "interrupted":
                view.say(f"interrupted: checkpoint saved at epoch {epoch}, step {step}; "
                         f"continue with `vaecf train --data {data} --out {out} --resume`")
    finally:
        if log:
            log.close()
    return run if chief else None


def _epoch_record(epoch: int, step: int, beta: float, partial: dict[str, Any], comm: Comm,
                  seconds: float) -> dict[str, Any]:
    """The per-epoch log entry: user-weighted means over all ranks' users."""
    users = comm.allreduce_sum(float(partial["users"]))
    mean = {name: comm.allreduce_sum(partial[name]) / max(users, 1.0)
            for name in ("loss", "nll", "kl")}
    return {"epoch": epoch, "step": step, **mean, "beta": beta,
            "users_per_s": users / max(seconds, 1e-9), "seconds": seconds}

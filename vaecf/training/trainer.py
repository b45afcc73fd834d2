"""One rank's model, optimizer and compiled training step (Liang et al. 2018, Algorithm 1).

Per step: a batch of this rank's users, L2-normalised, goes through the network with input
dropout and a sampled z; loss = multinomial NLL + β·KL; gradients are averaged over ranks
(float32 allreduce) and Adam applies them.

Dropout and z noise of step s are stateless draws keyed by (hash(seed, rank), s), so a step is
a pure function of (weights, batch, seed, step): a resumed run draws the noise an uninterrupted
one would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vaecf.backend import Backend
from vaecf.model.batches import Batch
from vaecf.settings import Settings
from vaecf.training.distributed import Comm


def precision_policy(amp: bool, backend: Backend) -> str:
    """The Keras dtype policy: float32, or with ``amp`` what mixed precision means on the
    chosen backend (float16 + loss scaling on a GPU, bfloat16 on a CPU that has it)."""
    return backend.amp_policy() if amp else "float32"


def data_parallel_step(gradients: Callable[..., Any], optimizer: Any, variables: list[Any],
                       comm: Comm, spec: list[Any], xla: bool) -> Any:
    """The compiled training step around a model's gradient function: gradients on this
    rank's batch, averaged over ranks, applied by ``optimizer`` to ``variables``.

    Args:
        gradients: ``(*inputs) -> (loss, nll, kl, grads)``, a ``tf.function`` (XLA-compiled
            with ``--xla``); the allreduce stays outside it, as Horovod's op has no XLA kernel.
        spec: the ``tf.TensorSpec`` of every input, so the step is traced once.
    Returns:
        a ``tf.function`` ``(*inputs) -> (loss, nll, kl)``.
    """
    import tensorflow as tf

    from vaecf.training.fused_adam import apply_adam, fusable

    # Keras' Adam is a chain of elementwise passes over every weight (memory-bound, ~26% of a
    # batch-500 step): a plain Adam runs as one fused kernel per weight instead.
    fused = fusable(optimizer)

    @tf.function(jit_compile=xla, reduce_retracing=True)
    def apply(grads):
        if fused:
            apply_adam(optimizer, grads, variables)
        else:
            optimizer.apply(grads, variables)

    @tf.function(input_signature=spec, reduce_retracing=True)
    def step(*inputs):
        loss, nll, kl, grads = gradients(*inputs)
        # Dense float32 gradients: what allreduce accepts and Adam updates anyway.
        grads = comm.allreduce_mean([tf.cast(tf.convert_to_tensor(g), tf.float32)
                                     for g in grads])
        apply(grads)
        return loss, nll, kl

    return step


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

        from vaecf.model.multvae import MultVAE, kl_divergence, multinomial_nll, row_parts

        m, t = settings.model, settings.train
        self.model = MultVAE(n_items, m.hidden, m.latent, m.dropout, m.activation,
                             seed=t.seed, dtype=policy, xla=t.xla, noise_std=m.noise_std)
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
                                                   training=True, seed=seed,
                                                   row_blocks=row_parts())
                nll = multinomial_nll(logits, tf.SparseTensor(indices, targets, shape))
                kl = kl_divergence(mu, logvar)
                loss = nll + beta * kl
                scaled = optimizer.scale_loss(loss)
            return loss, nll, kl, tape.gradient(scaled, variables)

        step = data_parallel_step(gradients, optimizer, variables, comm, spec, t.xla)
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



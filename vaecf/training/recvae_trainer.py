"""One rank's RecVAE, its two optimizers and its two compiled steps (Shenbin et al. 2020).

The reference trains in cycles: ``n_enc_epochs`` (3) passes over the users updating only the
encoder, with input dropout, then the prior's encoder is refreshed, then ``n_dec_epochs`` (1)
passes updating only the decoder, without dropout; each part has its own Adam. In vaecf's loop
an epoch is one pass over the training users, so a cycle is ``recvae.encoder_epochs`` +
``recvae.decoder_epochs`` consecutive epochs, and the phase of a step is a function of its
number alone:

    epoch = step // steps_per_epoch;  encoder phase  iff  epoch % cycle < encoder_epochs

The prior's frozen encoder is set to the current encoder at the first step of each cycle
(``step % (cycle · steps_per_epoch) == 0``), which is the reference's "after the encoder
epochs" for every cycle after the first, and makes the first cycle's prior the initial
encoder. The frozen copy is part of the model's weights, so a checkpoint taken at any step
boundary (mid-epoch Ctrl-C included) resumes bit-identically; dropout and z noise are
stateless draws keyed by (hash(seed, rank), step) as for Mult-VAE.

Data parallel: every rank is in the same phase at the same step, so the one float32
allreduce per step pairs up; it averages the encoder's gradients in encoder steps and the
decoder's in decoder steps.
"""

from __future__ import annotations

from typing import Any

from vaecf.model.batches import Batch
from vaecf.settings import Settings
from vaecf.training.distributed import Comm
from vaecf.training.trainer import data_parallel_step, noise_key


class _Optimizers:
    """The encoder's and the decoder's Adam as one object with ``variables`` (what the run
    directory saves and restores, and what rank 0 broadcasts)."""

    def __init__(self, encoder: Any, decoder: Any) -> None:
        self.encoder, self.decoder = encoder, decoder

    @property
    def variables(self) -> list[Any]:
        return [*self.encoder.variables, *self.decoder.variables]


class RecVAETrainer:
    """RecVAE's model, optimizers and training step on one rank (same interface as
    :class:`vaecf.training.trainer.Trainer`).

    Args:
        settings: resolved settings (``model.name == "recvae"``).
        n_items: I.
        comm: the process group.
        policy: Keras dtype policy.
        steps_per_epoch: optimizer steps in one epoch (fixes each step's phase).
    """

    def __init__(self, settings: Settings, n_items: int, comm: Comm, policy: str,
                 steps_per_epoch: int) -> None:
        import keras
        import tensorflow as tf

        from vaecf.model.multvae import row_parts
        from vaecf.model.recvae import RecVAE, recvae_loss

        m, r, t = settings.model, settings.recvae, settings.train
        self.model = model = RecVAE(
            n_items, m.hidden, m.latent, r.encoder_layers, m.dropout, r.layer_norm_eps,
            r.prior_weights, r.wide_logvar, seed=t.seed, dtype=policy, xla=t.xla)
        self.steps_per_epoch = steps_per_epoch
        self.cycle = r.encoder_epochs + r.decoder_epochs
        self.encoder_epochs = r.encoder_epochs
        self.noise_key = noise_key(t.seed, comm.rank)

        def adam(name: str, variables: list[Any]) -> Any:
            optimizer = keras.optimizers.Adam(t.lr, name=name)
            if policy == "mixed_float16":   # float16 gradients underflow without loss scaling
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer,
                                                                name=f"{name}_scaled")
            optimizer.build(variables)
            return optimizer

        spec = [tf.TensorSpec([None, 2], tf.int64), tf.TensorSpec([None], tf.float32),
                tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.int64),
                tf.TensorSpec([], tf.float32), tf.TensorSpec([2], tf.int64)]

        def make_step(variables: list[Any], optimizer: Any, dropout: bool) -> Any:
            """The compiled step updating ``variables`` only (encoder or decoder)."""

            @tf.function(jit_compile=t.xla, reduce_retracing=True)
            def gradients(indices, values, targets, size, gamma, seed):
                shape = tf.stack([size, n_items])
                x = tf.SparseTensor(indices, values, shape)
                blocks = row_parts()
                with tf.GradientTape() as tape:
                    logits, z, mu, logvar = model.forward(x, training=True, seed=seed,
                                                          dropout=dropout, row_blocks=blocks)
                    prior = model.prior_log_density(x, z, blocks)
                    loss, nll, kl = recvae_loss(logits, z, mu, logvar, prior,
                                                tf.SparseTensor(indices, targets, shape), gamma)
                    scaled = optimizer.scale_loss(loss)
                return loss, nll, kl, tape.gradient(scaled, variables)

            return data_parallel_step(gradients, optimizer, variables, comm, spec, t.xla)

        encoder_vars = model.encoder.trainable_variables
        decoder_vars = model.decoder.trainable_variables
        self.optimizer = _Optimizers(adam("encoder_adam", encoder_vars),
                                     adam("decoder_adam", decoder_vars))
        self._encoder_step = make_step(encoder_vars, self.optimizer.encoder, dropout=True)
        self._decoder_step = make_step(decoder_vars, self.optimizer.decoder, dropout=False)

    def phase(self, step: int) -> str:
        """``"encoder"`` or ``"decoder"``: which part step ``step`` updates."""
        epoch = step // self.steps_per_epoch
        return "encoder" if epoch % self.cycle < self.encoder_epochs else "decoder"

    def step(self, batch: Batch, beta: float, step: int) -> tuple[float, float, float]:
        """One optimizer step of this step's phase; ``beta`` is γ (the KL weight per
        interaction). Returns (loss, nll, kl) floats."""
        import tensorflow as tf

        if step % (self.cycle * self.steps_per_epoch) == 0:
            self.model.update_prior()
        run = self._encoder_step if self.phase(step) == "encoder" else self._decoder_step
        out = run(batch.indices, batch.values, batch.targets,
                  tf.constant(batch.size, tf.int64), tf.constant(beta, tf.float32),
                  tf.constant([self.noise_key, step], tf.int64))
        return tuple(float(v) for v in out)

    @property
    def state_variables(self) -> list[Any]:
        """Everything rank 0 broadcasts: weights (the prior's copy included) and both
        optimizers' state."""
        return [*self.model.weights, *self.optimizer.variables]

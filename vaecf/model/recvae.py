"""RecVAE (Shenbin et al. 2020, "RecVAE: A New Variational Autoencoder for Top-N
Recommendations with Implicit Feedback", WSDM), as in the authors' current code
(github.com/ilya-shenbin/RecVAE, ``model.py``), on vaecf's sparse inputs and stateless noise.

Shapes: ``B`` users, ``I`` items, ``H`` encoder width, ``L`` latent dimensions, ``N`` encoder
layers (5).

- Input: the user's binary row, L2-normalised (the same input Mult-VAE takes), sparse or dense.
- Encoder (densely connected): h₁ = LN(swish(W₁x + b₁)),
  hₙ = LN(swish(Wₙhₙ₋₁ + bₙ + h₁ + … + hₙ₋₁)) for n = 2..N, then (mu, logvar) = W·h_N + b.
  Layer norms use ε = 0.1. While training the encoder, the input gets dropout (0.5) first.
- z = mu + ε·exp(logvar/2), ε ~ N(0, I) while training; z = mu when evaluating or serving.
- Decoder: one linear layer L → I (logits, float32 whatever the dtype policy).
- Composite prior, per latent dimension: p(z) = w₁·N(z; 0, 1) + w₂·N(z; mu_old(x), σ²_old(x))
  + w₃·N(z; 0, e^10), where (mu_old, σ_old) is the posterior of a frozen copy of the encoder
  (``prior_encoder``, fed the input without dropout), refreshed by :meth:`RecVAE.update_prior`
  at the start of each training cycle; weights (3/20, 3/4, 1/10).
- Loss per user u: −Σᵢ xᵤᵢ log softmax(logits)ᵢ + γ·|xᵤ|·Σ_d [log q(z_d|x) − log p(z_d)], a
  one-sample estimate of the KL term with β scaled by the user's number of interactions;
  averaged over the batch (:func:`recvae_loss`).

Initialisation follows the reference (PyTorch's ``nn.Linear`` default): weights and biases
U(±1/√fan_in); layer norms start at scale 1, offset 0. The prior's encoder starts as a copy of
the encoder. The frozen copy is part of the model's weights (so checkpoints resume exactly) but
serving never runs it.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from vaecf.model.multvae import SparseInputDense, input_dropout, multinomial_nll

LOG_2PI = math.log(2 * math.pi)


def _uniform(fan_in: int, seed: int) -> keras.initializers.Initializer:
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound, seed=seed)


class _SparseLinear(SparseInputDense):
    """:class:`SparseInputDense` with PyTorch's default ``nn.Linear`` initialisation."""

    def build(self, input_shape: tuple[int | None, int]) -> None:
        fan_in = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(fan_in, self.units),
                                      initializer=_uniform(fan_in, self.seed))
        self.bias = self.add_weight(name="bias", shape=(self.units,),
                                    initializer=_uniform(fan_in, self.seed + 1))


def _linear(units: int, fan_in: int, activation: str | None, seed: int, name: str,
            dtype: str | None) -> keras.layers.Dense:
    layer = keras.layers.Dense(units, activation=activation, name=name, dtype=dtype,
                               kernel_initializer=_uniform(fan_in, seed),
                               bias_initializer=_uniform(fan_in, seed + 1))
    layer.build((None, fan_in))
    return layer


class DenseEncoder(keras.layers.Layer):
    """RecVAE's densely connected encoder: x (B, I) -> (mu, logvar), each float32 (B, L).

    Sub-layers are named ``<prefix>_in``, ``<prefix>_<n>``, ``<prefix>_norm_<n>``,
    ``<prefix>_out`` so the encoder and the prior's copy have distinct variable paths.
    """

    def __init__(self, n_items: int, hidden: int, latent: int, layers: int, eps: float,
                 seed: int, prefix: str, xla: bool = False, dtype: str | None = None,
                 **kwargs) -> None:
        super().__init__(name=prefix, dtype=dtype, **kwargs)
        self.latent = latent
        self.first = _SparseLinear(hidden, "silu", seed, xla, name=f"{prefix}_in", dtype=dtype)
        self.first.build((None, n_items))
        self.dense = [_linear(hidden, hidden, None, seed + 2 * n, f"{prefix}_{n}", dtype)
                      for n in range(1, layers)]
        self.norms = []
        for n in range(layers):
            norm = keras.layers.LayerNormalization(epsilon=eps, name=f"{prefix}_norm_{n}",
                                                   dtype=dtype)
            norm.build((None, hidden))
            self.norms.append(norm)
        self.out = _linear(2 * latent, hidden, None, seed + 2 * layers, f"{prefix}_out", dtype)
        self.built = True

    def call(self, x, row_blocks: int = 1):
        h = self.norms[0](self.first(x, row_blocks=row_blocks))
        total = h
        for dense, norm in zip(self.dense, self.norms[1:], strict=True):
            h = norm(keras.activations.silu(dense(h) + total))
            total = total + h
        q = tf.cast(self.out(h), tf.float32)
        return q[:, : self.latent], q[:, self.latent:]


class RecVAE(keras.Model):
    """The RecVAE network and its composite prior; variables exist once constructed.

    Args:
        n_items: I.
        hidden: H, width of every encoder layer.
        latent: L.
        encoder_layers: N, densely connected encoder layers.
        dropout: input dropout of encoder updates.
        layer_norm_eps: ε of the encoder's layer norms.
        prior_weights: mixture weights of N(0, I), the previous posterior, the wide Gaussian.
        wide_logvar: log-variance of the wide Gaussian.
        seed: seed of the initialisers.
        dtype: Keras dtype policy; None uses the global one.
        xla: build the sparse first layers from ops XLA can compile.
    """

    def __init__(self, n_items: int, hidden: int = 600, latent: int = 200,
                 encoder_layers: int = 5, dropout: float = 0.5, layer_norm_eps: float = 0.1,
                 prior_weights: tuple[float, ...] | list[float] = (0.15, 0.75, 0.1),
                 wide_logvar: float = 10.0, seed: int = 0, dtype: str | None = None,
                 xla: bool = False, **kwargs) -> None:
        super().__init__(dtype=dtype, **kwargs)
        self.n_items, self.hidden, self.latent = n_items, hidden, latent
        self.encoder_layers, self.dropout, self.layer_norm_eps = (encoder_layers, dropout,
                                                                  layer_norm_eps)
        self.prior_weights, self.wide_logvar = [float(w) for w in prior_weights], wide_logvar
        # False makes training deterministic (z = mu; with dropout 0, no noise at all): the
        # data-parallel test compares N ranks against one process step for step.
        self.sample_latent = True
        args = (n_items, hidden, latent, encoder_layers, layer_norm_eps, seed)
        self.encoder = DenseEncoder(*args, prefix="encoder", xla=xla, dtype=dtype)
        self.decoder = _linear(n_items, latent, None, seed + 1000, "decoder", dtype)
        self.prior_encoder = DenseEncoder(*args, prefix="prior_encoder", xla=xla, dtype=dtype)
        self.prior_encoder.trainable = False
        self.update_prior()
        self.built = True

    @property
    def encoder_hidden(self):
        """The sparse first layer (what ``bench inference`` counts as partly read)."""
        return self.encoder.first

    @property
    def serving_weights(self) -> list:
        """The weights serving reads: the encoder's and the decoder's, not the prior's."""
        return [*self.encoder.weights, *self.decoder.weights]

    def update_prior(self) -> None:
        """Make the prior's posterior component the encoder as it is now."""
        for old, new in zip(self.prior_encoder.weights, self.encoder.weights, strict=True):
            old.assign(new)

    def encode(self, x, training: bool = False, seed=None, row_blocks: int = 1):
        """(mu, logvar), float32 (B, L); with ``training`` the input gets dropout (``seed``
        (2,) int required)."""
        if training and self.dropout > 0:
            x = input_dropout(x, self.dropout, seed)
        return self.encoder(x, row_blocks=row_blocks)

    def decode(self, z):
        """Float32 logits (B, I) from z (B, L)."""
        return tf.cast(self.decoder(z), tf.float32)

    def forward(self, x, training: bool = False, seed=None, dropout: bool = True,
                row_blocks: int = 1):
        """(logits, z, mu, logvar), float32. Training samples z (and drops input non-zeros
        when ``dropout``); noise is keyed by ``seed``."""
        mu, logvar = self.encode(x, training and dropout, seed, row_blocks)
        z = mu
        if training and self.sample_latent:
            eps = tf.random.stateless_normal(tf.shape(mu),
                                             tf.random.experimental.stateless_fold_in(seed, 1))
            z = mu + eps * tf.exp(0.5 * logvar)
        return self.decode(z), z, mu, logvar

    def prior_log_density(self, x, z, row_blocks: int = 1):
        """log p(z_d | x) per dimension, float32 (B, L): the composite prior with the frozen
        encoder's posterior for input ``x`` (L2-normalised, no dropout)."""
        prior_mu, prior_logvar = self.prior_encoder(x, row_blocks=row_blocks)
        return composite_prior_log_density(z, prior_mu, prior_logvar, self.prior_weights,
                                           self.wide_logvar)

    def call(self, x, training: bool = False, row_blocks: int = 1):
        """Evaluation forward: float32 logits (B, I) of decoder(mu)."""
        return self.decode(self.encode(x, row_blocks=row_blocks)[0])

    def get_config(self) -> dict:
        return {"n_items": self.n_items, "hidden": self.hidden, "latent": self.latent,
                "encoder_layers": self.encoder_layers, "dropout": self.dropout,
                "layer_norm_eps": self.layer_norm_eps, "prior_weights": self.prior_weights,
                "wide_logvar": self.wide_logvar}


def log_normal(z, mu, logvar):
    """Elementwise log N(z; mu, exp(logvar))."""
    return -0.5 * (logvar + LOG_2PI + tf.square(z - mu) * tf.exp(-logvar))


def composite_prior_log_density(z, prior_mu, prior_logvar, weights, wide_logvar: float):
    """Elementwise log of w₁·N(z; 0, 1) + w₂·N(z; prior_mu, e^prior_logvar) + w₃·N(z; 0,
    e^wide_logvar), float32, summed in log space (components of weight 0 left out)."""
    zero = tf.zeros_like(z)
    components = [(weights[0], zero, zero), (weights[1], prior_mu, prior_logvar),
                  (weights[2], zero, tf.fill(tf.shape(z), tf.constant(wide_logvar, z.dtype)))]
    terms = [log_normal(z, mu, logvar) + float(np.log(w))
             for w, mu, logvar in components if w > 0]
    return tf.reduce_logsumexp(tf.stack(terms, axis=-1), axis=-1)


def recvae_loss(logits, z, mu, logvar, prior_log, targets: tf.SparseTensor, gamma):
    """(loss, nll, kl), float32 scalars, means over the batch's users.

    nll = −Σᵢ xᵤᵢ log softmax(logits)ᵤᵢ; kl = Σ_d [log q(z_d) − log p(z_d)] (one-sample
    estimate); loss = nll + γ·|xᵤ|·kl per user, |xᵤ| = Σᵢ xᵤᵢ.
    """
    nll = multinomial_nll(logits, targets)
    kl_user = tf.reduce_sum(log_normal(z, mu, logvar) - prior_log, axis=1)        # (B,)
    counts = tf.math.unsorted_segment_sum(targets.values, tf.cast(targets.indices[:, 0],
                                                                  tf.int32), tf.shape(z)[0])
    weighted = tf.reduce_mean(gamma * counts * kl_user)
    return nll + weighted, nll, tf.reduce_mean(kl_user)

"""FLOPs of Mult-VAE and RecVAE training and serving, counted from the layer sizes, and the
matmul ceiling they are compared to.

A matmul (m × k) @ (k × n) is 2·m·k·n FLOPs. Per user, with I items, H hidden, L latent and
nnz interactions:

- forward: sparse first layer 2·nnz·H; encoder out 2·H·2L; decoder hidden 2·L·H;
  decoder out 2·H·I;
- backward: twice the forward for every dense layer (gradient of the weights and of the
  input); the first layer needs only its weight gradient, 2·nnz·H (its input is data).

So one user costs 4·nnz·H + 6·(2HL + LH + HI); biases, activations, softmax and Adam are
not counted (they are memory-bound, and the ceiling they are compared to is a matmul).

RecVAE (N encoder layers of width H, decoder L → I), per user: the encoder's forward is
E = 2·nnz·H + (N−1)·2·H² + 2·H·2L and the decoder's D = 2·L·I. An encoder step runs the
encoder forward and backward (2·nnz·H + 3·(E − 2·nnz·H)), the prior's frozen copy forward (E)
and the decoder forward plus the gradient of its input (2·D); a decoder step runs both
encoders forward (2·E) and the decoder forward plus its weight gradient (2·D). Training
averages the two in the cycle's proportion (3 encoder epochs : 1 decoder epoch); serving is
E + D.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any


def _dense_flops(n_items: int, hidden: int, latent: int) -> float:
    """Forward matmul FLOPs of the dense layers for one user: 2·H·2L + 2·L·H + 2·H·I."""
    return 2 * hidden * 2 * latent + 2 * latent * hidden + 2 * hidden * n_items


def forward_flops_per_user(n_items: int, hidden: int, latent: int, nnz_per_user: float) -> float:
    """Matmul FLOPs of one user in an evaluation forward (what serving runs)."""
    return 2 * nnz_per_user * hidden + _dense_flops(n_items, hidden, latent)


def train_flops_per_user(n_items: int, hidden: int, latent: int, nnz_per_user: float) -> float:
    """Forward + backward matmul FLOPs of one user in a training step."""
    return 2 * 2 * nnz_per_user * hidden + 3 * _dense_flops(n_items, hidden, latent)


def matmul_flops(batch: int, hidden: int, n_items: int, dtype: str, repeats: int = 3) -> float:
    """The machine's ceiling: best FLOP/s of a (batch × hidden) @ (hidden × n_items) matmul in
    ``dtype``, the decoder's shape, measured now."""
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal((batch, hidden), seed=(0, 1)), dtype)
    b = tf.cast(tf.random.stateless_normal((hidden, n_items), seed=(0, 2)), dtype)
    product = _product(dtype)
    product(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2.0 * batch * hidden * n_items / best


@cache
def _product(dtype: str) -> Any:
    """sum(a @ b) as one tf.function per dtype for a (m, k) and b (k, n) of any sizes, traced
    once: a function built per call would retrace on every call (and TensorFlow warns)."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, None], dtype)
    return tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)),
                       input_signature=[spec, spec])


def recvae_forward_flops_per_user(n_items: int, hidden: int, latent: int, nnz_per_user: float,
                                  layers: int = 5) -> float:
    """Matmul FLOPs of one user in RecVAE's evaluation forward (encoder + decoder)."""
    return _recvae_encoder(hidden, latent, nnz_per_user, layers) + 2 * latent * n_items


def recvae_train_flops_per_user(n_items: int, hidden: int, latent: int, nnz_per_user: float,
                                layers: int = 5, encoder_epochs: int = 3,
                                decoder_epochs: int = 1) -> float:
    """Matmul FLOPs of one user in a RecVAE training step, averaged over a cycle's steps."""
    first = 2 * nnz_per_user * hidden
    encoder = _recvae_encoder(hidden, latent, nnz_per_user, layers)
    decoder = 2 * latent * n_items
    encoder_step = 2 * first + 3 * (encoder - first) + encoder + 2 * decoder
    decoder_step = 2 * encoder + 2 * decoder
    return ((encoder_epochs * encoder_step + decoder_epochs * decoder_step)
            / (encoder_epochs + decoder_epochs))


def _recvae_encoder(hidden: int, latent: int, nnz_per_user: float, layers: int) -> float:
    return 2 * nnz_per_user * hidden + (layers - 1) * 2 * hidden * hidden + 2 * hidden * 2 * latent


def model_train_flops_per_user(settings, n_items: int, nnz_per_user: float) -> float:
    """Training FLOPs per user of the model ``settings.model.name`` describes."""
    m, r = settings.model, settings.recvae
    if settings.model.name == "recvae":
        return recvae_train_flops_per_user(n_items, m.hidden, m.latent, nnz_per_user,
                                           r.encoder_layers, r.encoder_epochs, r.decoder_epochs)
    return train_flops_per_user(n_items, m.hidden, m.latent, nnz_per_user)


def model_forward_flops_per_user(model, nnz_per_user: float) -> float:
    """Serving FLOPs per user of a built model (a MultVAE or a RecVAE)."""
    layers = getattr(model, "encoder_layers", None)
    if layers is not None:
        return recvae_forward_flops_per_user(model.n_items, model.hidden, model.latent,
                                             nnz_per_user, layers)
    return forward_flops_per_user(model.n_items, model.hidden, model.latent, nnz_per_user)

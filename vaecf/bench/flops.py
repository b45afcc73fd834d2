"""FLOPs of Mult-VAE training and serving, counted from the layer sizes, and the matmul
ceiling they are compared to.

A matmul (m × k) @ (k × n) is 2·m·k·n FLOPs. Per user, with I items, H hidden, L latent and
nnz interactions:

- forward: sparse first layer 2·nnz·H; encoder out 2·H·2L; decoder hidden 2·L·H;
  decoder out 2·H·I;
- backward: twice the forward for every dense layer (gradient of the weights and of the
  input); the first layer needs only its weight gradient, 2·nnz·H (its input is data).

So one user costs 4·nnz·H + 6·(2HL + LH + HI); biases, activations, softmax and Adam are
not counted (they are memory-bound, and the ceiling they are compared to is a matmul).
"""

from __future__ import annotations

import time


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
    matmul = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    matmul().numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        matmul().numpy()
        best = min(best, time.perf_counter() - started)
    return 2.0 * batch * hidden * n_items / best

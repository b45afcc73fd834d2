"""FLOPs of Mult-VAE training and serving, counted from the layer sizes.

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


def _dense_flops(n_items: int, hidden: int, latent: int) -> float:
    """Forward matmul FLOPs of the dense layers for one user: 2·H·2L + 2·L·H + 2·H·I."""
    return 2 * hidden * 2 * latent + 2 * latent * hidden + 2 * hidden * n_items


def forward_flops_per_user(n_items: int, hidden: int, latent: int, nnz_per_user: float) -> float:
    """Matmul FLOPs of one user in an evaluation forward (what serving runs)."""
    return 2 * nnz_per_user * hidden + _dense_flops(n_items, hidden, latent)


def train_flops_per_user(n_items: int, hidden: int, latent: int, nnz_per_user: float) -> float:
    """Forward + backward matmul FLOPs of one user in a training step."""
    return 2 * 2 * nnz_per_user * hidden + 3 * _dense_flops(n_items, hidden, latent)

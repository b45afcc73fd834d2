"""Keras' Adam update, applied by one fused kernel per weight.

Keras 3's ``Adam.update_step`` is a chain of elementwise ops (two moment updates, a square
root, a division, a subtraction), each a separate pass over the weight: with ~24M parameters
at the MovieLens-20M shape that is over a gigabyte of memory traffic per step, ~26% of a
batch-500 step. TensorFlow's ``ResourceApplyAdam`` kernel computes the same update in one
pass (three times faster here, docs/benchmarks.md), on the optimizer's own moment variables,
so checkpoints, resume and broadcasts are unchanged.

The arithmetic is Keras' (``alpha = lr·√(1−β₂ᵗ)/(1−β₁ᵗ)``, ``m += (g−m)(1−β₁)``,
``v += (g²−v)(1−β₂)``, ``w −= alpha·m/(√v + ε)``); only the rounding order differs (weights
agree to ~1e-7 after a few steps).
"""

from __future__ import annotations

from typing import Any


def fusable(optimizer: Any) -> bool:
    """Whether ``optimizer`` is a plain Keras Adam this module reproduces exactly (no AMSGrad,
    clipping, weight decay, EMA or gradient accumulation; a loss-scaling wrapper is not)."""
    import keras

    return (type(optimizer) is keras.optimizers.Adam and not optimizer.amsgrad
            and optimizer.clipnorm is None and optimizer.clipvalue is None
            and optimizer.global_clipnorm is None and optimizer.weight_decay is None
            and not optimizer.use_ema and optimizer.gradient_accumulation_steps is None)


def apply_adam(optimizer: Any, grads: list[Any], variables: list[Any]) -> None:
    """``optimizer.apply(grads, variables)`` for a :func:`fusable` Adam, one fused kernel per
    float32 weight (inside a ``tf.function``).

    Args:
        grads: one float32 gradient per variable, of the variable's shape.
        variables: Keras variables the optimizer was built on.
    """
    import tensorflow as tf

    step = tf.cast(optimizer.iterations + 1, tf.float32)
    beta_1_power = tf.pow(tf.constant(optimizer.beta_1, tf.float32), step)
    beta_2_power = tf.pow(tf.constant(optimizer.beta_2, tf.float32), step)
    lr = tf.cast(optimizer.learning_rate, tf.float32)
    for grad, variable in zip(grads, variables, strict=True):
        index = optimizer._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.value.handle, m=optimizer._momentums[index].value.handle,
            v=optimizer._velocities[index].value.handle, beta1_power=beta_1_power,
            beta2_power=beta_2_power, lr=lr, beta1=optimizer.beta_1, beta2=optimizer.beta_2,
            epsilon=optimizer.epsilon, grad=grad)
    optimizer.iterations.assign_add(1)

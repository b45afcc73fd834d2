"""Serving precision: the weights a Recommender or an exported model holds.

- ``fp32``: the trained weights as they are (the default; results never change).
- ``bf16``: every weight stored in bfloat16 (half the bytes a one-user call streams); the
  matmuls run in bfloat16 through oneDNN, which accumulates in float32 and rounds each layer's
  output to bfloat16; the logits are cast back to float32 before exclusion and top-k. Top-k
  lists differ from fp32 where scores are closer than bfloat16's 8-bit mantissa resolves, so
  ``vaecf bench inference --precision bf16`` reports the agreement with fp32.

int8 is not offered: TensorFlow 2.18's CPU build has no int8 matmul kernel that a one-user
product can use (QuantizedMatMul is not registered; QuantizedMatMulWithBias measured 7x slower
than the float32 product).
"""

from __future__ import annotations

from typing import Any, Literal

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
_KERAS_DTYPE = {"bf16": "bfloat16"}


def at_precision(model: Any, precision: str) -> Any:
    """``model`` (a MultVAE or RecVAE) itself for fp32, else a copy whose weights are stored
    and used in ``precision``.

    Raises:
        VaecfError: an unknown precision.
    """
    from vaecf.errors import VaecfError

    if precision == "fp32":
        return model
    if precision not in _KERAS_DTYPE:
        raise VaecfError(f"--precision: unknown precision {precision!r} "
                         f"(choose {', '.join(PRECISIONS)})")
    import tensorflow as tf

    # The same class and shape (a MultVAE or a RecVAE: get_config holds its arguments).
    low = type(model)(**model.get_config(), dtype=_KERAS_DTYPE[precision])
    for target, source in zip(low.weights, model.weights, strict=True):
        target.assign(tf.cast(source, target.dtype))
    return low

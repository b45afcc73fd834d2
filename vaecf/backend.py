"""The array backend, picked once at the edge and passed down: NumPy/SciPy or CuPy/cupyx.

Everything downstream takes a :class:`Backend` and calls ``backend.xp`` (``numpy`` or ``cupy``)
and ``backend.xsparse`` (``scipy.sparse`` or ``cupyx.scipy.sparse``); there is no global device
state and no ``if gpu:`` elsewhere. GPU libraries are imported here and only here, lazily.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

from vaecf.errors import VaecfError

BackendName = Literal["auto", "cpu", "gpu"]


@dataclass(frozen=True)
class Backend:
    """One array namespace plus its sparse namespace.

    Attributes:
        name: ``"cpu"`` or ``"gpu"``.
        xp: ``numpy`` or ``cupy``.
        xsparse: ``scipy.sparse`` or ``cupyx.scipy.sparse``.
    """

    name: Literal["cpu", "gpu"]
    xp: ModuleType
    xsparse: ModuleType

    def to_numpy(self, array: Any) -> np.ndarray:
        """Copy a backend array to host memory (a no-op view on CPU)."""
        return array.get() if hasattr(array, "get") else np.asarray(array)

    def from_numpy(self, array: np.ndarray) -> Any:
        """Move a host array onto the backend's device (a no-op on CPU)."""
        return self.xp.asarray(array)


def cpu_backend() -> Backend:
    """The NumPy + scipy.sparse backend; always available."""
    import scipy.sparse

    return Backend("cpu", np, scipy.sparse)


def gpu_status() -> tuple[bool, str]:
    """Whether the GPU backend can run here, and if not, why (one short phrase).

    ``cupy.cuda.is_available()`` answers without creating a CUDA context, so asking is free.
    cuDF is only imported once CuPy has found a device: RAPIDS wheels fail at first use
    without a driver.
    """
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install 'vaecf[gpu]')"
    try:
        if not cupy.cuda.is_available():
            return False, "CuPy found no CUDA device"
    except Exception as exc:  # a broken driver raises instead of answering False
        return False, f"CUDA is not usable: {exc}"
    return True, "CUDA device found"


def gpu_backend() -> Backend:
    """The CuPy + cupyx.scipy.sparse backend; raises VaecfError when no GPU is usable."""
    ok, why = gpu_status()
    if not ok:
        raise VaecfError(f"--backend gpu: no usable GPU ({why})")
    import cupy
    import cupyx.scipy.sparse

    return Backend("gpu", cupy, cupyx.scipy.sparse)


def select_backend(requested: BackendName, say: Any = None) -> Backend:
    """Resolve ``auto|cpu|gpu`` to a Backend.

    Args:
        requested: the user's choice.
        say: optional callable taking one line of text; ``auto`` uses it to say why it fell
            back to CPU.
    """
    if requested == "cpu":
        return cpu_backend()
    if requested == "gpu":
        return gpu_backend()
    if requested != "auto":
        raise VaecfError(f"--backend: unknown backend {requested!r} (choose auto, cpu or gpu)")
    ok, why = gpu_status()
    if ok:
        return gpu_backend()
    if say is not None:
        say(f"backend auto: using CPU ({why})")
    return cpu_backend()


def share_gpu_with_tensorflow(backend: Backend) -> None:
    """Let TensorFlow and CuPy share the GPU; call before TensorFlow first touches a GPU.

    TensorFlow's allocator reserves nearly all device memory at its first GPU op, after which
    CuPy (batch slicing, normalisation, top-k, metrics) fails with out-of-memory. With memory
    growth TF takes memory as it needs it, and CuPy's pool does the same beside it. A no-op on
    the CPU backend, and when TF's devices already exist (Horovod's GPU pinning sets growth
    itself).
    """
    if backend.name != "gpu":
        return
    import tensorflow as tf

    for device in tf.config.list_physical_devices("GPU"):
        # RuntimeError: devices already initialised; ValueError: hidden by rank pinning.
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.experimental.set_memory_growth(device, True)

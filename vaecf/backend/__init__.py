"""The one seam between CPU and GPU: a :class:`Backend` picked once at the edge, passed down.

Everything that differs between NumPy/SciPy/pandas and CuPy/cupyx/cuDF lives behind the
Backend object: the array and sparse namespaces, the dataframe module that feeds prepare's
reader, the converters to and from TensorFlow, the dask cluster, how TensorFlow shares the
device, and what mixed precision means. No module outside this package asks which backend it
has. GPU libraries are imported in :mod:`vaecf.backend.gpu` only, and only when it is chosen.
"""

from __future__ import annotations

import logging
from typing import Literal

from vaecf.backend.base import Backend
from vaecf.backend.cpu import CpuBackend
from vaecf.backend.probe import gpu_status
from vaecf.errors import VaecfError

BackendName = Literal["auto", "cpu", "gpu"]

__all__ = ["Backend", "BackendName", "CpuBackend", "cpu_backend", "gpu_backend", "gpu_status",
           "select_backend"]


def cpu_backend() -> Backend:
    """The NumPy + scipy.sparse + pandas backend; always available."""
    return CpuBackend()


def gpu_backend() -> Backend:
    """The CuPy + cupyx.scipy.sparse + cuDF backend; VaecfError when no GPU is usable."""
    ok, why = gpu_status()
    if not ok:
        raise VaecfError(f"--backend gpu: no usable GPU ({why})")
    from vaecf.backend.gpu import GpuBackend

    return GpuBackend.create()


def select_backend(requested: BackendName) -> Backend:
    """Resolve ``auto|cpu|gpu`` to a Backend; ``auto`` logs (debug) why it fell back to the CPU."""
    if requested == "cpu":
        return cpu_backend()
    if requested == "gpu":
        return gpu_backend()
    if requested != "auto":
        raise VaecfError(f"--backend: unknown backend {requested!r} (choose auto, cpu or gpu)")
    ok, why = gpu_status()
    if ok:
        return gpu_backend()
    logging.getLogger("vaecf").debug("backend auto: using CPU (%s)", why)
    return cpu_backend()

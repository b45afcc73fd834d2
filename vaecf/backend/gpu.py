"""The GPU backend: CuPy, cupyx.scipy.sparse, cuDF, dask-cuda, TensorFlow through DLPack.

Imported only once :func:`vaecf.backend.gpu_backend` has found a usable device.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from vaecf.backend.base import Backend
from vaecf.errors import VaecfError


@dataclass(frozen=True)
class GpuBackend(Backend):
    """CuPy + cupyx.scipy.sparse on the process's (pinned) device 0."""

    @classmethod
    def create(cls) -> GpuBackend:
        import cupy
        import cupyx.scipy.sparse

        return cls("gpu", cupy, cupyx.scipy.sparse)

    def csr(self, matrix: Any) -> Any:
        return self.xsparse.csr_matrix(matrix)

    def to_tf(self, array: Any) -> Any:
        import tensorflow as tf

        # __dlpack__() gives the same capsule as CuPy 13's toDlpack(), deprecated in CuPy 14.
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())

    def from_tf(self, tensor: Any) -> Any:
        import tensorflow as tf

        return self.xp.from_dlpack(tf.experimental.dlpack.to_dlpack(tensor)).copy()

    def frames(self) -> ModuleType:
        try:
            import cudf
        except ImportError as error:
            raise VaecfError(f"cudf is not installed ({error}); pip install 'vaecf[gpu]'"
                             ) from None
        return cudf

    @property
    def native_reader(self) -> str | None:
        # Without cuDF the pyarrow reader runs and the split still happens on the GPU.
        return "cudf" if importlib.util.find_spec("cudf") is not None else None

    @contextlib.contextmanager
    def dask_cluster(self, workers: int | None = None,
                     memory_limit: str | None = None) -> Iterator[Any]:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as error:
            raise VaecfError(f"--dask on GPU needs dask-cuda ({error}); pip install "
                             "'vaecf[gpu]'") from None
        # One worker per GPU unless told; memory_limit is host memory, as on the CPU.
        with LocalCUDACluster(ip="127.0.0.1", dashboard_address="127.0.0.1:0", n_workers=workers,
                              memory_limit=memory_limit or "auto",
                              silence_logs=logging.CRITICAL) as cluster:
            yield cluster

    def configure_tensorflow(self) -> None:
        """Let TensorFlow and CuPy share the GPU.

        TensorFlow's allocator reserves nearly all device memory at its first GPU op, after
        which CuPy (batches, top-k, metrics) runs out of memory. With memory growth TF takes
        memory as it needs it, and CuPy's pool does the same beside it.
        """
        import tensorflow as tf

        for device in tf.config.list_physical_devices("GPU"):
            # RuntimeError: devices already initialised; ValueError: hidden by rank pinning.
            with contextlib.suppress(RuntimeError, ValueError):
                tf.config.experimental.set_memory_growth(device, True)

    def available_memory(self) -> int:
        """Free memory of the current CUDA device plus what CuPy's pool holds unused."""
        free, _ = self.xp.cuda.runtime.memGetInfo()
        pool = self.xp.get_default_memory_pool()
        return int(free) + int(pool.free_bytes())

    def amp_policy(self) -> str:
        """float16 compute with dynamic loss scaling (the trainer wraps the optimizer)."""
        return "mixed_float16"

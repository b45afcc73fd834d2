"""The CPU backend: NumPy, scipy.sparse, pandas, TensorFlow on the host."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import scipy.sparse

from vaecf.backend.base import Backend
from vaecf.backend.probe import cpu_bf16

log = logging.getLogger("vaecf")


@dataclass(frozen=True)
class CpuBackend(Backend):
    """NumPy + scipy.sparse (``xp`` may be replaced by a stand-in in tests)."""

    name: str = "cpu"
    xp: ModuleType = field(default=np)
    xsparse: ModuleType = field(default=scipy.sparse)

    def csr(self, matrix: Any) -> Any:
        return matrix.tocsr()

    def to_tf(self, array: Any) -> Any:
        # Not DLPack: TF's from_dlpack aborts the process on NumPy buffers that are not
        # 64-byte aligned (docs/design.md, "Handing arrays to TensorFlow").
        import tensorflow as tf

        return tf.convert_to_tensor(array)

    def from_tf(self, tensor: Any) -> Any:
        return np.array(tensor)

    def frames(self) -> ModuleType:
        import pandas

        return pandas

    @contextlib.contextmanager
    def dask_cluster(self, workers: int | None = None,
                     memory_limit: str | None = None) -> Iterator[Any]:
        from dask.distributed import LocalCluster

        # Loopback only, the HTTP endpoint on an ephemeral port: nothing is exposed beyond
        # this machine, and two clusters never contend for dask's default port 8787.
        with LocalCluster(host="127.0.0.1", n_workers=workers or min(4, os.cpu_count() or 1),
                          threads_per_worker=1, memory_limit=memory_limit or "auto",
                          dashboard_address="127.0.0.1:0",
                          silence_logs=logging.CRITICAL) as cluster:
            yield cluster

    def configure_tensorflow(self) -> None:
        """Hide any GPU from TensorFlow: ``--backend cpu`` means the model runs on the CPU."""
        import tensorflow as tf

        with contextlib.suppress(RuntimeError):   # devices already initialised: leave them
            tf.config.set_visible_devices([], "GPU")

    def available_memory(self) -> int:
        """MemAvailable of the host (psutil when installed, else /proc/meminfo)."""
        import contextlib
        from pathlib import Path

        with contextlib.suppress(ImportError):
            import psutil

            return int(psutil.virtual_memory().available)
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
        raise OSError("cannot tell the available memory (no psutil, no /proc/meminfo)")

    def amp_policy(self) -> str:
        """bfloat16 where the CPU executes it natively, float32 (said once) elsewhere."""
        unit = cpu_bf16()
        if unit == "avx512":
            # Measured on a 2-core Xeon with AVX512-BF16 and no AMX (docs/benchmarks.md):
            # oneDNN's bfloat16 matmuls ran at 0.55x float32, bf16 training at 0.6x.
            log.warning("--amp: this CPU has AVX512-BF16 but no AMX; bfloat16 may train "
                        "slower than float32 here (measure with `vaecf bench train --compare`)")
        if unit:
            return "mixed_bfloat16"
        log.info("--amp: this CPU has no bfloat16 instructions; training in float32")
        return "float32"

"""What every backend provides (see :mod:`vaecf.backend`)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Backend:
    """One device's array, sparse and dataframe namespaces plus its TensorFlow hand-offs.

    Attributes:
        name: ``"cpu"`` or ``"gpu"``, for messages and benchmark tables only.
        xp: ``numpy`` or ``cupy``.
        xsparse: ``scipy.sparse`` or ``cupyx.scipy.sparse``.
    """

    name: str
    xp: ModuleType
    xsparse: ModuleType

    def to_numpy(self, array: Any) -> np.ndarray:
        """Copy a backend array to host memory (a no-op view on CPU)."""
        return array.get() if hasattr(array, "get") else np.asarray(array)

    def from_numpy(self, array: np.ndarray) -> Any:
        """Move a host array onto the backend's device (a no-op on CPU)."""
        return self.xp.asarray(array)

    def csr(self, matrix: Any) -> Any:
        """A scipy sparse matrix as this backend's CSR matrix."""
        raise NotImplementedError

    def to_tf(self, array: Any) -> Any:
        """One backend array as a TensorFlow tensor on the same device."""
        raise NotImplementedError

    def from_tf(self, tensor: Any) -> Any:
        """A TensorFlow tensor as a writable backend array that owns its memory (callers mask
        it in place, which must not touch TensorFlow's buffer)."""
        raise NotImplementedError

    def frames(self) -> ModuleType:
        """The dataframe module (pandas API) whose frames this backend's arrays come from."""
        raise NotImplementedError

    @property
    def native_reader(self) -> str | None:
        """The dataframe reader ``prepare`` should use on this device instead of pyarrow
        (``"cudf"``), or None when pyarrow's is the right one."""
        return None

    def dask_cluster(self, workers: int | None = None,
                     memory_limit: str | None = None) -> AbstractContextManager[Any]:
        """A local dask cluster whose workers compute on this backend (loopback only):
        ``workers`` processes (None: the backend's default), each limited to
        ``memory_limit`` (e.g. "4GB"; None: dask's share of the machine), spilling to disk
        beyond it."""
        raise NotImplementedError

    def configure_tensorflow(self) -> None:
        """Make TensorFlow run where this backend's arrays live; call before TF's first op."""
        raise NotImplementedError

    def amp_policy(self) -> str:
        """The Keras dtype policy ``--amp`` means on this device (see docs/design.md)."""
        raise NotImplementedError

    def available_memory(self) -> int:
        """Bytes a new array on this backend's device may take now (for size checks)."""
        raise NotImplementedError

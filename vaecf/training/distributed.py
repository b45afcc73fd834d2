"""Data-parallel communication, behind one small interface.

The training loop only ever calls :func:`communicator` and the methods of :class:`Comm`;
``SingleProcess`` is the identity, ``HorovodComm`` (in :mod:`vaecf.training.horovod_comm`, imported
only when running under a Horovod launcher) averages gradients with a float32 grouped
allreduce. Horovod's Keras integration, ``DistributedGradientTape`` and
``DistributedOptimizer`` are not used: with Keras 3 they fail or silently never average
(measured; see docs/design.md, "Data-parallel training with Horovod").
"""

from __future__ import annotations

import os
from typing import Any, Protocol

# Launchers set one of these in every rank's environment.
_RANK_VARIABLES = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


class Comm(Protocol):
    """What a training step needs from the process group."""

    rank: int
    size: int

    @property
    def is_chief(self) -> bool:
        """Rank 0: the only rank that logs, validates and writes checkpoints."""

    def allreduce_mean(self, tensors: list[Any]) -> list[Any]:
        """Average a list of float tensors over ranks (inside or outside tf.function)."""

    def allreduce_sum(self, value: float) -> float:
        """Sum a Python number over ranks (e.g. users per second)."""

    def broadcast_variables(self, variables: list[Any]) -> None:
        """Overwrite every rank's variables with rank 0's values."""

    def barrier(self) -> None:
        """Wait for all ranks."""


class SingleProcess:
    """One process: every collective is the identity."""

    rank = 0
    size = 1

    @property
    def is_chief(self) -> bool:
        return True

    def allreduce_mean(self, tensors: list[Any]) -> list[Any]:
        return tensors

    def allreduce_sum(self, value: float) -> float:
        return value

    def broadcast_variables(self, variables: list[Any]) -> None:
        return None

    def barrier(self) -> None:
        return None


def launched_rank() -> int:
    """This process's rank as its launcher set it (0 outside a launcher), known before
    Horovod starts."""
    return next((int(os.environ[name]) for name in _RANK_VARIABLES if name in os.environ), 0)


def under_launcher() -> bool:
    """True when this process was started by horovodrun / mpirun (as one of several ranks)."""
    return any(name in os.environ for name in _RANK_VARIABLES)


def communicator() -> Comm:
    """The process group this process belongs to: Horovod under a launcher, else single."""
    if under_launcher():
        from vaecf.training.horovod_comm import HorovodComm

        return HorovodComm()
    return SingleProcess()

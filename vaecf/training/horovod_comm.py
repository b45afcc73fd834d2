"""The Horovod implementation of :class:`vaecf.training.distributed.Comm` (data-parallel training).

Imported only under a Horovod launcher (``horovodrun``, ``mpirun``, or ``vaecf train
--np/--gpus`` which calls ``horovodrun`` itself). Only Horovod's core TensorFlow ops are used:
with Keras 3, ``hvd.keras``, ``DistributedGradientTape`` and ``DistributedOptimizer`` fail or
silently never average (measured; see docs/design.md, "Data-parallel training with Horovod"),
so gradients are averaged here with one float32 ``grouped_allreduce`` per step and variables
are broadcast one tensor at a time. """

from __future__ import annotations

from typing import Any

import horovod.tensorflow as hvd
import tensorflow as tf


class HorovodComm:
    """This process as one rank of a Horovod job.

    Attributes:
        rank: this process's rank, 0 .. size-1.
        size: number of ranks.
        local_rank: rank among the processes on this host (its GPU was chosen before
            Horovod started, by :func:`vaecf.backend.probe.pin_rank_gpu`).
    """

    def __init__(self) -> None:
        hvd.init()
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()

    @property
    def is_chief(self) -> bool:
        """Rank 0: the only rank that logs, validates and writes checkpoints."""
        return self.rank == 0

    def allreduce_mean(self, tensors: list[Any]) -> list[Any]:
        """Average tensors over ranks with one grouped allreduce; works eagerly and in tf.function.

        Args:
            tensors: dense float tensors or ``tf.IndexedSlices`` (densified), any shapes; the
                list must have the same shapes and order on every rank.

        Returns:
            The averages, each with its input's dtype. The reduction itself runs in float32:
            Horovod rejects bfloat16, and float16 sums of many ranks lose precision.
        """
        dense = [tf.convert_to_tensor(t) for t in tensors]
        reduced = hvd.grouped_allreduce([tf.cast(t, tf.float32) for t in dense], op=hvd.Average,
                                        name="vaecf.allreduce_mean")
        return [tf.cast(r, t.dtype) for r, t in zip(reduced, dense, strict=True)]

    def allreduce_sum(self, value: float) -> float:
        """Sum a Python number over ranks (eager only), e.g. users/s of the whole job."""
        total = hvd.allreduce(tf.constant(value, tf.float64), op=hvd.Sum,
                              name="vaecf.allreduce_sum")
        return float(total.numpy())

    def broadcast_variables(self, variables: list[Any]) -> None:
        """Overwrite every rank's variables with rank 0's values (eager only).

        Pass the model's variables **and** the optimizer's: build the optimizer first
        (``optimizer.build(model.trainable_variables)``) so its slots and iteration count exist,
        or ranks would start from different Adam moments after a resume.

        Args:
            variables: Keras or tf variables, same order, shapes and dtypes on every rank.
        """
        for index, variable in enumerate(variables):
            value = hvd.broadcast(tf.convert_to_tensor(variable), root_rank=0,
                                  name=f"vaecf.broadcast.{index}")
            variable.assign(value)

    def barrier(self) -> None:
        """Wait for all ranks (Horovod 0.28's TensorFlow API has no barrier: a scalar allreduce
        completes only once every rank has joined it)."""
        hvd.allreduce(tf.zeros([]), op=hvd.Sum, name="vaecf.barrier").numpy()

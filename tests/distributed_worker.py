"""Run by tests/test_distributed.py, as one process or as every rank under ``horovodrun``.

Trains the real :class:`vaecf.training.loop.Trainer` for a few steps with dropout 0 and z = mu (no
noise), on fixed global batches of the real training users: global batch s is users
[s·G, (s+1)·G), and rank r of N takes the r-th of N equal slices of it. Rank r initialises its
weights with seed r, so agreement with the single process (seed 0) also proves the broadcast
of rank 0's state. Writes every variable to ``OUT/rank-R.npz``.

With MODEL ``recvae`` it trains :class:`vaecf.training.recvae_trainer.RecVAETrainer` the same
way, one step per "epoch", so 5 steps are 3 encoder steps, 1 decoder step and, after the
prior's refresh, an encoder step.

Usage: python tests/distributed_worker.py DATASET OUT GLOBAL_BATCH STEPS [MODEL]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from vaecf.backend import cpu_backend
from vaecf.data.dataset import Dataset
from vaecf.model.batches import Batch, make_batch
from vaecf.settings import ModelSettings, Settings, TrainSettings
from vaecf.training.distributed import communicator
from vaecf.training.loop import Trainer
from vaecf.training.recvae_trainer import RecVAETrainer


def main(data: Path, out: Path, global_batch: int, steps: int, model: str = "multvae") -> None:
    comm = communicator()
    dataset = Dataset.open(data)
    settings = Settings(model=ModelSettings(name=model, hidden=64, latent=16, dropout=0.0),
                        train=TrainSettings(lr=1e-3, seed=comm.rank))
    if model == "recvae":
        trainer = RecVAETrainer(settings, dataset.n_items, comm, "float32", steps_per_epoch=1)
    else:
        trainer = Trainer(settings, dataset.n_items, comm, "float32")
    trainer.model.sample_latent = False
    comm.broadcast_variables(trainer.state_variables)
    backend, matrix = cpu_backend(), dataset.train_matrix()
    convert = backend.to_tf
    share = global_batch // comm.size
    for step in range(steps):
        first = step * global_batch + comm.rank * share
        batch = make_batch(backend, matrix, np.arange(first, first + share))
        trainer.step(Batch(convert(batch.indices), convert(batch.values),
                           convert(batch.targets), batch.size), beta=0.1, step=step)
    np.savez(out / f"rank-{comm.rank}.npz",
             **{f"{i}": np.asarray(v) for i, v in enumerate(trainer.state_variables)})


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
         *sys.argv[5:6])

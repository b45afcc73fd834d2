"""How long a training run lasts: a fixed number of epochs, or the automatic schedule.

``train.epochs`` set (``--epochs N``): exactly N epochs; ``--patience P`` may stop earlier,
after P validations without a better NDCG@100.

``train.epochs`` unset (the default): the automatic schedule, chosen on validation curves of
ML-1M, ML-100K (with and without a rating threshold) and the bundled set (docs/accuracy.md):

- β's annealing is planned over ``train.plan_epochs`` (200) epochs, reaching its cap at
  ``anneal_fraction`` of them;
- once β has reached its cap, training stops when validation NDCG@100 has not improved for
  ``patience`` validations (30 epochs' worth by default). Stopping earlier would judge a model
  whose objective is still changing; a patience of 20 epochs lost up to 0.007 of validation
  NDCG@100 on RecVAE's curves, 30 lost nothing on any curve;
- while validation keeps improving, training goes on past the plan, up to
  ``train.max_epochs`` (1000): data that needs more steps gets them.

On ML-1M (10 steps per epoch) Mult-VAE peaks at epoch 78 and the automatic schedule stops at
epoch 108 instead of 200 with the same best checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vaecf.settings import TrainSettings

AUTO_PATIENCE_EPOCHS = 30   # see the module docstring


@dataclass(frozen=True)
class Schedule:
    """When a run validates for the last time and when it may stop early.

    Attributes:
        automatic: the automatic schedule (``train.epochs`` unset) rather than a fixed one.
        last_epoch: the epoch at which training ends if nothing stops it earlier.
        patience: validations without improvement that stop training (None: never).
        earliest_stop: the first epoch at which patience may stop training.
    """

    automatic: bool
    last_epoch: int
    patience: int | None
    earliest_stop: int

    def stops(self, epoch: int, bad_validations: int) -> bool:
        """Whether training stops after ``epoch`` with ``bad_validations`` validations since
        the last improvement."""
        return (self.patience is not None and epoch >= self.earliest_stop
                and bad_validations >= self.patience)


def schedule_of(train: TrainSettings, steps_per_epoch: int) -> Schedule:
    """The schedule of ``train`` (with ``anneal_steps`` resolved) for ``steps_per_epoch``
    optimizer steps per epoch."""
    if train.epochs is not None:
        return Schedule(False, train.epochs, train.patience, 0)
    patience = train.patience or math.ceil(AUTO_PATIENCE_EPOCHS / train.validate_every)
    # The epoch in which β = step / anneal_steps reaches the cap (RecVAE, which has no β,
    # uses the same point: half the plan by default).
    cap_step = (train.anneal_steps or 1) * train.anneal_cap
    earliest = min(math.ceil(cap_step / max(1, steps_per_epoch)), train.max_epochs)
    return Schedule(True, train.max_epochs, patience, earliest)


def planned_epochs(train: TrainSettings) -> int:
    """Epochs β's annealing is planned over: ``epochs`` when fixed, else ``plan_epochs``."""
    return train.epochs if train.epochs is not None else train.plan_epochs

"""Where a training run stands, as typed values; the run directory stores them in run.json.

The JSON shapes are those of run.json's ``progress`` (see :mod:`vaecf.model.rundir`):
``{"epoch", "batch", "step", "bad_validations", "ranks", "partial"}`` with ``partial`` either
null or ``{"loss", "nll", "kl", "users", "seconds"}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass
class EpochSums:
    """Running sums of the unfinished epoch over every rank's users.

    Attributes:
        loss, nll, kl: Σ over users of the per-batch means × batch size.
        users: users seen so far this epoch.
        seconds: training time spent in this epoch before the current session.
    """

    loss: float = 0.0
    nll: float = 0.0
    kl: float = 0.0
    users: float = 0
    seconds: float = 0.0

    def add(self, loss: float, nll: float, kl: float, users: int) -> None:
        """Count one batch of ``users`` whose mean losses were ``loss``, ``nll``, ``kl``."""
        self.loss += loss * users
        self.nll += nll * users
        self.kl += kl * users
        self.users += users


@dataclass
class Progress:
    """The resume point of a run.

    Attributes:
        epoch: epochs finished.
        batch: batches finished in the current epoch (0 at an epoch boundary).
        step: optimizer steps taken.
        bad_validations: validations since the last improvement of the selection metric.
        ranks: processes of the job that wrote it (a mid-epoch position needs as many).
        partial: loss sums of the unfinished epoch, or None at an epoch boundary.
        best_metric: the best validation selection metric reached up to this point (None
            before the first validation). Kept here, not only in run.json's ``best``: a run
            resumed from an older checkpoint must compare its replayed epochs with the best
            *as of that checkpoint* to stop where an uninterrupted run stops.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    bad_validations: int = 0
    ranks: int = 1
    partial: EpochSums | None = field(default=None)
    best_metric: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        partial = data.get("partial")
        return cls(epoch=int(data["epoch"]), batch=int(data["batch"]), step=int(data["step"]),
                   bad_validations=int(data.get("bad_validations", 0)),
                   ranks=int(data.get("ranks", 1)),
                   partial=EpochSums(**partial) if partial else None,
                   best_metric=data.get("best_metric"))

    def at_epoch_end(self, epoch: int, step: int) -> Progress:
        """This progress after finishing epoch ``epoch`` at ``step``."""
        return replace(self, epoch=epoch, batch=0, step=step, partial=None)

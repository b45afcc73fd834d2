"""The training side of each model (see :mod:`vaecf.model.registry`): its trainer and the KL
weight passed to every step.

- ``multvae``: :class:`vaecf.training.trainer.Trainer`; β = min(step / anneal_steps, cap).
- ``recvae``: :class:`vaecf.training.recvae_trainer.RecVAETrainer`; the constant γ
  (``recvae.gamma``), which each user's KL term multiplies by their number of interactions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vaecf.model.registry import kind
from vaecf.settings import RecVAESettings, Settings
from vaecf.training.distributed import Comm


def _multvae(settings: Settings, n_items: int, comm: Comm, policy: str,
             steps_per_epoch: int) -> Any:
    from vaecf.training.trainer import Trainer

    return Trainer(settings, n_items, comm, policy)


def _recvae(settings: Settings, n_items: int, comm: Comm, policy: str,
            steps_per_epoch: int) -> Any:
    from vaecf.training.recvae_trainer import RecVAETrainer

    return RecVAETrainer(settings, n_items, comm, policy, steps_per_epoch)


TRAINERS: dict[str, Callable[..., Any]] = {"multvae": _multvae, "recvae": _recvae}

KL_WEIGHTS: dict[str, Callable[[Settings, int], float]] = {
    "multvae": lambda s, step: min(step / s.train.anneal_steps, s.train.anneal_cap),
    "recvae": lambda s, step: s.recvae.gamma,
}

# Settings a model does not use, as (section, key): `vaecf train` says so when one is given.
UNUSED_SETTINGS: dict[str, frozenset[tuple[str, str]]] = {
    "multvae": frozenset(("recvae", key) for key in RecVAESettings.model_fields),
    "recvae": frozenset({("model", "activation"), ("model", "noise_std"),
                         ("train", "anneal_cap"), ("train", "anneal_steps"),
                         ("train", "anneal_fraction")}),
}


def make_trainer(settings: Settings, n_items: int, comm: Comm, policy: str,
                 steps_per_epoch: int) -> Any:
    """The trainer of ``settings.model.name``: ``.model``, ``.optimizer`` (with
    ``.variables``), ``.step(batch, beta, step)`` and ``.state_variables``."""
    kind(settings.model.name)   # an unknown name fails with one line
    return TRAINERS[settings.model.name](settings, n_items, comm, policy, steps_per_epoch)


def kl_weight(settings: Settings, step: int) -> float:
    """The ``beta`` handed to step ``step`` (and logged as the epoch's β)."""
    return KL_WEIGHTS[settings.model.name](settings, step)

"""The models vaecf can train, by ``model.name``: what run.json records of each, and how to
rebuild one from that record (the training side is :mod:`vaecf.training.registry`).

run.json's ``model`` holds ``name`` plus the model's constructor arguments; runs written before
there was a choice of model have no ``name`` and hold a Mult-VAE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vaecf.errors import VaecfError
from vaecf.settings import Settings

DEFAULT = "multvae"   # what a run.json without model.name holds


@dataclass(frozen=True)
class ModelKind:
    """One model: its display name, its run.json arguments and its constructor."""

    title: str
    args: Callable[[Settings, int], dict[str, Any]]
    build: Callable[..., Any]


def _multvae_args(settings: Settings, n_items: int) -> dict[str, Any]:
    m = settings.model
    return {"n_items": n_items, "hidden": m.hidden, "latent": m.latent, "dropout": m.dropout,
            "activation": m.activation}


def _recvae_args(settings: Settings, n_items: int) -> dict[str, Any]:
    m, r = settings.model, settings.recvae
    return {"n_items": n_items, "hidden": m.hidden, "latent": m.latent,
            "encoder_layers": r.encoder_layers, "dropout": m.dropout,
            "layer_norm_eps": r.layer_norm_eps, "prior_weights": list(r.prior_weights),
            "wide_logvar": r.wide_logvar}


def _build_multvae(**kwargs: Any) -> Any:
    from vaecf.model.multvae import MultVAE

    return MultVAE(**kwargs)


def _build_recvae(**kwargs: Any) -> Any:
    from vaecf.model.recvae import RecVAE

    return RecVAE(**kwargs)


MODELS: dict[str, ModelKind] = {
    "multvae": ModelKind("Mult-VAE", _multvae_args, _build_multvae),
    "recvae": ModelKind("RecVAE", _recvae_args, _build_recvae),
}


def kind(name: str) -> ModelKind:
    """The registered model ``name``; VaecfError for an unknown one (a newer vaecf's run)."""
    try:
        return MODELS[name]
    except KeyError:
        raise VaecfError(f"unknown model {name!r} (this vaecf knows {', '.join(MODELS)}); "
                         "was the run written by a newer vaecf?") from None


def run_record(settings: Settings, n_items: int) -> dict[str, Any]:
    """run.json's ``model``: ``name`` and the constructor arguments."""
    name = settings.model.name
    return {"name": name, **kind(name).args(settings, n_items)}


def name_of(record: dict[str, Any]) -> str:
    """The model a run.json ``model`` record holds (``multvae`` when it does not say)."""
    return record.get("name", DEFAULT)


def build(record: dict[str, Any], seed: int = 0) -> Any:
    """A freshly initialised model from a run.json ``model`` record."""
    args = {key: value for key, value in record.items() if key != "name"}
    return kind(name_of(record)).build(**args, seed=seed)

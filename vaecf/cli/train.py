"""``vaecf train``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from vaecf.cli.common import (
    BackendOption,
    ConfigOption,
    QuietOption,
    app,
    default_of,
    quiet_logging,
    summary,
)

HELP = """Train a Mult-VAE (or, with --model recvae, a RecVAE) on a dataset directory (from
`vaecf prepare`) into a run directory: best weights by validation NDCG@100, optimizer state,
settings, item map, metrics history. Ctrl-C saves a resumable checkpoint; --resume continues it.

Example: [bold]vaecf train --data data/ --out runs/ml1m[/]"""


@app.command(help=HELP, short_help=summary(HELP))
def train(
    data: Annotated[Path, typer.Option("--data", "-d", help="Dataset directory.",
                                       file_okay=False)] = ...,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.",
                                      file_okay=False)] = ...,
    model: Annotated[Literal["multvae", "recvae"] | None, typer.Option(
        "--model", help="multvae (Liang et al. 2018) or recvae (Shenbin et al. 2020; its "
        "own settings: the --gamma .. --layer-norm-eps flags, section recvae of the "
        "settings).",
        show_default=default_of("model", "name"))] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Train exactly N passes over the training users (with --resume: extend to this "
        "many). Unset: the automatic schedule — β annealed over --plan-epochs, then stop "
        "once validation NDCG@100 has not improved for --patience validations (30 epochs' "
        "worth), or go on past the plan while it improves, up to --max-epochs.",
        show_default=default_of("train", "epochs", none="automatic"))] = None,
    plan_epochs: Annotated[int | None, typer.Option(
        help="Automatic schedule: epochs β's annealing is planned over (β reaches "
        "--anneal-cap after --anneal-fraction of them).",
        show_default=default_of("train", "plan_epochs"))] = None,
    max_epochs: Annotated[int | None, typer.Option(
        help="Automatic schedule: never train more epochs than this.",
        show_default=default_of("train", "max_epochs"))] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Users per optimizer step (per rank); an epoch is split into near-equal "
        "batches of at most this size.", show_default=default_of("train", "batch_size"))] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate.",
                                             show_default=default_of("train", "lr"))] = None,
    anneal_cap: Annotated[float | None, typer.Option(
        help="Largest KL weight β.", show_default=default_of("train", "anneal_cap"))] = None,
    anneal_steps: Annotated[int | None, typer.Option(
        help="β = min(step / anneal_steps, cap). Default: from --anneal-fraction.",
        show_default=default_of("train", "anneal_steps", none="auto"))] = None,
    anneal_fraction: Annotated[float | None, typer.Option(
        help="Without --anneal-steps: β reaches the cap after this share of the planned "
        "epochs' steps (--epochs, or --plan-epochs with the automatic schedule).",
        show_default=default_of("train", "anneal_fraction"))] = None,
    noise_std: Annotated[float | None, typer.Option(
        help="Std of the reparameterisation noise ε (z = mu + ε·σ) while training "
        "(the paper: 1).", show_default=default_of("model", "noise_std"))] = None,
    dropout: Annotated[float | None, typer.Option(
        help="Input dropout probability.", show_default=default_of("model", "dropout"))] = None,
    hidden: Annotated[int | None, typer.Option(
        help="Hidden layer width of encoder and decoder.",
        show_default=default_of("model", "hidden"))] = None,
    activation: Annotated[Literal["tanh", "relu", "sigmoid", "elu", "selu"] | None, typer.Option(
        help="Activation of the hidden layers.",
        show_default=default_of("model", "activation"))] = None,
    latent: Annotated[int | None, typer.Option(
        help="Latent dimension.", show_default=default_of("model", "latent"))] = None,
    gamma: Annotated[float | None, typer.Option(
        help="RecVAE: KL weight per interaction (a user's β = γ · their interactions).",
        show_default=default_of("recvae", "gamma"))] = None,
    encoder_epochs: Annotated[int | None, typer.Option(
        help="RecVAE: epochs per cycle that update only the encoder (with input dropout).",
        show_default=default_of("recvae", "encoder_epochs"))] = None,
    decoder_epochs: Annotated[int | None, typer.Option(
        help="RecVAE: epochs per cycle that then update only the decoder.",
        show_default=default_of("recvae", "decoder_epochs"))] = None,
    encoder_layers: Annotated[int | None, typer.Option(
        help="RecVAE: densely connected encoder layers (each --hidden wide).",
        show_default=default_of("recvae", "encoder_layers"))] = None,
    prior_weights: Annotated[str | None, typer.Option(
        help="RecVAE: composite prior weights of N(0, I), the previous posterior and the "
        "wide Gaussian, comma-separated.", show_default="0.15,0.75,0.1")] = None,
    wide_logvar: Annotated[float | None, typer.Option(
        help="RecVAE: log-variance of the prior's wide Gaussian.",
        show_default=default_of("recvae", "wide_logvar"))] = None,
    layer_norm_eps: Annotated[float | None, typer.Option(
        help="RecVAE: epsilon of the encoder's layer norms.",
        show_default=default_of("recvae", "layer_norm_eps"))] = None,
    validate_every: Annotated[int | None, typer.Option(
        help="Validate every N epochs (and after the last).",
        show_default=default_of("train", "validate_every"))] = None,
    patience: Annotated[int | None, typer.Option(
        help="Stop after N validations without a better NDCG@100 (with the automatic "
        "schedule: only once β has reached its cap).",
        show_default="30 epochs' worth (automatic schedule), off (--epochs)")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(
        help="Save a resumable checkpoint every N epochs (and at the end / Ctrl-C).",
        show_default=default_of("train", "checkpoint_every"))] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed of initialisation, shuffling and noise.",
        show_default=default_of("train", "seed"))] = None,
    amp: Annotated[bool | None, typer.Option(
        "--amp/--no-amp",
        metavar="", help="Mixed precision: float16 with loss scaling on GPU, bfloat16 on "
        "a CPU that has it.", show_default=default_of("train", "amp"))] = None,
    xla: Annotated[bool | None, typer.Option(
        "--xla/--no-xla", metavar="", help="Compile the training step with XLA.",
        show_default=default_of("train", "xla"))] = None,
    backend: BackendOption = None,
    np: Annotated[int | None, typer.Option(
        "--np", help="Data-parallel training on N CPU processes (Horovod over Gloo). "
        "--batch-size is per rank: the global batch is N times it.",
        show_default="1")] = None,
    gpus: Annotated[int | None, typer.Option(
        "--gpus", help="Data-parallel training on N GPUs, one process each (Horovod, NCCL). "
        "--batch-size is per rank.", show_default="off")] = None,
    hosts: Annotated[str | None, typer.Option(
        "--hosts", help="Spread the ranks over machines, HOST:SLOTS,... (e.g. a:8,b:8); "
        "needs passwordless ssh and the same paths on every host.")] = None,
    scale_lr: Annotated[bool, typer.Option(
        "--scale-lr",
        metavar="", help="Multiply --lr by the number of ranks (the linear scaling rule "
        "for the N-times larger global batch); stored in the run's settings.")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", metavar="", help="Continue the run in --out from its last checkpoint, with its "
        "own settings.")] = False,
    force: Annotated[bool, typer.Option("--force",
        metavar="", help="Replace an existing --out.")] = False,
    log_json: Annotated[Path | None, typer.Option(
        "--log-json", help="Append one JSON object per epoch to this file.",
        dir_okay=False)] = None,
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    import logging

    from vaecf.atomic import check_outputs
    from vaecf.cli.tables import summary_table
    from vaecf.data.dataset import Dataset
    from vaecf.errors import VaecfError
    from vaecf.model.rundir import RunDir
    from vaecf.progress import console
    from vaecf.settings import load_settings
    from vaecf.training.distributed import under_launcher
    from vaecf.training.launch import enter_job
    from vaecf.training.loop import train as run_train

    quiet_logging(quiet)
    if resume and force:
        raise VaecfError("give either --resume or --force, not both")
    # Before launching ranks; the run in --out (read by --resume) is an output here, so a
    # --log-json inside it is refused too.
    check_outputs({"--log-json": log_json}, [data, config], {"--out": out})

    model_flags = dict(name=model, hidden=hidden, latent=latent, dropout=dropout,
                       activation=activation, noise_std=noise_std)
    recvae_flags = dict(gamma=gamma, encoder_epochs=encoder_epochs,
                        decoder_epochs=decoder_epochs, encoder_layers=encoder_layers,
                        prior_weights=_floats(prior_weights, "--prior-weights"),
                        wide_logvar=wide_logvar, layer_norm_eps=layer_norm_eps)
    train_flags = dict(epochs=epochs, plan_epochs=plan_epochs, max_epochs=max_epochs,
                       batch_size=batch_size, lr=lr, anneal_cap=anneal_cap,
                       anneal_steps=anneal_steps, anneal_fraction=anneal_fraction,
                       validate_every=validate_every,
                       patience=patience, checkpoint_every=checkpoint_every, seed=seed,
                       amp=amp, xla=xla, backend=backend)
    settings = load_settings(config, model=model_flags, train=train_flags, recvae=recvae_flags)
    _warn_unused(settings.model.name, {"model": model_flags, "train": train_flags,
                                       "recvae": recvae_flags})
    if settings.train.epochs is not None and (plan_epochs or max_epochs) and not resume:
        logging.getLogger("vaecf").warning(
            "warning: --plan-epochs and --max-epochs shape the automatic schedule only; "
            "--epochs %d trains exactly that many epochs", settings.train.epochs)
    if resume:
        _refuse_changed_flags(out, {"model": model_flags, "train": train_flags,
                                    "recvae": recvae_flags})
    # A resumed run keeps its stored (already scaled) lr.
    entered = enter_job(settings, sys.argv[1:], np=np, gpus=gpus, hosts=hosts,
                        scale_lr=scale_lr and not resume,
                        before_launch=lambda: Dataset.open(data))
    if entered is None:   # this process only started the ranks, which re-ran this command
        if RunDir.open(out).status == "interrupted":
            raise typer.Exit(130)
        return
    settings, chosen = entered
    run = run_train(settings, data, out, chosen, resume=resume, force=force, quiet=quiet,
                    log_json=log_json, extend_to=epochs)
    if run is not None and not quiet:
        console.print(summary_table(run))
    # 130 so `train && export` never exports a half-trained model; the ranks of a launched job
    # exit 0 (the launcher would report any other code as a failed rank) and the launching
    # process exits 130 instead.
    if run is not None and run.status == "interrupted" and not under_launcher():
        raise typer.Exit(130)


def _warn_unused(model: str, flags: dict[str, dict[str, object]]) -> None:
    """Say which given flags (per settings section) the chosen model does not use, rather
    than ignore them."""
    import logging

    from vaecf.training.registry import UNUSED_SETTINGS

    given = ["--" + key.replace("_", "-") for section, values in flags.items()
             for key, value in values.items()
             if value is not None and (section, key) in UNUSED_SETTINGS[model]]
    if given:
        logging.getLogger("vaecf").warning("warning: %s not used by --model %s",
                                           ", ".join(given), model)


# What --resume may change: how far to train and where the arrays live, nothing the model or
# its optimisation depends on.
_RESUME_MAY_CHANGE = {"epochs", "backend"}


def _refuse_changed_flags(out: Path, flags: dict[str, dict[str, object]]) -> None:
    """--resume continues with the run's own settings: refuse flags that say otherwise
    rather than ignore them silently."""
    from vaecf.errors import VaecfError
    from vaecf.model.rundir import RunDir

    stored = RunDir.open(out).settings
    for section, values in flags.items():
        for key, value in values.items():
            if value is None or key in _RESUME_MAY_CHANGE:
                continue
            have = getattr(getattr(stored, section), key)
            if value != have:
                flag = "model" if (section, key) == ("model", "name") else key.replace("_", "-")
                raise VaecfError(f"--resume continues {out} with its own settings: "
                                 f"--{flag} {value} differs from the run's "
                                 f"{have} (start a new run with another --out to change it)")


def _floats(text: str | None, flag: str) -> list[float] | None:
    """A comma-separated list of numbers (None when the flag was not given)."""
    from vaecf.errors import VaecfError

    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise VaecfError(f"{flag}: expected comma-separated numbers, got {text!r}") from None

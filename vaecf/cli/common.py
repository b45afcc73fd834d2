"""The Typer apps and what every command shares: the --config option and error handling.

Commands live one per module (``vaecf/cli/<command>.py``) and register on these apps; they
import the library inside the command body so ``vaecf --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperGroup


class _Group(TyperGroup):
    """Typer's command group, showing ``--help`` without a ``<bool>`` type, like every other
    flag of ours (Typer types its own help flag and offers no setting for it)."""

    def get_help_option(self, ctx: Any) -> Any:
        return _untyped(super().get_help_option(ctx))

    def get_command(self, ctx: Any, name: str) -> Any:
        command = super().get_command(ctx, name)
        if command is not None:   # the option is created once per command and cached
            _untyped(command.get_help_option(ctx))
        return command


def _untyped(option: Any) -> Any:
    if option is not None:
        option.metavar = ""
    return option


app = typer.Typer(
    name="vaecf",
    cls=_Group,
    help="Train and serve Mult-VAE recommenders (Variational Autoencoders for Collaborative "
    "Filtering) from any user-item interaction file.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
bench_app = typer.Typer(
    cls=_Group,
    help="Benchmarks that print throughput numbers (prepare, train, inference, serve).",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")

def default_of(section: str, key: str, none: str = "off") -> str:
    """The built-in default of setting ``section.key`` as ``--help`` shows it: the settings
    model is the one source of truth (``none`` names what an unset value means; a boolean
    shows as its flag, e.g. ``no-amp``)."""
    from vaecf.settings import Settings

    value = getattr(Settings.model_fields[section].default, key)
    if value is None:
        return none
    if isinstance(value, bool):
        return key.replace("_", "-") if value else f"no-{key.replace('_', '-')}"
    return str(value)


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML settings file (default: ./settings.toml if present). Precedence: flag > "
        "environment VAECF_<SECTION>__<KEY> > this file > built-in defaults.",
        show_default=False,
        dir_okay=False,
    ),
]
BackendOption = Annotated[
    Literal["auto", "cpu", "gpu"] | None,
    typer.Option(
        "--backend",
        help="Array backend: auto (GPU when CuPy finds one, else CPU), cpu, or gpu.",
        show_default=default_of("train", "backend"),
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress output.")]


def install_logging() -> None:
    """Send the library's ``vaecf`` log (INFO and up) to stderr through one Rich handler, on
    the console the progress bars use (so lines print above a live bar); silent on every rank
    but 0 of a data-parallel job."""
    import logging

    from rich.highlighter import NullHighlighter
    from rich.logging import RichHandler

    from vaecf.progress import console
    from vaecf.training.distributed import launched_rank

    logger = logging.getLogger("vaecf")
    logger.handlers.clear()
    logger.addHandler(RichHandler(console=console, show_time=False, show_level=False,
                                  show_path=False, markup=False,
                                  highlighter=NullHighlighter()))
    logger.propagate = False
    logger.setLevel(logging.INFO if launched_rank() == 0 else logging.CRITICAL + 1)


def quiet_logging(quiet: bool) -> None:
    """With ``--quiet`` only warnings and errors are logged."""
    import logging

    if quiet:
        logger = logging.getLogger("vaecf")
        logger.setLevel(max(logger.level, logging.WARNING))


def summary(help_text: str) -> str:
    """The first paragraph of a command's help on one line, for the command list (Typer keeps
    the hard line breaks of the source there)."""
    return " ".join(help_text.strip().split("\n\n")[0].split())


def run_inputs(run: Path | None) -> list[Path]:
    """What a command reading run directory ``run`` reads: the run, and the dataset it records
    (test's default --data; bench inference and bench serve sample users from it), as inputs
    for :func:`vaecf.atomic.check_outputs`."""
    from vaecf.errors import VaecfError
    from vaecf.model.rundir import RunDir

    if run is None:
        return []
    try:
        return [run, RunDir.open(run).dataset_path]
    except VaecfError:   # not a usable run: the command itself says why, after the guard
        return [run]

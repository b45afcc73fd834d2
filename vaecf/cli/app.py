"""Entry point of ``vaecf``, ``python -m vaecf`` and ``python cli.py``."""

from __future__ import annotations

import os
import signal
import sys

import typer

# Each command module registers its commands on import.
from vaecf.cli import bench_inference as _bench_inference  # noqa: F401
from vaecf.cli import bench_prepare as _bench_prepare  # noqa: F401
from vaecf.cli import bench_serve as _bench_serve  # noqa: F401
from vaecf.cli import bench_train as _bench_train  # noqa: F401
from vaecf.cli import export as _export  # noqa: F401
from vaecf.cli import prepare as _prepare  # noqa: F401
from vaecf.cli import recommend as _recommend  # noqa: F401
from vaecf.cli import serve as _serve  # noqa: F401
from vaecf.cli import test as _test  # noqa: F401
from vaecf.cli import train as _train  # noqa: F401
from vaecf.cli.common import app, install_logging
from vaecf.errors import VaecfError


def _fail(message: str) -> None:
    """One red ``error:`` line on stderr, then exit code 2."""
    from rich.console import Console
    from rich.text import Text

    # Text, not markup: messages quote user values that may contain [brackets].
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        Text.assemble(("error: ", "bold red"), " ".join(message.split())))
    sys.exit(2)


def main() -> None:
    """Run the app. A mistake (VaecfError, or a flag Click rejects) becomes one red line on
    stderr and exit code 2; Ctrl-C outside training exits 130 without a traceback."""
    # Typer vendors Click; its UsageError (bad or missing flags and values) has no public alias.
    from typer._click.exceptions import NoArgsIsHelpError, UsageError

    # TensorFlow's C++ INFO lines (CPU feature notices) are noise on every command, and its
    # WARNING lines repeat what vaecf reports as one error line (a full disk during a save);
    # TF's C++ errors still show. A user's own setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    signal.signal(signal.SIGINT, signal.default_int_handler)   # see vaecf/cli/__init__.py
    install_logging()
    try:
        code = app(standalone_mode=False, prog_name="vaecf")
    except VaecfError as error:
        _fail(str(error))
    except NoArgsIsHelpError as error:   # `vaecf` or `vaecf bench` alone: show the help
        print(error.ctx.get_help())
        code = 0
    except UsageError as error:
        where = error.ctx.command_path if error.ctx is not None else "vaecf"
        message = error.format_message().replace("Value error, ", "")
        _fail(f"{where}: {message} (see `{where} --help`)")
    except (typer.Abort, KeyboardInterrupt):   # a second Ctrl-C included: no traceback
        sys.exit(130)
    except OSError as error:   # the machine said no (disk full, permissions) where no check did
        where = f"{error.filename}: " if error.filename else ""
        _fail(f"{where}{error.strerror or error}")
    sys.exit(code if isinstance(code, int) else 0)

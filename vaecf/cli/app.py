"""Entry point of ``vaecf``, ``python -m vaecf`` and ``python cli.py``."""

from __future__ import annotations

import os
import sys

# Each command module registers its commands on import.
from vaecf.cli import bench_inference as _bench_inference  # noqa: F401
from vaecf.cli import bench_prepare as _bench_prepare  # noqa: F401
from vaecf.cli import bench_train as _bench_train  # noqa: F401
from vaecf.cli import export as _export  # noqa: F401
from vaecf.cli import prepare as _prepare  # noqa: F401
from vaecf.cli import recommend as _recommend  # noqa: F401
from vaecf.cli import test as _test  # noqa: F401
from vaecf.cli import train as _train  # noqa: F401
from vaecf.cli.common import app, install_logging
from vaecf.errors import VaecfError


def main() -> None:
    """Run the app; a VaecfError becomes one red line on stderr and exit code 2."""
    # TensorFlow's C++ INFO lines (CPU feature notices) are noise on every command; warnings and
    # errors still show. A user's own setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    install_logging()
    try:
        app()
    except VaecfError as error:
        from rich.console import Console
        from rich.text import Text

        # Text, not markup: messages quote user values that may contain [brackets].
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            Text.assemble(("error: ", "bold red"), str(error))
        )
        sys.exit(2)

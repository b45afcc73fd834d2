"""``python -m vaecf``: the same Typer app as the ``vaecf`` console script."""

from vaecf.cli.app import main

main()

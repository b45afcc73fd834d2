"""``python cli.py ...`` from a checkout runs the same Typer app as the installed ``vaecf``."""

from vaecf.cli.app import main

if __name__ == "__main__":
    main()

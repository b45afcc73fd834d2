"""Rich progress for long library work, silent when asked; the library's only UI dependency."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

console = Console(stderr=True)


class Steps:
    """A list of named steps shown as a spinner line each, ticked off as they finish.

    Attributes:
        seconds: wall time of each finished step, by key, in order.
    """

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.seconds: dict[str, float] = {}
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), console=console, disable=quiet,
            transient=False,
        )

    def __enter__(self) -> Steps:
        self._progress.__enter__()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:   # a failed step leaves no spinner line above the error
            self._progress.live.transient = True
        self._progress.__exit__(exc_type, *exc)

    @contextlib.contextmanager
    def step(self, description: str, total: int = 1,
             key: str | None = None) -> Iterator[callable]:
        """Show one step; yields ``advance(n=1)`` for steps with several units of work.
        Its seconds are kept under ``key`` (default: the description)."""
        task = self._progress.add_task(description, total=total)
        started = time.perf_counter()

        def advance(n: int = 1) -> None:
            self._progress.advance(task, n)

        yield advance
        self._progress.update(task, completed=total)
        self.seconds[key or description] = time.perf_counter() - started

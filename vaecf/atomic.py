"""Write a directory atomically: build it under a temporary name, rename at the end.

An error or Ctrl-C leaves no half-written output: the temporary directory is removed and any
existing directory is untouched (or, with ``force``, replaced only once the new one is complete).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from vaecf.errors import VaecfError


def check_target(out: Path, force: bool, what: str = "output directory") -> None:
    """Refuse an existing target unless ``force``; call before doing any expensive work."""
    if out.exists() and not force:
        raise VaecfError(f"{what} {out} already exists (use --force to replace it)")
    if out.exists() and not out.is_dir():
        raise VaecfError(f"{what} {out} exists and is not a directory")


@contextlib.contextmanager
def atomic_directory(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out``; on success it becomes ``out``."""
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    trash = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(trash)
    tmp.rename(out)
    shutil.rmtree(trash, ignore_errors=True)


def replace_file(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it onto ``path``:
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    replace_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

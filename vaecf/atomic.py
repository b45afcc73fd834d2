"""Write a directory or a file atomically, and recover from a replace that was cut short.

A directory is built under a hidden temporary name beside its target, then committed by
renames (see :func:`atomic_directory`); a file is written under a temporary name and moved
over its target with one ``os.replace``. An error, Ctrl-C or a full disk leaves the target as
it was. A kill -9 can leave hidden temporaries behind, or (between the renames of a ``--force``
replace) the target missing with its old and new copies under hidden names: :func:`recover`,
called before every such write and whenever a vaecf directory is opened, finishes or undoes
that replace and deletes the temporaries of processes that no longer exist.

Hidden names, beside the target ``out``: ``.<out>.tmp-<pid>`` (being built),
``.<out>.ready-<pid>`` (complete, about to become ``out``) and ``.<out>.old-<pid>`` (the
replaced copy, about to be deleted).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from vaecf.errors import VaecfError, printable

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|ready|old)-(?P<pid>\d+)$")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(out: Path) -> None:
    """Bring ``out`` back to a committed state after a writer was killed.

    If ``out`` is missing but a complete new copy (``ready``) or the replaced copy (``old``)
    of a dead writer survives, the new one (else the old one) becomes ``out`` again. Then every
    temporary of ``out`` left by a dead process is deleted. Temporaries of live processes are
    never touched.
    """
    out = Path(out)
    parent = out.parent
    if not parent.is_dir():
        return
    leftovers: dict[str, list[Path]] = {"tmp": [], "ready": [], "old": []}
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            match = _TEMP.match(entry.name)
            if match and match["name"] == out.name and not _alive(int(match["pid"])):
                leftovers[match["kind"]].append(entry)
    if not out.exists() and not out.is_symlink():
        for kind in ("ready", "old"):
            if leftovers[kind]:
                newest = max(leftovers[kind], key=lambda p: p.stat().st_mtime)
                newest.rename(out)
                leftovers[kind].remove(newest)
                break
    for entry in (*leftovers["tmp"], *leftovers["ready"], *leftovers["old"]):
        _remove(entry)


def clean_stale_files(directory: Path) -> None:
    """Delete the temporary files of dead writers inside ``directory`` (from
    :func:`replace_file`)."""
    with contextlib.suppress(OSError):
        for entry in Path(directory).iterdir():
            match = _TEMP.match(entry.name)
            if match and match["kind"] == "tmp" and not _alive(int(match["pid"])):
                _remove(entry)


def check_target(out: Path, force: bool, what: str = "output directory",
                 marker: str | None = None, kind: str | None = None) -> None:
    """Refuse an existing target unless ``force``; call before doing any expensive work.

    Args:
        marker, kind: with ``force``, the existing directory must hold ``marker`` (e.g.
            ``meta.json``), i.e. be a vaecf output of the same ``kind``; a non-empty directory
            of anything else is never replaced.
    """
    recover(out)
    if out.exists() and not out.is_dir():
        raise VaecfError(f"{what} {out} exists and is not a directory")
    if out.exists() and not force:
        raise VaecfError(f"{what} {out} already exists (use --force to replace it)")
    if out.exists() and marker is not None and not (out / marker).is_file() and any(
            out.iterdir()):
        raise VaecfError(f"--force: {out} is not a {kind} (no {marker}); refusing to replace "
                         "a directory vaecf did not write")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise VaecfError(f"{what} {out}: {parent} is not a directory")


def check_apart(out: Path, inputs: Iterable[Path], what: str = "--out") -> None:
    """Refuse an output that is, contains or lies inside any input: replacing it would destroy
    what the command reads."""
    target = Path(out).resolve()
    for source in inputs:
        source = Path(source).resolve()
        if target == source or target in source.parents or source in target.parents:
            raise VaecfError(f"{what} {out} overlaps the input {source}; write the output "
                             "somewhere else")


def check_creatable(path: Path, label: str) -> None:
    """Fail before any long work when ``path`` could not be created: its nearest existing
    ancestor is not a directory, or no entry can be made in it (tried with a probe directory,
    removed at once: permission bits do not tell for root or /proc).

    Args:
        label: how the message starts, e.g. "cannot create --out x" or "--json x".
    """
    ancestor = Path(os.path.abspath(path)).parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise VaecfError(f"{label}: {printable(ancestor)} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".vaecf-probe-", dir=ancestor))
    except OSError as error:
        raise VaecfError(f"{label}: cannot write in {printable(ancestor)} "
                         f"({error.strerror or error})") from None


def check_writable(path: Path | None, what: str) -> None:
    """Fail early, before any long work, when the file ``path`` (given as option ``what``)
    could not be written: it is a directory, or :func:`check_creatable` says no."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise VaecfError(f"{what} {printable(path)}: is a directory")
    check_creatable(path, f"{what} {printable(path)}")


def make_directory(path: Path, what: str) -> Path:
    """Create a working directory (and its parents) or fail with one line naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise VaecfError(f"{what} {path}: it or a parent of it is not a directory") from None
    except OSError as error:
        raise VaecfError(f"{what} {path}: cannot create it ({error.strerror})") from None
    return path


def _prepare_parent(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise VaecfError(f"cannot create {out}: a parent of it is not a directory") from None
    except OSError as error:
        raise VaecfError(f"cannot create {out}: {error.strerror}") from None


def commit_directory(built: Path, out: Path) -> None:
    """Make the complete directory ``built`` (in ``out``'s parent) become ``out``, replacing any
    existing ``out``: built -> ready, out -> old, ready -> out, delete old. Each step is one
    rename, and :func:`recover` can finish the sequence from any point a kill -9 stops it."""
    pid = os.getpid()
    ready = out.parent / f".{out.name}.ready-{pid}"
    old = out.parent / f".{out.name}.old-{pid}"
    built.rename(ready)
    if out.exists():
        out.rename(old)
    ready.rename(out)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out``; on success it becomes ``out``."""
    check_target(out, force)
    _prepare_parent(out)
    tmp = temporary_directory(out)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_directory(tmp, out)


def temporary_directory(out: Path) -> Path:
    """A new empty hidden directory beside ``out`` that :func:`recover` deletes once this
    process is gone."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as error:
        raise VaecfError(f"cannot write in {out.parent}: {error.strerror}") from None
    return tmp


def replace_file(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it onto ``path``:
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    _prepare_parent(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as error:   # a directory in the way, no permission, disk full, ...
        raise VaecfError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    replace_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

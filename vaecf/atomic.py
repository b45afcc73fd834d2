"""Where a command may write, and how: the output guard (:func:`check_outputs`), atomic
writes of directories and files, and recovery from a replace that was cut short.

What a write does depends on what the path names (docs/reliability.md, "Where commands
write"): a regular file or a new path is replaced by rename; a symlink is followed and its
target replaced in the target's directory, the link kept; a character device or FIFO
(``/dev/full``, a terminal, a named pipe) is opened and written in place, since a rename would
replace the node itself.

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
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from vaecf.errors import VaecfError, printable

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|ready|old)-(?P<pid>\d+)$")
# Names of an open descriptor, written by opening even when they lead to a regular file (as
# `> /dev/stdout` is): a rename would replace the file and leave the descriptor on the old one.
_DESCRIPTORS = ("/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/fd/", "/proc/")


def follow(path: Path) -> Path:
    """Where a write to ``path`` lands: a symlink's final target (chains and relative links
    followed to their end; the target need not exist yet), else ``path`` itself. Renaming onto
    the link would replace the link and leave its target as it was.

    Raises:
        VaecfError: a symlink loop.
    """
    path = Path(path)
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    if target.is_symlink():   # realpath stops where a chain loops
        raise VaecfError(f"{printable(path)}: too many levels of symbolic links")
    return target


def _kind(path: Path) -> str:
    """What writing to ``path`` meets (symlinks followed): ``"stream"`` (a character device,
    FIFO or existing descriptor name: opened and written in place), ``"a block device"`` or
    ``"a socket"`` (never written), else ``"file"`` (a regular file, a directory or nothing)."""
    try:
        mode = os.stat(path).st_mode   # /dev/stdout -> the terminal, pipe or file behind it
    except (OSError, ValueError):
        return "file"
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or (
            stat.S_ISREG(mode) and os.path.abspath(path).startswith(_DESCRIPTORS)):
        return "stream"
    return {stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}.get(
        stat.S_IFMT(mode), "file")


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
    out = follow(out)   # a symlinked directory is replaced behind its link, see commit_directory
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


def _overlap(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` (symlinks resolved) are the same path or one lies inside the
    other."""
    a, b = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    return a == b or a in b.parents or b in a.parents


def check_apart(out: Path, inputs: Iterable[Path], what: str = "--out") -> None:
    """Refuse an output that is, contains or lies inside any input: replacing it would destroy
    what the command reads."""
    for source in inputs:
        if _overlap(out, source):
            raise VaecfError(f"{what} {printable(out)} overlaps the input "
                             f"{printable(os.path.realpath(source))}; write the output "
                             "somewhere else")


def check_outputs(files: Mapping[str, Path | None], inputs: Iterable[Path | None] = (),
                  directories: Mapping[str, Path | None] | None = None) -> None:
    """The guard every command runs, before any work, on every path it will write.

    Refuses, with one line naming the option: an output that is, contains or lies inside any
    input or another output of the same command (paths compared with symlinks resolved), and
    an output file that could not be written (:func:`check_writable`). A character device or
    FIFO is exempt from the overlap checks: it is opened, never replaced, so it destroys
    nothing (``--input /dev/stdin --output /dev/stdout`` on one terminal name one device).

    Args:
        files: option -> output file it names, None when not given (e.g. ``{"--json": p}``).
        inputs: every file and directory the command reads (None entries are skipped): input
            files, ``--config``, the run or dataset directory, the dataset a run records.
        directories: option -> output directory (``{"--out": p}``); only its overlaps are
            checked here, the stage checks the directory itself (:func:`check_target`).
    """
    sources = [Path(p) for p in inputs if p is not None]
    outputs = [(what, Path(p)) for what, p in {**(directories or {}), **files}.items()
               if p is not None]
    for what, path in files.items():
        check_writable(path, what)
    # A stream is opened, never replaced: it destroys nothing, so it may overlap anything.
    outputs = [(what, path) for what, path in outputs if _kind(path) != "stream"]
    for index, (what, path) in enumerate(outputs):
        check_apart(path, sources, what)
        for other_what, other in outputs[:index]:
            if _overlap(path, other):
                raise VaecfError(f"{what} {printable(path)} overlaps {other_what} "
                                 f"{printable(other)}, which this command also writes; give "
                                 "each output its own path")


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
    could not be written: it is a directory, a block device or socket, an existing device or
    FIFO without write permission, or :func:`check_creatable` says no for the file (a
    symlink's target)."""
    if path is None:
        return
    path = Path(path)
    label, kind = f"{what} {printable(path)}", _kind(path)
    if kind == "stream":
        if not os.access(path, os.W_OK):
            raise VaecfError(f"{label}: permission denied")
    elif kind != "file":
        raise VaecfError(f"{label}: is {kind}, not a file")
    elif path.is_dir():
        raise VaecfError(f"{label}: is a directory")
    else:
        check_creatable(follow(path), label)


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
    """Make the complete directory ``built`` (made beside ``follow(out)``, e.g. by
    :func:`temporary_directory`) become ``out``, replacing any existing ``out``: built ->
    ready, out -> old, ready -> out, delete old. Each step is one rename, and :func:`recover`
    can finish the sequence from any point a kill -9 stops it. A symlinked ``out`` keeps its
    link: the directory it points to is the one replaced."""
    out = follow(out)
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
    """Yield a fresh temporary directory beside ``out`` (beside its target when ``out`` is a
    symlink); on success it becomes ``out``."""
    check_target(out, force)
    out = follow(out)
    _prepare_parent(out)
    tmp = temporary_directory(out)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_directory(tmp, out)


def temporary_directory(out: Path) -> Path:
    """A new empty hidden directory beside ``out`` (beside its target when ``out`` is a
    symlink: a rename cannot cross filesystems) that :func:`recover` deletes once this process
    is gone."""
    out = follow(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as error:
        raise VaecfError(f"cannot write in {out.parent}: {error.strerror}") from None
    return tmp


def replace_file(path: Path, write: Callable[[Path], object]) -> None:
    """Write the file ``path`` with ``write(name)``. For a regular file or a new path,
    ``name`` is a temporary beside it, renamed onto ``path`` once complete (readers see the old
    file or the new one, never half of one); for a symlink, the same at its target, in the
    target's directory. A character device or FIFO (``/dev/stdout`` and the like too) gets
    ``name = path``, opened in place: no atomicity is possible, a FIFO's open waits for a reader.

    Raises:
        VaecfError: any OS error (no permission, disk full, ENOSPC from /dev/full), in one line
            naming ``path``; the old file is intact.
    """
    path, kind = Path(path), _kind(path)
    if kind == "stream":
        try:
            write(path)
        except OSError as error:
            raise VaecfError(f"cannot write {printable(path)}: {error.strerror or error}"
                             ) from None
        return
    if kind != "file":
        raise VaecfError(f"cannot write {printable(path)}: it is {kind}, not a file")
    target = follow(path)
    _prepare_parent(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, target)
    except OSError as error:   # a directory in the way, no permission, disk full, ...
        raise VaecfError(f"cannot write {printable(path)}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write a text file (UTF-8) as :func:`replace_file` does: atomically unless ``path`` is a
    device or FIFO."""
    replace_file(path, lambda name: name.write_text(text, encoding="utf-8"))

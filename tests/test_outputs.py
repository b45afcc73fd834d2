"""Where commands write, and how (vaecf.atomic.check_outputs and the writers behind it).

Every option that takes an output path, found by walking the Typer app itself, is pointed at
one of its command's own inputs and must be refused: exit code 2, one ``error:`` line, the input
byte for byte unchanged, nothing left behind. Then the kinds of path an output may name: a
symlink (written through, the link kept), a FIFO (opened), /dev/full (one line, still a device),
and a symlinked ``--out`` directory replaced with ``--force`` (the link kept, no hidden
leftovers).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import threading
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import ML_SMALL, MOVIES

TINY = ["--hidden", "16", "--latent", "8", "--batch-size", "100", "--epochs", "1",
        "--backend", "cpu", "-q"]
# Options that name what a command reads; every other path option is an output.
INPUTS = {"--run", "--data", "--input", "--item-names", "--config"}
# Where a benchmark keeps its cached inputs and its datasets; its --json is checked against
# the paths inside (the "bench prepare --json" case below points at the cached CSV).
WORKDIRS = {"--workdir"}
OUTPUT_NAMES = re.compile(r"^--(json|log-json|output|out|timings|plot|tensorboard)$")


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_dataset) -> Path:
    """A copy of the session's dataset, a one-epoch run trained on it and a small ratings
    file; every test works on copies of the run and the file (the dataset itself is what the
    run records, so it is shared read-only: a refused write must leave it as it was)."""
    from vaecf.backend import cpu_backend
    from vaecf.settings import load_settings
    from vaecf.training.loop import train

    root = tmp_path_factory.mktemp("outputs")
    shutil.copytree(small_dataset, root / "data")
    settings = load_settings(None, model={"hidden": 16, "latent": 8},
                             train={"epochs": 1, "batch_size": 100})
    train(settings, root / "data", root / "run", cpu_backend(), quiet=True)
    lines = ML_SMALL.read_text().splitlines(keepends=True)[:5_001]
    (root / "ratings.csv").write_text("".join(lines))
    return root


@pytest.fixture
def work(base, tmp_path, monkeypatch) -> Path:
    """``tmp_path/w`` holding ``data`` (a symlink to the module's dataset), copies of ``run``,
    ``ratings.csv`` and ``movies.csv``, and an empty settings file ``settings.toml``."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "data").symlink_to(base / "data")
    shutil.copytree(base / "run", work / "run")
    shutil.copy(base / "ratings.csv", work / "ratings.csv")
    shutil.copy(MOVIES, work / "movies.csv")
    (work / "settings.toml").write_text("")
    monkeypatch.chdir(work)
    return work


def _commands() -> list[tuple[str, object]]:
    """(command path, command) for every leaf command of the app, e.g. ("bench serve", …)."""
    from typer.main import get_command

    from vaecf.cli.app import app

    found = []

    def walk(command: object, path: list[str]) -> None:
        children = getattr(command, "commands", None)
        if children:
            for name, child in children.items():
                walk(child, [*path, name])
        else:
            found.append((" ".join(path), command))

    walk(get_command(app), [])
    return found


def _takes_a_path(annotation: object) -> bool:
    """A Path (or a list of them), or one of Typer's file types (typer.FileTextWrite, ...)."""
    if typing.get_origin(annotation) in (list, tuple):
        return any(_takes_a_path(arg) for arg in typing.get_args(annotation))
    return annotation is Path or (isinstance(annotation, type)
                                  and issubclass(annotation, io.IOBase))


def _path_options() -> dict[tuple[str, str], bool]:
    """(command, option) -> whether it names an output, for every option or argument that
    takes a path or is named like an output."""
    options = {}
    for name, command in _commands():
        for param in command.params:
            flag = next((o for o in param.opts if o.startswith("--")), param.name)
            annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            if _takes_a_path(annotation) or OUTPUT_NAMES.match(flag):
                options[(name, flag)] = flag not in INPUTS | WORKDIRS
    return options


# (command, output option) -> (setup(work) returning the input it points at, command line).
Guard = tuple[Callable[[Path], Path], Callable[[Path], list[object]]]
GUARDED: dict[tuple[str, str], Guard] = {
    ("prepare", "--timings"): (
        lambda w: w / "ratings.csv",
        lambda w: ["prepare", w / "ratings.csv", "--rating-col", "rating", "--out", w / "new",
                   "--timings", w / "ratings.csv", "-q"]),
    ("prepare", "--out"): (
        lambda w: w / "ratings.csv",
        lambda w: ["prepare", w / "ratings.csv", "--rating-col", "rating", "--out", w,
                   "--force", "-q"]),
    ("train", "--log-json"): (
        lambda w: w / "data" / "meta.json",
        lambda w: ["train", "--data", w / "data", "--out", w / "new", "--log-json",
                   w / "data" / "meta.json", *TINY]),
    ("train", "--out"): (
        lambda w: w / "data" / "meta.json",
        lambda w: ["train", "--data", w / "data", "--out", w / "data", "--force", *TINY]),
    ("test", "--json"): (
        lambda w: w / "run" / "run.json",
        lambda w: ["test", "--run", w / "run", "--json", w / "run" / "run.json"]),
    ("recommend", "--output"): (
        lambda w: w / "movies.csv",
        lambda w: ["recommend", "--run", w / "run", "--user-items", "1,50", "--item-names",
                   w / "movies.csv", "--output", w / "movies.csv", "-q"]),
    ("export", "--out"): (
        lambda w: w / "run" / "run.json",
        lambda w: ["export", "--run", w / "run", "--out", w / "run", "--force", "-q"]),
    ("bench inference", "--json"): (
        lambda w: w / "run" / "run.json",
        lambda w: ["bench", "inference", "--run", w / "run", "--json", w / "run" / "run.json"]),
    ("bench serve", "--json"): (
        lambda w: w / "run" / "run.json",
        lambda w: ["bench", "serve", "--run", w / "run", "--json", w / "run" / "run.json"]),
    ("bench train", "--json"): (
        lambda w: w / "data" / "meta.json",
        lambda w: ["bench", "train", "--data", w / "data", "--json",
                   w / "data" / "meta.json"]),
    ("bench prepare", "--json"): (
        lambda w: _write(w / "bench" / "synthetic-100.csv", "userId,movieId,rating\n"),
        lambda w: ["bench", "prepare", "--rows", "100", "--workdir", w / "bench", "--json",
                   w / "bench" / "synthetic-100.csv"]),
}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _hidden_leftovers(*directories: Path) -> list[str]:
    return [str(p) for d in directories for p in d.rglob(".*")
            if any(tag in p.name for tag in (".tmp-", ".ready-", ".old-"))]


def _refused(result, expect: str = "overlaps") -> str:
    lines = result.err.strip().splitlines()
    assert result.code == 2, (result.code, result.err)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.err
    assert expect in lines[0], lines[0]
    return lines[0]


def test_every_output_option_has_a_guard_case():
    """A new option that takes a path is an output unless named in INPUTS: it needs a case in
    GUARDED (and the guard), so the next flag cannot forget."""
    outputs = {key for key, is_output in _path_options().items() if is_output}
    assert outputs == set(GUARDED), (sorted(outputs - set(GUARDED)),
                                     sorted(set(GUARDED) - outputs))


@pytest.mark.parametrize("key", sorted(GUARDED), ids=" ".join)
def test_output_onto_an_input_is_refused(key, work, cli):
    setup, args = GUARDED[key]
    victim = setup(work)
    before = victim.read_bytes()
    _refused(cli(*args(work)))
    assert victim.read_bytes() == before
    assert not (work / "new").exists()
    assert not _hidden_leftovers(work, work / "data")


@pytest.mark.parametrize("target", ["run.json", "best", "settings.json", "meta.json",
                                    "config"])
def test_test_json_onto_what_the_run_reads_is_refused(target, work, cli):
    """The run's files, the dataset it records (read by default, no --data given) and the
    --config file."""
    best = json.loads((work / "run" / "run.json").read_text())["best"]["weights"]
    victim = {"run.json": work / "run" / "run.json", "best": work / "run" / best,
              "settings.json": work / "run" / "settings.json",
              "meta.json": (work / "data" / "meta.json").resolve(),
              "config": work / "settings.toml"}[target]
    before = victim.read_bytes()
    _refused(cli("test", "--run", work / "run", "--config", work / "settings.toml",
                 "--json", victim))
    assert victim.read_bytes() == before


def test_outputs_inside_another_output_are_refused(work, cli):
    """--log-json inside the run being written or resumed (its records would be lost with it),
    --timings inside the dataset being written."""
    run_json = work / "run" / "run.json"
    before = run_json.read_bytes()
    line = _refused(cli("train", "--data", work / "data", "--out", work / "run", "--resume",
                        "--log-json", run_json, "-q"))
    assert "--out" in line and run_json.read_bytes() == before
    _refused(cli("prepare", work / "ratings.csv", "--rating-col", "rating", "--out",
                 work / "new", "--timings", work / "new" / "timings.json", "-q"))
    assert not (work / "new").exists()


def test_output_through_a_symlinked_input_is_refused(work, cli):
    """Paths are compared with symlinks resolved: a link elsewhere to --item-names is the
    file itself."""
    (work / "names.csv").symlink_to(work / "movies.csv")
    before = (work / "movies.csv").read_bytes()
    _refused(cli("recommend", "--run", work / "run", "--user-items", "1,50", "--item-names",
                 work / "movies.csv", "--output", work / "names.csv", "-q"))
    assert (work / "movies.csv").read_bytes() == before and (work / "names.csv").is_symlink()


def test_output_symlink_is_written_through_to_its_target(work, cli):
    """The link stays, its target gets the output (replaced atomically in the target's own
    directory), also when the target does not exist yet."""
    (work / "elsewhere").mkdir()
    (work / "elsewhere" / "recs.csv").write_text("old\n")
    (work / "recs.csv").symlink_to(Path("elsewhere") / "recs.csv")
    (work / "new.json").symlink_to(work / "elsewhere" / "new.json")   # dangling
    for link, fmt in (("recs.csv", "csv"), ("new.json", "json")):
        result = cli("recommend", "--run", work / "run", "--user-items", "1,50", "--output",
                     work / link, "--format", fmt, "-q")
        assert result.code == 0, result.err
        assert (work / link).is_symlink()
    text = (work / "elsewhere" / "recs.csv").read_text()
    assert text != "old\n" and text.count("\n") == 11   # a header and the top 10
    assert len(json.loads((work / "elsewhere" / "new.json").read_text())
               ["recommendations"]) == 10
    assert not _hidden_leftovers(work)


def test_fifo_output_is_written_by_opening_it(work, cli):
    fifo = work / "recs.json"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    result = cli("recommend", "--run", work / "run", "--user-items", "1,50", "--output", fifo,
                 "-q")
    if reader.is_alive():   # the command never opened the FIFO: release the reader
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    reader.join(10)
    assert result.code == 0, result.err
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert len(json.loads(got[0])["recommendations"]) == 10


@pytest.mark.skipif(not Path("/dev/full").exists() or os.geteuid() != 0,
                    reason="needs /dev/full and root (only root could replace it)")
def test_dev_full_as_json_is_one_line_and_stays_a_device(work, cli):
    """test --json and train --log-json (appended to after each epoch) on /dev/full."""
    for args in (["test", "--run", work / "run", "--baselines", "popularity", "--json"],
                 ["train", "--data", work / "data", "--out", work / "new", *TINY,
                  "--log-json"]):
        line = _refused(cli(*args, "/dev/full"), "/dev/full")
        assert "No space left on device" in line
        assert stat.S_ISCHR(os.lstat("/dev/full").st_mode)


def test_symlinked_out_directory_is_replaced_behind_its_link(work, cli):
    """prepare --force and train --force through a link to a directory elsewhere: the link
    stays, the directory it points to is replaced, no hidden .NAME.old-* (or other) entry is
    left in either place."""
    real, links = work / "real", work / "links"
    real.mkdir()
    links.mkdir()
    args = ["prepare", work / "ratings.csv", "--rating-col", "rating", "-q", "--force"]
    assert cli(*args, "--out", real / "data").code == 0
    (links / "data").symlink_to(Path("..") / "real" / "data")
    result = cli(*args, "--seed", "7", "--out", links / "data")
    assert result.code == 0, result.err
    assert (links / "data").is_symlink()
    assert json.loads((real / "data" / "meta.json").read_text())["split"]["seed"] == 7

    shutil.copytree(work / "run", real / "run")
    (links / "run").symlink_to(real / "run")
    created = json.loads((real / "run" / "run.json").read_text())["created"]
    result = cli("train", "--data", real / "data", "--out", links / "run", "--force", *TINY)
    assert result.code == 0, result.err
    assert (links / "run").is_symlink()
    meta = json.loads((real / "run" / "run.json").read_text())
    assert meta["created"] != created and meta["status"] == "complete"
    assert not _hidden_leftovers(real, links), _hidden_leftovers(real, links)
    assert sorted(p.name for p in links.iterdir()) == ["data", "run"]
    assert sorted(p.name for p in real.iterdir()) == ["data", "run"]

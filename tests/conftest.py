"""Shared fixtures: an in-process CLI runner, the bundled data prepared once, small trained runs."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from helpers import ML_SMALL


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``vaecf ARGS`` in-process through the real entry point (error handling included)."""
    from vaecf.cli.app import main

    def run(*args: object) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["vaecf", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """The bundled MovieLens latest-small set, prepared once per session (read-only for tests)."""
    from vaecf.backend import cpu_backend
    from vaecf.data.prepare import EXAMPLES, prepare
    from vaecf.settings import PrepareSettings

    path, flags = EXAMPLES["movielens-small"]
    out = tmp_path_factory.mktemp("shared") / "small"
    prepare([str(path)], out, PrepareSettings(**flags), cpu_backend(), quiet=True)
    return out


@functools.cache
def _train_runs(base: Path) -> dict[str, Path]:
    """Prepare and train two small runs once per session (both test modules share them)."""
    from vaecf.backend import cpu_backend
    from vaecf.data.prepare import EXAMPLES, prepare
    from vaecf.settings import PrepareSettings, Settings
    from vaecf.training.loop import train

    ratings = pacsv.read_csv(ML_SMALL)
    strings = base / "ratings-string-ids.csv"
    items = pa.array([f"m{i}" for i in ratings["movieId"].to_pylist()])
    pacsv.write_csv(ratings.set_column(1, "movieId", items), strings)
    example = EXAMPLES["movielens-small"][1]
    runs = {}
    for kind, source in (("int", ML_SMALL), ("string", strings)):
        data, run = base / f"data-{kind}", base / f"run-{kind}"
        prepare([str(source)], data, PrepareSettings(**example), cpu_backend(), quiet=True)
        settings = Settings.model_validate({
            "model": {"hidden": 200, "latent": 64},
            "train": {"epochs": 4, "batch_size": 100, "backend": "cpu"}})
        train(settings, data, run, cpu_backend(), quiet=True)
        runs[kind] = run
    return runs


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """{"int": run dir, "string": run dir}."""
    return _train_runs(tmp_path_factory.getbasetemp())

"""Shared fixtures: the real MovieLens data beside the checkout, and an in-process CLI runner."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VAECF_SHARED_DATA", ROOT.parent / "shared" / "data"))
ML_100K = SHARED_DATA / "ml-100k" / "u.data"
ML_1M = SHARED_DATA / "ml-1m" / "ratings.parquet"
ML_SMALL = ROOT / "vaecf" / "examples" / "movielens-small" / "ratings.csv"


def need(path: Path) -> Path:
    """Skip (with the reason) when a shared dataset is not beside the checkout."""
    if not path.exists():
        pytest.skip(f"{path} not found (expected ../shared/data beside the checkout)")
    return path


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

"""Paths of the real MovieLens data the tests read, and small helpers several test modules use
(fixtures live in conftest.py; this module holds plain values and functions)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pyarrow.csv as pacsv
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VAECF_SHARED_DATA", ROOT.parent / "shared" / "data"))
ML_100K = SHARED_DATA / "ml-100k" / "u.data"
ML_1M = SHARED_DATA / "ml-1m" / "ratings.parquet"
ML_SMALL = ROOT / "vaecf" / "examples" / "movielens-small" / "ratings.csv"
MOVIES = ML_SMALL.parent / "movies.csv"


def need(path: Path) -> Path:
    """Skip (with the reason) when a shared dataset is not beside the checkout."""
    if not path.exists():
        pytest.skip(f"{path} not found (expected ../shared/data beside the checkout)")
    return path


def user_items(user: int) -> list[int]:
    """The movieIds user ``user`` rated >= 3.5 in the bundled ratings, in file order."""
    table = pacsv.read_csv(ML_SMALL).to_pylist()
    return [r["movieId"] for r in table if r["userId"] == user and r["rating"] >= 3.5]


def recommend_json(cli, *args: object) -> dict:
    """``vaecf recommend ARGS --format json``, parsed (asserting exit 0)."""
    result = cli("recommend", *args, "--format", "json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def interrupt_when_logged(log: Path, lines: int = 1) -> threading.Thread:
    """Start a thread that sends this process a real SIGINT (Ctrl-C) once ``log`` (a
    --log-json file) holds ``lines`` epochs; join it after the interrupted call."""

    def watch() -> None:
        while not (log.exists() and log.read_text().count("\n") >= lines):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher

"""Bad input and damaged files for train, test, recommend, export and bench, table-driven.

Every case runs the real command line in-process and must end with exit code 2, exactly one
stderr line starting with ``error:`` that contains the expected words, no traceback, and no
hidden temporary (``.<name>.tmp-…``, ``.ready-…``, ``.old-…``) left in the work directory.
The data stage's cases are in test_faults_data.py; kills and interrupts in test_crashes.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import ML_SMALL

TINY = ["--hidden", "16", "--latent", "8", "--batch-size", "25", "--backend", "cpu", "-q"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A dataset (the first 20,000 bundled ratings) and a 2-epoch run trained on it, built
    once by today's code; cases work on copies."""
    from vaecf.backend import cpu_backend
    from vaecf.data.prepare import prepare
    from vaecf.settings import PrepareSettings, load_settings
    from vaecf.training.loop import train

    root = tmp_path_factory.mktemp("faults")
    lines = ML_SMALL.read_text().splitlines(keepends=True)[:20_001]
    (root / "ratings.csv").write_text("".join(lines))
    prepare([str(root / "ratings.csv")], root / "data",
            PrepareSettings(rating_col="rating", min_rating=3.5, min_item_interactions=10,
                            val_users=10, test_users=10), cpu_backend(), quiet=True)
    settings = load_settings(None, model={"hidden": 16, "latent": 8},
                             train={"epochs": 2, "batch_size": 25})
    train(settings, root / "data", root / "run", cpu_backend(), quiet=True)
    return root


@dataclass
class Case:
    """One mistake: ``args(work)`` builds the command line after ``setup(work)`` damaged a copy
    of the dataset (``work/data``) and the run (``work/run``)."""

    args: Callable[[Path], list[object]]
    expect: str
    setup: Callable[[Path], object] = lambda work: None


def _flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    where = len(data) // 2 if offset is None else offset
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _weights(work: Path) -> Path:
    return work / "run" / json.loads((work / "run" / "run.json").read_text())["best"]["weights"]


def _nan_weights_without_checksums(work: Path) -> None:
    """A run whose best weights hold NaN, as code before checksums could have written it."""
    path = _weights(work)
    with np.load(path) as saved:
        arrays = {key: saved[key] for key in saved.files}
    arrays["v000"] = np.full_like(arrays["v000"], np.nan)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    meta = json.loads((work / "run" / "run.json").read_text())
    del meta["files"]
    (work / "run" / "run.json").write_text(json.dumps(meta))


def _train_npy(work: Path) -> Path:
    return next((work / "data").glob("train-*.indices.npy"))


def _mkfile(path: Path) -> Path:
    path.write_text("not a directory\n")
    return path


def _junk_dir(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("mine\n")
    return path


def train(*extra: object) -> Callable[[Path], list[object]]:
    return lambda w: ["train", "--data", w / "data", "--out", w / "new", "--epochs", "1",
                      *TINY, *extra]


CASES: dict[str, Case] = {
    # ---- train: inputs and outputs ----
    "train data missing": Case(lambda w: ["train", "--data", w / "nope", "--out", w / "r", *TINY],
                               "not found"),
    "train data is a file": Case(lambda w: ["train", "--data", _mkfile(w / "f"), "--out",
                                            w / "r", *TINY], "is a file"),
    "train data is a run": Case(lambda w: ["train", "--data", w / "run", "--out", w / "r",
                                           *TINY], "is not a vaecf dataset"),
    "train out equals data": Case(lambda w: ["train", "--data", w / "data", "--out", w / "data",
                                             "--force", *TINY], "overlaps the input"),
    "train out inside data": Case(lambda w: ["train", "--data", w / "data", "--out",
                                             w / "data" / "run", *TINY], "overlaps the input"),
    "train out contains data": Case(lambda w: ["train", "--data", w / "data", "--out", w,
                                               "--force", *TINY], "overlaps the input"),
    "train force over a foreign dir": Case(
        lambda w: ["train", "--data", w / "data", "--out", _junk_dir(w / "mine"), "--force",
                   *TINY], "not a vaecf run directory"),
    "train force over a dataset": Case(
        lambda w: ["train", "--data", w / "data", "--out", w / "data2", "--force", *TINY],
        "not a vaecf run directory", lambda w: shutil.copytree(w / "data", w / "data2")),
    "train existing out": Case(lambda w: ["train", "--data", w / "data", "--out", w / "run",
                                          *TINY], "already exists"),
    "train out parent is a file": Case(
        lambda w: ["train", "--data", w / "data", "--out", _mkfile(w / "f") / "run", *TINY],
        "not a directory"),
    "train lr inf": Case(train("--lr", "inf"), "finite"),
    "train lr nan": Case(train("--lr", "nan"), "finite"),
    "train anneal cap nan": Case(train("--anneal-cap", "nan"), "finite"),
    "train dropout 1.5": Case(train("--dropout", "1.5"), "model.dropout"),
    "train epochs 0": Case(lambda w: ["train", "--data", w / "data", "--out", w / "new",
                                      "--epochs", "0", *TINY], "train.epochs"),
    "train batch size -1": Case(train("--batch-size", "-1"), "train.batch_size"),
    "train activation foo": Case(train("--activation", "foo"), "--activation"),
    "train unknown flag": Case(train("--nope"), "No such option"),
    "train config missing": Case(train("--config", "/no/such.toml"), "file not found"),
    "train np 0": Case(train("--np", "0"), "at least 1"),
    "train resume and force": Case(train("--resume", "--force"), "not both"),
    "train resume missing run": Case(lambda w: ["train", "--data", w / "data", "--out",
                                                w / "none", "--resume", *TINY], "not found"),
    "train resume changed hidden": Case(
        lambda w: ["train", "--data", w / "data", "--out", w / "run", "--resume", "--hidden",
                   "32", "-q"], "differs from the run's"),
    "train log-json parent is a file": Case(train("--log-json", Path("f") / "log.jsonl"),
                                            "is not a directory",
                                            lambda w: _mkfile(w / "f")),
    "train diverges": Case(train("--lr", "1e30"), "diverged"),
    "train deleted npy": Case(train(), "is missing", lambda w: _train_npy(w).unlink()),
    "train truncated npy": Case(train(), "is damaged", lambda w: _truncate(_train_npy(w))),
    "train flipped byte in npy": Case(train(), "is damaged",
                                      lambda w: _flip_byte(_train_npy(w))),
    "train flipped byte in items": Case(train(), "items.parquet is damaged",
                                        lambda w: _flip_byte(w / "data" / "items.parquet")),
    "train meta.json garbage": Case(train(), "not valid JSON",
                                    lambda w: (w / "data" / "meta.json").write_text("{oops")),
    # ---- test ----
    "test run missing": Case(lambda w: ["test", "--run", w / "nope"], "not found"),
    "test run is a dataset": Case(lambda w: ["test", "--run", w / "data"],
                                  "not a vaecf run directory"),
    "test weights deleted": Case(lambda w: ["test", "--run", w / "run"], "is missing",
                                 lambda w: _weights(w).unlink()),
    "test weights truncated": Case(lambda w: ["test", "--run", w / "run"], "is damaged",
                                   lambda w: _truncate(_weights(w))),
    "test items flipped": Case(lambda w: ["test", "--run", w / "run"], "is damaged",
                               lambda w: _flip_byte(w / "run" / "items.parquet")),
    "test run.json garbage": Case(lambda w: ["test", "--run", w / "run"], "not valid JSON",
                                  lambda w: (w / "run" / "run.json").write_text("[")),
    "test k zero": Case(lambda w: ["test", "--run", w / "run", "--k", "0"], "--k"),
    "test k text": Case(lambda w: ["test", "--run", w / "run", "--k", "a,b"], "--k"),
    "test split foo": Case(lambda w: ["test", "--run", w / "run", "--split", "foo"], "--split"),
    "test json parent is a file": Case(
        lambda w: ["test", "--run", w / "run", "--json", Path(w / "f") / "m.json"],
        "not a directory", lambda w: _mkfile(w / "f")),
    "test other dataset": Case(lambda w: ["test", "--run", w / "run", "--data", w / "other"],
                               "not the dataset",
                               lambda w: shutil.copytree(w / "data", w / "other") and (
                                   w / "other" / "meta.json").write_text(
                                   (w / "other" / "meta.json").read_text() + " ")),
    # ---- recommend ----
    "recommend no items": Case(lambda w: ["recommend", "--run", w / "run", "--user-items", " , "],
                               "no item ids"),
    "recommend all unknown": Case(lambda w: ["recommend", "--run", w / "run", "--user-items",
                                             "nope,123456789"], "none of the 2"),
    "recommend items and input": Case(lambda w: ["recommend", "--run", w / "run",
                                                 "--user-items", "1", "--input", w / "x"],
                                      "exactly one"),
    "recommend input missing": Case(lambda w: ["recommend", "--run", w / "run", "--input",
                                               w / "nope.csv"], "file not found"),
    "recommend output xlsx": Case(lambda w: ["recommend", "--run", w / "run", "--user-items",
                                             "1,50", "--output", w / "recs.xlsx"], ".xlsx"),
    "recommend output inside run": Case(
        lambda w: ["recommend", "--run", w / "run", "--user-items", "1,50", "--output",
                   w / "run" / "items.parquet", "--format", "csv"], "overlaps"),
    "recommend top-k 0": Case(lambda w: ["recommend", "--run", w / "run", "--user-items", "1",
                                         "--top-k", "0"], "--top-k"),
    "recommend format xlsx": Case(lambda w: ["recommend", "--run", w / "run", "--user-items",
                                             "1", "--format", "xlsx"], "--format"),
    "recommend item names missing": Case(
        lambda w: ["recommend", "--run", w / "run", "--user-items", "1,50", "--item-names",
                   w / "movies.csv"], "file not found"),
    "recommend nan weights": Case(lambda w: ["recommend", "--run", w / "run", "--user-items",
                                             "1,50"], "non-finite",
                                  _nan_weights_without_checksums),
    "recommend weights flipped": Case(lambda w: ["recommend", "--run", w / "run",
                                                 "--user-items", "1,50"], "is damaged",
                                      lambda w: _flip_byte(_weights(w))),
    # ---- export ----
    "export out equals run": Case(lambda w: ["export", "--run", w / "run", "--out", w / "run",
                                             "--force"], "overlaps"),
    "export out inside run": Case(lambda w: ["export", "--run", w / "run", "--out",
                                             w / "run" / "sm"], "overlaps"),
    "export force over foreign dir": Case(
        lambda w: ["export", "--run", w / "run", "--out", _junk_dir(w / "mine"), "--force"],
        "not a vaecf export"),
    "export top-k 0": Case(lambda w: ["export", "--run", w / "run", "--out", w / "sm",
                                      "--top-k", "0"], "top-k"),
    "export weights missing": Case(lambda w: ["export", "--run", w / "run", "--out", w / "sm"],
                                   "is missing", lambda w: _weights(w).unlink()),
    "export nan weights": Case(lambda w: ["export", "--run", w / "run", "--out", w / "sm"],
                               "non-finite", _nan_weights_without_checksums),
    # ---- bench ----
    "bench train batch text": Case(lambda w: ["bench", "train", "--data", w / "data",
                                              "--batch-size", "a"], "--batch-size"),
    "bench train batch zero": Case(lambda w: ["bench", "train", "--data", w / "data",
                                              "--batch-size", "0"], "--batch-size"),
    "bench train both sources": Case(lambda w: ["bench", "train", "--data", w / "data",
                                                "--synthetic", "600"], "either"),
    "bench train data missing": Case(lambda w: ["bench", "train", "--data", w / "nope"],
                                     "not found"),
    "bench train json parent is a file": Case(
        lambda w: ["bench", "train", "--data", w / "data", "--batch-size", "25", "--steps", "1",
                   "--rounds", "1", "--backend", "cpu", "--json", Path(w / "f") / "b.json"],
        "not a directory", lambda w: _mkfile(w / "f")),
    "bench inference workdir under a file": Case(
        lambda w: ["bench", "inference", "--synthetic", "--workdir", _mkfile(w / "f") / "x"],
        "not a directory"),
    "bench prepare workdir under a file": Case(
        lambda w: ["bench", "prepare", "--rows", "100", "--workdir", _mkfile(w / "f") / "x"],
        "not a directory"),
    "bench inference run missing": Case(lambda w: ["bench", "inference", "--run", w / "nope"],
                                        "not found"),
    "bench inference damaged run": Case(lambda w: ["bench", "inference", "--run", w / "run"],
                                        "is damaged", lambda w: _truncate(_weights(w))),
}


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".*") if any(
        tag in p.name for tag in (".tmp-", ".ready-", ".old-"))]


@pytest.mark.parametrize("name", list(CASES))
def test_mistake_gives_one_line_and_exit_2(name, base, tmp_path, cli, monkeypatch):
    case = CASES[name]
    work = tmp_path / "w"
    work.mkdir()
    shutil.copytree(base / "data", work / "data")
    shutil.copytree(base / "run", work / "run")
    monkeypatch.chdir(work)   # relative paths in a case resolve here
    case.setup(work)
    result = cli(*case.args(work))
    lines = result.err.strip().splitlines()
    assert result.code == 2, (name, result.code, result.err)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.err
    assert "Traceback" not in result.err
    assert case.expect in lines[0], lines[0]
    assert not _leftovers(work), _leftovers(work)
    assert not (work / "new").exists() and not (work / "sm").exists()

"""Real (short) training runs on the bundled MovieLens latest-small set."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from helpers import interrupt_when_logged

from vaecf.backend import cpu_backend
from vaecf.settings import load_settings

# Small enough to train in seconds, large enough to beat popularity on this data.
QUICK = {"epochs": 12, "batch_size": 100, "lr": 0.003, "backend": "cpu"}
QUICK_MODEL = {"hidden": 200, "latent": 64}


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory):
    from vaecf.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "quick"
    log = out.parent / "quick.jsonl"
    settings = load_settings(None, train=QUICK, model=QUICK_MODEL)
    run = train(settings, small_dataset, out, cpu_backend(), quiet=True, log_json=log)
    return run, log


def test_short_training_beats_popularity(trained, small_dataset, cli):
    run, _ = trained
    # EASE on 6,558 items costs minutes here; tests/test_baselines.py covers it.
    result = cli("test", "--run", run.path, "--json", run.path.parent / "test.json",
                 "--baselines", "popularity")
    assert result.code == 0, result.err
    metrics = json.loads((run.path.parent / "test.json").read_text())
    assert metrics["users"] == 60 and metrics["split"] == "test"
    assert metrics["model"]["ndcg@100"] > metrics["popularity"]["ndcg@100"]
    assert metrics["model"]["recall@50"] > metrics["popularity"]["recall@50"]
    assert "NDCG@100" in result.out and "popularity" in result.out


def test_run_directory_is_self_describing(trained, small_dataset):
    from vaecf.data.dataset import Dataset
    from vaecf.evaluation.protocol import evaluate, model_scorer
    from vaecf.model.rundir import RunDir

    run, log = trained
    reopened = RunDir.open(run.path)
    dataset = Dataset.open(small_dataset)
    assert reopened.status == "complete"
    assert reopened.settings.train.epochs == QUICK["epochs"]
    assert reopened.settings.model.hidden == QUICK_MODEL["hidden"]
    # The default schedule is resolved and stored: β reaches the cap halfway.
    steps = reopened.progress.step
    assert reopened.settings.train.anneal_steps == pytest.approx(
        steps * 0.5 / reopened.settings.train.anneal_cap, abs=1)
    assert reopened.history[-1]["beta"] == pytest.approx(0.2)
    assert reopened.dataset_fingerprint == dataset.fingerprint
    assert reopened.item_ids.equals(dataset.item_ids)
    # Every user every epoch: steps = epochs * ceil(484 / 100).
    assert steps == QUICK["epochs"] * 5
    history = reopened.history
    assert [r["epoch"] for r in history] == list(range(1, QUICK["epochs"] + 1))
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [r["epoch"] for r in history]
    assert {"loss", "nll", "kl", "beta", "users_per_s", "seconds", "validation"} <= set(logged[0])
    # The best weights are those of the best validation epoch, and reproduce its metrics.
    best = max(history, key=lambda r: r["validation"]["ndcg@100"])
    assert reopened.best["epoch"] == best["epoch"]
    backend = cpu_backend()
    again = evaluate(model_scorer(reopened.load_model(), backend), backend,
                     *dataset.heldout("validation"))
    assert again["ndcg@100"] == pytest.approx(best["validation"]["ndcg@100"], abs=1e-6)
    names = set(os.listdir(run.path))
    assert {"run.json", "settings.json", "items.parquet"} <= names
    assert sum(name.startswith("best-") for name in names) == 1
    assert sum(name.startswith("ckpt-") for name in names) == 2   # weights + optimizer


def _weights(path):
    from vaecf.model.rundir import RunDir

    return [w.numpy() for w in RunDir.open(path).load_model("last").weights]


def test_resume_after_ctrl_c_equals_uninterrupted(small_dataset, tmp_path):
    """Ctrl-C (a real SIGINT) stops at a step boundary with a checkpoint; --resume then ends
    with exactly the weights and history of a run that was never interrupted."""
    from vaecf.model.rundir import RunDir
    from vaecf.training.loop import train

    settings = load_settings(None, train={**QUICK, "epochs": 4, "checkpoint_every": 1},
                             model={"hidden": 64, "latent": 16})
    train(settings, small_dataset, tmp_path / "straight", cpu_backend(), quiet=True)

    log = tmp_path / "log.jsonl"
    watcher = interrupt_when_logged(log)
    train(settings, small_dataset, tmp_path / "resumed", cpu_backend(), quiet=True, log_json=log)
    watcher.join(timeout=60)
    stopped = RunDir.open(tmp_path / "resumed")
    assert stopped.status == "interrupted"
    assert stopped.progress.step < 4 * 5
    # Resuming takes the run's stored settings, whatever settings are passed.
    train(load_settings(None), small_dataset, tmp_path / "resumed", cpu_backend(), quiet=True,
          resume=True, log_json=log)
    straight, resumed = RunDir.open(tmp_path / "straight"), RunDir.open(tmp_path / "resumed")
    assert resumed.status == "complete" and resumed.progress == straight.progress
    for a, b in zip(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-9)
        assert a["validation"] == b["validation"]
    assert resumed.best["epoch"] == straight.best["epoch"]


def test_bad_inputs_exit_2_with_one_line(small_dataset, tmp_path, trained, cli):
    run, _ = trained
    quick = ["--epochs", "1", "--hidden", "16", "--latent", "4", "--backend", "cpu", "--quiet"]

    def one_line_error(*args) -> str:
        result = cli(*args)
        assert result.code == 2, (args, result.err)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.err
        return lines[0]

    assert "not a vaecf dataset" in one_line_error("train", "--data", tmp_path, "--out",
                                                   tmp_path.parent / "r", *quick)
    assert "already exists" in one_line_error("train", "--data", small_dataset, "--out", run.path,
                                              *quick)
    old = tmp_path / "old-format"
    shutil.copytree(small_dataset, old)
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    assert "version 99" in one_line_error("train", "--data", old, "--out", tmp_path / "r2",
                                          *quick)
    other = tmp_path / "other"
    shutil.copytree(small_dataset, other)
    (other / "meta.json").write_text(json.dumps({**meta, "note": "another dataset"}))
    assert "not the dataset" in one_line_error("train", "--data", other, "--out", run.path,
                                               "--resume", "--backend", "cpu", "-q")
    assert "not a vaecf run" in one_line_error("test", "--run", tmp_path)
    assert "--k" in one_line_error("test", "--run", run.path, "--k", "10,x")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


@pytest.mark.parametrize("model, flag, value", [("recvae", "--noise-std", "0.5"),
                                                ("recvae", "--anneal-cap", "0.1"),
                                                ("multvae", "--gamma", "0.01")])
def test_flags_the_model_ignores_are_named(cli, small_dataset, tmp_path, model, flag, value):
    result = cli("train", "--data", small_dataset, "--out", tmp_path / "r", "--model", model,
                 flag, value, "--epochs", "1", "--hidden", "16", "--latent", "4",
                 "--backend", "cpu", "-q")
    assert result.code == 0, result.err
    assert f"{flag} not used by --model {model}" in result.err

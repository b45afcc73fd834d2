"""How long training lasts: a fixed --epochs, or the automatic schedule (stop by validation
once β reached its cap, go on past the plan while validation improves)."""

from __future__ import annotations

import json

from vaecf.cli.tables import stop_reason
from vaecf.model.rundir import RunDir
from vaecf.settings import TrainSettings
from vaecf.training.schedule import planned_epochs, schedule_of

SMALL = ["--hidden", "64", "--latent", "16", "--batch-size", "100", "--backend", "cpu"]


def test_fixed_epochs_keep_their_meaning():
    s = schedule_of(TrainSettings(epochs=7, anneal_steps=10), steps_per_epoch=3)
    assert (s.automatic, s.last_epoch, s.patience) == (False, 7, None)
    assert not s.stops(7, 100)   # no patience given: never stops early
    s = schedule_of(TrainSettings(epochs=7, patience=2, anneal_steps=10), steps_per_epoch=3)
    assert s.stops(1, 2) and not s.stops(5, 1)   # a given patience applies from the start


def test_automatic_schedule_waits_for_the_cap_and_scales_patience():
    # β = step / 50 reaches the cap 0.2 at step 10: epoch 4 with 3 steps per epoch.
    s = schedule_of(TrainSettings(anneal_steps=50, anneal_cap=0.2, validate_every=2),
                    steps_per_epoch=3)
    assert (s.automatic, s.last_epoch) == (True, 1000)
    assert planned_epochs(TrainSettings()) == 200
    assert s.earliest_stop == 4
    assert s.patience == 15   # 30 epochs' worth of validations every 2 epochs
    assert not s.stops(3, 15) and s.stops(4, 15) and not s.stops(40, 14)


def test_automatic_schedule_on_real_data(cli, small_dataset, tmp_path):
    """Trained past its 4 planned epochs while validation improved, stopped by patience
    only once β had reached its cap, and the summary says so."""
    run_path, log = tmp_path / "run", tmp_path / "log.jsonl"
    result = cli("train", "--data", small_dataset, "--out", run_path, "--plan-epochs", "4",
                 "--max-epochs", "40", "--patience", "3", "--log-json", log, *SMALL)
    assert result.code == 0, result.err
    run = RunDir.open(run_path)
    assert run.settings.train.epochs is None
    records = [json.loads(line) for line in log.read_text().splitlines()]
    betas = [r["beta"] for r in records]
    assert betas[1] < 0.2 and max(betas[:2]) < betas[2] <= 0.2   # planned over 4 epochs
    assert all(b == 0.2 for b in betas[3:])
    ndcg = [r["validation"]["ndcg@100"] for r in records]
    assert max(ndcg[:4]) < max(ndcg[4:])   # it improved after the plan ...
    assert 4 < len(records) < 40            # ... so it went on, and stopped by validation
    assert run.status == "early-stopped"
    best = ndcg.index(max(ndcg))
    assert len(records) - 1 - best == 3     # --patience validations, none better
    assert run.best["epoch"] == best + 1
    assert "once β had reached its cap" in stop_reason(run)
    assert "stopped because" in result.err


def test_resume_extends_an_automatic_run_to_fixed_epochs(cli, small_dataset, tmp_path):
    run_path = tmp_path / "run"
    assert cli("train", "--data", small_dataset, "--out", run_path, "--plan-epochs", "2",
               "--max-epochs", "3", *SMALL, "-q").code == 0
    assert RunDir.open(run_path).status == "complete"
    assert cli("train", "--data", small_dataset, "--out", run_path, "--resume", "--epochs", "5",
               "--backend", "cpu", "-q").code == 0
    run = RunDir.open(run_path)
    assert (len(run.history), run.status) == (5, "complete")
    assert stop_reason(run).startswith("reached the last epoch (5)")


def test_schedule_flags_beside_fixed_epochs_are_named(cli, small_dataset, tmp_path):
    result = cli("train", "--data", small_dataset, "--out", tmp_path / "run", "--epochs", "1",
                 "--max-epochs", "50", *SMALL, "-q")
    assert result.code == 0, result.err
    assert "shape the automatic schedule only" in result.err
    assert len(RunDir.open(tmp_path / "run").history) == 1

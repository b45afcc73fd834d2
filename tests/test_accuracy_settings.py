"""Settings added for accuracy (issue 12): model.noise_std, train.anneal_fraction, and how
runs written before them are read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_noise_std_scales_the_reparameterisation_noise():
    import tensorflow as tf

    from vaecf.model.multvae import MultVAE

    x = tf.constant(np.eye(4, 30, dtype=np.float32))
    seed = tf.constant([1, 2], tf.int64)
    plain = MultVAE(30, hidden=16, latent=8, dropout=0.0, seed=3)
    quiet = MultVAE(30, hidden=16, latent=8, dropout=0.0, seed=3, noise_std=0.0)
    evaluated = plain.forward(x, training=False)[0].numpy()
    # noise_std 0: training's z is mu, so logits equal evaluation's.
    np.testing.assert_array_equal(quiet.forward(x, training=True, seed=seed)[0].numpy(),
                                  evaluated)
    assert not np.allclose(plain.forward(x, training=True, seed=seed)[0].numpy(), evaluated)
    small = MultVAE(30, hidden=16, latent=8, dropout=0.0, seed=3, noise_std=0.01)
    mu, logvar = small.encode(x)
    eps = tf.random.stateless_normal(tf.shape(mu), tf.random.experimental.stateless_fold_in(
        seed, 1))
    expected = small.decode(mu + 0.01 * eps * tf.exp(0.5 * logvar)).numpy()
    np.testing.assert_allclose(small.forward(x, training=True, seed=seed)[0].numpy(), expected,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fraction", [0.5, 0.8, 1.0])
def test_anneal_fraction_places_the_cap(fraction):
    from vaecf.training.loop import default_anneal_steps

    total, cap = 2000, 0.2
    steps = default_anneal_steps(total, cap, fraction)
    reached = next(s for s in range(total + 1) if min(s / steps, cap) >= cap)
    assert abs(reached - fraction * total) <= 1


def test_runs_written_before_the_new_keys_keep_their_old_behaviour():
    from vaecf.model.rundir import RunDir
    from vaecf.settings import LEGACY_VALUES, Settings

    run = RunDir.open(ROOT / "tests" / "fixtures" / "v1" / "run")
    stored = (run.path / "settings.json").read_text()
    assert "noise_std" not in stored and "anneal_fraction" not in stored
    assert run.settings.model.noise_std == LEGACY_VALUES["model"]["noise_std"] == 1.0
    assert run.settings.train.anneal_fraction == 0.5
    # Every legacy key is a real setting.
    for section, values in LEGACY_VALUES.items():
        assert set(values) <= set(type(getattr(Settings(), section)).model_fields)


def test_cli_flags_reach_the_run(tmp_path, cli, small_dataset):
    from vaecf.model.rundir import RunDir

    out = tmp_path / "run"
    result = cli("train", "--data", small_dataset, "--out", out, "--epochs", "1",
                 "--hidden", "8", "--latent", "4", "--noise-std", "0.01",
                 "--anneal-fraction", "0.8", "--quiet")
    assert result.code == 0, result.err
    settings = RunDir.open(out).settings
    assert settings.model.noise_std == 0.01
    assert settings.train.anneal_fraction == 0.8
    assert settings.train.anneal_steps == 4     # ceil(1 step · 0.8 / 0.2)

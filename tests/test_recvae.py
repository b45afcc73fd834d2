"""RecVAE (``--model recvae``): its composite prior and loss against a NumPy reference written
here from the paper's formulas, its alternating updates, and a real run on the bundled data
that resumes bit-identically, tests, exports and serves."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
import pytest
import scipy.sparse
from helpers import interrupt_when_logged, recommend_json, user_items
from test_export import load_and_serve

from vaecf.backend import cpu_backend
from vaecf.settings import load_settings

# ---- NumPy reference ------------------------------------------------------------------------


def np_normal_pdf(z, mu, var):
    return np.exp(-((z - mu) ** 2) / (2 * var)) / np.sqrt(2 * np.pi * var)


def np_prior_log_density(z, prior_mu, prior_logvar, weights, wide_logvar):
    """log of the per-dimension mixture w1 N(0,1) + w2 N(mu_old, var_old) + w3 N(0, e^wide),
    in float64, straight from the densities (no log-space tricks)."""
    density = (weights[0] * np_normal_pdf(z, 0.0, 1.0)
               + weights[1] * np_normal_pdf(z, prior_mu, np.exp(prior_logvar))
               + weights[2] * np_normal_pdf(z, 0.0, np.exp(wide_logvar)))
    return np.log(density)


def np_layer_norm(h, gamma, beta, eps):
    mean = h.mean(axis=1, keepdims=True)
    var = h.var(axis=1, keepdims=True)
    return (h - mean) / np.sqrt(var + eps) * gamma + beta


def np_swish(h):
    return h / (1 + np.exp(-h))


def np_encoder(x, layers, eps):
    """The densely connected encoder from its weight arrays:
    layers = [(W1, b1), ..., (WN, bN)], norms, (Wout, bout)."""
    dense, norms, (w_out, b_out) = layers
    hs = []
    for n, ((w, b), (gamma, beta)) in enumerate(zip(dense, norms, strict=True)):
        pre = (x if n == 0 else hs[-1]) @ w + b + sum(hs)
        hs.append(np_layer_norm(np_swish(pre), gamma, beta, eps))
    q = hs[-1] @ w_out + b_out
    latent = q.shape[1] // 2
    return q[:, :latent], q[:, latent:]


def encoder_arrays(encoder):
    f = lambda v: v.numpy().astype(np.float64)  # noqa: E731
    dense = [(f(encoder.first.kernel), f(encoder.first.bias))]
    dense += [(f(d.kernel), f(d.bias)) for d in encoder.dense]
    norms = [(f(n.gamma), f(n.beta)) for n in encoder.norms]
    return dense, norms, (f(encoder.out.kernel), f(encoder.out.bias))


# ---- the prior and the loss -----------------------------------------------------------------


@pytest.mark.parametrize("weights", [(0.15, 0.75, 0.1), (0.5, 0.0, 0.5)])
def test_composite_prior_log_density_matches_numpy(weights):
    import tensorflow as tf

    from vaecf.model.recvae import composite_prior_log_density

    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (6, 5))
    z[0, 0] = 40.0   # far in the tail: only the wide Gaussian is left
    mu, logvar = rng.normal(0, 1, (6, 5)), rng.normal(-1, 1, (6, 5))
    got = composite_prior_log_density(*(tf.constant(a, tf.float32) for a in (z, mu, logvar)),
                                      list(weights), 10.0).numpy()
    expected = np_prior_log_density(z, mu, logvar, weights, 10.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_recvae_loss_matches_numpy():
    """NLL, the one-sample KL estimate against the composite prior, and β_u = γ·|x_u|, from
    the model's weights, computed independently in float64."""
    import tensorflow as tf

    from vaecf.model.recvae import RecVAE, recvae_loss

    n_items, latent, eps_ln, gamma = 40, 6, 0.1, 0.05
    model = RecVAE(n_items, hidden=12, latent=latent, encoder_layers=3, dropout=0.5,
                   layer_norm_eps=eps_ln, seed=4)
    # Make the prior's copy differ from the encoder, as after training.
    rng = np.random.default_rng(1)
    for w in model.encoder.weights:
        w.assign(w.numpy() + rng.normal(0, 0.2, w.shape).astype(np.float32))
    # Users with 1, 3, 8 and 20 items: β differs 20-fold between them.
    dense = np.zeros((4, n_items), np.float32)
    for u, count in enumerate((1, 3, 8, 20)):
        dense[u, rng.choice(n_items, count, replace=False)] = 1.0
    coo = scipy.sparse.coo_matrix(dense)
    indices = np.stack([coo.row, coo.col], axis=1).astype(np.int64)
    order = np.lexsort((indices[:, 1], indices[:, 0]))
    indices = indices[order]
    normed = dense / np.linalg.norm(dense, axis=1, keepdims=True)
    x = tf.SparseTensor(indices, normed[indices[:, 0], indices[:, 1]], dense.shape)
    targets = tf.SparseTensor(indices, np.ones(len(indices), np.float32), dense.shape)
    seed = tf.constant([7, 11], tf.int64)

    logits, z, mu, logvar = model.forward(x, training=True, seed=seed, dropout=False)
    prior = model.prior_log_density(x, z)
    loss, nll, kl = (float(v) for v in recvae_loss(logits, z, mu, logvar, prior, targets, gamma))

    # NumPy: encoder, prior encoder and decoder from the weights; ε from the seed.
    mu_np, logvar_np = np_encoder(normed.astype(np.float64), encoder_arrays(model.encoder),
                                  eps_ln)
    np.testing.assert_allclose(mu.numpy(), mu_np, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logvar.numpy(), logvar_np, rtol=1e-4, atol=1e-4)
    eps = tf.random.stateless_normal((4, latent), tf.random.experimental.stateless_fold_in(
        seed, 1)).numpy().astype(np.float64)
    z_np = mu_np + eps * np.exp(0.5 * logvar_np)
    np.testing.assert_allclose(z.numpy(), z_np, rtol=1e-4, atol=1e-4)
    logits_np = (z_np @ model.decoder.kernel.numpy().astype(np.float64)
                 + model.decoder.bias.numpy())
    log_softmax = logits_np - np.log(np.exp(logits_np).sum(axis=1, keepdims=True))
    nll_user = -(dense * log_softmax).sum(axis=1)
    prior_mu, prior_logvar = np_encoder(normed.astype(np.float64),
                                        encoder_arrays(model.prior_encoder), eps_ln)
    log_q = np.log(np_normal_pdf(z_np, mu_np, np.exp(logvar_np)))
    log_p = np_prior_log_density(z_np, prior_mu, prior_logvar, (0.15, 0.75, 0.1), 10.0)
    kl_user = (log_q - log_p).sum(axis=1)
    beta_user = gamma * dense.sum(axis=1)
    assert nll == pytest.approx(nll_user.mean(), rel=1e-5)
    assert kl == pytest.approx(kl_user.mean(), rel=1e-4, abs=1e-4)
    assert loss == pytest.approx((nll_user + beta_user * kl_user).mean(), rel=1e-5)
    # The per-user weighting matters here: one β for everyone would give another loss.
    assert abs((nll_user + beta_user.mean() * kl_user).mean() - loss) > 1e-3 * abs(loss)


def test_evaluation_is_the_decoder_of_the_mean():
    import tensorflow as tf

    from vaecf.model.recvae import RecVAE

    model = RecVAE(30, hidden=8, latent=4, encoder_layers=2, seed=2)
    x = tf.constant(np.eye(3, 30, dtype=np.float32))
    mu, _ = model.encode(x)
    np.testing.assert_allclose(model(x).numpy(), model.decode(mu).numpy(), rtol=1e-6)
    sparse = tf.sparse.from_dense(x)
    np.testing.assert_allclose(model(sparse).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


# ---- alternating updates ------------------------------------------------------------------


def test_cycle_updates_encoder_then_decoder_and_refreshes_the_prior(small_dataset):
    from vaecf.data.dataset import Dataset
    from vaecf.model.batches import epoch_order, iterate
    from vaecf.training.distributed import SingleProcess
    from vaecf.training.recvae_trainer import RecVAETrainer

    settings = load_settings(None, model={"name": "recvae", "hidden": 16, "latent": 4},
                             recvae={"encoder_layers": 2, "encoder_epochs": 2,
                                     "decoder_epochs": 1})
    rows = Dataset.open(small_dataset).train_matrix()[:60]
    backend = cpu_backend()
    batches = list(iterate(backend, backend.csr(rows), epoch_order(60, 0, 0, 0), 2))
    trainer = RecVAETrainer(settings, rows.shape[1], SingleProcess(), "float32",
                            steps_per_epoch=2)
    model = trainer.model
    values = lambda ws: [w.numpy().copy() for w in ws]  # noqa: E731
    # Cycle = 3 epochs of 2 steps: steps 0-3 update the encoder, 4-5 the decoder.
    assert [trainer.phase(s) for s in range(8)] == ["encoder"] * 4 + ["decoder"] * 2 + [
        "encoder"] * 2
    for step in range(6):
        enc, dec, prior = (values(model.encoder.weights), values(model.decoder.weights),
                           values(model.prior_encoder.weights))
        trainer.step(batches[step % 2], 0.005, step)
        changed = lambda before, layer: any(  # noqa: E731
            not np.array_equal(a, w.numpy()) for a, w in zip(before, layer.weights,
                                                              strict=True))
        assert changed(enc, model.encoder) == (step < 4)
        assert changed(dec, model.decoder) == (step >= 4)
        assert not changed(prior, model.prior_encoder)
    # The next cycle starts by freezing the encoder as it is now into the prior.
    enc = values(model.encoder.weights)
    trainer.step(batches[0], 0.005, 6)
    for old, before in zip(model.prior_encoder.weights, enc, strict=True):
        np.testing.assert_array_equal(old.numpy(), before)
    assert trainer.optimizer.encoder.iterations.numpy() == 5
    assert trainer.optimizer.decoder.iterations.numpy() == 2


# ---- a real run -----------------------------------------------------------------------------

QUICK = ["--model", "recvae", "--batch-size", "100", "--hidden", "64", "--latent", "16",
         "--lr", "0.01", "--checkpoint-every", "1", "--backend", "cpu", "--quiet"]


def _state(path):
    """Every weight (the prior's copy included) and both optimizers' state of a run's last
    checkpoint."""
    from vaecf.model.rundir import RunDir

    run = RunDir.open(path)
    names = [run.meta["checkpoint"]["weights"], run.meta["checkpoint"]["optimizer"]]
    arrays = []
    for name in names:
        with np.load(path / name) as saved:
            arrays += [saved[key] for key in sorted(saved.files) if key.startswith("v")]
    return arrays


def test_recvae_run_resumes_bit_identically_tests_exports_and_serves(small_dataset, tmp_path,
                                                                    cli, monkeypatch):
    from vaecf.model.rundir import RunDir

    # 7 epochs of 5 steps: a cycle (3 encoder + 1 decoder epochs) and most of the next.
    straight, stopped, cut = tmp_path / "straight", tmp_path / "stopped", tmp_path / "cut"
    assert cli("train", "--data", small_dataset, "--out", straight, "--epochs", "7",
               *QUICK).code == 0
    run = RunDir.open(straight)
    assert run.model_name == "recvae" and run.meta["model"]["name"] == "recvae"
    assert run.settings.model.name == "recvae" and run.status == "complete"
    assert run.progress.step == 35 and len(run.history) == 7
    assert {r["beta"] for r in run.history} == {0.005}

    # Stop after 2 epochs, then extend to 7 with --resume --epochs.
    assert cli("train", "--data", small_dataset, "--out", stopped, "--epochs", "2",
               *QUICK).code == 0
    assert cli("train", "--data", small_dataset, "--out", stopped, "--resume", "--epochs", "7",
               "--backend", "cpu", "--quiet").code == 0

    # Ctrl-C (a real SIGINT) mid-run, then --resume.
    log = tmp_path / "cut.jsonl"
    watcher = interrupt_when_logged(log)
    result = cli("train", "--data", small_dataset, "--out", cut, "--epochs", "7", *QUICK,
                 "--log-json", log)
    watcher.join(timeout=60)
    assert result.code == 130, result.err
    assert RunDir.open(cut).status == "interrupted" and RunDir.open(cut).progress.step < 35
    assert cli("train", "--data", small_dataset, "--out", cut, "--resume", "--backend", "cpu",
               "--quiet", "--log-json", log).code == 0

    for other in (stopped, cut):
        again = RunDir.open(other)
        assert again.status == "complete" and again.progress == run.progress
        for a, b in zip(_state(straight), _state(other), strict=True):
            np.testing.assert_array_equal(a, b)
        assert [r["validation"] for r in again.history] == [
            r["validation"] for r in run.history]
        assert again.best["epoch"] == run.best["epoch"]
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == list(
        range(1, 8))

    # --resume refuses another model.
    result = cli("train", "--data", small_dataset, "--out", cut, "--resume", "--model",
                 "multvae", "--backend", "cpu", "-q")
    assert result.code == 2 and "--model multvae differs" in result.err

    # It learns: 7 short epochs (the decoder trains in only one of every four) do not reach
    # popularity on this small set, but validation NDCG@100 grows several-fold.
    curve = [r["validation"]["ndcg@100"] for r in run.history]
    assert max(curve) > 3 * curve[0]

    # vaecf test names the model and scores the best weights.
    out = tmp_path / "test.json"
    result = cli("test", "--run", straight, "--baselines", "popularity", "--json", out)
    assert result.code == 0, result.err
    assert "RecVAE" in result.out
    scored = json.loads(out.read_text())
    assert scored["model_name"] == "recvae" and scored["best_epoch"] == run.best["epoch"]
    assert scored["model"]["ndcg@100"] > 0.02

    # The exported SavedModel serves what `vaecf recommend` recommends.
    exported = tmp_path / "export"
    result = cli("export", "--run", straight, "--out", exported, "--top-k", 20)
    assert result.code == 0, result.err
    users = [[str(i) for i in user_items(1)[:30]], [str(i) for i in user_items(68)[:5]],
             ["1", "nosuch", "260", "260", "1196"]]
    served = load_and_serve(exported, users)
    assert served["ragged_ids"] == served["ids"]
    for ids, scores, items in zip(served["ids"], served["scores"], users, strict=True):
        doc = recommend_json(cli, "--run", straight, "--top-k", 20,
                             "--user-items", ",".join(items))
        assert ids == [str(r["item"]) for r in doc["recommendations"]]
        assert scores == pytest.approx([r["score"] for r in doc["recommendations"]],
                                       abs=1e-4)
        assert not set(ids) & set(items)
    # Serving in bfloat16 works for RecVAE too, and mostly agrees with float32.
    low = recommend_json(cli, "--run", straight, "--top-k", 20, "--precision", "bf16",
                         "--user-items", ",".join(users[0]))
    high = recommend_json(cli, "--run", straight, "--top-k", 20,
                          "--user-items", ",".join(users[0]))
    same = {r["item"] for r in low["recommendations"]} & {r["item"] for r in
                                                          high["recommendations"]}
    assert len(same) >= 15


def test_bench_train_and_inference_run_for_recvae(small_dataset, tmp_path, cli):
    out = tmp_path / "bench.json"
    result = cli("bench", "train", "--model", "recvae", "--data", small_dataset,
                 "--batch-size", "100", "--steps", "4", "--rounds", "1", "--backend", "cpu",
                 "--json", out)
    assert result.code == 0, result.err
    (row,) = json.loads(out.read_text())
    assert row["users_per_s"] > 0 and row["fraction"] > 0 and "recvae" in result.out
    run = tmp_path / "run"
    assert cli("train", "--data", small_dataset, "--out", run, "--epochs", "1",
               "--model", "recvae", "--hidden", "32", "--latent", "8", "--backend", "cpu",
               "--quiet").code == 0
    out = tmp_path / "inference.json"
    result = cli("bench", "inference", "--run", run, "--batch-size", "256", "--json", out)
    assert result.code == 0, result.err
    figures = json.loads(out.read_text())
    assert figures["users_per_s"] > 0 and math.isfinite(figures["weight_mb"])


def test_recvae_settings_are_checked():
    from vaecf.errors import VaecfError

    with pytest.raises(VaecfError, match="recvae.prior_weights"):
        load_settings(None, recvae={"prior_weights": [0.5, 0.6, 0.1]})
    with pytest.raises(VaecfError, match="model.name"):
        load_settings(None, model={"name": "ease"})


def test_runs_without_a_model_name_hold_a_multvae():
    from pathlib import Path

    from vaecf.model.multvae import MultVAE
    from vaecf.model.rundir import RunDir

    run = RunDir.open(Path(__file__).parent / "fixtures" / "v1" / "run")
    assert "name" not in run.meta["model"]
    assert run.model_name == "multvae" and run.settings.model.name == "multvae"
    assert isinstance(run.build_model(), MultVAE)


@pytest.mark.dist
@pytest.mark.skipif(importlib.util.find_spec("horovod") is None, reason="Horovod is not installed")
def test_two_ranks_match_one_process_step_for_step(small_dataset, tmp_path, monkeypatch):
    """RecVAE through the same allreduce path as Mult-VAE: 2 Gloo ranks (started from
    different seeds) end where 1 process ends, over encoder steps, a decoder step and a
    prior refresh, with every variable identical across ranks."""
    import subprocess
    import sys

    from test_distributed import LAUNCHER_VARIABLES, WORKER

    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    global_batch, steps = 96, 5
    outputs = {}
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for name, prefix in (("single", []), ("double", [
            sys.executable, "-m", "horovod.runner.launch", "--gloo", "-np", "2", "-H",
            "localhost:2"])):
        out = tmp_path / name
        out.mkdir()
        done = subprocess.run([*prefix, sys.executable, str(WORKER), str(small_dataset),
                               str(out), str(global_batch), str(steps), "recvae"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[name] = out
    one = np.load(outputs["single"] / "rank-0.npz")
    rank0 = np.load(outputs["double"] / "rank-0.npz")
    rank1 = np.load(outputs["double"] / "rank-1.npz")
    iterations = sorted(int(one[k]) for k in one.files if one[k].dtype == np.int64)
    assert iterations == [1, 4]          # decoder Adam 1 step, encoder Adam 4
    for key in one.files:
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=f"variable {key}")
        np.testing.assert_allclose(rank0[key], one[key], rtol=1e-4, atol=1e-5,
                                   err_msg=f"variable {key}")


def test_amp_policies_train_with_float32_logits(small_dataset):
    """--amp's two policies (float16 with loss scaling on a GPU, bfloat16 on a CPU that has
    it) run RecVAE's steps, on this CPU, with finite losses."""
    import tensorflow as tf

    from vaecf.data.dataset import Dataset
    from vaecf.model.batches import epoch_order, iterate
    from vaecf.training.distributed import SingleProcess
    from vaecf.training.recvae_trainer import RecVAETrainer

    settings = load_settings(None, model={"name": "recvae", "hidden": 16, "latent": 4},
                             recvae={"encoder_layers": 2, "encoder_epochs": 1})
    rows = Dataset.open(small_dataset).train_matrix()[:40]
    backend = cpu_backend()
    batches = list(iterate(backend, backend.csr(rows), epoch_order(40, 0, 0, 0), 1))
    for policy in ("mixed_float16", "mixed_bfloat16"):
        trainer = RecVAETrainer(settings, rows.shape[1], SingleProcess(), policy,
                                steps_per_epoch=1)
        losses = [trainer.step(batches[0], 0.005, step)[0] for step in range(3)]
        assert all(math.isfinite(v) for v in losses), (policy, losses)
        assert trainer.model(tf.fill((2, rows.shape[1]), 0.1)).dtype == tf.float32

"""MultVAE: shapes, dtypes, sparse == dense input, deterministic noise, loss formulas."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from vaecf.model.multvae import MultVAE, kl_divergence, multinomial_nll

N_ITEMS = 300


def _batch(users: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, N_ITEMS)) < 0.05).astype(np.float32)
    dense[:, 0] = 1.0   # no empty rows
    x = tf.sparse.from_dense(dense)
    norms = np.sqrt(dense.sum(axis=1))
    normalised = tf.SparseTensor(x.indices, x.values / tf.gather(norms, x.indices[:, 0]),
                                 x.dense_shape)
    return dense, x, normalised


def test_eval_forward_shapes_and_sparse_equals_dense():
    model = MultVAE(N_ITEMS, hidden=32, latent=8)
    dense, _, normalised = _batch()
    logits = model(normalised)
    assert logits.shape == (8, N_ITEMS) and logits.dtype == tf.float32
    np.testing.assert_allclose(logits.numpy(), model(tf.sparse.to_dense(normalised)).numpy(),
                               rtol=1e-5, atol=1e-5)
    # Evaluation uses z = mu: the same input gives the same output.
    np.testing.assert_array_equal(logits.numpy(), model(normalised).numpy())
    assert [w.path for w in model.weights][0] == "encoder_hidden/kernel"


def test_training_noise_is_a_function_of_the_seed():
    model = MultVAE(N_ITEMS, hidden=32, latent=8)
    _, _, normalised = _batch()
    a = model.forward(normalised, training=True, seed=tf.constant([1, 2], tf.int64))[0]
    b = model.forward(normalised, training=True, seed=tf.constant([1, 2], tf.int64))[0]
    c = model.forward(normalised, training=True, seed=tf.constant([1, 3], tf.int64))[0]
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), c.numpy())
    assert not np.allclose(a.numpy(), model(normalised).numpy())


def test_loss_terms_match_their_formulas():
    model = MultVAE(N_ITEMS, hidden=32, latent=8)
    dense, x, normalised = _batch()
    logits, mu, logvar = model.forward(normalised, training=True,
                                       seed=tf.constant([0, 0], tf.int64))
    log_softmax = tf.nn.log_softmax(logits).numpy()
    want_nll = -np.mean(np.sum(dense * log_softmax, axis=1))
    assert float(multinomial_nll(logits, x)) == pytest.approx(want_nll, rel=1e-5)
    mu, logvar = mu.numpy().astype(np.float64), logvar.numpy().astype(np.float64)
    want_kl = np.mean(np.sum(0.5 * (np.exp(logvar) + mu**2 - 1 - logvar), axis=1))
    assert float(kl_divergence(mu, logvar)) == pytest.approx(want_kl, rel=1e-5)


def test_nll_gradient_equals_autodiff_of_the_dense_definition():
    """The hand-written gradient of multinomial_nll against TensorFlow's autodiff of
    −mean_u Σ_i x_ui·log_softmax(logits)_ui on dense tensors, also under an upstream factor."""
    dense, x, _ = _batch(users=16, seed=3)
    logits = tf.constant(np.random.default_rng(4).normal(0, 3, (16, N_ITEMS)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        ours = 0.7 * multinomial_nll(logits, x)
        want = 0.7 * -tf.reduce_mean(tf.reduce_sum(dense * tf.nn.log_softmax(logits), axis=1))
    assert float(ours) == pytest.approx(float(want), rel=1e-5)
    np.testing.assert_allclose(tape.gradient(ours, logits).numpy(),
                               tape.gradient(want, logits).numpy(), rtol=1e-4, atol=1e-7)


def test_mixed_precision_keeps_float32_logits_and_variables():
    model = MultVAE(N_ITEMS, hidden=32, latent=8, dtype="mixed_bfloat16")
    _, _, normalised = _batch()
    assert model.decoder_out.compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in model.weights)
    logits = model(normalised)
    assert logits.dtype == tf.float32
    reference = MultVAE(N_ITEMS, hidden=32, latent=8)
    np.testing.assert_allclose(logits.numpy(), reference(normalised).numpy(), atol=0.05)


def test_xla_first_layer_equals_sparse_matmul():
    plain = MultVAE(N_ITEMS, hidden=32, latent=8)
    xla = MultVAE(N_ITEMS, hidden=32, latent=8, xla=True)
    _, _, normalised = _batch()
    compiled = tf.function(lambda x: xla(x), jit_compile=True)
    np.testing.assert_allclose(compiled(normalised).numpy(), plain(normalised).numpy(),
                               rtol=1e-4, atol=1e-5)

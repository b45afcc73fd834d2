"""MultVAE: shapes, dtypes, sparse == dense input, deterministic noise, loss formulas, and the
training-speed forms of the first layer (row slices, dropped non-zeros left out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from vaecf.backend import cpu_backend
from vaecf.data.dataset import Dataset
from vaecf.model import multvae
from vaecf.model.batches import epoch_order, iterate
from vaecf.model.multvae import MultVAE, input_dropout, kl_divergence, multinomial_nll

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


def _real_batch(dataset: Path, users: int = 200):
    """The first training batch of the bundled MovieLens data, from the real input pipeline:
    (SparseTensor (users, I) L2-normalised, its binary targets (users, I), I)."""
    data = Dataset.open(dataset)
    backend = cpu_backend()
    matrix = data.train_matrix()
    batch = next(iterate(backend, backend.csr(matrix), epoch_order(matrix.shape[0], 0, 0, 0),
                         matrix.shape[0] // users))
    shape = (batch.size, data.n_items)
    return (tf.SparseTensor(batch.indices, batch.values, shape),
            tf.SparseTensor(batch.indices, batch.targets, shape), data.n_items)


@pytest.mark.parametrize("parts", [2, 3])
def test_row_slices_give_the_unsliced_step(small_dataset, parts):
    """The first layer cut into blocks of rows (how training and evaluation run it on a CPU)
    computes the same logits, loss and gradients as one product, on a real batch."""
    x, targets, n_items = _real_batch(small_dataset)
    slices = multvae.row_slices(x, parts)
    assert sum(int(tf.size(s.values)) for s in slices) == int(tf.size(x.values))
    users = int(x.dense_shape[0])
    for p, s in enumerate(slices):   # consecutive blocks of rows, each of the full shape
        assert s.dense_shape.numpy().tolist() == x.dense_shape.numpy().tolist()
        rows = s.indices[:, 0].numpy()
        assert users * p // parts <= rows.min() and rows.max() < users * (p + 1) // parts

    def step(blocks: int):
        model = MultVAE(n_items, hidden=64, latent=16, dropout=0.5)
        with tf.GradientTape() as tape:
            logits, mu, logvar = model.forward(x, training=True, seed=tf.constant([3, 4]),
                                               row_blocks=blocks)
            loss = multinomial_nll(logits, targets) + 0.2 * kl_divergence(mu, logvar)
        return logits, loss, tape.gradient(loss, model.trainable_variables)

    layer = MultVAE(n_items, hidden=64, latent=16).encoder_hidden
    graph = tf.function(lambda x: layer(x, row_blocks=parts)).get_concrete_function(x).graph
    assert [op.type for op in graph.get_operations()].count("SparseTensorDenseMatMul") == parts
    # Every row comes from one block (zeros from the others) and the kernel's gradient is one
    # adjoint product either way: the same numbers, bit for bit.
    (logits_1, loss_1, grads_1), (logits_n, loss_n, grads_n) = step(1), step(parts)
    np.testing.assert_array_equal(logits_n.numpy(), logits_1.numpy())
    assert float(loss_n) == float(loss_1)
    for a, b in zip(grads_n, grads_1, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_sparse_dropout_leaves_out_the_dropped_non_zeros(small_dataset):
    """Dropped entries leave the sparse input; kept ones are scaled by 1/(1 − rate); which
    ones is a function of the seed; and the first layer gives what the same input with the
    dropped entries written as explicit zeros gives."""
    x, _, n_items = _real_batch(small_dataset)
    seed = tf.constant([5, 6])
    dropped = input_dropout(x, 0.5, seed)
    original = dict(zip(map(tuple, x.indices.numpy()), x.values.numpy(), strict=True))
    kept = list(map(tuple, dropped.indices.numpy()))
    assert 0.45 < len(kept) / len(original) < 0.55
    np.testing.assert_allclose(dropped.values.numpy(), [2 * original[k] for k in kept],
                               rtol=1e-6)
    again = input_dropout(x, 0.5, seed)
    np.testing.assert_array_equal(again.indices.numpy(), dropped.indices.numpy())
    # Explicit zeros in place of the dropped entries: the same first-layer product.
    zeros = tf.SparseTensor(x.indices, tf.sparse.to_dense(dropped).numpy()[
        tuple(x.indices.numpy().T)], x.dense_shape)
    layer = MultVAE(n_items, hidden=64, latent=16).encoder_hidden
    np.testing.assert_allclose(layer(dropped).numpy(), layer(zeros).numpy(), rtol=1e-6,
                               atol=1e-7)

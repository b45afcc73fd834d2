"""Mult-VAE (Liang et al. 2018, "Variational Autoencoders for Collaborative Filtering", §2).

Shapes: ``B`` users in a batch, ``I`` items, ``H`` hidden units, ``L`` latent dimensions.

- Input: one row per user, L2-normalised, float32, either a ``tf.SparseTensor`` (B, I) (what
  training uses: a user touches ~0.5% of the items, so the first layer is a sparse × dense
  product costing 2·nnz·H FLOPs instead of 2·B·I·H) or a dense (B, I) tensor (what serving and
  exported models may feed).
- Training: dropout on the input's non-zeros, encoder I→H (activation)→2L split into (mu,
  logvar), z = mu + noise_std·eps·exp(logvar/2) with eps ~ N(0, I), decoder L→H (activation)→I.
- Evaluation (``model(x)``, ``training=False``): no dropout, z = mu.
- Logits are float32 whatever the dtype policy: under ``mixed_bfloat16``/``mixed_float16`` the
  matmuls run in the low-precision compute dtype and the (B, I) logits are cast back, so the
  log-softmax over thousands of items never loses precision.

Randomness (dropout mask, reparameterisation noise) comes from stateless ops keyed by a
``seed`` tensor of shape (2,) int32, so a training step is a pure function of (weights, batch,
seed): a resumed run draws exactly the noise an uninterrupted one would.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

# Bias initialisation of the reference implementation (dawenl/vae_cf): N(0, 0.001²), truncated.
_BIAS_STDDEV = 0.001


class SparseInputDense(keras.layers.Layer):
    """``activation(x @ kernel + bias)`` where ``x`` may be a ``tf.SparseTensor``.

    kernel: (n_in, units) float32 variable; the product runs in the layer's compute dtype.
    """

    def __init__(self, units: int, activation: str | None, seed: int, xla: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.units, self.xla = units, xla
        self.activation = keras.activations.get(activation)
        self.seed = seed

    def build(self, input_shape: tuple[int | None, int]) -> None:
        self.kernel = self.add_weight(
            name="kernel", shape=(input_shape[-1], self.units),
            initializer=keras.initializers.GlorotUniform(seed=self.seed))
        self.bias = self.add_weight(
            name="bias", shape=(self.units,),
            initializer=keras.initializers.TruncatedNormal(stddev=_BIAS_STDDEV, seed=self.seed))

    def call(self, x, row_blocks: int = 1):
        """``activation(x @ kernel + bias)`` (B, units); a sparse x is multiplied as
        ``row_blocks`` blocks of rows side by side (see :func:`row_parts`)."""
        kernel = tf.cast(self.kernel, self.compute_dtype)
        if isinstance(x, tf.SparseTensor) and self.xla:
            # XLA has no kernel for SparseTensorDenseMatMul: Σ over a row's non-zeros of
            # value · kernel[item] as gather + segment sum (same FLOPs, more memory traffic).
            rows = tf.cast(x.indices[:, 0], tf.int32)
            picked = tf.gather(kernel, x.indices[:, 1]) * tf.cast(x.values, self.compute_dtype)[
                :, None]
            h = tf.math.unsorted_segment_sum(picked, rows, tf.cast(x.dense_shape[0], tf.int32))
        elif isinstance(x, tf.SparseTensor):
            x = tf.SparseTensor(x.indices, tf.cast(x.values, self.compute_dtype), x.dense_shape)
            h = blocked_product(x, kernel, row_blocks)
        else:
            h = tf.matmul(tf.cast(x, self.compute_dtype), kernel)
        return self.activation(h + tf.cast(self.bias, self.compute_dtype))


def row_parts() -> int:
    """How many blocks of rows a batch's sparse first-layer product is best cut into: one per
    intra-op thread on a CPU, 1 where a GPU runs it.

    TensorFlow's CPU kernel for ``SparseTensorDenseMatMul`` runs on one thread; blocks of
    rows run side by side on the inter-op pool (:func:`blocked_product`). Training and
    evaluation pass this as ``row_blocks``. Serving keeps 1: in its batch graph the exclusion
    mask is built on the other thread meanwhile, so blocks measured no faster there, and in a
    one-user call the extra ops would cost more than they save."""
    if tf.config.list_logical_devices("GPU"):
        return 1
    return (tf.config.threading.get_intra_op_parallelism_threads()
            or len(os.sched_getaffinity(0)))


def blocked_product(x: tf.SparseTensor, kernel, blocks: int):
    """``x @ kernel``, x (B, n) sparse with row-major indices, kernel (n, units): (B, units).

    With ``blocks`` > 1 the product runs as that many row blocks side by side
    (:func:`row_slices`) and their results are summed; every row comes from one block and
    zeros from the others, so the result is exactly the single product's. The gradient for
    ``kernel`` stays one adjoint product over all of x: per block, each would write a dense
    (n, units) gradient to be summed after, ``blocks`` times the memory (48 MB each at 20,000
    items) and no faster (measured 0.92x the time of blocked gradients at that shape)."""
    if blocks == 1:
        return tf.sparse.sparse_dense_matmul(x, kernel)

    @tf.custom_gradient
    def product(kernel):
        def grad(upstream):
            return tf.sparse.sparse_dense_matmul(x, upstream, adjoint_a=True)

        return tf.add_n([tf.sparse.sparse_dense_matmul(part, kernel)
                         for part in row_slices(x, blocks)]), grad

    return product(kernel)


def row_slices(x: tf.SparseTensor, parts: int) -> list[tf.SparseTensor]:
    """``x`` (B, n) as ``parts`` sparse tensors of the same shape that hold consecutive blocks
    of its rows and sum to it. ``x.indices`` (nnz, 2) must be in row-major order, as batches
    built from CSR rows are. (Each keeps all B rows: renumbering the rows of a slice would
    cost a pass over its indices, slower than the zero rows its product writes.)"""
    if parts == 1:
        return [x]
    bounds = x.dense_shape[0] * tf.range(parts + 1, dtype=tf.int64) // parts
    cuts = tf.searchsorted(x.indices[:, 0], bounds)
    return [tf.SparseTensor(x.indices[cuts[p]:cuts[p + 1]], x.values[cuts[p]:cuts[p + 1]],
                            x.dense_shape) for p in range(parts)]


def _dense(units: int, activation: str | None, seed: int, name: str,
           dtype: str | None) -> keras.layers.Dense:
    return keras.layers.Dense(
        units, activation=activation, name=name, dtype=dtype,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        bias_initializer=keras.initializers.TruncatedNormal(stddev=_BIAS_STDDEV, seed=seed))


class MultVAE(keras.Model):
    """The Mult-VAE network; its variables exist as soon as it is constructed.

    Args:
        n_items: I, the number of items (input and output width).
        hidden: H, width of the encoder's and the decoder's hidden layer.
        latent: L, dimension of z.
        dropout: probability of dropping each input non-zero during training.
        activation: activation of the hidden layers (the paper uses tanh).
        seed: seed of the weight initialisers (a different stream per layer).
        dtype: Keras dtype policy, e.g. ``"mixed_bfloat16"``; None uses the global policy.
        xla: build the sparse first layer from ops XLA can compile (for ``jit_compile``).
        noise_std: std of ε in z = mu + ε·exp(logvar/2) while training (training only).
    """

    def __init__(self, n_items: int, hidden: int = 600, latent: int = 200,
                 dropout: float = 0.5, activation: str = "tanh", seed: int = 0,
                 dtype: str | None = None, xla: bool = False, noise_std: float = 1.0,
                 **kwargs) -> None:
        super().__init__(dtype=dtype, **kwargs)
        self.noise_std = noise_std
        self.n_items, self.hidden, self.latent = n_items, hidden, latent
        self.dropout, self.activation = dropout, activation
        # False makes training deterministic (z = mu), with dropout 0: the data-parallel
        # tests compare N ranks against one process step for step.
        self.sample_latent = True
        self.encoder_hidden = SparseInputDense(hidden, activation, seed, xla,
                                               name="encoder_hidden", dtype=dtype)
        self.encoder_out = _dense(2 * latent, None, seed + 1, "encoder_out", dtype)
        self.decoder_hidden = _dense(hidden, activation, seed + 2, "decoder_hidden", dtype)
        self.decoder_out = _dense(n_items, None, seed + 3, "decoder_out", dtype)
        # Build eagerly so weights can be loaded/broadcast before the first batch.
        self.encoder_hidden.build((None, n_items))
        self.encoder_out.build((None, hidden))
        self.decoder_hidden.build((None, latent))
        self.decoder_out.build((None, hidden))
        self.built = True

    def encode(self, x, training: bool = False, seed=None, row_blocks: int = 1):
        """(mu, logvar), each float32 (B, L). ``seed`` (2,) int32 is required when training;
        ``row_blocks``: see :meth:`SparseInputDense.call`."""
        if training and self.dropout > 0:
            x = input_dropout(x, self.dropout, seed)
        h = self.encoder_hidden(x, row_blocks=row_blocks)
        q = tf.cast(self.encoder_out(h), tf.float32)
        return q[:, : self.latent], q[:, self.latent:]

    def decode(self, z):
        """Float32 logits (B, I) from z (B, L)."""
        return tf.cast(self.decoder_out(self.decoder_hidden(z)), tf.float32)

    def forward(self, x, training: bool = False, seed=None, row_blocks: int = 1):
        """(logits float32 (B, I), mu (B, L), logvar (B, L)); z is sampled only when training."""
        mu, logvar = self.encode(x, training, seed, row_blocks)
        z = mu
        if training and self.sample_latent:
            noise_seed = tf.random.experimental.stateless_fold_in(seed, 1)
            eps = tf.random.stateless_normal(tf.shape(mu), noise_seed)
            z = mu + (self.noise_std * eps) * tf.exp(0.5 * logvar)
        return self.decode(z), mu, logvar

    def call(self, x, training: bool = False, row_blocks: int = 1):
        """Evaluation forward: float32 logits (B, I) from an L2-normalised (B, I) input."""
        return self.forward(x, training=False, row_blocks=row_blocks)[0]

    def get_config(self) -> dict:
        return {"n_items": self.n_items, "hidden": self.hidden, "latent": self.latent,
                "dropout": self.dropout, "activation": self.activation}


def input_dropout(x, rate: float, seed):
    """Inverted dropout, stateless (``seed`` (2,) int): each input non-zero of a sparse x
    (B, I) is dropped with probability ``rate`` (the rest scaled by 1/(1 − rate)); a dense x
    gets ``stateless_dropout``.

    Dropped entries leave the sparse tensor rather than stay as explicit zeros: the first
    layer's product and its gradient then touch half the non-zeros at the default rate 0.5,
    with the same result (a zero term adds nothing)."""
    if not isinstance(x, tf.SparseTensor):
        return tf.nn.experimental.stateless_dropout(x, rate, seed)
    keep = 1.0 - rate
    kept = tf.random.stateless_uniform(tf.shape(x.values), seed) < keep
    return tf.SparseTensor(tf.boolean_mask(x.indices, kept),
                           tf.boolean_mask(x.values, kept) / keep, x.dense_shape)


def kl_divergence(mu, logvar):
    """Mean over users of KL(q(z|x) || N(0, I)) = ½ Σ_k (exp(logvar) + mu² − 1 − logvar);
    float32 scalar."""
    return tf.reduce_mean(
        tf.reduce_sum(0.5 * (tf.exp(logvar) + tf.square(mu) - 1.0 - logvar), axis=1))


def multinomial_nll(logits, x: tf.SparseTensor):
    """−mean_u Σ_i x_ui · log_softmax(logits)_ui for a sparse x (B, I) without duplicate
    entries, float32.

    Only the non-zeros are gathered: Σ_i x_ui·(logit_ui − lse_u) = Σ_{i∈x_u} x_ui·logit_ui −
    n_u·lse_u with n_u = Σ_i x_ui.
    """
    return _nll(tf.cast(logits, tf.float32), x.indices, x.values)


@tf.custom_gradient
def _nll(logits, indices, values):
    """:func:`multinomial_nll` on logits (B, I), indices (nnz, 2), values (nnz,), with its
    gradient written out: (n_u·softmax_ui − x_ui) / B. Autodiff of the same forward makes
    ~8 passes over the (B, I) logits (log-sum-exp's, a dense scatter of the gathered entries,
    their sum); this makes 6 (max, exp, sum; then a scaled copy, x written densely, their
    difference), ~15% of a training step at both MovieLens shapes."""
    batch = tf.shape(logits)[0]
    rows = tf.cast(indices[:, 0], tf.int32)
    top = tf.stop_gradient(tf.reduce_max(logits, axis=1))                # (B,)
    exps = tf.exp(logits - top[:, None])                                 # (B, I)
    total = tf.reduce_sum(exps, axis=1)                                  # (B,)
    counts = tf.math.unsorted_segment_sum(values, rows, batch)           # (B,) n_u
    picked = tf.gather_nd(logits, indices) * values                      # (nnz,)
    per_user = (tf.math.unsorted_segment_sum(picked, rows, batch)
                - counts * (top + tf.math.log(total)))
    loss = -tf.reduce_mean(per_user)

    def grad(upstream):
        scale = upstream / tf.cast(batch, tf.float32)
        # x as a dense (B, I) array and one subtraction: 2.6x faster on CPU than
        # tensor_scatter_nd_sub into the scaled softmax, whose per-index updates are serial.
        x = tf.sparse.to_dense(tf.SparseTensor(indices, values * scale,
                                               tf.shape(logits, out_type=tf.int64)),
                               validate_indices=False)
        return exps * (counts * scale / total)[:, None] - x, None, None

    return loss, grad

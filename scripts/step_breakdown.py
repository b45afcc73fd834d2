"""Where a Mult-VAE training step's time goes: the whole step, the forward pass, forward +
backward, Adam alone, the three decoder-output matmuls alone, the sparse first layer with its
kernel gradient, and the NLL with its gradient, each timed as its own ``tf.function`` in one
process (calls interleaved, best of ``--rounds``).

Usage (from a checkout)::

    python scripts/step_breakdown.py --batch 500 --items 20000   # ML-20M shape (synthetic)
    python scripts/step_breakdown.py --batch 500 --data DIR      # a prepared dataset's batches
"""

from __future__ import annotations

import argparse
import time

import tensorflow as tf

from vaecf.backend import cpu_backend
from vaecf.bench.train import synthetic_matrix
from vaecf.data.dataset import Dataset
from vaecf.model.batches import epoch_order, iterate
from vaecf.model.multvae import input_dropout, kl_divergence, multinomial_nll, row_parts
from vaecf.settings import Settings
from vaecf.training.distributed import SingleProcess
from vaecf.training.fused_adam import apply_adam
from vaecf.training.registry import make_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--data", help="a prepared dataset: its training users instead of "
                        "--users synthetic ones over --items items")
    args = parser.parse_args()

    backend = cpu_backend()
    backend.configure_tensorflow()
    if args.data:
        matrix = Dataset.open(args.data).train_matrix()
        args.users, args.items = matrix.shape
    else:
        matrix = synthetic_matrix(args.users, args.items)
    settings = Settings.model_validate({"train": {"epochs": 1, "anneal_steps": 1,
                                                  "backend": "cpu"}})
    trainer = make_trainer(settings, args.items, SingleProcess(), "float32", steps_per_epoch=1)
    model, variables = trainer.model, trainer.model.trainable_variables
    n = max(1, args.users // args.batch)
    batches = list(iterate(backend, backend.csr(matrix), epoch_order(args.users, 0, 0, 0), n))
    seed = tf.constant([1, 2], tf.int64)

    def loss_of(indices, values, targets):
        shape = tf.stack([tf.reduce_max(indices[:, 0]) + 1, args.items])
        logits, mu, logvar = model.forward(tf.SparseTensor(indices, values, shape),
                                           training=True, seed=seed, row_blocks=row_parts())
        return (multinomial_nll(logits, tf.SparseTensor(indices, targets, shape))
                + 0.2 * kl_divergence(mu, logvar))

    forward_fn = tf.function(loss_of, reduce_retracing=True)

    @tf.function(reduce_retracing=True)
    def backward_fn(indices, values, targets):
        with tf.GradientTape() as tape:
            loss = loss_of(indices, values, targets)
        return [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]

    def forward(b):
        return forward_fn(b.indices, b.values, b.targets)

    def forward_backward(b):
        return backward_fn(b.indices, b.values, b.targets)

    first = model.encoder_hidden
    hidden_grad = tf.random.normal((max(b.size for b in batches), settings.model.hidden))

    @tf.function(reduce_retracing=True)
    def first_layer_fn(indices, values):
        shape = tf.stack([tf.reduce_max(indices[:, 0]) + 1, args.items])
        # After the step's dropout, so the layer sees the non-zeros a step multiplies.
        x = input_dropout(tf.SparseTensor(indices, values, shape), model.dropout, seed)
        with tf.GradientTape() as tape:
            h = first(x, row_blocks=row_parts())
            total = tf.reduce_sum(h * hidden_grad[: tf.shape(h)[0]])
        return h, tape.gradient(total, first.kernel)

    logits = tf.random.normal((max(b.size for b in batches), args.items))

    @tf.function(reduce_retracing=True)
    def nll_fn(indices, targets):
        shape = tf.stack([tf.reduce_max(indices[:, 0]) + 1, args.items])
        part = logits[: shape[0]]
        with tf.GradientTape() as tape:
            tape.watch(part)
            loss = multinomial_nll(part, tf.SparseTensor(indices, targets, shape))
        return loss, tape.gradient(loss, part)

    zeros = [tf.zeros_like(v) for v in variables]
    adam = tf.function(lambda: apply_adam(trainer.optimizer, zeros, variables))
    h = tf.random.normal((args.batch, settings.model.hidden))
    w = tf.random.normal((settings.model.hidden, args.items))
    dy = tf.random.normal((args.batch, args.items))
    matmuls = tf.function(lambda: [tf.matmul(h, w), tf.matmul(h, dy, transpose_a=True),
                                   tf.matmul(dy, w, transpose_b=True)])
    parts = {
        "full step (Trainer.step)": lambda b: trainer.step(b, 0.2, 1),
        "forward (incl. NLL)": forward,
        "forward + backward": forward_backward,
        "Adam (fused)": lambda b: adam(),
        "decoder-output matmuls alone": lambda b: matmuls(),
        "sparse first layer + kernel grad": lambda b: first_layer_fn(b.indices, b.values),
        "NLL + its gradient": lambda b: nll_fn(b.indices, b.targets),
    }
    best = dict.fromkeys(parts, float("inf"))
    for r in range(args.rounds + 2):
        for name, part in parts.items():
            started = time.perf_counter()
            out = part(batches[r % n])
            tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
            _ = variables[0][0, 0].numpy()
            if r >= 2:   # the first two rounds trace and warm up
                best[name] = min(best[name], time.perf_counter() - started)
    step = best["full step (Trainer.step)"]
    nnz = sum(int(b.indices.shape[0]) for b in batches) / len(batches)
    print(f"batch {args.batch}, {args.items:,} items, {nnz:,.0f} non-zeros per batch "
          f"(best of {args.rounds} rounds)")
    for name, seconds in best.items():
        print(f"{name:32s} {1000 * seconds:8.1f} ms  {seconds / step:5.0%}")


if __name__ == "__main__":
    main()

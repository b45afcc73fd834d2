"""Where a Mult-VAE training step's time goes: the whole step, the forward pass, forward +
backward, Adam alone and the three decoder-output matmuls alone, each timed as its own
``tf.function`` in one process (calls interleaved, best of ``--rounds``).

Usage (from a checkout)::

    python scripts/step_breakdown.py --batch 500 --items 20000   # ML-20M shape
    python scripts/step_breakdown.py --batch 500 --items 3688    # ML-1M shape
"""

from __future__ import annotations

import argparse
import time

import tensorflow as tf

from vaecf.backend import cpu_backend
from vaecf.bench.train import synthetic_matrix
from vaecf.model.batches import epoch_order, iterate
from vaecf.model.multvae import kl_divergence, multinomial_nll
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
    args = parser.parse_args()

    backend = cpu_backend()
    backend.configure_tensorflow()
    matrix = synthetic_matrix(args.users, args.items)
    settings = Settings.model_validate({"train": {"epochs": 1, "anneal_steps": 1,
                                                  "backend": "cpu"}})
    trainer = make_trainer(settings, args.items, SingleProcess(), "float32", steps_per_epoch=1)
    model, variables = trainer.model, trainer.model.trainable_variables
    n = max(1, args.users // args.batch)
    batches = list(iterate(backend, backend.csr(matrix), epoch_order(args.users, 0, 0, 0), n))
    seed = tf.constant([1, 2], tf.int64)

    def loss_of(indices, values, targets):
        shape = tf.constant([args.batch, args.items], tf.int64)
        logits, mu, logvar = model.forward(tf.SparseTensor(indices, values, shape),
                                           training=True, seed=seed)
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
    print(f"batch {args.batch}, {args.items:,} items (best of {args.rounds} rounds)")
    for name, seconds in best.items():
        print(f"{name:32s} {1000 * seconds:8.1f} ms  {seconds / step:5.0%}")


if __name__ == "__main__":
    main()

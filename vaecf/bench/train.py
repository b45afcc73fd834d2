"""``vaecf bench train``: training throughput against this machine's own matmul ceiling.

For each batch size, the real training step (the model's trainer, fed by the real
input pipeline) runs ``steps`` timed steps after a warm-up; users/s times the FLOPs per user
(:mod:`vaecf.bench.flops`) gives the achieved FLOP/s. The ceiling is a dense matmul of the model's
dominant shape, (batch × H) @ (H × I), in the step's compute dtype (float32, or bfloat16 /
float16 under --amp), measured in the same run, interleaved with the training rounds (the
machine is shared, so each round is timed against a ceiling taken moments apart, and the best
round of each is kept).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse

from vaecf.backend import Backend
from vaecf.bench.flops import matmul_flops, model_train_flops_per_user
from vaecf.model.batches import epoch_order, iterate
from vaecf.settings import Settings
from vaecf.training.distributed import Comm, SingleProcess

ML20M_ITEMS = 20_000
ML20M_ITEMS_PER_USER = 70

log = logging.getLogger("vaecf")


def synthetic_matrix(users: int, items: int = ML20M_ITEMS,
                     per_user: int = ML20M_ITEMS_PER_USER, seed: int = 0):
    """A binary CSR (users, items) shaped like MovieLens-20M: log-normal history lengths,
    Zipf-like item popularity (:func:`vaecf.bench.synthetic.interactions`), ~per_user items each."""
    from vaecf.bench.synthetic import interactions

    rows, cols = interactions(users * per_user, users, items, seed)
    matrix = scipy.sparse.csr_matrix(
        (np.ones(rows.shape[0], np.float32), (rows - 1, cols - 1)), shape=(users, items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def bench(matrix: Any, settings: Settings, batch_sizes: list[int], backend: Backend,
          steps: int = 10, rounds: int = 3, comm: Comm | None = None,
          precisions: list[str] | None = None) -> list[dict[str, Any]]:
    """Time training steps on ``matrix`` (scipy CSR, users × items) for each batch size and
    each precision (``"fp32"``, ``"amp"``: what ``--amp`` means on the backend; default: the
    one ``settings.train.amp`` picks), rounds of the precisions interleaved, each after its own
    ceiling matmul.

    Returns one dict per (batch size, precision): batch_size, precision, users_per_s,
    flops_per_user, gflops, ceiling_gflops, fraction.
    """
    from vaecf.training.registry import kl_weight, make_trainer
    from vaecf.training.trainer import precision_policy

    comm = comm or SingleProcess()
    t = settings.train
    if precisions is None:
        precisions = ["amp" if t.amp else "fp32"]
    policies = list(dict.fromkeys(precision_policy(p == "amp", backend) for p in precisions))
    compute = {"float32": "float32", "mixed_bfloat16": "bfloat16",
               "mixed_float16": "float16"}
    rows = backend.csr(matrix)
    nnz_per_user = matrix.nnz / matrix.shape[0]
    m = settings.model
    per_user = model_train_flops_per_user(settings, matrix.shape[1], nnz_per_user)
    resolved = settings.model_copy(update={"train": t.model_copy(update={"anneal_steps": 1})})
    # One step per "epoch": RecVAE's timed steps then cycle through its phases in the
    # proportion of a real cycle (3 encoder steps : 1 decoder step by default).
    trainers = {policy: make_trainer(resolved, matrix.shape[1], comm, policy, steps_per_epoch=1)
                for policy in policies}
    beta = kl_weight(resolved, 1)   # Mult-VAE: the cap; RecVAE: γ
    results = []
    for batch_size in batch_sizes:
        n_batches = max(1, matrix.shape[0] // batch_size)   # full batches only: a clean rate
        batches = list(iterate(backend, rows, epoch_order(matrix.shape[0], t.seed, comm.rank, 0),
                               n_batches))
        for trainer in trainers.values():
            for s in range(4):                               # trace and warm up every phase
                trainer.step(batches[s % len(batches)], beta, s)
        best_speed = dict.fromkeys(policies, 0.0)
        best_ceiling = dict.fromkeys(policies, 0.0)
        for _ in range(rounds):
            for policy, trainer in trainers.items():
                best_ceiling[policy] = max(best_ceiling[policy], matmul_flops(
                    batch_size, m.hidden, matrix.shape[1], compute[policy]))
                users, started = 0, time.perf_counter()
                for s in range(steps):
                    batch = batches[s % len(batches)]
                    trainer.step(batch, beta, s)
                    users += batch.size
                best_speed[policy] = max(best_speed[policy],
                                         users / (time.perf_counter() - started))
        for policy in policies:
            speed = comm.allreduce_sum(best_speed[policy])
            result = {"batch_size": batch_size, "precision": compute[policy],
                      "users_per_s": speed, "flops_per_user": per_user,
                      "gflops": speed * per_user / 1e9,
                      "ceiling_gflops": best_ceiling[policy] * comm.size / 1e9}
            result["fraction"] = result["gflops"] / result["ceiling_gflops"]
            log.info(f"batch {batch_size}, {result['precision']}: {speed:,.0f} users/s, "
                     f"{result['gflops']:.1f} of {result['ceiling_gflops']:.1f} GFLOP/s "
                     f"({result['fraction']:.0%})")
            results.append(result)
    return results

"""``vaecf bench inference``: serving speed of a trained run, measured against this machine.

Figures (after warm-up, so tracing is not timed):

- throughput: users/s scoring batches of ``batch_size`` users, top-k selection and exclusion of
  the users' own items included (NVIDIA's inference figure), and the FLOP/s that implies as a
  fraction of the machine's ceiling, measured as in ``bench train``
  (:func:`vaecf.bench.flops.matmul_flops`: the decoder's (rows × H) @ (H × I) float32 matmul,
  timed just before each round; best round and best ceiling kept). FLOPs counted are the
  forward's matmuls (:mod:`vaecf.bench.flops` counts the same terms for training): 2·nnz·H for the
  sparse first layer, 2·B·(H·2L + L·H + H·I) for the dense layers.
- single-user latency p50/p90/p99 over ``single_calls`` calls of :func:`vaecf.serving.recommender.
  score_request` with one user, the exact call ``vaecf recommend --user-items`` makes (scoring,
  exclusion, top-k, mapping back to original ids).
- the memory floor of one single-user call: a batch of one reads every weight once (of the
  first layer only its items' rows), so it cannot beat (bytes read) / (memory bandwidth); the
  bandwidth is measured here as a NumPy reduction over a buffer far larger than the caches.

Users come from the run's dataset (training rows, repeated up to the batch size) when that
directory still exists, else are drawn at random with 50 items each. ``--synthetic`` benchmarks
a 20,000-item model trained for one epoch on :mod:`vaecf.bench.synthetic` interactions (built once,
then cached in the work directory).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from vaecf.bench.flops import forward_flops_per_user, matmul_flops
from vaecf.errors import VaecfError
from vaecf.serving.items import ItemMap, Request
from vaecf.serving.recommender import Recommender, score_request

SINGLE_K = 10  # what `vaecf recommend` returns by default
# Rows of the ceiling matmul: enough for full GEMM speed, small enough to time quickly.
CEILING_ROWS = 4096

log = logging.getLogger("vaecf")


def synthetic_run(workdir: Path, n_items: int = 20_000) -> Path:
    """A run of the default architecture on ~``n_items`` items (those the split keeps), trained
    one epoch on 1M synthetic interactions of 10,000 users; reused when already built."""
    from vaecf.backend import cpu_backend
    from vaecf.bench.synthetic import write_ratings_csv
    from vaecf.data.prepare import prepare
    from vaecf.model.rundir import RunDir
    from vaecf.settings import PrepareSettings, Settings
    from vaecf.training.loop import train

    run = workdir / f"inference-run-{n_items}"
    try:
        if RunDir.open(run).best is not None:
            return run
    except VaecfError:
        pass
    workdir.mkdir(parents=True, exist_ok=True)
    source, data = workdir / f"inference-{n_items}.csv", workdir / f"inference-data-{n_items}"
    log.info(f"building {run}: 1M synthetic interactions, {n_items:,} items, 1 training epoch...")
    write_ratings_csv(source, 1_000_000, 10_000, n_items)
    prepare([str(source)], data, PrepareSettings(), cpu_backend(), force=True, quiet=True)
    settings = Settings.model_validate({"train": {"epochs": 1, "backend": "cpu"}})
    train(settings, data, run, cpu_backend(), force=True, quiet=True)
    return run


def _users(run: Any, n: int, seed: int = 0) -> scipy.sparse.csr_matrix:
    """n users' known items, binary CSR (n, n_items): the dataset's training rows if it is still
    where training read it, repeated to n rows; else 50 random items per user."""
    from vaecf.data.dataset import Dataset

    try:
        rows = Dataset.open(run.dataset_path).train_matrix()
    except VaecfError:
        rng = np.random.default_rng(seed)
        cols = np.sort(np.stack([rng.choice(run.n_items, 50, replace=False) for _ in range(256)]))
        rows = scipy.sparse.csr_matrix(
            (np.ones(cols.size, np.float32), cols.ravel(), np.arange(0, cols.size + 1, 50)),
            shape=(256, run.n_items))
    reps = -(-n // rows.shape[0])
    return scipy.sparse.vstack([rows] * reps, format="csr")[:n]


def memory_bandwidth(n_bytes: int = 1 << 28, repeats: int = 5) -> float:
    """Best bytes/s of a NumPy float32 sum over ``n_bytes`` (far beyond the caches)."""
    buffer = np.ones(n_bytes // 4, np.float32)
    buffer.sum()
    return n_bytes / min(_timed(buffer.sum) for _ in range(repeats))


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def run(run_path: Any, batch_size: int = 24576, top_k: int = 100, single_calls: int = 200,
        rounds: int = 3) -> dict[str, Any]:
    """Measure a run's serving speed; returns the figures (see the module docstring).

    Raises:
        VaecfError: not a run directory, no weights, or a bad size.
    """
    from vaecf.model.rundir import RunDir

    if batch_size < 1 or single_calls < 200:
        raise VaecfError("--batch-size must be >= 1 and --single-calls >= 200")
    run = RunDir.open(run_path)
    model = run.load_model()
    recommender = Recommender(model, ItemMap(run.item_ids))
    users = _users(run, max(batch_size, single_calls))
    batch = users[:batch_size]
    log.info(f"model: {run.n_items:,} items, hidden {model.hidden}, latent {model.latent}; "
        f"batch of {batch_size:,} users with {batch.nnz / batch_size:.1f} items each on average")

    # Warm-up: trace the one graph (any batch size) and touch the weights.
    recommender.top_k(batch[: min(batch_size, 256)], top_k)
    for i in range(20):
        score_request(recommender, Request(None, users[i: i + 1]), SINGLE_K)

    log.info(f"timing {rounds} batches of {batch_size:,} users (top {top_k}), each after a "
        "ceiling matmul...")
    seconds, ceiling = float("inf"), 0.0
    for _ in range(rounds):
        # As in `bench train`: the decoder's dominant (rows × H) @ (H × I) float32 matmul, timed
        # moments before each round because the machine is shared; best of each is kept.
        ceiling = max(ceiling, matmul_flops(min(batch_size, CEILING_ROWS), model.hidden,
                                            model.n_items, "float32", repeats=2))
        seconds = min(seconds, _timed(lambda: recommender.top_k(batch, top_k)))

    log.info(f"timing {single_calls} single-user calls...")
    latencies = np.array([
        _timed(lambda i=i: score_request(recommender, Request(None, users[i: i + 1]), SINGLE_K))
        for i in range(single_calls)])
    single_nnz = float(np.mean(np.diff(users.indptr[: single_calls + 1])))

    log.info("measuring the memory bandwidth...")
    bandwidth = memory_bandwidth()
    # One user reads every weight except the first layer's, of which only its items' rows.
    first = model.encoder_hidden.kernel
    weight_bytes = 4 * (sum(int(np.prod(w.shape)) for w in model.weights)
                        - int(np.prod(first.shape)) + single_nnz * first.shape[1])
    achieved = batch_size * forward_flops_per_user(
        model.n_items, model.hidden, model.latent, batch.nnz / batch_size) / seconds
    return {
        "items": run.n_items, "hidden": model.hidden, "latent": model.latent,
        "batch_size": batch_size, "top_k": top_k, "rounds": rounds,
        "batch_seconds": seconds,
        "users_per_s": batch_size / seconds,
        "gflops": achieved / 1e9,
        "ceiling_gflops": ceiling / 1e9,
        "fraction_of_ceiling": achieved / ceiling,
        "single_calls": single_calls, "single_top_k": SINGLE_K,
        "single_items_mean": single_nnz,
        "latency_ms": {f"p{q}": float(np.percentile(latencies, q) * 1e3) for q in (50, 90, 99)},
        "memory_gb_per_s": bandwidth / 1e9,
        "weight_mb": weight_bytes / 1e6,
        "latency_floor_ms": weight_bytes / bandwidth * 1e3,
    }

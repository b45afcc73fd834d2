"""``vaecf bench inference``: serving speed of a trained run, measured against this machine.

Figures (after warm-up, so tracing is not timed), for the requested ``precision`` and, when that
is not fp32, for fp32 too, measured interleaved in the same run:

- throughput: users/s scoring batches of ``batch_size`` users, top-k selection and exclusion of
  the users' own items included (NVIDIA's inference figure), and the FLOP/s that implies as a
  fraction of the machine's ceiling, measured as in ``bench train``
  (:func:`vaecf.bench.flops.matmul_flops`: the decoder's (rows × H) @ (H × I) float32 matmul,
  timed just before each round; best round and best ceiling kept). FLOPs counted are the
  forward's matmuls (:mod:`vaecf.bench.flops` counts the same terms for training): 2·nnz·H for the
  sparse first layer, 2·B·(H·2L + L·H + H·I) for the dense layers.
- single-user latency p50/p90/p99 over ``single_calls`` calls of :func:`vaecf.serving.recommender.
  score_request` with one user, the exact call ``vaecf recommend --user-items`` makes (scoring,
  exclusion, top-k, mapping back to original ids), each call followed by a *bare forward* of the
  same user: the model's matmuls alone (a concrete function fed pre-built tensors, returning
  the logits), so their p50 ratio is the per-call overhead, whatever else runs on the machine.
- the memory floor of one single-user call: a batch of one reads every weight once (of the
  first layer only its items' rows), so it cannot beat (bytes read) / (memory bandwidth). The
  bandwidth is the best rate measured in the run: two multithreaded streams over buffers far
  larger than the caches (TensorFlow's float32 reduction of 256 MB and a (1 × 600) @ (600 ×
  100,000) float32 product, what a one-user decoder does at a size no cache holds) and the
  fastest bare forward itself (its bytes over its best time). A large L3 keeps part of a 48 MB
  decoder between calls, so the DRAM streams alone would put the "floor" above a measured bare
  forward; with the bare forward as a witness the floor never exceeds it.
- with ``precision`` other than fp32: agreement with fp32 on the run's test users (mean overlap
  of the top-10 lists, NDCG@100 of each and the difference), when the run's dataset is still
  where training read it.

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

from vaecf.atomic import make_directory
from vaecf.bench.flops import matmul_flops, model_forward_flops_per_user
from vaecf.errors import VaecfError
from vaecf.serving.items import ItemMap, Request
from vaecf.serving.recommender import BATCH_USERS, Recommender, op_call, score_request

SINGLE_K = 10  # what `vaecf recommend` returns by default
# Rows of the ceiling matmul: enough for full GEMM speed, small enough to time quickly.
CEILING_ROWS = 4096

log = logging.getLogger("vaecf")


def synthetic_paths(workdir: Path, n_items: int = 20_000) -> list[Path]:
    """What :func:`synthetic_run` builds in ``workdir`` and then reads: the run, its CSV and its
    dataset (no output of the benchmark may be one of them)."""
    return [workdir / f"inference-run-{n_items}", workdir / f"inference-{n_items}.csv",
            workdir / f"inference-data-{n_items}"]


def synthetic_run(workdir: Path, n_items: int = 20_000) -> Path:
    """A run of the default architecture on ~``n_items`` items (those the split keeps), trained
    one epoch on 1M synthetic interactions of 10,000 users; reused when already built."""
    from vaecf.backend import cpu_backend
    from vaecf.bench.synthetic import write_ratings_csv
    from vaecf.data.prepare import prepare
    from vaecf.model.rundir import RunDir
    from vaecf.settings import PrepareSettings, Settings
    from vaecf.training.loop import train

    run, source, data = synthetic_paths(workdir, n_items)
    try:
        if RunDir.open(run).best is not None:
            return run
    except VaecfError:
        pass
    make_directory(workdir, "--workdir")
    log.info(f"building {run}: 1M synthetic interactions, {n_items:,} items, 1 training epoch...")
    write_ratings_csv(source, 1_000_000, 10_000, n_items)
    prepare([str(source)], data, PrepareSettings(), cpu_backend(), force=True, quiet=True)
    settings = Settings.model_validate({"train": {"epochs": 1, "backend": "cpu"}})
    train(settings, data, run, cpu_backend(), force=True, quiet=True)
    return run


def sample_users(run: Any, n: int, seed: int = 0) -> scipy.sparse.csr_matrix:
    """n users' known items, binary CSR (n, n_items): the dataset's training rows if it is still
    where training read it, repeated to n rows; else 256 users of 50 random items (fewer for a
    model of fewer items), repeated."""
    from vaecf.data.dataset import Dataset

    try:
        rows = Dataset.open(run.dataset_path).train_matrix()
    except VaecfError:
        rng = np.random.default_rng(seed)
        per_user = min(50, run.n_items)
        cols = np.sort(np.stack([rng.choice(run.n_items, per_user, replace=False)
                                 for _ in range(256)]))
        rows = scipy.sparse.csr_matrix(
            (np.ones(cols.size, np.float32), cols.ravel(),
             np.arange(0, cols.size + 1, per_user)), shape=(256, run.n_items))
    reps = -(-n // rows.shape[0])
    return scipy.sparse.vstack([rows] * reps, format="csr")[:n]


def memory_bandwidth(repeats: int = 5) -> float:
    """Best bytes/s of two multithreaded float32 streams far beyond the caches: a TensorFlow
    reduction over 256 MB and a (1 × 600) @ (600 × 100,000) matvec (240 MB of weights)."""
    import tensorflow as tf

    big = tf.ones([1 << 26], tf.float32)
    weights = tf.ones([600, 100_000], tf.float32)
    vector = tf.ones([1, 600], tf.float32)
    reduce = tf.function(lambda: tf.reduce_sum(big))
    matvec = tf.function(lambda: tf.reduce_sum(tf.matmul(vector, weights)))
    best = 0.0
    for stream, n_bytes in ((reduce, 4 << 26), (matvec, 4 * 600 * 100_000)):
        stream()
        best = max(best, n_bytes / min(_timed(lambda s=stream: s().numpy())
                                       for _ in range(repeats)))
    return best


def latency_percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p90 and p99 of latencies given in seconds, in milliseconds."""
    values = np.asarray(seconds) * 1e3
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def one_user_seconds(recommender: Recommender, seen: Any, k: int = SINGLE_K) -> float:
    """Seconds of one single-user call as ``vaecf recommend --user-items`` makes it
    (:func:`score_request` on ``seen``, a one-row CSR built beforehand): the figure both
    ``bench inference`` and ``bench serve`` report as the in-process one-user latency."""
    return _timed(lambda: score_request(recommender, Request(None, seen), k))


def bare_forward(model: Any) -> Callable[..., list[Any]]:
    """The model's forward alone for one user, as a concrete function of pre-built tensors
    (cols int64 (n,), values float32 (n,)) returning the logits (1, I): the matmuls a one-user
    call cannot avoid, nothing else, called the way the Recommender calls its own
    (:func:`vaecf.serving.recommender.op_call`)."""
    import tensorflow as tf

    def forward(cols, values):
        indices = tf.stack([tf.zeros_like(cols), cols], axis=1)
        x = tf.SparseTensor(indices, values, tf.constant([1, model.n_items], tf.int64))
        return model(x, training=False)

    return op_call(tf.function(forward).get_concrete_function(
        tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.float32)))


def agreement(reference: Recommender, other: Recommender, foldin: Any, targets: Any,
              k: int = SINGLE_K, cutoff: int = 100) -> dict[str, float]:
    """How ``other``'s top lists agree with ``reference``'s on held-out users: mean overlap of
    the top-``k`` lists (share of common items), NDCG@``cutoff`` of each and their difference
    (other - reference), items excluded as in recommend."""
    from vaecf.evaluation.metrics import per_user

    cutoff = min(cutoff, reference.item_map.n_items)
    ref, _ = reference.top_k(foldin, cutoff)
    low, _ = other.top_k(foldin, cutoff)
    overlap = np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ref, low, strict=True)])
    ndcg = [float(np.mean(per_user(np, np.maximum(r, 0), targets, [cutoff])[f"ndcg@{cutoff}"]))
            for r in (ref, low)]
    return {"users": int(foldin.shape[0]), "top_k_overlap": float(overlap),
            "overlap_k": k, "ndcg_cutoff": cutoff, "ndcg_reference": ndcg[0],
            "ndcg": ndcg[1], "ndcg_difference": ndcg[1] - ndcg[0]}


# A lower precision that loses more NDCG@100 than this against fp32 is reported with a warning.
NDCG_TOLERANCE = 0.002


def run(run_path: Any, batch_size: int = 24576, top_k: int = 100, single_calls: int = 200,
        rounds: int = 3, precision: str = "fp32") -> dict[str, Any]:
    """Measure a run's serving speed; returns the figures (see the module docstring): those of
    ``precision`` at the top level, fp32's under ``"fp32"`` when ``precision`` is another.

    Raises:
        VaecfError: not a run directory, no weights, or a bad size.
    """
    import tensorflow as tf

    from vaecf.data.dataset import Dataset
    from vaecf.model.rundir import RunDir
    from vaecf.serving.precision import PRECISIONS

    if batch_size < 1 or single_calls < 200:
        raise VaecfError("--batch-size must be >= 1 and --single-calls >= 200")
    if precision not in PRECISIONS:
        raise VaecfError(f"--precision: unknown precision {precision!r} "
                         f"(choose {', '.join(PRECISIONS)})")
    run = RunDir.open(run_path)
    model = run.load_model()
    precisions = ["fp32"] if precision == "fp32" else [precision, "fp32"]
    recommenders = {p: Recommender(model, ItemMap(run.item_ids), p) for p in precisions}
    bare = {p: bare_forward(r.model) for p, r in recommenders.items()}
    users = sample_users(run, max(batch_size, single_calls))
    batch = users[:batch_size]
    log.info(f"model: {run.n_items:,} items, hidden {model.hidden}, latent {model.latent}; "
        f"batch of {batch_size:,} users with {batch.nnz / batch_size:.1f} items each on average")

    singles = [users[i: i + 1] for i in range(single_calls)]
    inputs = [(tf.constant(u.indices, tf.int64),
               tf.fill([u.nnz], tf.constant(1.0 / np.sqrt(max(u.nnz, 1)), tf.float32)))
              for u in singles]
    # Warm-up: touch both graphs and the weights.
    for recommender in recommenders.values():
        recommender.top_k(batch[: min(batch_size, 256)], top_k)
        for i in range(20):
            one_user_seconds(recommender, singles[i])
    for forward in bare.values():
        forward(*inputs[0])

    log.info(f"timing {rounds} rounds of {batch_size:,} users (top {top_k}, in batches of "
             f"{min(batch_size, BATCH_USERS):,}), each after a ceiling matmul...")
    compute = {"fp32": "float32", "bf16": "bfloat16"}
    seconds = dict.fromkeys(precisions, float("inf"))
    ceiling = dict.fromkeys(precisions, 0.0)
    for _ in range(rounds):
        for p, recommender in recommenders.items():
            # As in `bench train`: the decoder's dominant (rows × H) @ (H × I) matmul in the
            # compute dtype, timed moments before each round (the machine may be shared).
            ceiling[p] = max(ceiling[p], matmul_flops(min(batch_size, BATCH_USERS), model.hidden,
                                                      model.n_items, compute[p], repeats=2))
            seconds[p] = min(seconds[p], _timed(lambda r=recommender: r.top_k(batch, top_k)))

    log.info(f"timing {single_calls} single-user calls, each beside a bare forward...")
    latencies = {p: [] for p in precisions}
    forwards = {p: [] for p in precisions}
    for i in range(single_calls):
        for p, recommender in recommenders.items():
            latencies[p].append(one_user_seconds(recommender, singles[i]))
            forwards[p].append(_timed(lambda f=bare[p], x=inputs[i]: f(*x)[0].numpy()))
    single_nnz = float(np.mean([u.nnz for u in singles]))

    def bytes_read(p: str) -> float:
        """What one user's call reads: every weight except the first layer's, of which only
        its items' rows. RecVAE's serving_weights leave out its prior's frozen copy, which
        serving never runs."""
        served = recommenders[p].model
        first = served.encoder_hidden.kernel
        width = tf.as_dtype(first.dtype).size
        return (sum(int(np.prod(w.shape)) * tf.as_dtype(w.dtype).size
                    for w in getattr(served, "serving_weights", served.weights))
                - int(np.prod(first.shape)) * width + single_nnz * first.shape[1] * width)

    log.info("measuring the memory bandwidth...")
    # The bare forward demonstrably read its bytes at bytes / its best time: a bandwidth too.
    bandwidth = max(memory_bandwidth(), *(bytes_read(p) / min(forwards[p]) for p in precisions))
    per_user_flops = model_forward_flops_per_user(model, batch.nnz / batch_size)

    def figures(p: str) -> dict[str, Any]:
        weight_bytes = bytes_read(p)
        achieved = batch_size * per_user_flops / seconds[p]
        lat = latency_percentiles(latencies[p])
        bare_p50 = float(np.percentile(forwards[p], 50) * 1e3)
        return {
            "precision": p, "batch_seconds": seconds[p], "users_per_s": batch_size / seconds[p],
            "gflops": achieved / 1e9, "ceiling_gflops": ceiling[p] / 1e9,
            "fraction_of_ceiling": achieved / ceiling[p],
            "latency_ms": lat, "bare_forward_p50_ms": bare_p50,
            "p50_over_bare_forward": lat["p50"] / bare_p50,
            "weight_mb": weight_bytes / 1e6,
            "latency_floor_ms": weight_bytes / bandwidth * 1e3,
        }

    result = {
        "items": run.n_items, "hidden": model.hidden, "latent": model.latent,
        "batch_size": batch_size, "scoring_batch": min(batch_size, BATCH_USERS),
        "top_k": top_k, "rounds": rounds,
        "single_calls": single_calls, "single_top_k": SINGLE_K,
        "single_items_mean": single_nnz, "memory_gb_per_s": bandwidth / 1e9,
        **figures(precision),
    }
    if precision != "fp32":
        reference = figures("fp32")
        result["fp32"] = reference
        result["p50_over_fp32"] = result["latency_ms"]["p50"] / reference["latency_ms"]["p50"]
        result["throughput_over_fp32"] = result["users_per_s"] / reference["users_per_s"]
        try:
            foldin, targets = Dataset.open(run.dataset_path).heldout("test")
        except VaecfError as error:
            log.warning(f"agreement with fp32 not measured: {error}")
        else:
            result["agreement"] = agree = agreement(recommenders["fp32"],
                                                    recommenders[precision], foldin, targets)
            if agree["ndcg_difference"] < -NDCG_TOLERANCE:
                log.warning(f"--precision {precision} loses {-agree['ndcg_difference']:.4f} "
                            f"NDCG@{agree['ndcg_cutoff']} against fp32 on {agree['users']:,} "
                            f"test users (more than {NDCG_TOLERANCE})")
    return result

"""Compare the CuPy path of vaecf's backend-generic code with the NumPy path, on a real GPU.

Runs where CuPy and a CUDA device exist but TensorFlow and cuDF need not: it imports only
vaecf.data.split, vaecf.model.batches (its array part), vaecf.evaluation.metrics and, when
pydantic-settings is there, vaecf.data.prepare (pyarrow reader + split on either backend).
Every check must give byte-identical integer arrays (split, CSR, top-k) and float results equal
to a few ulps (normalisation, metrics). Where cuDF and dask-cuda are installed, it also runs
``prepare --dask`` on a LocalCUDACluster (cuDF partitions, CuPy arrays on the workers) and
compares its dataset, file by file, with one CPU process's; without them that check is
SKIP. Prints a pass/fail table and a few CuPy-vs-NumPy timings; exits 1 on any failure.

    python scripts/gpu_check.py [--users 200000 --items 20000 --pairs 5000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vaecf.backend import cpu_backend, gpu_backend, gpu_status  # noqa: E402
from vaecf.data import split  # noqa: E402  (after the path fix)
from vaecf.evaluation import metrics  # noqa: E402
from vaecf.model import batches  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS: list[tuple[str, str, str]] = []


class Skip(Exception):
    """A check whose libraries are not installed here: reported as SKIP, not as a failure."""


def check(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    """Register a check: it returns a detail string on success and raises on failure."""

    def wrap(fn: Callable[[], str]) -> Callable[[], str]:
        CHECKS.append((name, fn))
        return fn

    return wrap


CHECKS: list[tuple[str, Callable[[], str]]] = []


def same(a, b, what: str) -> None:
    """Exact equality (dtype, shape, bytes) of a CuPy and a NumPy array."""
    a = a.get() if hasattr(a, "get") else np.asarray(a)
    b = np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
        raise AssertionError(f"{what}: cupy {a.dtype}{a.shape} != numpy {b.dtype}{b.shape}")


def close(a, b, what: str, rtol: float) -> float:
    a = a.get() if hasattr(a, "get") else np.asarray(a)
    err = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) if b.size else 0.0
    if a.shape != b.shape or err > rtol:
        raise AssertionError(f"{what}: max rel err {err:.2e} > {rtol:.0e}")
    return err


def synthetic_codes(n_users: int, n_items: int, n_pairs: int, seed: int = 0):
    """Power-law-ish (user, item) int64 codes with duplicates, like real interaction logs."""
    rng = np.random.default_rng(seed)
    users = (rng.pareto(1.2, n_pairs) * n_users / 20).astype(np.int64) % n_users
    items = (rng.pareto(0.9, n_pairs) * n_items / 50).astype(np.int64) % n_items
    return users, items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=5_000_000)
    args = parser.parse_args()
    ok, why = gpu_status()
    if not ok:
        print(f"gpu_check: no usable GPU ({why})")
        return 2
    import cupy

    cpu, gpu = cpu_backend(), gpu_backend()
    np_u, np_i = synthetic_codes(args.users, args.items, args.pairs)
    cp_u, cp_i = cupy.asarray(np_u), cupy.asarray(np_i)
    state: dict = {}

    @check("hash64 (4 seeds incl. 2**40)")
    def _() -> str:
        for seed in (0, 1, 7, 2**40):
            same(split.hash64(cupy, seed, 2, cp_u, cp_i), split.hash64(np, seed, 2, np_u, np_i),
                 f"seed {seed}")
        return f"{args.pairs:,} keys"

    @check("dedupe / count_filter / compact")
    def _() -> str:
        for xp, u, i in ((np, np_u, np_i), (cupy, cp_u, cp_i)):
            du, di = split.dedupe(xp, u, i, args.items)
            keep = split.count_filter(xp, du, di, args.users, args.items, 5, 2)
            cu, used = split.compact(xp, du[keep], args.users)
            state[xp.__name__] = (du, di, keep, cu, used, di[keep])
        for a, b, what in zip(state["cupy"], state["numpy"],
                              ("users", "items", "keep", "compact", "used", "kept items"),
                              strict=True):
            same(a, b, what)
        return f"{int(state['numpy'][2].sum()):,} pairs kept"

    @check("assign_users / target_mask")
    def _() -> str:
        out = {}
        for xp in (np, cupy):
            _, _, _, cu, used, _ = state[xp.__name__]
            n = int(used.sum())
            per_user = xp.bincount(cu, minlength=n)
            labels = split.assign_users(xp, per_user, 3, n // 10, n // 10)
            held = labels[cu] != split.TRAIN
            mask = split.target_mask(xp, cu[held], state[xp.__name__][5][held], n, 3, 0.2)
            out[xp.__name__] = (labels, mask)
        same(out["cupy"][0], out["numpy"][0], "labels")
        same(out["cupy"][1], out["numpy"][1], "target mask")
        return f"{int(out['numpy'][1].sum()):,} targets"

    @check("bincount of an empty array, minlength 5")
    def _() -> str:
        same(cupy.bincount(cupy.zeros(0, cupy.int64), minlength=5),
             np.bincount(np.zeros(0, np.int64), minlength=5), "bincount")
        return "zeros(5)"

    @check("prepare.split_interactions (all CSR arrays)")
    def _() -> str:
        import pyarrow as pa

        from vaecf.data.prepare import split_interactions
        from vaecf.data.readers import Encoded
        from vaecf.settings import PrepareSettings

        enc = Encoded(np_u, np_i, pa.array(np.arange(args.users)), pa.array(np.arange(args.items)),
                      args.pairs)
        cfg = PrepareSettings(seed=11, min_item_interactions=2)
        timings = {}
        splits = {}
        for backend in (cpu, gpu):
            split_interactions(backend, enc, cfg)  # warm-up (CuPy kernel compilation)
            start = time.perf_counter()
            splits[backend.name] = split_interactions(backend, enc, cfg)
            cupy.cuda.Device().synchronize()
            timings[backend.name] = time.perf_counter() - start
        g, c = splits["gpu"], splits["cpu"]
        same(g.train.indptr, c.train.indptr, "train indptr")
        same(g.train.indices, c.train.indices, "train indices")
        for name in c.heldout:
            for k in (0, 1):
                same(g.heldout[name][k].indptr, c.heldout[name][k].indptr, f"{name} indptr")
                same(g.heldout[name][k].indices, c.heldout[name][k].indices, f"{name} indices")
        for name in c.user_rows:
            same(g.user_rows[name], c.user_rows[name], f"{name} user rows")
        same(g.item_codes, c.item_codes, "item codes")
        if g.stats != c.stats:
            raise AssertionError(f"stats differ: {g.stats} != {c.stats}")
        state["timing split"] = timings
        nnz = int(c.train.indices.shape[0])
        return f"{c.train.shape[0]:,}x{c.train.shape[1]:,} train, nnz {nnz:,}"

    @check("prepare movielens-small: dataset files byte-identical")
    def _() -> str:
        from vaecf.data.prepare import EXAMPLES, prepare
        from vaecf.settings import PrepareSettings

        path, flags = EXAMPLES["movielens-small"]
        digests = {}
        with tempfile.TemporaryDirectory() as tmp:
            for backend in (cpu, gpu):
                for seed in (0, 5):
                    cfg = PrepareSettings(**flags, seed=seed, shards=3)
                    out = Path(tmp) / f"{backend.name}-{seed}"
                    prepare([str(path)], out, cfg, backend, quiet=True)
                    digests[backend.name, seed] = {p.name: p.read_bytes()
                                                   for p in sorted(out.iterdir())}
            for seed in (0, 5):
                if digests["gpu", seed] != digests["cpu", seed]:
                    differ = [n for n in digests["cpu", seed]
                              if digests["cpu", seed][n] != digests["gpu", seed].get(n)]
                    raise AssertionError(f"seed {seed}: files differ: {differ}")
            # The CPU dataset's matrices feed the batching and metric checks below.
            from vaecf.data.dataset import Dataset

            ds = Dataset.open(Path(tmp) / "cpu-0")
            state["train"] = ds.train_matrix()
            state["heldout"] = ds.heldout("test")
        return f"{len(digests['cpu', 0])} files x 2 seeds, shards=3"

    @check("entry_rows vs numpy.repeat reference")
    def _() -> str:
        train = state["train"]
        ref = np.repeat(np.arange(train.shape[0], dtype=np.int64), np.diff(train.indptr))
        same(batches.entry_rows(cupy, cupy.asarray(train.indptr)), ref, "rows")
        same(batches.entry_rows(np, train.indptr), ref, "rows (numpy)")
        return f"nnz {train.nnz:,}"

    @check("make_batch: CuPy CSR slice + L2 norm")
    def _() -> str:
        train = state["train"]
        host, dev = cpu.csr(train), gpu.csr(train)
        order = batches.epoch_order(train.shape[0], 0, 0, 0)
        worst = 0.0
        for lo in range(0, len(order), 128):
            rows = order[lo: lo + 128]
            a = batches.make_batch(gpu, dev, cupy.asarray(rows))
            b = batches.make_batch(cpu, host, rows)
            same(a.indices, b.indices, "indices")
            same(a.targets, b.targets, "targets")
            worst = max(worst, close(a.values, b.values, "values", 1e-6))
            if a.size != b.size:
                raise AssertionError("size")
        ref = train[order[:128]]
        ref = ref.multiply(1 / np.sqrt(ref.sum(axis=1))).tocoo()
        b = batches.make_batch(cpu, host, order[:128])
        close(b.values, np.asarray(ref.data, np.float32), "numpy vs scipy reference", 1e-6)
        return f"{len(order):,} users, max rel err {worst:.1e}"

    @check("metrics: exclude + top_k + NDCG/Recall")
    def _() -> str:
        foldin, target = state["heldout"]
        rng = np.random.default_rng(1)
        scores = rng.standard_normal((foldin.shape[0], foldin.shape[1])).astype(np.float32)
        out = {}
        for xp, sparse in ((np, scipy.sparse), (cupy, gpu.xsparse)):
            s = metrics.exclude(xp, xp.asarray(scores.copy()), sparse.csr_matrix(foldin))
            ranked = metrics.top_k(xp, s, 100)
            out[xp.__name__] = (ranked, metrics.per_user(xp, ranked, sparse.csr_matrix(target),
                                                         [20, 50, 100]))
        same(out["cupy"][0], out["numpy"][0], "top-100")
        worst = 0.0
        for key, value in out["numpy"][1].items():
            worst = max(worst, close(out["cupy"][1][key], value, key, 1e-12))
        # Independent reference for NDCG@100 of user 0: straight from the definition.
        r, t = out["numpy"][0][0], set(target[0].indices)
        dcg = sum(1 / np.log2(j + 2) for j, item in enumerate(r) if item in t)
        idcg = sum(1 / np.log2(j + 2) for j in range(min(100, len(t))))
        close(np.array([out["numpy"][1]["ndcg@100"][0]]), np.array([dcg / idcg]), "ndcg ref", 1e-12)
        return f"{foldin.shape[0]} users, max rel err {worst:.1e}"

    @check("popularity_scores")
    def _() -> str:
        train = state["train"]
        same(metrics.popularity_scores(cupy, gpu.xsparse.csr_matrix(train)),
             metrics.popularity_scores(np, train), "popularity")
        return f"{train.shape[1]:,} items"

    @check("DLPack capsule CuPy <-> torch (TF stand-in)")
    def _() -> str:
        import torch.utils.dlpack

        x = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)
        t = torch.utils.dlpack.from_dlpack(x.__dlpack__())
        if t.data_ptr() != x.data.ptr:
            raise AssertionError("__dlpack__ capsule copied")
        legacy = hasattr(x, "toDlpack")
        if legacy and torch.utils.dlpack.from_dlpack(x.toDlpack()).data_ptr() != x.data.ptr:
            raise AssertionError("toDlpack capsule copied")
        back = cupy.from_dlpack(torch.utils.dlpack.to_dlpack(t))  # TF -> CuPy direction
        same(back, x.get(), "round trip")
        return f"zero-copy; ndarray.toDlpack {'present' if legacy else 'ABSENT'}"

    @check("prepare --dask on LocalCUDACluster (cuDF partitions) == one CPU process")
    def _() -> str:
        try:
            import cudf  # noqa: F401
            import dask_cuda  # noqa: F401
        except ImportError as error:
            raise Skip(f"needs cuDF and dask-cuda ({error})") from None
        from vaecf.bench.synthetic import write_ratings_csv
        from vaecf.data.dask_cluster import DaskOptions
        from vaecf.data.prepare import prepare
        from vaecf.settings import PrepareSettings

        cfg = PrepareSettings(rating_col="rating", min_rating=3.5, shards=3, backend="gpu")
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "ratings.csv"
            write_ratings_csv(source, 2_000_000, 14_000, 8_000)
            prepare([str(source)], Path(tmp) / "cpu", cfg, cpu, quiet=True)
            prepare([str(source)], Path(tmp) / "gpu", cfg, gpu, quiet=True,
                    dask=DaskOptions(blocksize=4_000_000))
            names = sorted(p.name for p in (Path(tmp) / "cpu").iterdir())
            for name in names:
                if (Path(tmp) / "cpu" / name).read_bytes() != \
                        (Path(tmp) / "gpu" / name).read_bytes():
                    raise AssertionError(f"{name} differs")
        return f"{len(names)} files byte-identical, 2M rows in 12 blocks"

    for name, fn in CHECKS:
        try:
            RESULTS.append((name, "PASS", fn()))
        except Skip as why:
            RESULTS.append((name, "SKIP", str(why)))
        except Exception as error:  # the table reports every failure, then exit 1
            traceback.print_exc()
            RESULTS.append((name, "FAIL", f"{type(error).__name__}: {error}"[:200]))

    print(f"\nvaecf gpu_check  cupy {cupy.__version__}  numpy {np.__version__}  "
          f"device {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    width = max(len(name) for name, _, _ in RESULTS)
    for name, verdict, detail in RESULTS:
        print(f"  {name:<{width}}  {verdict}  {detail}")
    timing = state.get("timing split")
    if timing:
        print(f"\nsplit_interactions on {args.pairs:,} synthetic pairs: numpy "
              f"{timing['cpu'] * 1e3:.0f} ms, cupy {timing['gpu'] * 1e3:.0f} ms "
              f"({timing['cpu'] / timing['gpu']:.1f}x)")
    failed = sum(verdict == "FAIL" for _, verdict, _ in RESULTS)
    skipped = sum(verdict == "SKIP" for _, verdict, _ in RESULTS)
    print(f"\n{len(RESULTS) - failed - skipped}/{len(RESULTS)} checks passed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

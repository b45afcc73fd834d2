"""The backend-generic code (split hash, CSR batching, normalisation, metrics, the dataframe
reader) against the CPU path and against references computed straight from the definitions.

On CPU, CuPy is stood in for by ``STRICT``: NumPy with CuPy's restrictions that NumPy code
silently relies on (array-valued ``repeat`` counts; mixed int64/uint64 stacking, which NumPy
promotes to float64 and which would round the split hash). Tests marked ``gpu`` run the real
CuPy (and cuDF where installed) and skip with the reason when no GPU is usable.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import ML_1M, ML_100K, ML_SMALL, need

from vaecf.backend import CpuBackend, cpu_backend, gpu_status
from vaecf.data import frames as gpu_ingest
from vaecf.data import split
from vaecf.data.readers import ColumnSpec, encode, read_inputs
from vaecf.errors import VaecfError
from vaecf.evaluation import metrics
from vaecf.model import batches
from vaecf.settings import PrepareSettings


class _StrictNumpy(SimpleNamespace):
    """NumPy, refusing what CuPy refuses (see module docstring); everything else delegates."""

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def repeat(a, repeats, axis=None):
        if isinstance(repeats, np.ndarray):
            raise ValueError("cupy.ndarray cannot be specified as `repeats` argument.")
        return np.repeat(a, repeats, axis)

    @staticmethod
    def stack(arrays, axis=0):
        kinds = {np.asarray(a).dtype.kind for a in arrays}
        if {"i", "u"} <= kinds:
            raise TypeError("stacking int and uint arrays promotes to float64")
        return np.stack(arrays, axis=axis)


STRICT = _StrictNumpy()
STRICT_BACKEND = CpuBackend(xp=STRICT)
GPU_OK, GPU_WHY = gpu_status()
gpu = pytest.mark.skipif(not GPU_OK, reason=f"no usable GPU: {GPU_WHY}")

ML_100K_SPEC = (ColumnSpec("0", "1", "2", "\t", False), 4.0)
SMALL_SPEC = (ColumnSpec("userId", "movieId", "rating", ",", True), 3.5)


# --- split hash and ordering ------------------------------------------------------------------

def _splitmix_reference(seed: int, salt: int, *keys: int) -> int:
    """hash64 in plain Python integers (Steele et al. 2014's finaliser), for one key tuple."""
    mask = (1 << 64) - 1

    def mix(x: int) -> int:
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    h = mix((seed * 0x9E3779B97F4A7C15 + salt) & mask)
    for key in keys:
        h = mix(h ^ key)
    return h


@pytest.mark.parametrize("seed", [0, 1, 2, 12345, 2**40])
def test_hash64_matches_python_reference_for_any_seed(seed):
    users = np.array([0, 1, 7, 943, 2**31 + 5], dtype=np.int64)
    items = np.array([3, 0, 1682, 9, 1], dtype=np.int64)
    got = split.hash64(STRICT, seed, 2, users, items)
    assert got.dtype == np.uint64
    assert got.tolist() == [_splitmix_reference(seed, 2, int(u), int(i))
                            for u, i in zip(users, items, strict=True)]


def test_assign_users_orders_by_full_64_bit_hash():
    per_user = np.array([5, 1, 3, 2, 8, 2, 9, 4, 6, 7], dtype=np.int64)
    labels = split.assign_users(STRICT, per_user, 3, 2, 3)
    eligible = [u for u in range(10) if per_user[u] >= 2]
    order = sorted(eligible, key=lambda u: (_splitmix_reference(3, 1, u), u))
    assert sorted(order[:3]) == np.flatnonzero(labels == split.TEST).tolist()
    assert sorted(order[3:5]) == np.flatnonzero(labels == split.VALIDATION).tolist()
    assert labels[1] == split.TRAIN  # one interaction: never held out


def test_target_mask_takes_lowest_hashes_per_user():
    users = np.repeat(np.arange(4, dtype=np.int64), [2, 5, 10, 3])
    items = np.concatenate([np.arange(n, dtype=np.int64) * 7 for n in (2, 5, 10, 3)])
    mask = split.target_mask(STRICT, users, items, 4, 9, 0.2)
    for u, n in enumerate((2, 5, 10, 3)):
        mine = items[users == u]
        ranked = sorted(mine, key=lambda i, u=u: _splitmix_reference(9, 2, u, int(i)))
        chosen = set(ranked[: split.n_targets_expected(n, 0.2)])
        assert set(mine[mask[users == u]]) == chosen


@pytest.mark.parametrize("data", ["small", "ml-100k"])
def test_split_with_cupy_semantics_equals_cpu(data):
    """split_interactions with the strict stand-in gives the CPU path's arrays, bit for bit."""
    if data == "small":
        paths, (spec, min_rating) = [ML_SMALL], SMALL_SPEC
    else:
        paths, (spec, min_rating) = [need(ML_100K)], ML_100K_SPEC
    from vaecf.data.prepare import split_interactions

    enc = encode(read_inputs(paths, spec), min_rating)
    cfg = PrepareSettings(seed=7)
    a = split_interactions(STRICT_BACKEND, enc, cfg)
    b = split_interactions(cpu_backend(), enc, cfg)
    pairs = [(a.train, b.train)] + [(a.heldout[n][k], b.heldout[n][k])
                                    for n in b.heldout for k in (0, 1)]
    for x, y in pairs:
        assert x.shape == y.shape
        for part in ("indptr", "indices"):
            got, want = getattr(x, part), getattr(y, part)
            assert got.dtype == want.dtype and np.array_equal(got, want)
    assert a.stats == b.stats


# --- CSR batching and normalisation -----------------------------------------------------------

@pytest.fixture(scope="module")
def small(small_dataset):
    from vaecf.data.dataset import Dataset

    return Dataset.open(small_dataset)


def test_entry_rows_matches_repeat_reference(small):
    train = small.train_matrix()
    want = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
    got = batches.entry_rows(STRICT, train.indptr)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    empty_rows = np.array([0, 0, 2, 2, 3])  # rows 0 and 2 are empty
    assert batches.entry_rows(STRICT, empty_rows).tolist() == [1, 1, 3]


def test_make_batch_matches_scipy_normalisation(small):
    train = small.train_matrix()
    matrix = STRICT_BACKEND.csr(train)
    order = batches.epoch_order(train.shape[0], 0, 0, 0)
    for lo in range(0, len(order), 97):
        rows = order[lo: lo + 97]
        batch = batches.make_batch(STRICT_BACKEND, matrix, rows)
        ref = train[rows]
        ref.sort_indices()
        coo = ref.tocoo()
        assert batch.size == len(rows)
        assert np.array_equal(batch.indices, np.stack([coo.row, coo.col], axis=1))
        assert np.array_equal(batch.targets, coo.data)
        norms = np.sqrt(np.asarray(ref.multiply(ref).sum(axis=1)).ravel())
        np.testing.assert_allclose(batch.values, coo.data / norms[coo.row], rtol=1e-6)
        per_row = np.bincount(coo.row, weights=batch.values.astype(np.float64) ** 2,
                              minlength=len(rows))
        np.testing.assert_allclose(per_row[np.diff(ref.indptr) > 0], 1.0, rtol=1e-5)


# --- metrics --------------------------------------------------------------------------------

def _reference_metrics(scores, foldin, target, k):
    """NDCG@k and Recall@k of every user with targets, by the definitions (docs/design.md)."""
    ndcg, recall = [], []
    for u in range(scores.shape[0]):
        t = set(target[u].indices)
        if not t:
            continue
        s = scores[u].astype(np.float64).copy()
        s[foldin[u].indices] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        dcg = sum(1 / np.log2(j + 2) for j, item in enumerate(top) if item in t)
        idcg = sum(1 / np.log2(j + 2) for j in range(min(k, len(t))))
        ndcg.append(dcg / idcg)
        recall.append(len(t & set(top)) / min(k, len(t)))
    return np.array(ndcg), np.array(recall)


def test_metrics_match_definitions(small):
    foldin, target = small.heldout("test")
    scores = np.random.default_rng(0).standard_normal(foldin.shape).astype(np.float32)
    masked = metrics.exclude(STRICT, scores.copy(), foldin)
    ranked = metrics.top_k(STRICT, masked, 100)
    assert not np.isin(ranked[0], foldin[0].indices).any()
    got = metrics.per_user(STRICT, ranked, target, [20, 100])
    for k in (20, 100):
        ndcg, recall = _reference_metrics(scores, foldin, target, k)
        np.testing.assert_allclose(got[f"ndcg@{k}"], ndcg, rtol=1e-12)
        np.testing.assert_allclose(got[f"recall@{k}"], recall, rtol=1e-12)


# --- the dataframe reader (cuDF's code, pandas standing in) -----------------------------------

READER_CASES = {
    "bundled small": (lambda: [ML_SMALL], *SMALL_SPEC),
    "ml-100k tsv": (lambda: [need(ML_100K)], *ML_100K_SPEC),
    "ml-1m parquet strings": (lambda: [need(ML_1M)], ColumnSpec("userID", "movieID"), None),
    "int + string files": (lambda: [need(ML_100K), need(ML_1M)],
                           ColumnSpec("0", "1", None, "\t", False), None),
}


@pytest.mark.parametrize("case", list(READER_CASES))
def test_frame_reader_equals_pyarrow_reader(case):
    paths, spec, min_rating = READER_CASES[case]
    paths = paths()
    want = encode(read_inputs(paths, spec), min_rating)
    got = gpu_ingest.read_encoded(pd, paths, spec, min_rating)
    assert got.rows_read == want.rows_read
    assert got.users.dtype == np.int64 and np.array_equal(got.users, want.users)
    assert np.array_equal(got.items, want.items)
    assert got.user_ids.equals(want.user_ids) and got.item_ids.equals(want.item_ids)
    assert got.user_ids.type == want.user_ids.type


HEADER = "userId,movieId,rating\n"
GOOD = "".join(f"{u},{i},4\n" for u in range(30) for i in range(u, u + 6))
BAD_INPUTS = {
    "non-numeric rating": (HEADER + GOOD + "7,8,great\n", "rating",
                           "column 'rating' row 181: rating 'great' is not a number"),
    "missing id": (HEADER + GOOD + ",9,4\n", None, "column 'userId' row 181: missing id"),
    "blank string id": (HEADER + GOOD + 'u1," ",4\n', None, "column 'movieId' row 181: empty id"),
    # A CSV id "1.5" is the string "1.5" (the id rule); a non-finite rating is an error.
    "non-finite rating": (HEADER + GOOD + "3,1,inf\n", "rating",
                          "column 'rating' row 181: rating inf is not a finite number"),
    "binary junk": ("\x00\x01junk\n" * 20, None, "not a text file"),
    "header only": (HEADER, None, "the file has no rows"),
    "empty file": ("", None, "the file is empty"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_frame_reader_errors_match_pyarrow_reader(tmp_path, case):
    content, rating, message = BAD_INPUTS[case]
    path = tmp_path / "ratings.csv"
    path.write_text(content)
    spec = ColumnSpec("userId", "movieId", rating, ",", True)
    errors = []
    for read in (lambda: encode(read_inputs([path], spec), None),
                 lambda: gpu_ingest.read_encoded(pd, [path], spec, None)):
        with pytest.raises(VaecfError) as caught:
            read()
        errors.append(str(caught.value))
    assert message in errors[0]
    assert errors[1] == errors[0]


# --- on a real GPU ----------------------------------------------------------------------------

def _dataset_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("data", ["small", "ml-100k"])
def test_gpu_prepare_is_byte_identical_to_cpu(tmp_path, cli, data):
    args = (["--example", "movielens-small"] if data == "small" else
            [need(ML_100K), "--no-header", "--user-col", "0", "--item-col", "1",
             "--rating-col", "2", "--min-rating", "4"])
    for backend in ("cpu", "gpu"):
        result = cli("prepare", *args, "--backend", backend, "--shards", "3", "--seed", "5",
                     "--out", tmp_path / backend, "-q")
        assert result.code == 0, result.err
    assert _dataset_bytes(tmp_path / "gpu") == _dataset_bytes(tmp_path / "cpu")


@pytest.mark.gpu
@gpu
def test_gpu_batches_and_metrics_equal_numpy(small):
    from vaecf.backend import gpu_backend

    device = gpu_backend()
    train = small.train_matrix()
    rows = batches.epoch_order(train.shape[0], 0, 0, 0)[:256]
    a = batches.make_batch(device, device.csr(train), device.from_numpy(rows))
    b = batches.make_batch(cpu_backend(), train, rows)
    assert np.array_equal(device.to_numpy(a.indices), b.indices)
    np.testing.assert_allclose(device.to_numpy(a.values), b.values, rtol=1e-6)
    foldin, target = small.heldout("test")
    scores = np.random.default_rng(0).standard_normal(foldin.shape).astype(np.float32)
    xp, sparse = device.xp, device.xsparse
    ranked = metrics.top_k(xp, metrics.exclude(xp, xp.asarray(scores), sparse.csr_matrix(foldin)),
                           100)
    want = metrics.top_k(np, metrics.exclude(np, scores.copy(), foldin), 100)
    assert np.array_equal(device.to_numpy(ranked), want)
    got = metrics.per_user(xp, ranked, sparse.csr_matrix(target), [100])["ndcg@100"]
    np.testing.assert_allclose(device.to_numpy(got),
                               metrics.per_user(np, want, target, [100])["ndcg@100"], rtol=1e-12)


@pytest.mark.gpu
@gpu
def test_cudf_reader_equals_pyarrow_reader():
    cudf = pytest.importorskip("cudf", reason="cuDF is not installed")
    paths, spec, min_rating = [ML_SMALL], *SMALL_SPEC
    want = encode(read_inputs(paths, spec), min_rating)
    got = gpu_ingest.read_encoded(cudf, paths, spec, min_rating)
    assert np.array_equal(got.users.get(), want.users)
    assert got.user_ids.equals(want.user_ids) and got.item_ids.equals(want.item_ids)

"""`vaecf prepare` on real MovieLens data: published counts, split invariants, determinism."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import ML_1M, ML_100K, ML_SMALL, need

from vaecf.data.dataset import Dataset
from vaecf.data.split import n_targets_expected

# Published figures (../shared/data/README.md): rows, users, items.
PUBLISHED = {
    "ml-100k": (100_000, 943, 1_682),
    "ml-1m": (1_000_209, 6_040, 3_706),
    "ml-latest-small": (100_836, 610, 9_724),
}


class _Prepared(dict):
    """Dataset name -> its directory, prepared on first use with every interaction kept (no
    rating threshold); a shared dataset that is missing skips only the tests that use it."""

    SPECS = {
        "ml-100k": (ML_100K, dict(user_col="0", item_col="1", rating_col="2", header=False)),
        "ml-1m": (ML_1M, dict(user_col="userID", item_col="movieID")),
        "ml-latest-small": (ML_SMALL, dict(user_col="userId", item_col="movieId")),
    }

    def __init__(self, root) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str):
        from vaecf.backend import cpu_backend
        from vaecf.data.prepare import prepare
        from vaecf.settings import PrepareSettings

        path, cols = self.SPECS[name]
        out = self.root / name
        prepare([str(need(path))], out, PrepareSettings(**cols), cpu_backend(), quiet=True)
        self[name] = out
        return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> _Prepared:
    return _Prepared(tmp_path_factory.mktemp("prepared"))


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_counts_match_published_figures(prepared, name):
    stats = Dataset.open(prepared[name]).meta["stats"]
    rows, users, items = PUBLISHED[name]
    assert (stats["rows_read"], stats["users_read"], stats["items_read"]) == (rows, users, items)
    # No duplicates in these releases, and every user has >= 20 ratings: nothing is filtered.
    assert stats["unique_pairs"] == stats["pairs_after_count_filters"] == rows
    assert stats["users_after_filters"] == users


def _user_sets(matrix) -> list[set[int]]:
    return [set(matrix.indices[matrix.indptr[r]: matrix.indptr[r + 1]].tolist())
            for r in range(matrix.shape[0])]


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_split_invariants(prepared, name):
    ds = Dataset.open(prepared[name])
    users = ds.users
    ids = {split: set(pc.filter(users["user_id"], pc.equal(users["split"], split)).to_pylist())
           for split in ("train", "validation", "test")}
    assert not ids["train"] & ids["validation"]
    assert not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    assert sum(map(len, ids.values())) == ds.meta["stats"]["users_after_filters"]

    train = ds.train_matrix()
    train_items = np.flatnonzero(np.asarray(train.sum(axis=0)).ravel() > 0)
    assert len(train_items) == ds.n_items  # every column is a training item
    for split in ("validation", "test"):
        foldin, target = ds.heldout(split)
        assert foldin.shape == target.shape == (len(ids[split]), ds.n_items)
        for seen, held in zip(_user_sets(foldin), _user_sets(target), strict=True):
            assert seen and held and not seen & held
            assert len(held) == n_targets_expected(len(seen) + len(held), 0.2)


def test_foldin_and_targets_are_the_users_kept_items(prepared):
    """Rebuild one held-out user's items from the raw file and compare."""
    ds = Dataset.open(prepared["ml-100k"])
    raw = np.loadtxt(ML_100K, dtype=np.int64, usecols=(0, 1))
    item_ids = np.asarray(ds.item_ids.to_pylist())
    users = ds.users.to_pandas()
    for _, row in users[users["split"] == "test"].head(25).iterrows():
        foldin, target = ds.heldout("test")
        mine = set(raw[raw[:, 0] == row["user_id"], 1].tolist()) & set(item_ids.tolist())
        got = set(item_ids[foldin[row["row"]].indices].tolist()) | set(
            item_ids[target[row["row"]].indices].tolist())
        assert got == mine


def test_targets_near_holdout_fraction(prepared):
    ds = Dataset.open(prepared["ml-1m"])
    foldin, target = ds.heldout("validation")
    share = target.nnz / (target.nnz + foldin.nnz)
    assert 0.18 < share <= 0.2


def test_string_ids_stay_strings(prepared):
    ds = Dataset.open(prepared["ml-1m"])
    assert str(ds.item_ids.type) == "string"
    assert str(ds.users["user_id"].type) == "string"
    assert "1193" in set(ds.item_ids.to_pylist())
    ints = Dataset.open(prepared["ml-100k"])
    assert str(ints.item_ids.type) == "int64"


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path, cli):
    args = ["prepare", str(ML_SMALL), "--rating-col", "rating", "--min-rating", "3.5", "-q"]
    assert cli(*args, "--out", tmp_path / "a").code == 0
    assert cli(*args, "--out", tmp_path / "b").code == 0
    assert cli(*args, "--out", tmp_path / "c", "--seed", "1").code == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    tables = {d: pq.read_table(tmp_path / d / "users.parquet").to_pydict() for d in "ac"}
    split = {d: dict(zip(t["user_id"], t["split"], strict=True)) for d, t in tables.items()}
    assert split["a"].keys() == split["c"].keys()
    assert split["a"] != split["c"]


def test_shards_partition_the_training_matrix(tmp_path, prepared, cli):
    out = tmp_path / "sharded"
    assert cli("prepare", ML_SMALL, "--shards", "3", "--out", out, "-q").code == 0
    one, three = Dataset.open(prepared["ml-latest-small"]), Dataset.open(out)
    assert len(three.shard_names) == 3
    assert (one.train_matrix() != three.train_matrix()).nnz == 0
    for world in (1, 2, 4):
        parts = [three.train_rows_for_rank(rank, world) for rank in range(world)]
        sizes = [part.shape[0] for part in parts]
        assert max(sizes) - min(sizes) <= 1
        import scipy.sparse

        assert (scipy.sparse.vstack(parts) != one.train_matrix()).nnz == 0


def test_bundled_example_matches_reference_preprocessing(tmp_path, cli):
    result = cli("prepare", "--example", "movielens-small", "--out", tmp_path / "ex")
    assert result.code == 0, result.err
    meta = json.loads((tmp_path / "ex" / "meta.json").read_text())
    assert meta["filters"]["min_rating"] == 3.5
    assert meta["stats"]["rows_read"] == 100_836
    assert meta["stats"]["rows_after_rating_filter"] == 61_716  # ratings >= 3.5
    assert "validation" in result.err and "test" in result.err  # the summary table


def test_formats_gzip_globs_and_multichar_separator(tmp_path, cli):
    """A gzip TSV split in two files (globbed) and a '::' file give the ml-100k dataset."""
    import gzip

    lines = need(ML_100K).read_text().splitlines()
    half = len(lines) // 2
    for k, chunk in enumerate((lines[:half], lines[half:])):
        with gzip.open(tmp_path / f"part{k}.tsv.gz", "wt") as handle:
            handle.write("\n".join(chunk) + "\n")
    (tmp_path / "ratings.dat").write_text("\n".join(line.replace("\t", "::") for line in lines))
    common = ["--no-header", "--user-col", "0", "--item-col", "1", "-q"]
    assert cli("prepare", tmp_path / "part*.tsv.gz", "--out", tmp_path / "g", *common).code == 0
    assert cli("prepare", tmp_path / "ratings.dat", "--out", tmp_path / "d", *common).code == 0
    assert cli("prepare", ML_100K, "--out", tmp_path / "r", *common).code == 0
    for other in ("g", "d"):
        for name in ("train-00000-of-00001.indices.npy", "test-target.indices.npy"):
            assert (tmp_path / other / name).read_bytes() == (tmp_path / "r" / name).read_bytes()

"""``prepare --dask`` / ``--scheduler``: dask.dataframe over pandas partitions on a loopback
cluster gives the plain CPU backend's dataset byte for byte, and the same one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ML_100K, need

pytest.importorskip("distributed", reason="dask is not installed (pip install 'vaecf[dask]')")

ML_100K_ARGS = ["--no-header", "--user-col", "0", "--item-col", "1", "--rating-col", "2",
                "--min-rating", "4", "--seed", "3", "--shards", "2"]


@pytest.fixture(scope="module")
def scheduler():
    """One two-process cluster on loopback for the module (starting one costs seconds)."""
    from dask.distributed import LocalCluster

    with LocalCluster(host="127.0.0.1", n_workers=2, threads_per_worker=1,
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_local_cluster_matches_cpu_on_bundled_example(tmp_path, cli):
    """--dask without --scheduler starts (and stops) its own loopback cluster."""
    common = ["--example", "movielens-small", "--backend", "cpu", "-q"]
    assert cli("prepare", *common, "--out", tmp_path / "cpu").code == 0
    result = cli("prepare", *common, "--dask", "--out", tmp_path / "dask")
    assert result.code == 0, result.err
    assert _files(tmp_path / "dask") == _files(tmp_path / "cpu")


def test_scheduler_matches_cpu_on_ml_100k_split_in_files(tmp_path, cli, scheduler):
    """ml-100k in three files (one partition each) through a running scheduler."""
    lines = need(ML_100K).read_text().splitlines(keepends=True)
    for k in range(3):
        (tmp_path / f"part{k}.tsv").write_text("".join(lines[k::3]))
    parts = [tmp_path / f"part{k}.tsv" for k in range(3)]
    assert cli("prepare", ML_100K, *ML_100K_ARGS, "--backend", "cpu", "-q",
               "--out", tmp_path / "cpu").code == 0
    result = cli("prepare", *parts, *ML_100K_ARGS, "--backend", "cpu", "-q",
                 "--scheduler", scheduler, "--out", tmp_path / "dask")
    assert result.code == 0, result.err
    cpu, dask = _files(tmp_path / "cpu"), _files(tmp_path / "dask")
    assert {n: b for n, b in dask.items() if n != "meta.json"} == \
        {n: b for n, b in cpu.items() if n != "meta.json"}
    # meta.json differs only in the list of sources (three files instead of one).
    import json

    cpu_meta, dask_meta = (json.loads(d["meta.json"]) for d in (cpu, dask))
    assert len(dask_meta.pop("sources")) == 3 and cpu_meta.pop("sources")
    assert dask_meta == cpu_meta


def test_worker_errors_are_one_line_naming_file_and_row(tmp_path, cli, scheduler):
    good = "".join(f"{u},{i},4\n" for u in range(30) for i in range(u, u + 6))
    (tmp_path / "a.csv").write_text("userId,movieId,rating\n" + good)
    (tmp_path / "b.csv").write_text("userId,movieId,rating\n" + good + "7,8,great\n")
    out = tmp_path / "out"
    result = cli("prepare", tmp_path / "a.csv", tmp_path / "b.csv", "--rating-col", "rating",
                 "--min-rating", "3", "--backend", "cpu", "--scheduler", scheduler, "-q",
                 "--out", out)
    assert result.code == 2
    assert f"{tmp_path / 'b.csv'}: column 'rating' row 181: rating 'great' is not a number" \
        in result.err
    assert result.err.strip().count("\n") == 0 and "Traceback" not in result.err
    assert not out.exists()


def test_unreachable_scheduler_is_one_line(tmp_path, cli):
    result = cli("prepare", "--example", "movielens-small", "--backend", "cpu", "-q",
                 "--scheduler", "tcp://127.0.0.1:9", "--out", tmp_path / "out")
    assert result.code == 2
    assert "--scheduler tcp://127.0.0.1:9: cannot connect" in result.err
    assert result.err.strip().count("\n") == 0

"""``prepare --dask`` / ``--scheduler``: every step on loopback dask clusters gives the plain
CPU backend's dataset byte for byte, whatever the worker count, block size or shuffle method,
and the same one-line errors (a row in a later block named by its byte offset)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from helpers import ML_1M, ML_100K, SHARED_DATA, need

pytest.importorskip("distributed", reason="dask is not installed (pip install 'vaecf[dask]')")

ML_100K_ARGS = ["--no-header", "--user-col", "0", "--item-col", "1", "--rating-col", "2",
                "--min-rating", "4", "--seed", "3", "--shards", "3"]
LASTFM = SHARED_DATA / "hetrec2011-lastfm-2k" / "user_artists.dat"


def _cluster(workers: int):
    from dask.distributed import LocalCluster

    return LocalCluster(host="127.0.0.1", n_workers=workers, threads_per_worker=1,
                        dashboard_address="127.0.0.1:0")


@pytest.fixture(scope="module")
def scheduler():
    """A two-worker cluster on loopback for the module (starting one costs seconds)."""
    with _cluster(2) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def scheduler_one():
    """A one-worker cluster: the same bytes must come out of any worker count."""
    with _cluster(1) as cluster:
        yield cluster.scheduler_address


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _same_but_sources(a: Path, b: Path) -> None:
    """Every file equal; meta.json equal except the list of input files."""
    fa, fb = _files(a), _files(b)
    assert {n: v for n, v in fa.items() if n != "meta.json"} == \
        {n: v for n, v in fb.items() if n != "meta.json"}
    ma, mb = json.loads(fa["meta.json"]), json.loads(fb["meta.json"])
    ma.pop("sources"), mb.pop("sources")
    assert ma == mb


def test_local_cluster_matches_cpu_on_bundled_example(tmp_path, cli):
    """--dask without --scheduler starts (and stops) its own loopback cluster."""
    common = ["--example", "movielens-small", "--backend", "cpu", "-q"]
    assert cli("prepare", *common, "--out", tmp_path / "cpu").code == 0
    result = cli("prepare", *common, "--dask", "--workers", "2", "--blocksize", "200KB",
                 "--out", tmp_path / "dask")
    assert result.code == 0, result.err
    assert _files(tmp_path / "dask") == _files(tmp_path / "cpu")


@pytest.mark.parametrize(("cluster", "blocksize", "shuffle"), [
    ("scheduler_one", "256KB", "tasks"), ("scheduler_one", "40KB", "p2p"),
    ("scheduler", "256KB", "p2p"), ("scheduler", "40KB", "tasks"), ("scheduler", "8MB", "p2p"),
])
def test_same_bytes_for_any_workers_blocksize_and_shuffle(tmp_path, cli, request, cluster,
                                                         blocksize, shuffle):
    """ml-100k (2 MB, no header, tabs) cut into 1 to 50 blocks, 3 training shards that cross
    partitions, through one or two workers and either shuffle."""
    source = need(ML_100K)
    assert cli("prepare", source, *ML_100K_ARGS, "--backend", "cpu", "-q",
               "--out", tmp_path / "cpu").code == 0
    result = cli("prepare", source, *ML_100K_ARGS, "--backend", "cpu", "-q",
                 "--scheduler", request.getfixturevalue(cluster), "--blocksize", blocksize,
                 "--shuffle", shuffle, "--out", tmp_path / "dask")
    assert result.code == 0, result.err
    assert _files(tmp_path / "dask") == _files(tmp_path / "cpu")


def test_string_ids_in_parquet_row_groups(tmp_path, cli, scheduler):
    """ML-1M's string ids, in a Parquet file of 25 row groups (one partition each)."""
    import pyarrow.parquet as pq

    table = pq.read_table(need(ML_1M))
    source = tmp_path / "ratings.parquet"
    pq.write_table(table, source, row_group_size=40_000)
    assert pq.ParquetFile(source).metadata.num_row_groups == 26
    args = [source, "--user-col", "userID", "--item-col", "movieID", "--val-users", "300",
            "--test-users", "300", "--backend", "cpu", "-q"]
    assert cli("prepare", *args, "--out", tmp_path / "cpu").code == 0
    result = cli("prepare", *args, "--scheduler", scheduler, "--out", tmp_path / "dask")
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "dask" / "meta.json").read_text())["columns"][
        "user_id_type"] == "string"
    assert _files(tmp_path / "dask") == _files(tmp_path / "cpu")


def test_crlf_lines_no_final_newline_gzip_and_mixed_id_types(tmp_path, cli, scheduler):
    """Last.fm's CRLF file without a final newline cut into blocks, beside a gzip copy of
    part of it (one partition) whose artist ids are not all integers: every id becomes a
    string, as in one process."""
    lastfm = need(LASTFM)
    lines = lastfm.read_bytes().split(b"\r\n")
    extra = tmp_path / "extra.tsv.gz"
    with gzip.open(extra, "wb") as handle:
        handle.write(b"\r\n".join([lines[0]] + [line.replace(b"\t5", b"\tx5", 1)
                                               for line in lines[1:3000]]))
    args = [lastfm, extra, "--user-col", "userID", "--item-col", "artistID",
            "--backend", "cpu", "-q", "--val-users", "150", "--test-users", "150"]
    assert cli("prepare", *args, "--out", tmp_path / "cpu").code == 0
    result = cli("prepare", *args, "--scheduler", scheduler, "--blocksize", "100KB",
                 "--out", tmp_path / "dask")
    assert result.code == 0, result.err
    meta = json.loads((tmp_path / "dask" / "meta.json").read_text())
    assert meta["columns"]["item_id_type"] == "string"
    _same_but_sources(tmp_path / "cpu", tmp_path / "dask")


def test_double_colon_separator_in_blocks(tmp_path, cli, scheduler):
    """MovieLens-1M's '::' format (a separator pyarrow cannot split on) cut into blocks."""
    import pyarrow.parquet as pq

    table = pq.read_table(need(ML_1M)).slice(0, 200_000).to_pydict()
    source = tmp_path / "ratings.dat"
    source.write_text("".join(f"{u}::{i}::5::0\n" for u, i in zip(table["userID"],
                                                                  table["movieID"],
                                                                  strict=True)))
    args = [source, "--no-header", "--user-col", "0", "--item-col", "1", "--backend", "cpu",
            "-q", "--val-users", "100", "--test-users", "100"]
    assert cli("prepare", *args, "--out", tmp_path / "cpu").code == 0
    result = cli("prepare", *args, "--scheduler", scheduler, "--blocksize", "300KB",
                 "--out", tmp_path / "dask")
    assert result.code == 0, result.err
    assert _files(tmp_path / "dask") == _files(tmp_path / "cpu")


def _ratings(rows: int) -> str:
    return "userId,movieId,rating\n" + "".join(
        f"{r % 300},{r % 97},4\n" for r in range(rows))


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


def test_a_bad_row_in_a_later_block_is_named_by_its_byte_offset(tmp_path, cli, scheduler):
    """The offset is checked against the file itself: the line starting there is the bad
    one."""
    source = tmp_path / "ratings.csv"
    text = _ratings(20_000)
    at = text.index("\n", len(text) // 2) + 1
    text = text[:at] + "12,,4\n" + text[at:]
    source.write_text(text)
    out = tmp_path / "out"
    result = cli("prepare", source, "--rating-col", "rating", "--backend", "cpu", "-q",
                 "--scheduler", scheduler, "--blocksize", "16KB", "--out", out)
    assert result.code == 2
    line = result.err.strip()
    assert line.count("\n") == 0 and "Traceback" not in line
    assert f"{source}: column 'movieId' row at byte " in line and "missing id" in line
    offset = int(line.split("row at byte ")[1].split(":")[0])
    assert source.read_bytes()[offset:].split(b"\n")[0] == b"12,,4"
    assert not out.exists()


def test_a_bad_row_in_a_parquet_row_group_is_named_by_its_row(tmp_path, cli, scheduler):
    """Row groups know their rows: the message is the single-process one, word for word."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ratings = [4.0] * 5000
    ratings[3210] = float("nan")
    source = tmp_path / "ratings.parquet"
    pq.write_table(pa.table({"userId": [r % 300 for r in range(5000)],
                             "movieId": [r % 97 for r in range(5000)], "rating": ratings}),
                   source, row_group_size=1000)
    args = [source, "--rating-col", "rating", "--backend", "cpu", "-q"]
    plain = cli("prepare", *args, "--out", tmp_path / "cpu")
    dask = cli("prepare", *args, "--scheduler", scheduler, "--out", tmp_path / "dask")
    assert plain.code == dask.code == 2
    assert "row 3211: rating nan is not a finite number" in plain.err
    assert dask.err == plain.err


def test_unreachable_scheduler_is_one_line(tmp_path, cli):
    result = cli("prepare", "--example", "movielens-small", "--backend", "cpu", "-q",
                 "--scheduler", "tcp://127.0.0.1:9", "--out", tmp_path / "out")
    assert result.code == 2
    assert "--scheduler tcp://127.0.0.1:9: cannot connect" in result.err
    assert result.err.strip().count("\n") == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "2"], "--workers and --worker-memory size the --dask cluster; add --dask"),
    (["--dask", "--blocksize", "lots"], "--blocksize: cannot read 'lots' as a size"),
    (["--dask", "--blocksize", "10"], "--blocksize 10 is below the smallest block, 1 KiB"),
    (["--scheduler", "tcp://127.0.0.1:9", "--workers", "2"],
     "--workers and --worker-memory size a local cluster; with --scheduler"),
])
def test_cluster_flags_are_checked_in_one_line(tmp_path, cli, args, message):
    result = cli("prepare", "--example", "movielens-small", "--backend", "cpu", "-q", *args,
                 "--out", tmp_path / "out")
    assert result.code == 2 and message in result.err, result.err
    assert result.err.strip().count("\n") == 0 and not (tmp_path / "out").exists()


class _FakeScheduler:
    """A loopback server that accepts connections and either says nothing or answers like an
    HTTP server; closed when the test ends."""

    def __init__(self, reply: bytes | None) -> None:
        import socket
        import threading

        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"
        self.held: list = []

        def serve() -> None:
            while True:
                try:
                    conn, _ = self.server.accept()
                except OSError:
                    return
                self.held.append(conn)
                if reply is not None:
                    conn.sendall(reply)

        threading.Thread(target=serve, daemon=True).start()

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize(("reply", "why"), [
    (None, "it sent no handshake within 10 s"),
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "what it sent is not a dask "
     "handshake"),
])
def test_a_server_that_is_not_a_scheduler_is_one_line(tmp_path, cli, reply, why):
    fake = _FakeScheduler(reply)
    try:
        result = cli("prepare", "--example", "movielens-small", "--backend", "cpu", "-q",
                     "--scheduler", fake.address, "--out", tmp_path / "out")
    finally:
        fake.close()
    assert result.code == 2
    assert result.err.strip() == f"error: --scheduler {fake.address}: not a dask scheduler " \
        f"({why})"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["bad row", "binary", "truncated gzip", "nothing kept"])
def test_errors_under_a_local_cluster_print_what_one_process_prints(tmp_path, damage):
    """Nothing of dask's own logging (worker errors, heartbeats after shutdown) around the
    error line: the whole of stderr is the single-process one."""
    import subprocess
    import sys

    from helpers import ROOT

    source = tmp_path / ("ratings.csv.gz" if damage == "truncated gzip" else "ratings.csv")
    rating = 2 if damage == "nothing kept" else 4
    text = ("userId,movieId,rating\n" + "".join(f"{r % 50},{r % 30},{rating}\n"
                                                for r in range(3000))
            + ("7,8,great\n" if damage == "bad row" else ""))
    if damage == "binary":
        source.write_bytes(b"\x00\x01\x02" * 1000)
    elif damage == "truncated gzip":
        source.write_bytes(gzip.compress(text.encode())[:-200])
    else:
        source.write_text(text)
    errors = []
    for extra in ([], ["--dask", "--workers", "1"]):
        run = subprocess.run([sys.executable, "-m", "vaecf", "prepare", str(source),
                              "--rating-col", "rating", "--min-rating", "3", "--backend", "cpu",
                              "-q", "--out",
                              str(tmp_path / "out"), *extra], capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
        assert run.returncode == 2
        errors.append(run.stderr)
    assert errors[1] == errors[0] and errors[0].count("\n") == 1, errors

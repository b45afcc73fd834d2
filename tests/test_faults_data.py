"""Data-stage faults (issue 10): every bad input or fault in `vaecf prepare` (and the data side of
`recommend` and `bench prepare`) gives one `error:` line, the documented exit code, no traceback,
and leaves nothing behind; ids follow one rule (docs/data-reliability.md); kill -9 and Ctrl-C
during prepare never leave a half-written dataset.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from vaecf.data.prepare import EXAMPLES

ROOT = Path(__file__).resolve().parents[1]
ML_SMALL = EXAMPLES["movielens-small"][0]
HEADER = "userId,movieId,rating\n"
# Small inputs split with few held-out users, so a 30-user file is a valid dataset.
SMALL_SPLIT = ["--val-users", "2", "--test-users", "2", "--min-user-interactions", "1"]


def rows(n_users: int = 30, per_user: int = 6) -> str:
    return "".join(f"{u},{i},4\n" for u in range(n_users) for i in range(u, u + per_user))


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def ratings_table(n: int = 20_000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"userId": rng.integers(0, 300, n), "movieId": rng.integers(0, 2000, n),
                     "rating": rng.integers(1, 6, n).astype(np.float64)})


def flipped(path: Path, at: float, width: int = 8) -> Path:
    """Flip ``width`` bytes at fraction ``at`` of the file, in place."""
    data = bytearray(path.read_bytes())
    pos = int(len(data) * at)
    data[pos:pos + width] = bytes(b ^ 0xA5 for b in data[pos:pos + width])
    path.write_bytes(bytes(data))
    return path


def parquet(path: Path, table: pa.Table, **kwargs) -> Path:
    pq.write_table(table, path, **kwargs)
    return path


def gz(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode()))
    return path


def truncated(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def prepare_args(source: object, out: object, *extra: object) -> list[object]:
    return ["prepare", source, "--out", out, "-q", *extra]


@dataclass
class Case:
    """setup(d) writes its inputs under the empty directory d and returns the argv after
    ``vaecf``; the output the command must not create is d/"data" unless ``out`` says."""

    setup: Callable[[Path], list[object]]
    message: str
    code: int = 2
    out: Callable[[Path], Path] | None = None
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    tags: list[str] = field(default_factory=list)


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    import vaecf.data.prepare as module

    real = module.write_csr

    def failing(directory, name, csr):
        real(directory, name, csr)  # a file is half there, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "write_csr", failing)


def _header_with_escape(d: Path) -> list[object]:
    source = write(d / "r.csv", "us\x1b[31mer\x07,movieId\n" + "1,2\n" * 3)
    return prepare_args(source, d / "data")


def _uint64_float(d: Path) -> list[object]:
    table = pa.table({"userId": pa.array([1.0, 2.0, 1e19]), "movieId": pa.array([1, 2, 3])})
    return prepare_args(parquet(d / "r.parquet", table), d / "data")


CASES: dict[str, Case] = {
    # --- inputs that are not there or not files
    "missing input file": Case(lambda d: prepare_args(d / "nope.csv", d / "data"),
                               "input file not found: "),
    "glob matching nothing": Case(lambda d: prepare_args(d / "*.nope", d / "data"),
                                  "input file not found: "),
    "directory as input": Case(lambda d: prepare_args((d / "dir").mkdir() or d / "dir",
                                                      d / "data"),
                               "input is a directory, not a file"),
    "empty file": Case(lambda d: prepare_args(write(d / "r.csv", ""), d / "data"),
                       "the file is empty"),
    "blank lines only": Case(lambda d: prepare_args(write(d / "r.csv", "\n\n  \n"), d / "data"),
                             "the file is empty"),
    "header only": Case(lambda d: prepare_args(write(d / "r.csv", HEADER), d / "data"),
                        "the file has no rows"),
    # --- damaged compressed or binary inputs
    "truncated .gz (cut in the data)": Case(
        lambda d: prepare_args(truncated(gz(d / "r.csv.gz", HEADER + rows(2000, 20)), 0.5),
                               d / "data"), "gzip stream is damaged or cut short"),
    "truncated .gz (cut in the header)": Case(
        lambda d: prepare_args(truncated(gz(d / "r.csv.gz", HEADER + rows()), 0.1),
                               d / "data"), "not a valid gzip file"),
    ".gz that is not gzip": Case(
        lambda d: prepare_args(write(d / "r.csv.gz", HEADER + rows()), d / "data"),
        "not a valid gzip file"),
    ".gz sniffed separator, not gzip": Case(
        lambda d: prepare_args(write(d / "r.gz", HEADER + rows()), d / "data"),
        "not a valid gzip file"),
    "empty .gz (0 bytes)": Case(lambda d: prepare_args(write(d / "r.csv.gz", b""), d / "data"),
                                "the file is empty"),
    "gzip of nothing": Case(lambda d: prepare_args(gz(d / "r.csv.gz", ""), d / "data"),
                            "the file is empty"),
    "parquet, corrupt data page (page CRC)": Case(
        lambda d: prepare_args(flipped(parquet(d / "r.parquet", ratings_table(),
                                               write_page_checksum=True), 0.5), d / "data"),
        "damaged Parquet file"),
    "parquet, corrupt page header": Case(
        lambda d: prepare_args(flipped(parquet(d / "r.parquet", ratings_table()), 0.25),
                               d / "data"), "damaged Parquet file"),
    "parquet, truncated": Case(
        lambda d: prepare_args(truncated(parquet(d / "r.parquet", ratings_table()), 0.6),
                               d / "data"), "cannot read as Parquet"),
    "text named .parquet": Case(
        lambda d: prepare_args(write(d / "r.parquet", HEADER + rows()), d / "data"),
        "cannot read as Parquet"),
    "binary junk as CSV": Case(
        lambda d: prepare_args(write(d / "r.csv", np.random.default_rng(0).bytes(5000)),
                               d / "data"), "not a text file"),
    "latin-1 bytes as CSV": Case(
        lambda d: prepare_args(write(d / "r.csv", ("userId,movieId\n" + "1,caf\xe9\n" * 9)
                                     .encode("latin-1")), d / "data"),
        "not a UTF-8 text file"),
    "control characters in the header": Case(_header_with_escape,
                                             "unknown user column 'userId'"),
    # --- bad values
    "missing id": Case(lambda d: prepare_args(write(d / "r.csv", HEADER + rows() + ",9,4\n"),
                                              d / "data"), "row 181: missing id"),
    "blank id": Case(lambda d: prepare_args(write(d / "r.csv", HEADER + rows() + '" ",9,4\n'),
                                            d / "data"), "row 181: empty id"),
    "rating 'nan' as text": Case(
        lambda d: prepare_args(write(d / "r.csv", HEADER + rows() + "1,2,nan\n"), d / "data",
                               "--rating-col", "rating", "--min-rating", "3"),
        "row 181: rating nan is not a finite number"),
    "rating 'inf'": Case(
        lambda d: prepare_args(write(d / "r.csv", HEADER + rows() + "1,2,-inf\n"), d / "data",
                               "--rating-col", "rating"),
        "row 181: rating -inf is not a finite number"),
    "parquet float id 4.5": Case(
        lambda d: prepare_args(parquet(d / "r.parquet", pa.table(
            {"userId": [1.0, 4.5], "movieId": [1, 2]})), d / "data"),
        "row 2: id 4.5 is not an integer"),
    "parquet float id 1e19 (beyond int64)": Case(_uint64_float, "id 1e+19 is not an integer"),
    "parquet binary ids, not UTF-8": Case(
        lambda d: prepare_args(parquet(d / "r.parquet", pa.table(
            {"userId": pa.array([b"\xff\xfe", b"a"], pa.binary()), "movieId": [1, 2]})),
            d / "data"), "cannot hold ids"),
    # --- bad settings
    "--min-rating nan": Case(lambda d: prepare_args(write(d / "r.csv", HEADER + rows()),
                                                    d / "data", "--rating-col", "rating",
                                                    "--min-rating", "nan"),
                             "prepare.min_rating = nan"),
    "--min-rating inf": Case(lambda d: prepare_args(write(d / "r.csv", HEADER + rows()),
                                                    d / "data", "--rating-col", "rating",
                                                    "--min-rating", "inf"),
                             "finite number"),
    "--val-users nan": Case(lambda d: prepare_args(write(d / "r.csv", HEADER + rows()),
                                                   d / "data", "--val-users", "nan"),
                            "prepare.val_users = nan"),
    "--test-users inf": Case(lambda d: prepare_args(write(d / "r.csv", HEADER + rows()),
                                                    d / "data", "--test-users", "inf"),
                             "prepare.test_users = inf"),
    "--shards 100000 on 26 training users": Case(
        lambda d: prepare_args(write(d / "r.csv", HEADER + rows()), d / "data", *SMALL_SPLIT,
                               "--shards", "100000"),
        "--shards 100,000 is more than the 26 training users"),
    "bench prepare --rows -5": Case(
        lambda d: ["bench", "prepare", "--rows", "-5", "--workdir", d / "data"],
        "--rows must be at least 1, got -5"),
    "bench prepare --rows 0": Case(
        lambda d: ["bench", "prepare", "--rows", "0", "--workdir", d / "data"],
        "--rows must be at least 1"),
    # --- where the output goes
    "--out under /proc": Case(lambda d: prepare_args(write(d / "r.csv", HEADER + rows()),
                                                     "/proc/vaecf-x/y", *SMALL_SPLIT),
                              "cannot create --out /proc/vaecf-x/y: cannot write in /proc",
                              out=lambda d: Path("/proc/vaecf-x/y")),
    "--out below a file": Case(lambda d: prepare_args(write(d / "r.csv", HEADER + rows()),
                                                      write(d / "f", "x") / "sub", *SMALL_SPLIT),
                               "f is not a directory", out=lambda d: d / "f" / "sub"),
    "--out two levels below a file": Case(
        lambda d: prepare_args(write(d / "r.csv", HEADER + rows()),
                               write(d / "f", "x") / "a" / "b", *SMALL_SPLIT),
        "f is not a directory", out=lambda d: d / "f" / "a" / "b"),
    "--out is a file, --force": Case(
        lambda d: prepare_args(write(d / "r.csv", HEADER + rows()), write(d / "f", "x"),
                               *SMALL_SPLIT, "--force"),
        "exists and is not a directory", out=lambda d: d / "f"),
    "--out is a file": Case(
        lambda d: prepare_args(write(d / "r.csv", HEADER + rows()), write(d / "f", "x"),
                               *SMALL_SPLIT),
        "f exists and is not a directory", out=lambda d: d / "f"),
    "--out is the input": Case(
        lambda d: prepare_args(write(d / "r.csv", HEADER + rows()), d / "r.csv", "--force"),
        "overlaps the input", out=lambda d: d / "r.csv"),
    "--force over a directory that is not a dataset": Case(
        lambda d: prepare_args(write(d / "r.csv", HEADER + rows()),
                               write((d / "mine").mkdir() or d / "mine" / "keep.txt", "x").parent,
                               *SMALL_SPLIT, "--force"),
        "is not a vaecf dataset", out=lambda d: d / "mine"),
    "--out exists, no --force": Case(
        lambda d: prepare_args(write(d / "r.csv", HEADER + rows()),
                               (d / "data").mkdir() or d / "data", *SMALL_SPLIT),
        "already exists (use --force", out=lambda d: d / "data"),
    "disk full while writing": Case(
        lambda d: prepare_args(write(d / "r.csv", HEADER + rows()), d / "data", *SMALL_SPLIT),
        "cannot write dataset", patch=_disk_full),
}


def listing(directory: Path) -> dict[str, int]:
    """Every path under ``directory`` (hidden ones included) with its size (-1: directory)."""
    return {str(p.relative_to(directory)): (-1 if p.is_dir() else p.stat().st_size)
            for p in sorted(directory.rglob("*"))}


def assert_one_error_line(err: str, message: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: "), err
    assert message in line, err
    # No raw control characters (or other non-printables) reach the terminal.
    assert all(ch.isprintable() for ch in line), repr(line)
    return line


@pytest.mark.parametrize("name", list(CASES))
def test_fault_is_one_line_and_leaves_nothing(tmp_path, cli, monkeypatch, name):
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    args = case.setup(work)
    out = case.out(work) if case.out else work / "data"
    existed = out.exists()
    before = listing(work)
    if case.patch:
        case.patch(monkeypatch)
    result = cli(*args)
    assert result.code == case.code, result.err
    assert_one_error_line(result.err, case.message)
    assert listing(work) == before  # no partial output, no hidden temporary left
    assert out.exists() == existed


def test_case_table_is_large_enough():
    assert len(CASES) >= 30


def test_disk_full_keeps_the_previous_dataset(tmp_path, cli, monkeypatch):
    source = write(tmp_path / "r.csv", HEADER + rows())
    out = tmp_path / "data"
    assert cli(*prepare_args(source, out, *SMALL_SPLIT)).code == 0
    before = listing(tmp_path)
    _disk_full(monkeypatch)
    result = cli(*prepare_args(source, out, *SMALL_SPLIT, "--seed", "3", "--force"))
    assert result.code == 2
    assert_one_error_line(result.err, "No space left on device")
    assert listing(tmp_path) == before


# --------------------------------------------------------------------------- the id rule


def _read_ids(path: Path, column: str = "movieId") -> list:
    from vaecf.data.readers import ColumnSpec, read_file

    return read_file(path, ColumnSpec("userId", column)).items.to_pylist()


def _frames_ids(path: Path, column: str = "movieId") -> list:
    import pandas

    from vaecf.data import frames
    from vaecf.data.readers import ColumnSpec

    return frames.read_file(pandas, path, ColumnSpec("userId", column), None)["item"].tolist()


ID_FILES = {
    # name -> (CSV text of the movieId column values, ids read)
    "canonical ints": (["1", "-4", "0", "9223372036854775807", "-9223372036854775808"],
                       [1, -4, 0, 9223372036854775807, -9223372036854775808]),
    "leading zeros": (["004", "4", "007"], ["004", "4", "007"]),
    "decimals": (["4.0", "4", "4.5"], ["4.0", "4", "4.5"]),
    "plus sign and minus zero": (["+4", "4", "-0"], ["+4", "4", "-0"]),
    "spaces kept as written": ([" 42", "42"], [" 42", "42"]),
    "2^63 and beyond": (["1", "9223372036854775808"], ["1", "9223372036854775808"]),
    "below -2^63": (["1", "-9223372036854775809"], ["1", "-9223372036854775809"]),
    "hex": (["0x10", "16"], ["0x10", "16"]),
    "NA and null are ids": (["NA", "null", "4"], ["NA", "null", "4"]),
}


@pytest.mark.parametrize("name", list(ID_FILES))
def test_id_rule_csv_and_frames_reader(tmp_path, name):
    values, expected = ID_FILES[name]
    source = write(tmp_path / "r.csv",
                   "userId,movieId\n" + "".join(f'1,"{v}"\n' for v in values))
    assert _read_ids(source) == expected
    assert _frames_ids(source) == expected  # the cuDF/dask reader, on pandas


def test_id_rule_parquet(tmp_path):
    """A Parquet column keeps its declared type; only text without a schema needs the rule."""
    def ids(table: pa.Table) -> list:
        path = parquet(tmp_path / "r.parquet", table)
        assert _frames_ids(path) == _read_ids(path)  # the cuDF/dask reader agrees
        return _read_ids(path)

    users = pa.array([1, 1, 1])
    assert ids(pa.table({"userId": users, "movieId": ["1", "2", "3"]})) == ["1", "2", "3"]
    assert ids(pa.table({"userId": users, "movieId": ["004", "4", "7"]})) == ["004", "4", "7"]
    assert ids(pa.table({"userId": users, "movieId": pa.array([4, 5, 6], pa.int32())})) == \
        [4, 5, 6]
    # Unsigned values beyond int64 become their decimal text (as such ids in a CSV would).
    big = pa.array([1, 2, 2**64 - 1], pa.uint64())
    assert ids(pa.table({"userId": users, "movieId": big})) == ["1", "2", str(2**64 - 1)]
    assert ids(pa.table({"userId": users, "movieId": [4.0, 5.0, -1.0]})) == [4, 5, -1]
    # A dictionary-encoded text column (pandas categorical) is text.
    cat = pa.array(["004", "4", "004"]).dictionary_encode()
    assert _read_ids(parquet(tmp_path / "r.parquet", pa.table({"userId": users,
                                                               "movieId": cat}))) == \
        ["004", "4", "004"]


def _prepared_items(cli, source: Path, out: Path, *extra: object) -> list:
    result = cli(*prepare_args(source, out, *SMALL_SPLIT, *extra))
    assert result.code == 0, result.err
    return pq.read_table(out / "items.parquet")["item_id"].to_pylist()


def test_prepare_keeps_004_and_4_apart(tmp_path, cli):
    """The issue's case: "004" and "4" (and "4.0") were merged into one item."""
    body = "".join(f"{u},{i}\n" for u in range(30) for i in range(10, 16))
    body += "".join(f"{u},{i}\n" for u in range(30) for i in ("004", "4", "4.0", "007"))
    source = write(tmp_path / "r.csv", "userId,movieId\n" + body)
    items = _prepared_items(cli, source, tmp_path / "data")
    assert {"004", "4", "4.0", "007", "10"} <= set(items)
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["columns"]["item_id_type"] == "string"


def test_prepare_csv_and_parquet_text_ids_give_the_same_dataset(tmp_path, cli):
    """Ids that are not all canonical: the CSV's text and a Parquet string column of the same
    values give the same dataset, byte for byte."""
    body = "".join(f"{u},{i:03d}\n" for u in range(30) for i in range(u, u + 6))
    source = write(tmp_path / "r.csv", "userId,movieId\n" + body)
    table = pacsv.read_csv(source, convert_options=pacsv.ConvertOptions(
        column_types={"userId": pa.int64(), "movieId": pa.string()}))
    as_parquet = parquet(tmp_path / "r.parquet", table)
    a = _prepared_items(cli, source, tmp_path / "a")
    b = _prepared_items(cli, as_parquet, tmp_path / "b")
    assert a == b and "000" in a and "004" in a
    for name in ("items.parquet", "users.parquet", "train-00000-of-00001.indices.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_prepare_ids_beyond_int64_are_strings(tmp_path, cli):
    body = "".join(f"{u},{2**63 + i}\n" for u in range(30) for i in range(u, u + 6))
    source = write(tmp_path / "r.csv", "userId,movieId\n" + body)
    items = _prepared_items(cli, source, tmp_path / "data")
    assert str(2**63) in items and all(isinstance(i, str) for i in items)


def test_prepare_strips_a_byte_order_mark(tmp_path, cli):
    source = write(tmp_path / "r.csv", b"\xef\xbb\xbf" + (HEADER + rows()).encode())
    gzipped = gz(tmp_path / "r.csv.gz", "\ufeff" + HEADER + rows())
    a = _prepared_items(cli, source, tmp_path / "a")
    b = _prepared_items(cli, gzipped, tmp_path / "b")
    assert a == b and a[0] == 0


def test_readers_agree_on_mixed_files(tmp_path):
    """pyarrow and the pandas/cuDF reader give the same Encoded for the id-rule files."""
    import pandas

    from vaecf.data import frames
    from vaecf.data.readers import ColumnSpec, encode, read_inputs

    first = write(tmp_path / "a.csv", "userId,movieId\n1,4\n2,5\n")
    second = write(tmp_path / "b.csv", "userId,movieId\n1,004\n3,4.0\n")
    spec = ColumnSpec("userId", "movieId")
    cpu = encode(read_inputs([first, second], spec), None)
    other = frames.read_encoded(pandas, [first, second], spec, None)
    assert cpu.item_ids.to_pylist() == other.item_ids.to_pylist() == ["004", "4", "4.0", "5"]
    assert cpu.user_ids.equals(other.user_ids)
    assert np.array_equal(cpu.items, np.asarray(other.items))


def test_coerce_ids_follows_the_rule():
    from vaecf.serving.items import coerce_ids

    strings = pa.array(["4", "004", "4.0", " 4", "+4", "-0", "9223372036854775808", "-7"])
    assert coerce_ids(strings, pa.int64()).to_pylist() == [4, None, None, None, None, None,
                                                          None, -7]
    assert coerce_ids(pa.array([4, -7]), pa.string()).to_pylist() == ["4", "-7"]


# ------------------------------------------------------ recommend maps ids by the same rule


@pytest.fixture(scope="module")
def id_runs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny trained runs: "int" (items 1..12) and "string" (items include "4" and
    "004")."""
    from vaecf.backend import cpu_backend
    from vaecf.data.prepare import prepare
    from vaecf.settings import PrepareSettings, Settings
    from vaecf.training.loop import train

    base = tmp_path_factory.mktemp("id-runs")
    catalogues = {"int": [str(i) for i in range(1, 13)],
                  "string": ["4", "004", "007", "7", "4.0"] + [f"m{i}" for i in range(7)]}
    runs = {}
    for kind, items in catalogues.items():
        body = "".join(f"{u},{items[(u + k) % len(items)]}\n" for u in range(60) for k in range(6))
        source = write(base / f"{kind}.csv", "userId,movieId\n" + body)
        data, run = base / f"data-{kind}", base / f"run-{kind}"
        prepare([str(source)], data, PrepareSettings(val_users=4, test_users=4,
                                                     min_user_interactions=1),
                cpu_backend(), quiet=True)
        settings = Settings.model_validate({"model": {"hidden": 16, "latent": 8},
                                            "train": {"epochs": 1, "batch_size": 20,
                                                      "backend": "cpu"}})
        train(settings, data, run, cpu_backend(), quiet=True)
        runs[kind] = run
    return runs


def _recommended(cli, *args: object) -> tuple[list, list, str]:
    result = cli("recommend", *args, "--format", "json", "--top-k", 12)
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    return [r["item"] for r in doc["recommendations"]], doc["unknown_items"], result.err


def test_user_items_004_is_not_item_4_of_an_int_model(cli, id_runs):
    items, unknown, err = _recommended(cli, "--run", id_runs["int"], "--user-items",
                                       "004, 4 ,+5,6.0")
    assert unknown == ["004", "+5", "6.0"]
    assert 4 not in items and 5 in items and 6 in items  # only "4" was taken as seen
    result = cli("recommend", "--run", id_runs["int"], "--user-items", "004,007")
    assert result.code == 2
    assert_one_error_line(result.err, "none of the 2 item id(s) is known")


def test_user_items_of_a_string_model_match_as_written(cli, id_runs):
    items, unknown, _ = _recommended(cli, "--run", id_runs["string"], "--user-items", "004")
    assert unknown == [] and "004" not in items and "4" in items
    items, _, _ = _recommended(cli, "--run", id_runs["string"], "--user-items", "4,007")
    assert "4" not in items and "007" not in items and "004" in items and "7" in items


def test_input_file_ids_match_as_written(tmp_path, cli, id_runs):
    request = write(tmp_path / "req.csv", "userId,movieId\nu1,004\nu1,m1\nu2,4\n")
    result = cli("recommend", "--run", id_runs["string"], "--input", request, "--format",
                 "json", "--top-k", 12)
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    seen = {u["user"]: [r["item"] for r in u["recommendations"]] for u in doc["users"]}
    assert "004" not in seen["u1"] and "4" in seen["u1"]
    assert "4" not in seen["u2"] and "004" in seen["u2"]
    # Against an int model "004" is unknown (a warning names it), "4" maps to item 4.
    result = cli("recommend", "--run", id_runs["int"], "--input", request, "--format", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert "004" in doc["unknown_items"] and [u["user"] for u in doc["users"]] == ["u2"]


def test_recommend_warning_escapes_control_characters(cli, id_runs):
    result = cli("recommend", "--run", id_runs["int"], "--user-items", "1,\x1b[2Jx",
                 "--format", "json")
    assert result.code == 0, result.err
    assert "\x1b" not in result.err and "\\x1b" in result.err


# --------------------------------------------------------------- kill -9 and Ctrl-C on prepare


@pytest.fixture(scope="session")
def big_csv(tmp_path_factory) -> Path:
    """A 2M-row ratings CSV (about 48 MB), written once per session."""
    from vaecf.bench.synthetic import write_ratings_csv

    path = tmp_path_factory.mktemp("big") / "ratings.csv"
    write_ratings_csv(path, 2_000_000, 14_000, 8_000)
    return path


def _start(source: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen(
        [sys.executable, "-m", "vaecf", "prepare", str(source), "--out", str(out), "-q",
         "--rating-col", "rating", "--min-rating", "3.5", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _reading(child: subprocess.Popen, source: Path) -> bool:
    """Whether the child has the input open (it is past start-up, hashing or reading)."""
    try:
        fds = os.listdir(f"/proc/{child.pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{child.pid}/fd/{fd}") == str(source):
                return True
        except OSError:
            continue
    return False


def _wait_for(child: subprocess.Popen, when: str | float, source: Path, out: Path) -> bool:
    """Sleep until the moment ``when``: seconds after start, "reading" (input open) or
    "writing" (the temporary directory exists). False when the child finished first."""
    deadline = time.monotonic() + 120
    start = time.monotonic()
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return False
        if isinstance(when, float) and time.monotonic() - start >= when:
            return True
        if when == "reading" and _reading(child, source):
            return True
        if when == "writing" and any(p.name.startswith(f".{out.name}.tmp-")
                                     for p in out.parent.iterdir()):
            return True
        time.sleep(0.005)
    raise AssertionError(f"prepare never reached {when!r}")


def _hidden(parent: Path, out: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}."))


KILL_POINTS = [0.5, 1.5, 3.0, "reading", "writing"]


@pytest.mark.parametrize("when", KILL_POINTS, ids=str)
def test_kill_9_during_prepare_leaves_no_dataset(tmp_path, big_csv, when):
    out = tmp_path / "data"
    child = _start(big_csv, out)
    if _wait_for(child, when, big_csv, out):
        child.send_signal(signal.SIGKILL)
        child.wait()
        if out.exists():   # the kill came after the commit, before the exit: a whole dataset
            assert json.loads((out / "meta.json").read_text())["stats"]["rows_read"] > 0
            return
    else:  # finished before the kill: a complete dataset
        assert child.returncode == 0 and (out / "meta.json").exists()
        return
    # The next prepare into the same place succeeds (a user simply runs it again).
    rerun = _start(ML_SMALL, out)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert json.loads((out / "meta.json").read_text())["stats"]["rows_read"] == 100_836


@pytest.mark.parametrize("when", [1.5, "writing"], ids=str)
def test_kill_9_during_force_keeps_the_previous_dataset(tmp_path, big_csv, when):
    out = tmp_path / "data"
    first = _start(ML_SMALL, out)
    assert first.wait(timeout=300) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    child = _start(big_csv, out, "--force")
    if not _wait_for(child, when, big_csv, out):
        pytest.skip("prepare finished before the kill point on this machine")
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("when", ["reading", "writing"])
def test_ctrl_c_during_prepare_exits_130_with_one_line(tmp_path, big_csv, when):
    out = tmp_path / "data"
    child = _start(big_csv, out)
    if not _wait_for(child, when, big_csv, out):
        pytest.skip("prepare finished before the interrupt on this machine")
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert_one_error_line(err, "interrupted")
    assert not out.exists()
    assert _hidden(tmp_path, out) == []  # Ctrl-C cleans its own temporary directory


def test_next_prepare_cleans_a_killed_runs_temporary_directory(tmp_path, big_csv):
    out = tmp_path / "data"
    child = _start(big_csv, out)
    if not _wait_for(child, "writing", big_csv, out):
        pytest.skip("prepare finished before the kill point on this machine")
    child.send_signal(signal.SIGKILL)
    child.wait()
    stale = _hidden(tmp_path, out)
    # A directory left by a process that is gone, next to one of a (pretend) live process.
    live = tmp_path / f".{out.name}.tmp-{os.getpid()}"
    live.mkdir()
    rerun = _start(ML_SMALL, out)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert stale and _hidden(tmp_path, out) == [live.name]

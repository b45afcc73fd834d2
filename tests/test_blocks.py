"""Input files cut into blocks for ``prepare --dask``: the blocks partition the file's lines,
and the pandas-API reader that cuDF runs reads each block as the pyarrow reader does (same
codes, same ids, same error line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas
import pyarrow.parquet as pq
import pytest
from helpers import ML_1M, ML_100K, ML_SMALL, need

from vaecf.data import blocks, frames
from vaecf.data.readers import ColumnSpec, encode, read_file
from vaecf.errors import VaecfError

SMALL = ColumnSpec("userId", "movieId", "rating", None, True)


@pytest.mark.parametrize("blocksize", [1024, 4096, 50_000, 10 ** 9])
def test_blocks_partition_the_lines_of_a_file(blocksize):
    plan = blocks.plan([ML_SMALL], blocksize)
    parts = [blocks.load(block) for block in plan]
    if len(plan) == 1:
        assert parts == [None]   # small enough: read whole, as without dask
        return
    data = [part.data for part in parts]
    assert b"".join(data) == ML_SMALL.read_bytes()
    assert all(chunk.endswith(b"\n") for chunk in data[:-1])
    assert [part.has_header for part in parts] == [True] + [False] * (len(parts) - 1)


def _same(a, b) -> None:
    assert np.array_equal(np.asarray(a.users), np.asarray(b.users))
    assert np.array_equal(np.asarray(a.items), np.asarray(b.items))
    assert a.user_ids.equals(b.user_ids) and a.item_ids.equals(b.item_ids)
    assert a.rows_read == b.rows_read


def _both_readers(path: Path, spec: ColumnSpec, min_rating, blocksize: int) -> int:
    """Each block read by pyarrow and by the pandas-API reader gives the same Encoded; and
    the blocks together hold the file's rows. Returns the number of blocks."""
    plan = blocks.plan([path], blocksize)
    rows = 0
    for block in plan:
        part = blocks.load(block)
        arrow = encode(read_file(path, spec, part), min_rating)
        frame = frames.read_file(pandas, path, spec, min_rating, part)
        _same(frames.encode_frame(frame, len(frame)), arrow)
        rows += arrow.rows_read
    assert rows == encode(read_file(path, spec), min_rating).rows_read
    return len(plan)


def test_pandas_reader_reads_csv_blocks_as_pyarrow():
    assert _both_readers(ML_SMALL, SMALL, 3.5, 200_000) == -(-ML_SMALL.stat().st_size // 200_000)


def test_pandas_reader_reads_headerless_tsv_blocks_as_pyarrow():
    spec = ColumnSpec("0", "1", "2", None, False)
    assert _both_readers(need(ML_100K), spec, 4, 300_000) == -(-ML_100K.stat().st_size // 300_000)


def test_pandas_reader_reads_double_colon_blocks_as_pyarrow(tmp_path):
    source = tmp_path / "ratings.dat"
    source.write_text("".join(f"{u}::{i}::{u % 5}::0\n" for u in range(400)
                              for i in range(u % 7, u % 7 + 30)))
    assert _both_readers(source, ColumnSpec("0", "1", "2", "::", False), 2, 20_000) == \
        -(-source.stat().st_size // 20_000)


def test_pandas_reader_reads_parquet_row_groups_as_pyarrow(tmp_path):
    source = tmp_path / "ratings.parquet"
    pq.write_table(pq.read_table(need(ML_1M)).slice(0, 100_000), source,
                   row_group_size=30_000)
    assert _both_readers(source, ColumnSpec("userID", "movieID"), None, 10 ** 9) == 4


def test_both_readers_name_a_bad_row_of_a_later_block_by_the_same_byte(tmp_path):
    source = tmp_path / "ratings.csv"
    lines = ["userId,movieId,rating"] + [f"{r % 90},{r % 40},4" for r in range(3000)]
    lines[2500] = "5,6,lots"
    source.write_text("\n".join(lines) + "\n")
    offset = len("\n".join(lines[:2500])) + 1
    messages = []
    plan = blocks.plan([source], 4096)
    bad = [block for block in plan if block.start <= offset < block.stop][0]
    for read in (lambda part: read_file(source, SMALL, part),
                 lambda part: frames.read_file(pandas, source, SMALL, 3, part)):
        with pytest.raises(VaecfError) as caught:
            read(blocks.load(bad))
        messages.append(str(caught.value))
    assert messages[0] == messages[1] == (
        f"{source}: column 'rating' row at byte {offset}: rating 'lots' is not a number")

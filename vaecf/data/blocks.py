"""Input files cut into blocks that dask workers read on their own (``prepare --dask``).

A CSV/TSV file larger than the block size is cut into byte ranges of about that size, each
moved to the next line start, so every line belongs to exactly one block (the one its first
byte falls in). A Parquet file gives one block per row group. A gzip file cannot be entered
in the middle and stays one block. The blocks of a file partition its rows, so reading them
one by one and concatenating in order gives the same rows as reading the file whole.

Messages about a bad value still name the file, column and row. In a CSV block after the
first, the row's number is unknown without reading the file up to there, so the row is named
by the byte offset at which its line starts (``row at byte 268435519``): ``tail -c
+268435520 FILE | head -1`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaecf.data.readers import Part, is_gzip, is_parquet
from vaecf.errors import VaecfError, printable

_SCAN = 1 << 16   # bytes read at a time while looking for a line's end


@dataclass(frozen=True)
class Block:
    """One piece of one input file.

    Attributes:
        path: the file.
        start, stop: the byte range [start, stop) a CSV block is cut from (moved to line
            starts when read); the whole file for an undivided file.
        row_group: the Parquet row group, or None.
        first_row: rows of the file before this row group (Parquet), for messages.
        whole: the file is read whole (one block: small, gzip, or one row group).
    """

    path: str
    start: int
    stop: int
    row_group: int | None = None
    first_row: int = 0
    whole: bool = True


def parse_blocksize(text: str) -> int:
    """``--blocksize`` in bytes, from ``256MB``, ``4MiB`` or a plain number (dask's units)."""
    from dask.utils import parse_bytes

    try:
        size = int(parse_bytes(text))
    except (ValueError, TypeError):
        raise VaecfError(f"--blocksize: cannot read {text!r} as a size (e.g. 4MB, 256MB, "
                         "1GiB)") from None
    if size < 1024:
        raise VaecfError(f"--blocksize {text} is below the smallest block, 1 KiB")
    return size


def plan(paths: list[Path], blocksize: int) -> list[Block]:
    """Every input's blocks, in file order and row order within a file."""
    blocks: list[Block] = []
    for path in paths:
        size = path.stat().st_size
        if is_parquet(path) and not is_gzip(path):
            blocks += _row_groups(path)
        elif is_gzip(path) or size <= blocksize:
            blocks.append(Block(str(path), 0, size))
        else:
            cuts = list(range(0, size, blocksize)) + [size]
            blocks += [Block(str(path), lo, hi, whole=False)
                       for lo, hi in zip(cuts, cuts[1:], strict=False)]
    return blocks


def _row_groups(path: Path) -> list[Block]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError) as error:
        raise VaecfError(f"{printable(path)}: cannot read as Parquet: "
                         f"{printable(str(error).splitlines()[0], 200)}") from None
    size = path.stat().st_size
    if meta.num_row_groups <= 1:
        return [Block(str(path), 0, size)]
    rows = np.cumsum([0] + [meta.row_group(k).num_rows for k in range(meta.num_row_groups)])
    return [Block(str(path), 0, size, row_group=k, first_row=int(rows[k]), whole=False)
            for k in range(meta.num_row_groups)]


def _line_start(handle, offset: int, size: int) -> int:
    """Offset of the first line that starts at or after ``offset``."""
    if offset <= 0:
        return 0
    if offset >= size:
        return size
    handle.seek(offset - 1)
    position = offset - 1
    while chunk := handle.read(_SCAN):
        newline = chunk.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(chunk)
    return size


def load(block: Block) -> Part | None:
    """The block's content as a :class:`~vaecf.data.readers.Part`; None for a whole file
    (read by path, exactly as without dask)."""
    if block.whole:
        return None
    if block.row_group is not None:
        first = block.first_row
        return Part(row_group=block.row_group, row_name=lambda row: f"row {first + row}")
    path = Path(block.path)
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            start = _line_start(handle, block.start, size)
            stop = _line_start(handle, block.stop, size)
            handle.seek(start)
            data = handle.read(max(0, stop - start))
    except OSError as error:
        raise VaecfError(f"{printable(path)}: cannot read ({printable(error.strerror or error)})"
                         ) from None
    if start == 0:
        return Part(data=data, has_header=True)
    return Part(data=data, has_header=False, row_name=_byte_namer(data, start))


def _byte_namer(data: bytes, start: int):
    """Names a 1-based row of a block by the byte offset of its line in the file. The parser
    skips empty lines, so they are skipped here too."""

    def name(row: int) -> str:
        text = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(text == 0x0A)
        starts = np.concatenate([[0], ends + 1])
        stops = np.concatenate([ends, [len(text)]])
        nonempty = starts[(stops - starts > 0) & ~((stops - starts == 1) & (text[
            np.minimum(starts, len(text) - 1)] == 0x0D))]
        offset = int(nonempty[row - 1]) if row - 1 < len(nonempty) else 0
        return f"row at byte {start + offset}"

    return name

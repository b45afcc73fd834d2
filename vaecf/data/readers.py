"""Read interaction files (CSV/TSV/any separator, gzip or not, Parquet) into Arrow columns.

This is the CPU dataframe side (pyarrow: multithreaded, ~29M rows/s on a CSV here); it only
reads, checks and concatenates. Everything after it works on integer arrays through the
array backend, so the GPU reader only has to produce the same :class:`Interactions`.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vaecf.errors import VaecfError

PARQUET_SUFFIXES = (".parquet", ".pq")
# Single-byte stand-in for multi-character separators such as MovieLens' "::", which
# pyarrow's CSV parser cannot split on.
UNIT_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class ColumnSpec:
    """Which columns to read: names, or 0-based positions given as digit strings."""

    user: str
    item: str
    rating: str | None = None
    sep: str | None = None
    header: bool = True


@dataclass
class Interactions:
    """The raw interactions of all input files, in file order.

    Attributes:
        users: user ids, int64 or string, length n.
        items: item ids, int64 or string, length n.
        ratings: float64 ratings, length n, or None when no rating column was asked for.
    """

    users: pa.ChunkedArray
    items: pa.ChunkedArray
    ratings: pa.ChunkedArray | None


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Expand files and globs in the given order; a pattern matching nothing is an error."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not Path(matches[0]).exists():
            raise VaecfError(f"input file not found: {pattern}")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                raise VaecfError(f"input is a directory, not a file: {path}")
            paths.append(path)
    return paths


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def strip_gz(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def guess_sep(path: Path) -> str:
    """Tab for .tsv/.tab, comma for .csv, else sniffed from the first line."""
    name = strip_gz(path)
    if name.endswith((".tsv", ".tab")):
        return "\t"
    if name.endswith(".csv"):
        return ","
    with _open_text(path) as handle:
        first = handle.readline()
    for candidate in ("::", "\t", ",", ";", "|"):
        if candidate in first:
            return candidate
    return " " if " " in first.strip() else ","


def resolve_column(spec_col: str, names: list[str], path: Path, header: bool, role: str) -> str:
    """Map a column given by name or 0-based position to the file's column name."""
    if header and spec_col in names:
        return spec_col
    if spec_col.isdigit():
        position = int(spec_col)
        if position >= len(names):
            raise VaecfError(
                f"{path}: {role} column position {position} is out of range "
                f"(the file has {len(names)} columns)"
            )
        return names[position]
    if not header:
        raise VaecfError(
            f"{path}: --no-header files name columns by 0-based position, "
            f"got {role} column {spec_col!r}"
        )
    raise VaecfError(
        f"{path}: unknown {role} column {spec_col!r} (columns: {', '.join(names)})"
    )


def _open_text(path: Path):
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8", errors="replace", newline="")


def _csv_names(path: Path, sep: str, header: bool) -> list[str]:
    """Column names from the first line (or f0, f1, ... for header-less files)."""
    with _open_text(path) as handle:
        first = handle.readline().rstrip("\r\n")
    if not first.strip():
        raise VaecfError(f"{path}: the file is empty")
    fields = next(csv.reader([first], delimiter=sep)) if len(sep) == 1 else first.split(sep)
    return fields if header else [f"f{k}" for k in range(len(fields))]


def _read_csv(path: Path, names: list[str] | None, wanted: list[str], sep: str) -> pa.Table:
    """Read only the wanted columns (parsing the others would triple the time).

    Args:
        names: column names to assign (header-less files), or None to take the header's.
    """
    source: Any = pa.input_stream(str(path), compression="detect")
    if len(sep) > 1:
        with source as stream:
            data = stream.read().replace(sep.encode(), UNIT_SEPARATOR.encode())
        source, sep = pa.BufferReader(data), UNIT_SEPARATOR
    read = pacsv.ReadOptions(column_names=names, block_size=1 << 24)
    try:
        return pacsv.read_csv(source, read_options=read,
                              parse_options=pacsv.ParseOptions(delimiter=sep),
                              convert_options=pacsv.ConvertOptions(include_columns=wanted))
    except pa.ArrowInvalid as error:
        message = str(error).splitlines()[0]
        raise VaecfError(f"{path}: cannot parse as CSV with separator {sep!r}: {message}") from None


def _read_table(path: Path, spec: ColumnSpec) -> tuple[pa.Table, list[str | None]]:
    """Read the user, item and rating columns; returns the table and their names in it."""
    roles = [("user", spec.user), ("item", spec.item), ("rating", spec.rating)]
    if strip_gz(path).endswith(PARQUET_SUFFIXES):
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as error:
            raise VaecfError(f"{path}: cannot read as Parquet: {error}") from None
        cols = [resolve_column(c, names, path, True, r) if c else None for r, c in roles]
        table = pq.read_table(path, columns=sorted({c for c in cols if c}))
        return table, cols
    sep = spec.sep or guess_sep(path)
    names = _csv_names(path, sep, spec.header)
    cols = [resolve_column(c, names, path, spec.header, r) if c else None for r, c in roles]
    wanted = sorted({c for c in cols if c})
    return _read_csv(path, None if spec.header else names, wanted, sep), cols


def _first_bad_row(mask: pa.ChunkedArray) -> int:
    """1-based row number of the first True in a boolean column."""
    return int(pc.index(mask, True).as_py()) + 1


def _check_ids(column: pa.ChunkedArray, path: Path, name: str) -> pa.ChunkedArray:
    """Ids must be present and non-empty; integers stay int64, anything else becomes string."""
    if column.null_count:
        row = _first_bad_row(pc.is_null(column))
        raise VaecfError(f"{path}: column {name!r} row {row}: missing id")
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64())
    if pa.types.is_floating(column.type):
        as_int = column.cast(pa.int64(), safe=False)
        bad = pc.not_equal(as_int.cast(column.type), column)
        if pc.any(bad).as_py():
            row = _first_bad_row(bad)
            value = column[row - 1].as_py()
            raise VaecfError(f"{path}: column {name!r} row {row}: id {value!r} is not an integer")
        return as_int
    strings = column.cast(pa.string())
    empty = pc.equal(pc.utf8_trim_whitespace(strings), "")
    if pc.any(empty).as_py():
        raise VaecfError(f"{path}: column {name!r} row {_first_bad_row(empty)}: empty id")
    return strings


def _check_ratings(column: pa.ChunkedArray, path: Path, name: str) -> pa.ChunkedArray:
    """Ratings must be numbers; the first offending row is named."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        if column.null_count:
            row = _first_bad_row(pc.is_null(column))
            raise VaecfError(f"{path}: column {name!r} row {row}: missing rating")
        return column.cast(pa.float64())
    strings = column.cast(pa.string())
    numeric = pc.match_substring_regex(
        strings, r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
    )
    bad = pc.invert(pc.fill_null(numeric, False))
    if pc.any(bad).as_py():
        row = _first_bad_row(bad)
        raise VaecfError(
            f"{path}: column {name!r} row {row}: rating {strings[row - 1].as_py()!r} "
            "is not a number"
        )
    return pc.utf8_trim_whitespace(strings).cast(pa.float64())


def read_file(path: Path, spec: ColumnSpec) -> Interactions:
    """Read one file's user, item and (optional) rating columns, checked."""
    table, (user, item, rating) = _read_table(path, spec)
    if table.num_rows == 0:
        raise VaecfError(f"{path}: the file has no rows")
    return Interactions(
        users=_check_ids(table[user], path, spec.user if not spec.header else user),
        items=_check_ids(table[item], path, spec.item if not spec.header else item),
        ratings=_check_ratings(table[rating], path, spec.rating if not spec.header else rating)
        if rating else None,
    )


def _unify(columns: list[pa.ChunkedArray]) -> pa.ChunkedArray:
    """Concatenate id columns; if files disagree (int vs string), all become strings."""
    types = {column.type for column in columns}
    if len(types) > 1:
        columns = [column.cast(pa.string()) for column in columns]
    return pa.chunked_array([chunk for column in columns for chunk in column.chunks])


def read_inputs(paths: list[Path], spec: ColumnSpec) -> Interactions:
    """Read and concatenate every input file, in order."""
    parts = [read_file(path, spec) for path in paths]
    ratings = None
    if spec.rating:
        ratings = pa.chunked_array([c for part in parts for c in part.ratings.chunks])
    return Interactions(
        users=_unify([part.users for part in parts]),
        items=_unify([part.items for part in parts]),
        ratings=ratings,
    )


@dataclass
class Encoded:
    """Interactions as integer codes, ready for the array backend.

    Attributes:
        users: int64 codes into ``user_ids``, shape (n,) (numpy; the backend moves it).
        items: int64 codes into ``item_ids``, shape (n,).
        user_ids: sorted unique original user ids (int64 or string), shape (n_users,).
        item_ids: sorted unique original item ids, shape (n_items,).
        rows_read: input rows before any filtering.
    """

    users: Any
    items: Any
    user_ids: pa.Array
    item_ids: pa.Array
    rows_read: int


def factorize_sorted(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Codes into the sorted unique values, so numbering never depends on file order.

    Returns:
        (int64 codes of shape (n,), sorted unique values of shape (k,)).
    """
    uniques = pc.unique(column)
    uniques = uniques.take(pc.sort_indices(uniques))
    codes = pc.index_in(column, value_set=uniques)
    return _int64_numpy(codes), uniques


def int64_arrow(values: np.ndarray) -> pa.Array:
    """An int64 NumPy array as an Arrow array, zero-copy (``pa.array`` would import pandas)."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def string_arrow(values: list[str]) -> pa.Array:
    """A list of str as an Arrow string array, built from buffers (``pa.array`` imports
    pandas)."""
    encoded = [value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def _int64_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A null-free integer column as an int64 NumPy array.

    Read straight from the Arrow buffer: pyarrow's ``to_numpy`` imports pandas (1.5 s here).
    """
    array = column.cast(pa.int64()).combine_chunks()
    return np.frombuffer(array.buffers()[1], dtype=np.int64, count=len(array),
                         offset=array.offset * 8).copy()


def encode(data: Interactions, min_rating: float | None) -> Encoded:
    """Apply the rating threshold (keep rating >= min_rating) and factorize ids."""
    rows_read = len(data.users)
    users, items = data.users, data.items
    if min_rating is not None and data.ratings is not None:
        keep = pc.greater_equal(data.ratings, min_rating)
        users, items = users.filter(keep), items.filter(keep)
    user_codes, user_ids = factorize_sorted(users)
    item_codes, item_ids = factorize_sorted(items)
    return Encoded(user_codes, item_codes, user_ids, item_ids, rows_read)

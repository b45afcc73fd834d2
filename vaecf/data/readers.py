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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vaecf.errors import VaecfError, printable

PARQUET_SUFFIXES = (".parquet", ".pq")
# The id rule (docs/data-reliability.md): ids given as text (CSV fields, --user-items) are
# integers only when every value of the column is a plain canonical integer within int64;
# otherwise all stay strings, exactly as written ("004", "4.0", " 4" and "4" are four different
# ids). A typed (Parquet) column keeps its type: integers stay integers, strings stay strings.
CANONICAL_INTEGER = r"^(?:0|-?[1-9][0-9]{0,18})$"
_INT64_MAX = "9223372036854775807"
_INT64_MIN = "-9223372036854775808"
_POWERS_OF_TEN = np.array([10 ** k for k in range(1, 20)], dtype=np.uint64)
# How many bytes of a text input are checked before parsing (binary junk is refused early).
_SNIFF_BYTES = 1 << 16
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


def row_label(row: int) -> str:
    """How a 1-based row of a whole file is named in messages."""
    return f"row {row}"


@dataclass(frozen=True)
class Part:
    """A piece of one input file that is read on its own (``prepare --dask``).

    Attributes:
        data: a CSV block's bytes, whole lines only (the header line only in the file's first
            block), or None for a Parquet row group.
        row_group: the Parquet row group, or None for a CSV block.
        has_header: whether ``data`` starts with the file's header line.
        row_name: how a 1-based row of the piece is named in messages (a row number, or a byte
            offset where the number is unknown without reading the file up to there).
    """

    data: bytes | None = None
    row_group: int | None = None
    has_header: bool = True
    row_name: Callable[[int], str] = row_label


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


def shown(value: object) -> str:
    """A user value quoted for a message: ``repr`` with non-printables escaped."""
    return printable(repr(value))


def canonical_integers(strings: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Boolean mask: which strings are plain canonical integers within int64 (the id rule).

    ``0`` or ``-?[1-9][0-9]*`` only: no sign ``+``, no leading zeros, no spaces, no ``-0``.
    """
    mask = pc.match_substring_regex(strings, CANONICAL_INTEGER)
    # 19 digits (20 with "-") may still be out of range; equal-length digit strings compare
    # like the numbers.
    length = pc.utf8_length(strings)
    negative = pc.starts_with(strings, "-")
    too_big = pc.or_(
        pc.and_(pc.and_(pc.equal(length, 19), pc.invert(negative)),
                pc.greater(strings, _INT64_MAX)),
        pc.and_(pc.and_(pc.equal(length, 20), negative), pc.greater(strings, _INT64_MIN)),
    )
    return pc.and_(pc.fill_null(mask, False), pc.invert(pc.fill_null(too_big, False)))


def ids_from_text(strings: pa.ChunkedArray) -> pa.ChunkedArray:
    """The id rule on a null-free, non-empty-valued string column: int64 when every value is a
    canonical integer within int64, else the strings unchanged.

    Same answer as ``pc.all(canonical_integers(strings))``, at a tenth of the cost (20M ids in
    about a second): Arrow's parser accepts exactly the int64 range, and once only digits and
    "-" are present every other spelling of a number ("004", "-0") is longer than the
    canonical one, so comparing total lengths decides.
    """
    if not len(strings):
        return strings
    try:
        ints = strings.cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return strings
    written = 0
    for text in strings.chunks:
        offsets = np.frombuffer(text.buffers()[1], dtype=np.int32,
                                count=len(text) + 1, offset=text.offset * 4)
        data = np.frombuffer(text.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
        digit = (data >= 0x30) & (data <= 0x39)
        if not np.all(digit | (data == 0x2D)):  # "0x1f" hex, or anything but digits and "-"
            return strings
        written += len(data)
    values = _int64_numpy(ints)
    magnitude = values.view(np.uint64).copy()
    negative = values < 0
    magnitude[negative] = ~magnitude[negative] + np.uint64(1)
    expected = int(np.searchsorted(_POWERS_OF_TEN, magnitude, side="right").sum()
                   + len(values) + negative.sum())
    return ints if written == expected else strings


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Expand files and globs in the given order; a pattern matching nothing is an error."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not Path(matches[0]).exists():
            raise VaecfError(f"input file not found: {printable(pattern)}")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                raise VaecfError(f"input is a directory, not a file: {printable(path)}")
            if not path.is_file():
                raise VaecfError(f"input is not a regular file: {printable(path)}")
            paths.append(path)
    return paths


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def source_entry(path: Path) -> dict[str, Any]:
    """meta.json's record of one input file: path, size and sha256."""
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def strip_gz(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def is_parquet(path: Path) -> bool:
    return strip_gz(path).endswith(PARQUET_SUFFIXES)


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
                f"{printable(path)}: {role} column position {position} is out of range "
                f"(the file has {len(names)} columns)"
            )
        return names[position]
    if not header:
        raise VaecfError(
            f"{printable(path)}: --no-header files name columns by 0-based position, "
            f"got {role} column {shown(spec_col)}"
        )
    listed = ", ".join(printable(name, 40) for name in names[:20])
    if len(names) > 20:
        listed += f" and {len(names) - 20} more"
    raise VaecfError(
        f"{printable(path)}: unknown {role} column {shown(spec_col)} (columns: {listed})"
    )


def is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _open_text(path: Path):
    # utf-8-sig: a byte order mark before the header is not part of the first column's name.
    opener = gzip.open if is_gzip(path) else open
    return opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="")


def check_text(path: Path) -> None:
    """Refuse, in one line, a text input that is not one: an empty file, a ``.gz`` that is not
    gzip or is cut short, binary data (NUL bytes) or bytes that are not UTF-8, judged on the
    first 64 KiB (pyarrow checks the rest while parsing)."""
    name = printable(path)
    try:
        if path.stat().st_size == 0:
            raise VaecfError(f"{name}: the file is empty")
        opener = gzip.open if is_gzip(path) else open
        with opener(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except (OSError, EOFError) as error:
        if is_gzip(path):
            raise VaecfError(f"{name}: not a valid gzip file ({_reason(error)})") from None
        raise VaecfError(f"{name}: cannot read the file ({_reason(error)})") from None
    if not head.strip():
        raise VaecfError(f"{name}: the file is empty")
    if b"\x00" in head:
        raise VaecfError(f"{name}: not a text file (it contains NUL bytes); expected CSV/TSV "
                         "text (gzip-compressed or not) or Parquet (.parquet)")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:  # not just a character cut at the 64 KiB boundary
            raise VaecfError(f"{name}: not a UTF-8 text file (byte {error.start + 1} cannot be "
                             "decoded); expected CSV/TSV text or Parquet") from None


def _reason(error: BaseException) -> str:
    """A library error's first line, safe to print."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return printable((text.splitlines() or [type(error).__name__])[0], 200)


def _csv_names(path: Path, sep: str, header: bool) -> list[str]:
    """Column names from the first line (or f0, f1, ... for header-less files); call
    :func:`check_text` first."""
    with _open_text(path) as handle:
        first = handle.readline().rstrip("\r\n")
    if not first.strip():
        raise VaecfError(f"{printable(path)}: the file is empty")
    fields = next(csv.reader([first], delimiter=sep)) if len(sep) == 1 else first.split(sep)
    return fields if header else [f"f{k}" for k in range(len(fields))]


def _read_csv(path: Path, names: list[str] | None, wanted: list[str], ids: list[str],
              sep: str, data: bytes | None = None) -> pa.Table:
    """Read only the wanted columns (parsing the others would triple the time).

    Args:
        names: column names to assign (header-less files), or None to take the header's.
        ids: the id columns, read as strings so the id rule sees them as written.
        data: a block of the file's bytes to parse instead of the file itself.
    """
    shown_sep = shown(sep)
    convert = pacsv.ConvertOptions(
        include_columns=wanted, column_types={name: pa.string() for name in ids},
        # Only an empty field is missing: "NA" or "null" are valid string ids.
        null_values=[""], strings_can_be_null=True)
    try:
        source: Any = (pa.input_stream(str(path), compression="detect") if data is None
                       else pa.BufferReader(data))
        if len(sep) > 1:
            with source as stream:
                text = stream.read().replace(sep.encode(), UNIT_SEPARATOR.encode())
            source, sep = pa.BufferReader(text), UNIT_SEPARATOR
        read = pacsv.ReadOptions(column_names=names, block_size=1 << 24)
        return pacsv.read_csv(source, read_options=read,
                              parse_options=pacsv.ParseOptions(delimiter=sep),
                              convert_options=convert)
    except pa.ArrowInvalid as error:
        raise VaecfError(f"{printable(path)}: cannot parse as CSV with separator {shown_sep}: "
                         f"{_reason(error)}") from None
    except (OSError, EOFError) as error:  # a truncated or damaged .gz, a read error
        what = "the gzip stream is damaged or cut short" if is_gzip(path) else "read error"
        raise VaecfError(f"{printable(path)}: cannot read ({what}: {_reason(error)})") from None


def _read_table(path: Path, spec: ColumnSpec,
                part: Part | None = None) -> tuple[pa.Table, list[str | None]]:
    """Read the user, item and rating columns (of one ``part`` of the file, if given);
    returns the table and their names in it."""
    roles = [("user", spec.user), ("item", spec.item), ("rating", spec.rating)]
    if is_parquet(path):
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowException, OSError) as error:
            raise VaecfError(f"{printable(path)}: cannot read as Parquet: {_reason(error)}"
                             ) from None
        cols = [resolve_column(c, names, path, True, r) if c else None for r, c in roles]
        try:
            # Page CRCs, when the writer stored them, catch flipped bytes in the data.
            columns = sorted({c for c in cols if c})
            if part is not None and part.row_group is not None:
                table = pq.ParquetFile(path, page_checksum_verification=True).read_row_group(
                    part.row_group, columns=columns)
            else:
                table = pq.read_table(path, columns=columns, page_checksum_verification=True)
        except (pa.ArrowException, OSError, EOFError) as error:
            raise VaecfError(f"{printable(path)}: damaged Parquet file, cannot read its data "
                             f"({_reason(error)})") from None
        return table, cols
    check_text(path)
    sep = spec.sep or guess_sep(path)
    names = _csv_names(path, sep, spec.header)
    cols = [resolve_column(c, names, path, spec.header, r) if c else None for r, c in roles]
    wanted = sorted({c for c in cols if c})
    ids = sorted({c for c in cols[:2] if c})
    # A block after the first has no header line: its columns are named from the file's.
    header_in_data = spec.header and (part is None or part.has_header)
    return _read_csv(path, None if header_in_data else names, wanted, ids, sep,
                     None if part is None else part.data), cols


def _first_bad_row(mask: pa.ChunkedArray) -> int:
    """1-based row number of the first True in a boolean column."""
    return int(pc.index(mask, True).as_py()) + 1


def _check_ids(column: pa.ChunkedArray, path: Path, name: str, typed: bool = False,
               row_name: Callable[[int], str] = row_label) -> pa.ChunkedArray:
    """Ids must be present and non-empty. Integer columns stay int64 (unsigned ones beyond
    int64 become their decimal strings), integral floats become int64; text read from a CSV
    follows the id rule (:func:`ids_from_text`), a ``typed`` (Parquet) text column stays
    text."""
    where = f"{printable(path)}: column {shown(name)}"
    if column.null_count:
        row = _first_bad_row(pc.is_null(column))
        raise VaecfError(f"{where} {row_name(row)}: missing id")
    if pa.types.is_integer(column.type):
        if pa.types.is_uint64(column.type) and len(column) and \
                pc.max(column).as_py() > int(_INT64_MAX):
            return column.cast(pa.string())
        return column.cast(pa.int64())
    if pa.types.is_floating(column.type):
        as_int = column.cast(pa.int64(), safe=False)
        bad = pc.not_equal(as_int.cast(column.type, safe=False), column)
        if pc.any(bad).as_py():
            row = _first_bad_row(bad)
            value = column[row - 1].as_py()
            raise VaecfError(f"{where} {row_name(row)}: id {shown(value)} is not an integer")
        return as_int
    try:
        strings = column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise VaecfError(f"{where}: a {printable(column.type)} column cannot hold ids "
                         "(expected integers or text)") from None
    empty = pc.equal(pc.utf8_trim_whitespace(strings), "")
    if pc.any(empty).as_py():
        raise VaecfError(f"{where} {row_name(_first_bad_row(empty))}: empty id")
    return strings if typed else ids_from_text(strings)


def _check_ratings(column: pa.ChunkedArray, path: Path, name: str,
                   row_name: Callable[[int], str] = row_label) -> pa.ChunkedArray:
    """Ratings must be finite numbers; the first offending row is named."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        if column.null_count:
            row = _first_bad_row(pc.is_null(column))
            raise VaecfError(f"{printable(path)}: column {shown(name)} {row_name(row)}: "
                             "missing rating")
        values = column.cast(pa.float64())
        bad = pc.invert(pc.is_finite(values))
        if pc.any(bad).as_py():  # "nan" or "inf" written in the file
            row = _first_bad_row(bad)
            raise VaecfError(f"{printable(path)}: column {shown(name)} {row_name(row)}: "
                             f"rating {shown(values[row - 1].as_py())} is not a finite number")
        return values
    strings = column.cast(pa.string())
    numeric = pc.match_substring_regex(
        strings, r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
    )
    bad = pc.invert(pc.fill_null(numeric, False))
    if pc.any(bad).as_py():
        row = _first_bad_row(bad)
        raise VaecfError(
            f"{printable(path)}: column {shown(name)} {row_name(row)}: rating "
            f"{shown(strings[row - 1].as_py())} is not a number"
        )
    return pc.utf8_trim_whitespace(strings).cast(pa.float64())


def read_file(path: Path, spec: ColumnSpec, part: Part | None = None) -> Interactions:
    """Read one file's (or one ``part`` of it) user, item and (optional) rating columns,
    checked. A whole file must have rows; a part may be empty."""
    table, (user, item, rating) = _read_table(path, spec, part)
    if table.num_rows == 0 and part is None:
        raise VaecfError(f"{printable(path)}: the file has no rows")
    typed = is_parquet(path)
    row_name = row_label if part is None else part.row_name

    def named(given: str, column: str | None) -> str:
        return given if not spec.header else column

    return Interactions(
        users=_check_ids(table[user], path, named(spec.user, user), typed, row_name),
        items=_check_ids(table[item], path, named(spec.item, item), typed, row_name),
        ratings=_check_ratings(table[rating], path, named(spec.rating, rating), row_name)
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


def repeated_strings(values: list[str], counts: list[int]) -> pa.Array:
    """An Arrow string array of each value repeated its count of times, in order, built from
    buffers (``pa.array`` imports pandas, and a Python list of millions of str costs ~60
    bytes each)."""
    encoded = [value.encode() for value in values]
    lengths = np.repeat(np.array([len(e) for e in encoded], dtype=np.int64),
                        np.asarray(counts, dtype=np.int64))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = b"".join(e * count for e, count in zip(encoded, counts, strict=True))
    return pa.Array.from_buffers(pa.string(), len(lengths),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data)])


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

"""The dataframe reader for ``--backend gpu`` (cuDF) and ``--dask`` partitions.

It produces the same :class:`vaecf.data.readers.Encoded` as the pyarrow reader: ids checked the same
way (the same one-line errors, naming file, column and 1-based row), the same rating threshold,
and codes into the *sorted* unique ids, so every later byte of the dataset is the same.

It is written once over the pandas API subset that cuDF implements, taking the dataframe module
``frames`` as an argument: ``cudf`` on a GPU, ``pandas`` on CPU. pandas is not only the test
stand-in: the dask path runs these same functions on pandas partitions in CI. The module comes
from the backend (``backend.frames()``), so nothing here asks which device it runs on.
"""

from __future__ import annotations

import gzip
import importlib
import io
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa

from vaecf.data.readers import (
    _INT64_MAX,
    _INT64_MIN,
    CANONICAL_INTEGER,
    UNIT_SEPARATOR,
    ColumnSpec,
    Encoded,
    Part,
    _csv_names,
    _reason,
    check_text,
    guess_sep,
    is_parquet,
    resolve_column,
    row_label,
    shown,
)
from vaecf.errors import VaecfError, printable

Frame = Any  # pandas.DataFrame or cudf.DataFrame
Series = Any  # pandas.Series or cudf.Series


def frame_module(name: str) -> ModuleType:
    """A dataframe module by name (a dask worker receives the name, not the module);
    VaecfError when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise VaecfError(f"{name} is not installed ({error}); pip install 'vaecf[gpu]'") from None


def _first_true(mask: Series) -> int:
    """1-based row of the first True in a boolean series (only called when there is one)."""
    return int(np.asarray(mask.to_numpy()).argmax()) + 1


def _value(column: Series, row: int) -> Any:
    """The Python value at a 1-based row, for error messages (numpy scalars unwrapped)."""
    value = column.iloc[row - 1]
    return value.item() if hasattr(value, "item") else value


def _read_csv(frames: ModuleType, path: Path, spec: ColumnSpec, part: Part | None) -> Frame:
    check_text(path)
    sep = spec.sep or guess_sep(path)
    names = _csv_names(path, sep, spec.header)
    # The id columns are read as text, so the id rule sees them as written ("004" stays).
    ids = {resolve_column(col, names, path, spec.header, role)
           for role, col in (("user", spec.user), ("item", spec.item))}
    # A block after the first has no header line: its columns are named from the file's.
    header_in_data = spec.header and (part is None or part.has_header)
    dtype = {name if spec.header else names.index(name): "str" for name in ids}
    shown_sep = shown(sep)
    source: Any = str(path) if part is None else io.BytesIO(part.data or b"")
    compression = "gzip" if part is None and path.name.lower().endswith(".gz") else None
    if len(sep) > 1:
        # Neither cuDF nor pandas' C parser splits on "::"; swap in one byte, as the CPU reader.
        if part is None:
            opener = gzip.open if compression else open
            with opener(path, "rb") as handle:
                text = handle.read()
        else:
            text = part.data or b""
        source = io.BytesIO(text.replace(sep.encode(), UNIT_SEPARATOR.encode()))
        sep, compression = UNIT_SEPARATOR, None
    try:
        # Only empty fields are missing: "NA" or "null" are valid string ids, as in pyarrow.
        return frames.read_csv(source, sep=sep, header=0 if header_in_data else None,
                               names=None if header_in_data or not spec.header else names,
                               compression=compression, keep_default_na=False, na_values=[""],
                               dtype=dtype)
    except Exception as error:  # pandas' EmptyDataError/ParserError, cuDF's RuntimeError
        message = _reason(error)
        if part is not None and "No columns to parse" in message:
            return frames.DataFrame({name: frames.Series([], dtype="str") for name in names})
        if "No columns to parse" in message or "empty" in message.lower():
            raise VaecfError(f"{printable(path)}: the file is empty") from None
        raise VaecfError(f"{printable(path)}: cannot parse as CSV with separator {shown_sep}: "
                         f"{message}") from None


def _read_table(frames: ModuleType, path: Path, spec: ColumnSpec, part: Part | None) -> Frame:
    if is_parquet(path):
        try:
            if part is not None and part.row_group is not None:
                import pyarrow.parquet as pq

                return frames.DataFrame.from_arrow(pq.ParquetFile(path).read_row_group(
                    part.row_group))
            return frames.read_parquet(str(path))
        except Exception as error:
            raise VaecfError(f"{printable(path)}: cannot read as Parquet: {_reason(error)}"
                             ) from None
    return _read_csv(frames, path, spec, part)


def check_ids(column: Series, path: Path, name: str, typed: bool = False,
              row_name: Callable[[int], str] = row_label) -> Series:
    """Ids present and non-empty; as :func:`vaecf.data.readers._check_ids`: integers -> int64
    (unsigned ones beyond int64 -> strings), integral floats -> int64, CSV text by the id rule,
    ``typed`` (Parquet) text stays text."""
    where = f"{printable(path)}: column {shown(name)}"
    missing = column.isna()
    if missing.any():
        raise VaecfError(f"{where} {row_name(_first_true(missing))}: missing id")
    kind = np.dtype(column.dtype).kind if _is_numpy_dtype(column.dtype) else "O"
    if kind in "iu":
        if kind == "u" and len(column) and int(column.max()) > int(_INT64_MAX):
            return column.astype("str")
        return column.astype("int64")
    if kind == "f":
        values = column.astype("float64")
        integral = (values >= -(2.0 ** 63)) & (values < 2.0 ** 63) & (values == values.round())
        if not integral.all():
            row = _first_true(~integral)
            value = _value(column, row)
            raise VaecfError(f"{where} {row_name(row)}: id {shown(value)} is not an integer")
        return values.astype("int64")
    strings = column.astype("str")
    empty = strings.str.strip() == ""
    if empty.any():
        raise VaecfError(f"{where} {row_name(_first_true(empty))}: empty id")
    return strings if typed else ids_from_text(strings)


def ids_from_text(strings: Series) -> Series:
    """The id rule (see :func:`vaecf.data.readers.ids_from_text`): int64 when every value is a
    canonical integer within int64, else the strings unchanged."""
    if not len(strings):
        return strings
    length = strings.str.len()
    negative = strings.str.startswith("-")
    canonical = (strings.str.contains(CANONICAL_INTEGER, regex=True)
                 # Python's "$" also matches before a final newline; RE2's does not.
                 & ~strings.str.contains("\n", regex=False)
                 & ~((length == 19) & ~negative & (strings > _INT64_MAX))
                 & ~((length == 20) & negative & (strings > _INT64_MIN)))
    return strings.astype("int64") if canonical.all() else strings


def _is_numpy_dtype(dtype: Any) -> bool:
    try:
        return np.dtype(dtype).kind in "biuf"
    except TypeError:  # pandas extension dtypes (e.g. pandas 3's str)
        return False


def check_ratings(frames: ModuleType, column: Series, path: Path, name: str,
                  row_name: Callable[[int], str] = row_label) -> Series:
    """Ratings must be finite numbers (float64 out); the first offending row is named."""
    if _is_numpy_dtype(column.dtype) and np.dtype(column.dtype).kind in "iuf":
        missing = column.isna()
        if missing.any():
            raise VaecfError(f"{printable(path)}: column {shown(name)} "
                             f"{row_name(_first_true(missing))}: missing rating")
        numbers = column.astype("float64")
    else:
        strings = column.astype("str").str.strip()
        numbers = frames.to_numeric(strings, errors="coerce")
        bad = numbers.isna()
        if bad.any():
            row = _first_true(bad)
            raise VaecfError(f"{printable(path)}: column {shown(name)} {row_name(row)}: "
                             f"rating {shown(_value(column, row))} is not a number")
        numbers = numbers.astype("float64")
    bad = (numbers != numbers) | (numbers.abs() == np.inf)
    if bad.any():  # "inf" (or "nan") written in the file
        row = _first_true(bad)
        raise VaecfError(f"{printable(path)}: column {shown(name)} {row_name(row)}: rating "
                         f"{shown(_value(numbers, row))} is not a finite number")
    return numbers


def read_file(frames: ModuleType, path: Path, spec: ColumnSpec,
              min_rating: float | None, part: Part | None = None) -> Frame:
    """One file's (or one ``part`` of it) checked ids, with the rating threshold applied.
    A whole file must have rows; a part may be empty.

    Returns:
        a frame with columns ``user`` and ``item`` (int64 or string), and ``kept`` (bool, whether
        the row passes the rating threshold; all True without one), one row per input row.
    """
    table = _read_table(frames, path, spec, part)
    if len(table) == 0 and part is None:
        raise VaecfError(f"{printable(path)}: the file has no rows")
    row_name = row_label if part is None else part.row_name
    names = list(table.columns)
    user = resolve_column(spec.user, names, path, spec.header, "user")
    item = resolve_column(spec.item, names, path, spec.header, "item")
    typed = is_parquet(path)
    out = frames.DataFrame({"user": check_ids(table[user], path, str(user), typed, row_name),
                            "item": check_ids(table[item], path, str(item), typed, row_name)})
    if spec.rating:
        rating = resolve_column(spec.rating, names, path, spec.header, "rating")
        ratings = check_ratings(frames, table[rating], path, str(rating), row_name)
        out["kept"] = ratings >= min_rating if min_rating is not None else ratings == ratings
    else:
        out["kept"] = True
    return out


def unify(frames: ModuleType, columns: list[Series]) -> Series:
    """Concatenate id columns; if files disagree (int vs string), all become strings."""
    if len({str(column.dtype) for column in columns}) > 1:
        columns = [column.astype("str") for column in columns]
    return frames.concat(columns, ignore_index=True)


def sorted_uniques(column: Series) -> Series:
    """Sorted distinct ids (byte order for strings, as pyarrow's sort)."""
    return column.drop_duplicates().sort_values(ignore_index=True)


def codes_into(uniques: Series, column: Series) -> Any:
    """int64 codes of ``column`` into sorted ``uniques`` (numpy, or cupy for cuDF)."""
    return uniques.searchsorted(column).astype("int64")


def to_arrow(uniques: Series) -> pa.Array:
    """Sorted ids as the pyarrow Array the CPU reader makes: int64 or string."""
    array = uniques.to_arrow() if hasattr(uniques, "to_arrow") else pa.Array.from_pandas(uniques)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array.cast(pa.int64() if pa.types.is_integer(array.type) else pa.string())


def encode_frame(part: Frame, rows_read: int) -> Encoded:
    """A frame of :func:`read_file` as codes into its own sorted distinct kept ids.

    Returns:
        Encoded whose code arrays are numpy (pandas) or cupy (cuDF) int64, shape (n,).
    """
    kept = part[part["kept"]]
    user_ids, item_ids = sorted_uniques(kept["user"]), sorted_uniques(kept["item"])
    return Encoded(codes_into(user_ids, kept["user"]), codes_into(item_ids, kept["item"]),
                   to_arrow(user_ids), to_arrow(item_ids), rows_read)


def read_encoded(frames: ModuleType, paths: list[Path], spec: ColumnSpec,
                 min_rating: float | None) -> Encoded:
    """Read, check, threshold and factorize every input file in one process.

    Returns:
        Encoded whose code arrays are numpy (pandas) or cupy (cuDF) int64, shape (n,).
    """
    parts = [read_file(frames, path, spec, min_rating) for path in paths]
    rows_read = sum(len(part) for part in parts)
    frame = frames.DataFrame({
        "user": unify(frames, [part["user"] for part in parts]),
        "item": unify(frames, [part["item"] for part in parts]),
        "kept": frames.concat([part["kept"] for part in parts], ignore_index=True)})
    return encode_frame(frame, rows_read)

"""The versioned JSON header (``meta.json``, ``run.json``) of vaecf's on-disk formats and the
checksums that let a reader trust every file a header lists."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vaecf.errors import VaecfError


def read_header(directory: Path, filename: str, fmt: str, version: int, what: str,
                made_by: str) -> dict[str, Any]:
    """Parse ``directory/filename`` and check its ``format`` and ``version``.

    Args:
        what: the kind of directory, for messages ("vaecf dataset", "vaecf run directory").
        made_by: the command that writes it, for messages ("vaecf prepare").
    Raises:
        VaecfError: one line naming the directory and what is wrong with it.
    """
    header = directory / filename
    if not directory.is_dir():
        raise VaecfError(f"{what} not found: {directory}")
    if not header.is_file():
        raise VaecfError(f"{directory} is not a {what} (no {filename}; made by `{made_by}`)")
    try:
        data = json.loads(header.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise VaecfError(f"{header}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else None
        raise VaecfError(f"{directory} is not a {what} ({filename} format is {found!r})")
    if data.get("version") != version:
        raise VaecfError(f"{directory}: {what} format version {data.get('version')!r} is not "
                         f"supported (this vaecf reads version {version}); re-run `{made_by}`")
    return data


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 4 MiB blocks (constant memory for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_files(directory: Path, expected: dict[str, str], fix: str) -> None:
    """Check that every file named in ``expected`` (file name -> sha256) is in ``directory``
    with that content.

    Args:
        fix: what the user should do about a damaged file, e.g. "re-run `vaecf prepare`".
    Raises:
        VaecfError: one line naming the first missing or damaged file.
    """
    for name, sha256 in expected.items():
        path = directory / name
        if not path.is_file():
            raise VaecfError(f"{path} is missing; {fix}")
        try:
            actual = file_sha256(path)
        except OSError as error:
            raise VaecfError(f"{path} cannot be read ({error.strerror}); {fix}") from None
        if actual != sha256:
            raise VaecfError(f"{path} is damaged (its sha256 differs from the one recorded "
                             f"when it was written); {fix}")


def read_parquet_column(path: Path, column: str) -> Any:
    """One column of a small Parquet file vaecf wrote, as a pyarrow Array.

    Raises:
        VaecfError: the file is missing, unreadable or damaged, named in one line.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=[column])[column].combine_chunks()
    except (OSError, pa.ArrowException, KeyError) as error:
        raise VaecfError(f"{path} cannot be read ({error})") from None

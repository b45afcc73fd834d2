"""Reading the versioned JSON header (``meta.json``, ``run.json``) of vaecf's on-disk formats."""

from __future__ import annotations

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

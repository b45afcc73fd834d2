"""Writing recommendations for scripts: JSON or CSV, with optional item names (the table for
people is drawn by the CLI from :func:`rows_of`).

Shapes of the machine-readable formats (``name`` only with ``--item-names``):

- JSON, one user (``--user-items``): ``{"recommendations": [{"rank", "item", "score", "name"}],
  "unknown_items": [...]}``; many users (``--input``): ``{"users": [{"user", "recommendations":
  [...]}], "unknown_items": [...], "skipped_users": [...]}``.
- CSV: ``rank,item,score[,name]`` for one user, ``user,rank,item,score[,name]`` for many.

Item ids keep their type (JSON numbers for integer ids, strings for string ids).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from vaecf.data.readers import ColumnSpec, read_file
from vaecf.errors import VaecfError
from vaecf.serving.items import ItemMap, Request
from vaecf.serving.recommender import Recommendations


def read_item_names(path: Path, item_map: ItemMap, id_col: str, name_col: str) -> list[str | None]:
    """Name of each model column from a file such as MovieLens' movies.csv (None if absent).

    The id column is ``id_col`` when the file has it, else the first column.

    Raises:
        VaecfError: unreadable file or missing name column, named in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise VaecfError(f"--item-names: file not found: {path}")
    # The shared reader checks both columns like ids: present and non-empty in every row.
    try:
        data = read_file(path, ColumnSpec(id_col, name_col))
    except VaecfError:
        data = read_file(path, ColumnSpec("0", name_col))
    columns = item_map.columns(data.users)
    result: list[str | None] = [None] * item_map.n_items
    for column, name in zip(columns.tolist(), data.items.to_pylist(), strict=True):
        if column >= 0:
            result[column] = str(name)
    return result


def rows_of(recs: Recommendations, names: list[str | None] | None,
          item_map: ItemMap) -> list[dict[str, Any]]:
    """One dict per (user, rank): user (only with users), rank, item, score, name."""
    lookup = None
    if names is not None:
        columns = item_map.columns(pa.array([i for items in recs.items for i in items],
                                            item_map.ids.type))
        lookup = iter(names[c] for c in columns.tolist())
    rows = []
    users = recs.users if recs.users is not None else [None] * len(recs.items)
    for user, items, scores in zip(users, recs.items, recs.scores, strict=True):
        for rank, (item, score) in enumerate(zip(items, scores, strict=True), start=1):
            row: dict[str, Any] = {} if recs.users is None else {"user": user}
            row.update(rank=rank, item=item, score=round(float(score), 6))
            if lookup is not None:
                row["name"] = next(lookup)
            rows.append(row)
    return rows


def to_json(recs: Recommendations, request: Request, names: list[str | None] | None,
            item_map: ItemMap) -> str:
    """The JSON document described in the module docstring."""
    rows = rows_of(recs, names, item_map)
    if recs.users is None:
        doc: dict[str, Any] = {"recommendations": rows, "unknown_items": request.unknown}
    else:
        per_user: dict[Any, list[dict[str, Any]]] = {user: [] for user in recs.users}
        for row in rows:
            per_user[row.pop("user")].append(row)
        doc = {"users": [{"user": u, "recommendations": r} for u, r in per_user.items()],
               "unknown_items": request.unknown, "skipped_users": request.skipped}
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def to_csv(recs: Recommendations, names: list[str | None] | None, item_map: ItemMap) -> str:
    """CSV with a header line, one line per recommended item."""
    rows = rows_of(recs, names, item_map)
    fields = (["user"] if recs.users is not None else []) + ["rank", "item", "score"]
    fields += ["name"] if names is not None else []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

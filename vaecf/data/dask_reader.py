"""``prepare --dask``: read, check, threshold and factorize the inputs on a dask cluster.

Each input file is one partition of a ``dask.dataframe`` (pandas partitions on CPU, cuDF ones
on GPUs), read and checked on a worker by :func:`vaecf.data.frames.read_file` (so errors name
file, column and row as everywhere else). The per-partition sorted uniques come back to the
client, which merges them into the global sorted id lists; the workers then turn their ids into
codes against those lists. The result is the same :class:`vaecf.data.readers.Encoded` as the
single-process readers', hence a byte-identical dataset.

Scale: a single file must fit in one worker's memory (give big data as many files, e.g.
Parquet parts); the distinct ids and the final int64 code arrays (16 bytes per kept
interaction) must fit on the client, where the split runs.

Clusters: ``scheduler`` (any running ``dask.distributed`` scheduler's address), else a
``LocalCluster`` of worker processes on loopback (CPU), or dask-cuda's ``LocalCUDACluster``
with one worker per GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vaecf.backend import Backend
from vaecf.data import frames
from vaecf.data.readers import ColumnSpec, Encoded
from vaecf.errors import VaecfError


def _read_part(path: str, spec: ColumnSpec, frames_name: str, min_rating: float | None) -> Any:
    """Worker side: one file -> a frame (user, item, kept); see frames.read_file."""
    return frames.read_file(frames.frame_module(frames_name), Path(path), spec, min_rating)


def _uniques(part: Any) -> tuple[int, Any, Any]:
    """Worker side: (rows read, sorted distinct kept users, sorted distinct kept items)."""
    kept = part[part["kept"]]
    return (len(part), frames.sorted_uniques(kept["user"]),
            frames.sorted_uniques(kept["item"]))


def _codes(part: Any, user_ids: Any, item_ids: Any) -> tuple[Any, Any]:
    """Worker side: int64 codes of the kept rows into the global sorted id lists."""
    kept = part[part["kept"]]
    users, items = kept["user"], kept["item"]
    # Files whose ids were int while another file's were strings: compare as strings.
    if str(users.dtype) != str(user_ids.dtype):
        users = users.astype("str")
    if str(items.dtype) != str(item_ids.dtype):
        items = items.astype("str")
    return frames.codes_into(user_ids, users), frames.codes_into(item_ids, items)


@contextlib.contextmanager
def dask_client(backend: Backend, scheduler: str | None) -> Iterator[Any]:
    """A connected ``distributed.Client``, closed (with its local cluster) on exit."""
    try:
        from dask.distributed import Client
    except ImportError as error:
        raise VaecfError(f"--dask needs dask ({error}); pip install 'vaecf[dask]'") from None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="15s")
        except (OSError, TimeoutError, ValueError) as error:
            raise VaecfError(f"--scheduler {scheduler}: cannot connect ({error})") from None
        with client:
            yield client
        return
    with backend.dask_cluster() as cluster, Client(cluster) as client:
        yield client


def read_encoded(paths: list[Path], spec: ColumnSpec, min_rating: float | None,
                 backend: Backend, scheduler: str | None = None) -> Encoded:
    """The dask counterpart of :func:`vaecf.data.frames.read_encoded`.

    Args:
        backend: CPU (pandas partitions) or GPU (cuDF partitions).
        scheduler: a ``dask.distributed`` scheduler address, or None for a local cluster.
    Returns:
        Encoded with int64 code arrays of shape (n,) (numpy, or cupy with cuDF partitions).
    """
    import dask
    import dask.dataframe as dd

    fm = backend.frames()   # pandas partitions on CPU, cuDF ones on GPUs
    with dask_client(backend, scheduler):
        # One partition per file; the id dtypes differ between files (int64 or string), so
        # the frame's declared meta is not enforced and partitions are handled one by one.
        meta = fm.DataFrame({"user": fm.Series([], dtype="int64"),
                             "item": fm.Series([], dtype="int64"),
                             "kept": fm.Series([], dtype="bool")})
        parts = dd.from_map(_read_part, [str(path) for path in paths], spec=spec,
                            frames_name=fm.__name__, min_rating=min_rating, meta=meta,
                            enforce_metadata=False).persist()
        pieces = parts.to_delayed()
        summaries = dask.compute(*[dask.delayed(_uniques)(piece) for piece in pieces])
        rows_read = sum(rows for rows, _, _ in summaries)
        user_ids = frames.sorted_uniques(
            frames.unify(fm, [users for _, users, _ in summaries]))
        item_ids = frames.sorted_uniques(
            frames.unify(fm, [items for _, _, items in summaries]))
        user_ref, item_ref = dask.delayed(user_ids), dask.delayed(item_ids)
        codes = dask.compute(*[dask.delayed(_codes)(piece, user_ref, item_ref)
                               for piece in pieces])
    xp = backend.xp  # numpy codes from pandas partitions, cupy from cuDF ones
    return Encoded(xp.concatenate([users for users, _ in codes]),
                   xp.concatenate([items for _, items in codes]),
                   frames.to_arrow(user_ids), frames.to_arrow(item_ids), rows_read)


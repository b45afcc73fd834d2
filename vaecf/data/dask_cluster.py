"""The dask cluster ``prepare --dask`` runs on: a running scheduler, or a local one.

``--scheduler ADDRESS`` connects to any running ``dask.distributed`` scheduler (started with
``dask scheduler``, its workers with ``dask worker`` or ``dask cuda worker``). Without it, the
backend starts a local cluster on loopback: worker processes with one thread each on CPU,
dask-cuda's ``LocalCUDACluster`` (one worker per GPU) with ``--backend gpu``; ``--workers``
and ``--worker-memory`` size it. Either way the client (this process) only sends tasks and
gathers counts; with a local cluster the scheduler runs in this process too.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from vaecf.backend import Backend
from vaecf.errors import VaecfError, printable

ShuffleMethod = Literal["tasks", "p2p"]
DEFAULT_BLOCKSIZE = 256_000_000


@dataclass(frozen=True)
class DaskOptions:
    """How ``prepare --dask`` uses its cluster.

    Attributes:
        scheduler: address of a running scheduler, or None for a local cluster.
        workers: local cluster's worker count (None: the backend's default).
        worker_memory: local cluster's memory limit per worker, e.g. ``4GB`` (None: dask's
            share of the machine).
        blocksize: bytes of CSV per block (partition) before the shuffle.
        shuffle: dask's shuffle method for the shuffle by user.
    """

    scheduler: str | None = None
    workers: int | None = None
    worker_memory: str | None = None
    blocksize: int = DEFAULT_BLOCKSIZE
    shuffle: ShuffleMethod = "tasks"


def _quiet_dask() -> None:
    """dask's own log lines (p2p's shuffle notices, worker restarts, a lost scheduler's
    reconnection attempts) are not the user's business: a failure surfaces as one line,
    through the exception the client raises (:func:`cluster_errors`)."""
    for name in ["distributed", *(name for name in logging.root.manager.loggerDict
                                  if name.startswith("distributed."))]:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _first_bytes(address: str, timeout: float) -> bytes | None:
    """The first 8 bytes a ``tcp://`` address sends after accepting, or None for an address
    this check does not cover (TLS, UCX, ...). A dask server sends its handshake first."""
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return None
    host, _, port = rest.rpartition(":")
    if not port.isdigit():
        raise VaecfError(f"--scheduler {printable(address)}: expected tcp://HOST:PORT")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
        head = b""
        while len(head) < 8 and (chunk := sock.recv(8 - len(head))):
            head += chunk
    return head


def check_scheduler(address: str, timeout: float = 10.0) -> None:
    """Refuse, in one line and in bounded time, an address that is not a dask scheduler: one
    that accepts and says nothing would hang dask's client, and one that answers something
    else is read as a frame length (an allocation of exabytes)."""
    where = f"--scheduler {printable(address)}"
    try:
        head = _first_bytes(address, timeout)
    except TimeoutError:
        raise VaecfError(f"{where}: not a dask scheduler (it sent no handshake within "
                         f"{timeout:.0f} s)") from None
    except OSError as error:
        raise VaecfError(f"{where}: cannot connect ({printable(error.strerror or str(error))})"
                         ) from None
    if head is None:
        return
    # dask's TCP messages start with their length, a handshake's being a few dozen bytes.
    if len(head) < 8 or not 0 < struct.unpack("<Q", head)[0] < 1 << 16:
        raise VaecfError(f"{where}: not a dask scheduler (what it sent is not a dask "
                         "handshake)")


@contextlib.contextmanager
def dask_client(backend: Backend, options: DaskOptions) -> Iterator[Any]:
    """A connected ``distributed.Client``, closed (with its local cluster) on exit."""
    try:
        from dask.distributed import Client
    except ImportError as error:
        raise VaecfError(f"--dask needs dask ({error}); pip install 'vaecf[dask]'") from None
    _quiet_dask()
    if options.scheduler is not None:
        if options.workers is not None or options.worker_memory is not None:
            raise VaecfError("--workers and --worker-memory size a local cluster; with "
                             "--scheduler, start the workers with `dask worker`")
        check_scheduler(options.scheduler)
        try:
            client = Client(options.scheduler, timeout="15s")
        except (OSError, TimeoutError, ValueError) as error:
            raise VaecfError(f"--scheduler {printable(options.scheduler)}: cannot connect "
                             f"({printable(str(error), 200)})") from None
        with client:
            try:
                client.wait_for_workers(1, timeout=30)
            except TimeoutError:
                raise VaecfError(f"--scheduler {printable(options.scheduler)} has no workers "
                                 "(waited 30 s); start them with `dask worker ADDRESS`"
                                 ) from None
            yield client
        return
    try:
        with backend.dask_cluster(options.workers, options.worker_memory) as cluster, \
                Client(cluster) as client:
            yield client
    except ValueError as error:   # dask refuses a memory limit it cannot parse
        if "memory" in str(error).lower() and options.worker_memory is not None:
            raise VaecfError(f"--worker-memory {printable(options.worker_memory)}: "
                             f"{printable(str(error), 200)}") from None
        raise


@contextlib.contextmanager
def cluster_errors(options: DaskOptions) -> Iterator[None]:
    """The cluster's own failures as one line: a scheduler lost, a task whose workers kept
    dying (dask recomputes a lost worker's tasks elsewhere, up to its allowed failures)."""
    from concurrent.futures import CancelledError

    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    where = (f"the dask scheduler {printable(options.scheduler)}" if options.scheduler
             else "the local dask cluster")
    try:
        yield
    except KilledWorker as error:
        raise VaecfError(f"{where}: workers died while running a task "
                         f"({printable(str(error), 200)}); nothing was written") from None
    except (CommClosedError, CancelledError, TimeoutError):
        raise VaecfError(f"{where} was lost mid-run; nothing was written") from None


def n_threads(client: Any) -> int:
    """Worker threads of the cluster (at least 1)."""
    return max(1, sum(client.nthreads().values()))


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, GB (ru_maxrss is in KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def worker_peak_rss(client: Any) -> list[float]:
    """Each worker process's peak resident memory so far, GB, in worker address order."""
    return [value for _, value in sorted(client.run(peak_rss_gb).items())]

"""What hardware this process may use, found once and cached: visible GPUs, bfloat16 support.

The one GPU probe of the package, used by the launcher (how many ranks can have a GPU), the
backend choice and rank pinning alike. It honours ``CUDA_VISIBLE_DEVICES`` and never creates a
CUDA context, so it may run before :func:`pin_rank_gpu` narrows the mask.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

# Launchers put each process's rank among those on its host in one of these.
_LOCAL_RANK_VARIABLES = ("HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                         "SLURM_LOCALID")


@functools.cache
def _smi_count() -> int:
    """GPUs the driver lists (``nvidia-smi -L``); 0 without a driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if listing.returncode != 0:
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def _mask_count(mask: str) -> int:
    """Entries of a CUDA_VISIBLE_DEVICES value that CUDA honours: it stops at the first
    invalid one, e.g. "-1" hides every GPU."""
    valid = 0
    for entry in (e for e in mask.split(",") if e.strip()):
        if entry.strip().startswith("-"):
            break
        valid += 1
    return valid


def visible_gpus() -> int:
    """Number of GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` decides when set, else
    the driver's list (``nvidia-smi -L``, asked once)."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return _smi_count()
    return _mask_count(mask)


@functools.cache
def _cupy_status(mask: str | None) -> tuple[bool, str]:
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install 'vaecf[gpu]')"
    try:
        if not cupy.cuda.is_available():
            return False, "CuPy found no CUDA device"
    except Exception as exc:  # a broken driver raises instead of answering False
        return False, f"CUDA is not usable: {exc}"
    return True, "CUDA device found"


def gpu_status() -> tuple[bool, str]:
    """Whether the GPU backend can run here, and if not, why (one short phrase).

    Cached per ``CUDA_VISIBLE_DEVICES`` value. CuPy is asked only when a GPU is visible, and
    its answer initialises CUDA: pin the rank first (:func:`pin_rank_gpu`).
    """
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None and _mask_count(mask) == 0:
        return False, "CUDA_VISIBLE_DEVICES hides every GPU"
    return _cupy_status(mask)


def _first_env_int(names: Sequence[str]) -> int | None:
    return next((int(os.environ[name]) for name in names if name in os.environ), None)


def pin_rank_gpu() -> None:
    """Under a launcher, make this rank see exactly one GPU: visible GPU ``local_rank`` (modulo
    the GPU count), by narrowing ``CUDA_VISIBLE_DEVICES``. The only place a rank is pinned.

    Must run before anything initialises CUDA in this process: CuPy and TensorFlow then both
    use that GPU as device 0, so DLPack hand-offs stay on one device. A no-op outside a
    launcher and without GPUs (``--np`` jobs hide them).
    """
    local_rank = _first_env_int(_LOCAL_RANK_VARIABLES)
    count = visible_gpus()
    if local_rank is None or count == 0:
        return
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [e.strip() for e in mask.split(",")][:count] if mask else [str(i) for i in range(count)]
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[local_rank % count]


@functools.cache
def cpu_bf16() -> str | None:
    """How this CPU executes bfloat16 natively: ``"amx"`` (AMX-BF16 tiles), ``"avx512"``
    (AVX512-BF16 dot products only) or None."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    if "amx_bf16" in flags:
        return "amx"
    return "avx512" if "avx512_bf16" in flags else None

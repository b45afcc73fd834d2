"""A full disk, for real: a small tmpfs mounted as the output's file system (needs root and
mount(8); skipped elsewhere, run in CI, which runs as root). Each command says one line naming
what it could not write, exits 2, prints no traceback and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A 100 KiB tmpfs, unmounted after the test."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a small tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _vaecf(*args: object) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run([sys.executable, "-m", "vaecf", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _one_line(run: subprocess.CompletedProcess, *words: str) -> None:
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert all(word in lines[0] for word in words), run.stderr


def test_train_on_a_full_disk_leaves_no_stub_run(tiny_disk, tmp_path):
    shutil.copytree(FIXTURES / "dataset", tmp_path / "data")
    run = _vaecf("train", "--data", tmp_path / "data", "--out", tiny_disk / "run", "--epochs",
                 "2", "--batch-size", "25", "--hidden", "16", "--latent", "8", "--backend",
                 "cpu", "-q")
    _one_line(run, str(tiny_disk / "run"), "No space left on device")
    assert list(tiny_disk.iterdir()) == []   # no stub, no hidden temporaries


def test_export_to_a_full_disk_is_one_line_and_leaves_nothing(tiny_disk, tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "v1")
    run = _vaecf("export", "--run", tmp_path / "v1" / "run", "--out", tiny_disk / "export")
    _one_line(run, f"cannot write export {tiny_disk / 'export'}", "No space left on device",
              "nothing was written")
    assert list(tiny_disk.iterdir()) == []

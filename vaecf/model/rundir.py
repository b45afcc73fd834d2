"""The run directory (format ``vaecf-run``, version 1): everything a trained model needs to be
tested, served, benchmarked, exported or resumed, with no other input.

::

    run.json                  the commit point (see below); rewritten atomically after every
                              checkpoint, so it always names a complete set of files
    settings.json             the resolved Settings (every section) the run was started with
    items.parquet             item_id: column j of the model's input/output -> original item id
                              (a copy of the dataset's items.parquet)
    best-<step>.weights.npz   model weights at the best validation NDCG@100 so far
    ckpt-<step>.weights.npz   model weights at the last checkpoint (resume point)
    ckpt-<step>.optimizer.npz optimizer variables (Adam moments, iteration count, loss scale)

``run.json`` keys: ``format``, ``version``, ``created`` (UTC ISO time), ``versions`` (vaecf,
tensorflow, keras), ``dataset`` (``path`` absolute, ``fingerprint`` = the dataset's sha256,
``n_items``, ``train_users``), ``model`` (``name``: ``multvae`` or ``recvae``, absent in runs
written before RecVAE and then read as ``multvae``, plus the model's constructor arguments; see
:mod:`vaecf.model.registry`), ``status``
(``running`` | ``interrupted`` | ``complete`` | ``early-stopped`` | ``diverged``), ``progress``
(``epoch``: epochs finished, ``batch``: batches finished in the current epoch, ``step``:
optimizer steps, ``bad_validations``: validations since the last improvement, ``partial``: loss
sums of the unfinished epoch), ``checkpoint`` (``weights``, ``optimizer`` file names, or null
before the first one), ``best`` (``epoch``, ``step``, ``metrics``, ``weights`` file name, or
null) and ``history`` (one dict per finished epoch: epoch, step, loss, nll, kl, beta,
users_per_s, seconds, and ``validation`` metrics when computed) and ``files`` (file name ->
sha256 of settings.json, items.parquet and every weight file run.json names; absent in runs
written before checksums were recorded). Opening a run verifies settings.json and
items.parquet; loading weights verifies their file first.

Weight files are NumPy ``.npz`` archives holding arrays ``v000``, ``v001``, ... in the order of
``model.weights`` (resp. ``optimizer.variables``) plus ``names`` (their variable paths), so they
can be read without TensorFlow. Every file is written under a temporary name and renamed
(``os.replace``); files named by step are never overwritten, and superseded ones are deleted
only after the new ``run.json`` is in place, so a crash or Ctrl-C at any moment leaves a
consistent run directory.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vaecf.atomic import atomic_directory, clean_stale_files, recover, replace_file
from vaecf.errors import VaecfError
from vaecf.formats import file_sha256, read_header, read_parquet_column, verify_files
from vaecf.model import registry
from vaecf.model.progress import Progress
from vaecf.settings import LEGACY_VALUES, Settings

FORMAT = "vaecf-run"
VERSION = 1
RUN_JSON = "run.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """JSON, keys sorted, replaced atomically."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    replace_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_variables(path: Path, variables: list[Any]) -> str:
    """Variables' values as v000.. plus their ``names``, in one atomic .npz; returns the
    file's sha256. Refuses non-finite values: a file vaecf wrote is one it can vouch for."""
    arrays = {f"v{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(variables)}
    for variable, value in zip(variables, arrays.values(), strict=False):
        if not np.isfinite(value).all():
            raise VaecfError(f"{variable.path} holds non-finite values (nan or inf); "
                             f"not writing {path.name}")
    arrays["names"] = np.array([v.path for v in variables])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.savez would append ".npz" to a name
            np.savez(handle, **arrays)

    replace_file(path, write)
    return file_sha256(path)


def _unscoped(path: str) -> str:
    """A variable path without the numbered suffix Keras gives a second object of the same
    default name in one process ("adam_2/iteration" -> "adam/iteration")."""
    return re.sub(r"^([A-Za-z]+)_\d+/", r"\1/", path)


def load_variables(path: Path, variables: list[Any]) -> list[str] | None:
    """Assign the values saved by :func:`save_variables` to ``variables``, after checking that
    the file holds exactly these variables: same count, and each array's saved name and shape
    equal to the variable's (two same-shaped biases can never load swapped).

    Raises:
        VaecfError: the file does not hold this model's variables, named in one line.
    """
    try:
        saved = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise VaecfError(f"{path} cannot be read ({error}); the run is damaged") from None
    with saved:
        count = sum(1 for key in saved.files if key.startswith("v"))
        if count != len(variables):
            raise VaecfError(f"{path}: holds {count} arrays, the model has {len(variables)}")
        names = saved["names"].tolist() if "names" in saved.files else None
        for i, variable in enumerate(variables):
            value = saved[f"v{i:03d}"]
            if names is not None and _unscoped(names[i]) != _unscoped(variable.path):
                raise VaecfError(f"{path}: array {i} is {names[i]!r}, expected {variable.path!r}")
            if tuple(value.shape) != tuple(variable.shape):
                raise VaecfError(f"{path}: {variable.path} has shape {value.shape}, "
                                 f"expected {tuple(variable.shape)}")
            variable.assign(value)
        return names


class RunDir:
    """A run directory; :meth:`create` starts one, :meth:`open` reads an existing one."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta

    # ---- creating and opening -------------------------------------------------------------

    @classmethod
    def create(cls, path: Path | str, settings: Settings, dataset: Any,
               force: bool = False) -> RunDir:
        """Write a fresh run directory (atomically) for training ``settings`` on ``dataset``
        (a :class:`vaecf.data.dataset.Dataset`); refuses an existing ``path`` unless ``force``."""
        import keras
        import tensorflow as tf

        from vaecf import __version__

        path = Path(path)
        meta = {
            "format": FORMAT, "version": VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": {"vaecf": __version__, "tensorflow": tf.__version__,
                         "keras": keras.__version__},
            "dataset": {"path": str(Path(dataset.path).resolve()),
                        "fingerprint": dataset.fingerprint, "n_items": dataset.n_items,
                        "train_users": int(dataset.meta["counts"]["train"]["users"])},
            "model": registry.run_record(settings, dataset.n_items),
            "status": "running",
            "progress": Progress().to_json(),
            "checkpoint": None, "best": None, "history": [],
        }
        with atomic_directory(path, force) as tmp:
            write_json(tmp / "settings.json", settings.model_dump(mode="json"))
            shutil.copyfile(Path(dataset.path) / "items.parquet", tmp / "items.parquet")
            meta["files"] = {name: file_sha256(tmp / name)
                             for name in ("settings.json", "items.parquet")}
            write_json(tmp / RUN_JSON, meta)
        return cls(path, meta)

    @classmethod
    def open(cls, path: Path | str) -> RunDir:
        """Open and validate a run directory; VaecfError (one line) if it is not one."""
        path = Path(path)
        recover(path)
        meta = read_header(path, RUN_JSON, FORMAT, VERSION, "vaecf run directory", "vaecf train")
        run = cls(path, meta)
        clean_stale_files(path)
        run.verify("settings.json", "items.parquet")
        return run

    def verify(self, *names: str) -> None:
        """Check files of the run against the sha256 run.json records for them (runs written
        before checksums were recorded have none: nothing to check)."""
        recorded = self.meta.get("files")
        if recorded is not None:
            verify_files(self.path, {name: recorded.get(name, "unrecorded") for name in names},
                         "the run is damaged: train it again or restore it from a copy")

    # ---- what the run is ------------------------------------------------------------------

    @cached_property
    def settings(self) -> Settings:
        """The resolved settings the run was trained with (not re-read from env or files)."""
        data = json.loads((self.path / "settings.json").read_text(encoding="utf-8"))
        for section, values in LEGACY_VALUES.items():
            data[section] = {**values, **data.get(section, {})}
        return Settings.model_validate(data)

    @cached_property
    def item_ids(self) -> pa.Array:
        """Original item id of each model column, shape (n_items,)."""
        return read_parquet_column(self.path / "items.parquet", "item_id")

    @property
    def dataset_fingerprint(self) -> str:
        """sha256 fingerprint of the dataset the run was trained on."""
        return self.meta["dataset"]["fingerprint"]

    @property
    def dataset_path(self) -> Path:
        """Where that dataset was when training started (absolute)."""
        return Path(self.meta["dataset"]["path"])

    @property
    def model_name(self) -> str:
        """Which model the run holds: ``multvae`` or ``recvae``."""
        return registry.name_of(self.meta["model"])

    @property
    def n_items(self) -> int:
        return int(self.meta["model"]["n_items"])

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per finished epoch (see the module docstring)."""
        return self.meta["history"]

    @property
    def best(self) -> dict[str, Any] | None:
        """``{"epoch", "step", "metrics", "weights"}`` of the best validation, or None."""
        return self.meta["best"]

    @property
    def status(self) -> str:
        return self.meta["status"]

    @property
    def progress(self) -> Progress:
        """Where training stands (a fresh run's progress before the first checkpoint)."""
        return Progress.from_json(self.meta["progress"])

    # ---- models and checkpoints -----------------------------------------------------------

    def build_model(self, seed: int = 0):
        """A freshly initialised model of this run's kind and shape (a
        :class:`vaecf.model.multvae.MultVAE` or :class:`vaecf.model.recvae.RecVAE`)."""
        return registry.build(self.meta["model"], seed=seed)

    def load_model(self, which: str = "best"):
        """The model with the ``best`` weights (or the ``last`` checkpoint's).

        Falls back to the last checkpoint when no validation has run yet."""
        entry = self.meta["best"] if which == "best" else None
        name = entry["weights"] if entry else (self.meta["checkpoint"] or {}).get("weights")
        if name is None:
            raise VaecfError(f"{self.path}: no weights saved yet (training stopped before "
                             "the first checkpoint)")
        self.verify(name)
        model = self.build_model()
        load_variables(self.path / name, model.weights)
        if not all(np.isfinite(w.numpy()).all() for w in model.weights):
            raise VaecfError(f"{self.path / name} holds non-finite weights; this run cannot "
                             "serve (train it again, e.g. with a lower --lr)")
        return model

    def check_dataset(self, dataset: Any) -> None:
        """Refuse a dataset other than the one this run was trained on."""
        if dataset.fingerprint != self.dataset_fingerprint:
            raise VaecfError(f"{dataset.path} is not the dataset run {self.path} was trained on "
                             f"(fingerprint {dataset.fingerprint[:12]} != "
                             f"{self.dataset_fingerprint[:12]})")

    def _commit(self, meta: dict[str, Any], superseded: list[str | None],
                written: dict[str, str] | None = None) -> None:
        """Make ``meta`` the run's state with one atomic rewrite of run.json, recording the
        sha256 of the files just ``written``; then delete ``superseded`` files."""
        keep = {(meta["checkpoint"] or {}).get("weights"),
                (meta["checkpoint"] or {}).get("optimizer"), (meta["best"] or {}).get("weights")}
        if "files" in self.meta:
            files = {**self.meta["files"], **(written or {})}
            meta = {**meta, "files": {name: sha for name, sha in files.items()
                                      if name in keep or not name.endswith(".npz")}}
        write_json(self.path / RUN_JSON, meta)
        self.meta = meta
        for name in superseded:
            if name and name not in keep:
                (self.path / name).unlink(missing_ok=True)

    def save_best(self, model: Any, epoch: int, step: int, metrics: dict[str, float]) -> None:
        """Keep ``model``'s current weights as the best ones."""
        name = f"best-{step:08d}.weights.npz"
        sha = save_variables(self.path / name, model.weights)
        old = (self.meta["best"] or {}).get("weights")
        meta = {**self.meta, "best": {"epoch": epoch, "step": step, "metrics": metrics,
                                      "weights": name}}
        self._commit(meta, [old], {name: sha})

    def save_checkpoint(self, model: Any, optimizer: Any, progress: Progress,
                        history: list[dict[str, Any]], status: str) -> None:
        """Save a resumable state: weights, optimizer variables, progress and history."""
        step = progress.step
        weights, opt = f"ckpt-{step:08d}.weights.npz", f"ckpt-{step:08d}.optimizer.npz"
        written = {weights: save_variables(self.path / weights, model.weights),
                   opt: save_variables(self.path / opt, optimizer.variables)}
        old = self.meta["checkpoint"] or {}
        # A copy: the loop keeps appending to its list, and a later save_best must not write
        # epochs this checkpoint does not hold (a resume would replay them twice).
        meta = {**self.meta, "progress": progress.to_json(), "history": list(history),
                "status": status, "checkpoint": {"weights": weights, "optimizer": opt}}
        self._commit(meta, [old.get("weights"), old.get("optimizer")], written)

    def set_status(self, status: str) -> None:
        """Record how training ended without touching any weights."""
        self._commit({**self.meta, "status": status}, [])

    def load_checkpoint(self, model: Any, optimizer: Any) -> Progress:
        """Restore the last checkpoint into ``model`` and a built ``optimizer``; returns its
        progress (a fresh run's when there is no checkpoint yet)."""
        entry = self.meta["checkpoint"]
        if entry is not None:
            self.verify(entry["weights"], entry["optimizer"])
            load_variables(self.path / entry["weights"], model.weights)
            load_variables(self.path / entry["optimizer"], optimizer.variables)
        return self.progress

"""``vaecf export``: a run's best model as a self-contained TensorFlow SavedModel.

The SavedModel needs only TensorFlow to load (``tf.saved_model.load`` or TensorFlow Serving):
the item-id mapping (a ``tf.lookup.StaticHashTable`` from original id, as a string, to model
column), the fold-in, the exclusion of each user's own items and the top-k all run inside the
graph, the same graph :class:`vaecf.serving.recommender.Recommender` uses
(:func:`vaecf.serving.graph.top_k_graph`).

Entry points of the loaded object ``m``:

- ``m.signatures["serving_default"](item_ids=<string (N,)>, row_lengths=<int64 (B,)>)``: the
  B users' item-id lists as a flattened ragged batch (user b owns the next ``row_lengths[b]``
  ids). Returns ``{"item_ids": string (B, k), "scores": float32 (B, k)}``, best first.
- ``m.recommend(<tf.RaggedTensor string (B, None)>)``: the same, for Python callers.

Integer ids are given as their decimal strings ("318"). Ids the model does not know are
ignored; a user with no known item gets the recommendations of an empty history. Slots left
after excluding a user's items (only when k > items - seen) hold item id "" and score -inf.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vaecf.atomic import atomic_directory, check_apart, check_target
from vaecf.errors import VaecfError, printable

SIGNATURE = "serving_default"


def _serving_module(model: Any, item_ids: list[str], k: int) -> Any:
    """A tf.Module holding the model, the id table and the two entry points."""
    import tensorflow as tf

    from vaecf.serving.graph import top_k_graph

    n_items = len(item_ids)
    ids = tf.constant(item_ids, tf.string)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(ids, tf.range(n_items, dtype=tf.int64)),
        default_value=-1)
    ragged_spec = tf.RaggedTensorSpec([None, None], tf.string, row_splits_dtype=tf.int64)

    class Serving(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="vaecf_serving")
            self.model, self.table = model, table  # attributes, so the SavedModel tracks them

        @tf.function(input_signature=[ragged_spec])
        def recommend(self, items: tf.RaggedTensor) -> dict[str, tf.Tensor]:
            n_rows = items.nrows()
            columns = self.table.lookup(items.flat_values)
            rows = items.value_rowids()
            known = columns >= 0
            # One (user, column) pair per known item, duplicates removed as recommend does.
            keys, _ = tf.unique(tf.boolean_mask(rows * n_items + columns, known))
            users = tf.RaggedTensor.from_value_rowids(keys % n_items, keys // n_items, n_rows,
                                                      validate=False)
            scores, top = top_k_graph(self.model, users.row_splits, users.values,
                                      tf.constant(k, tf.int32), tf.constant(True))
            names = tf.where(tf.math.is_inf(scores), tf.constant(""), tf.gather(ids, top))
            return {"item_ids": names, "scores": scores}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_ids"),
                                      tf.TensorSpec([None], tf.int64, name="row_lengths")])
        def serve(self, item_ids: tf.Tensor, row_lengths: tf.Tensor) -> dict[str, tf.Tensor]:
            return self.recommend(tf.RaggedTensor.from_row_lengths(item_ids, row_lengths))

    return Serving()


def export(run_path: Path, out: Path, k: int = 100, force: bool = False,
           precision: str = "fp32") -> dict[str, Any]:
    """Write the SavedModel of run ``run_path``'s best weights to ``out`` (atomically), its
    weights stored in ``precision`` (:mod:`vaecf.serving.precision`).

    Returns:
        what was written: out, top_k, n_items, item_id_type, signature.
    Raises:
        VaecfError: not a run directory, no weights, bad k, or ``out`` exists without force.
    """
    import tensorflow as tf

    from vaecf.model.rundir import RunDir

    if k < 1:
        raise VaecfError(f"--top-k must be at least 1, got {k}")
    check_apart(out, [run_path])
    check_target(out, force, marker="saved_model.pb", kind="vaecf export")
    run = RunDir.open(run_path)
    from vaecf.serving.precision import at_precision

    model = at_precision(run.load_model(), precision)
    item_ids = [str(v) for v in run.item_ids.to_pylist()]
    info = {"run": str(Path(run_path).resolve()), "top_k": min(k, len(item_ids)),
            "n_items": len(item_ids), "item_id_type": str(run.item_ids.type),
            "signature": SIGNATURE, "best": run.best, "precision": precision}
    module = _serving_module(model, item_ids, info["top_k"])
    try:
        with atomic_directory(out, force) as tmp:
            tf.saved_model.save(module, str(tmp), signatures={SIGNATURE: module.serve})
            extra = tmp / "assets.extra"
            extra.mkdir()
            (extra / "vaecf.json").write_text(json.dumps(info, indent=2) + "\n",
                                              encoding="utf-8")
    except (OSError, tf.errors.OpError) as error:   # a full disk: TF's own error for its files
        raise VaecfError(f"cannot write export {printable(out)}: {_reason(error)}; nothing "
                         "was written") from None
    return {"out": str(out), **info}


def _reason(error: BaseException) -> str:
    """The system's reason in an OS or TensorFlow error, without TF's op and file names."""
    if isinstance(error, OSError):
        return printable(error.strerror or str(error))
    text = str(getattr(error, "message", error))
    return printable(text.rsplit("; ", 1)[-1].split(" [Op:")[0].strip(), 200)


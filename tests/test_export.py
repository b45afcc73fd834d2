"""`vaecf export`: the SavedModel, loaded in a fresh Python that cannot import vaecf (or Keras),
gives the same top-k as `vaecf recommend`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import recommend_json, user_items

# Runs in a fresh interpreter: only TensorFlow; importing vaecf or keras would fail.
LOADER = """
import json, sys
sys.modules["vaecf"] = None
sys.modules["keras"] = None
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
users = json.loads(sys.argv[2])
serve = model.signatures["serving_default"]
out = serve(item_ids=tf.constant([i for u in users for i in u], tf.string),
            row_lengths=tf.constant([len(u) for u in users], tf.int64))
ragged = model.recommend(tf.ragged.constant(users, dtype=tf.string))
print(json.dumps({
    "ids": [[i.decode() for i in row] for row in out["item_ids"].numpy().tolist()],
    "scores": out["scores"].numpy().tolist(),
    "ragged_ids": [[i.decode() for i in row] for row in ragged["item_ids"].numpy().tolist()],
}))
"""


def load_and_serve(path, users: list[list[str]]) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", LOADER, str(path), json.dumps(users)],
                          capture_output=True, text=True, env=env, cwd=path.parent, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["int", "string"])
def test_exported_model_matches_recommend_in_a_fresh_process(runs, cli, tmp_path, kind):  # noqa: F811
    out = tmp_path / f"export-{kind}"
    result = cli("export", "--run", runs[kind], "--out", out, "--top-k", 20)
    assert result.code == 0, result.err
    assert (out / "saved_model.pb").is_file()
    info = json.loads((out / "assets.extra" / "vaecf.json").read_text())
    assert info["top_k"] == 20
    prefix = "m" if kind == "string" else ""
    users = [[f"{prefix}{i}" for i in user_items(1)[:30]],
             [f"{prefix}{i}" for i in user_items(68)[:5]],
             # unknown ids are ignored, duplicates count once, as in recommend
             [f"{prefix}1", "nosuch", f"{prefix}260", f"{prefix}260", f"{prefix}1196"]]
    served = load_and_serve(out, users)
    assert served["ragged_ids"] == served["ids"]
    for ids, scores, items in zip(served["ids"], served["scores"], users, strict=True):
        doc = recommend_json(cli, "--run", runs[kind], "--top-k", 20,
                             "--user-items", ",".join(items))
        assert ids == [str(r["item"]) for r in doc["recommendations"]]
        assert scores == pytest.approx([r["score"] for r in doc["recommendations"]], abs=1e-4)
        assert not set(ids) & set(items)


def test_export_is_atomic_and_refuses_an_existing_directory(runs, cli, tmp_path):  # noqa: F811
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("export", "--run", runs["int"], "--out", out)
    assert result.code == 2 and "already exists" in result.err
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only an export: a directory of the user's own files is never deleted.
    result = cli("export", "--run", runs["int"], "--out", out, "--force", "--quiet")
    assert result.code == 2 and "not a vaecf export" in result.err
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert cli("export", "--run", runs["int"], "--out", out, "--force", "--quiet").code == 0
    assert cli("export", "--run", runs["int"], "--out", out, "--force", "--quiet").code == 0
    assert (out / "saved_model.pb").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary left behind

"""`vaecf recommend` on models briefly trained on the bundled MovieLens data (int item ids) and
on the same data with string item ids ("m<movieId>")."""

from __future__ import annotations

import csv
import io
import json

import pytest
from helpers import MOVIES, recommend_json, user_items


def ids_of(doc: dict) -> list:
    return [r["item"] for r in doc["recommendations"]]


def test_excludes_the_users_items_unless_include_seen(runs, cli):
    mine = user_items(1)
    given = ",".join(map(str, mine))
    doc = recommend_json(cli, "--run", runs["int"], "--user-items", given, "--top-k", 50)
    recs = doc["recommendations"]
    assert [r["rank"] for r in recs] == list(range(1, 51))
    assert not set(ids_of(doc)) & set(mine)
    scores = [r["score"] for r in recs]
    assert scores == sorted(scores, reverse=True)
    # A trained model ranks a heavy user's own items high, so some come back when allowed.
    seen = recommend_json(cli, "--run", runs["int"], "--user-items", given, "--top-k", 50,
                          "--include-seen")
    assert set(ids_of(seen)) & set(mine)


def test_int_and_string_ids_map_through_the_item_map(runs, cli):
    ints = recommend_json(cli, "--run", runs["int"], "--user-items", "1,260,1196,2571")
    spaced = recommend_json(cli, "--run", runs["int"], "--user-items", " 1, 260 ,1196,2571,")
    assert ids_of(ints) == ids_of(spaced)
    assert all(isinstance(i, int) for i in ids_of(ints))
    strings = recommend_json(cli, "--run", runs["string"], "--user-items", "m1,m260,m1196,m2571")
    assert all(isinstance(i, str) and i.startswith("m") for i in ids_of(strings))
    assert not {"m1", "m260", "m1196", "m2571"} & set(ids_of(strings))
    # An integer typed against a string-id model is no id of it: warned about, not matched.
    result = cli("recommend", "--run", runs["string"], "--user-items", "1,m260")
    assert result.code == 0 and "unknown item id(s) skipped: 1" in result.err


def test_unknown_ids_warn_and_are_skipped(runs, cli):
    result = cli("recommend", "--run", runs["int"], "--user-items", "1,nosuch,260,99999999",
                 "--format", "json")
    assert result.code == 0, result.err
    assert "warning" in result.err and "nosuch" in result.err and "99999999" in result.err
    doc = json.loads(result.out)
    assert doc["unknown_items"] == ["nosuch", "99999999"]
    assert ids_of(doc) == ids_of(recommend_json(cli, "--run", runs["int"], "--user-items",
                                                "1,260"))


@pytest.mark.parametrize("args", [("--user-items", "nosuch,99999999"),
                                  ("--user-items", ","),
                                  ()])
def test_no_known_items_is_one_error_line_exit_2(runs, cli, args):
    result = cli("recommend", "--run", runs["int"], *args)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert result.out == ""


def test_not_a_run_directory_is_one_error_line(tmp_path, cli):
    result = cli("recommend", "--run", tmp_path, "--user-items", "1")
    assert result.code == 2 and "not a vaecf run directory" in result.err


def test_json_csv_and_item_names_agree(runs, cli):
    args = ("--run", runs["int"], "--user-items", "1,260,1196", "--top-k", 7,
            "--item-names", MOVIES, "--name-col", "title")
    doc = recommend_json(cli, *args)
    result = cli("recommend", *args, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.out)))
    assert list(rows[0]) == ["rank", "item", "score", "name"]
    assert [int(r["item"]) for r in rows] == ids_of(doc)
    assert [float(r["score"]) for r in rows] == [r["score"] for r in doc["recommendations"]]
    titles = {r["movieId"]: r["title"] for r in csv.DictReader(MOVIES.open(encoding="utf-8"))}
    assert [r["name"] for r in rows] == [titles[r["item"]] for r in rows]
    table = cli("recommend", *args)
    assert table.code == 0
    # Titles may wrap inside the table's cell; their first word is on the item's line.
    for r in rows:
        assert titles[r["item"]].split()[0] in table.out


def test_batch_input_matches_single_user_calls(runs, cli, tmp_path):
    users = {1: user_items(1)[:40], 7: user_items(7), 68: user_items(68)[:5]}
    lines = ["userId,movieId"] + [f"{u},{i}" for u, items in users.items() for i in items]
    lines += ["999999,nosuch", "999999,88888888", "7,nosuch"]  # one user with no known items
    source = tmp_path / "users.csv"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "recs.json"
    result = cli("recommend", "--run", runs["int"], "--input", source, "--top-k", 15,
                 "--output", out)
    assert result.code == 0, result.err
    assert "1 user(s) skipped" in result.err and "999999" in result.err
    doc = json.loads(out.read_text())
    assert doc["skipped_users"] == [999999]
    assert [u["user"] for u in doc["users"]] == list(users)
    for entry in doc["users"]:
        single = recommend_json(cli, "--run", runs["int"], "--top-k", 15, "--user-items",
                                ",".join(map(str, users[entry["user"]])))
        assert [r["item"] for r in entry["recommendations"]] == ids_of(single)
        for a, b in zip(entry["recommendations"], single["recommendations"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
    csv_out = tmp_path / "recs.csv"
    assert cli("recommend", "--run", runs["int"], "--input", source, "--top-k", 15,
               "--output", csv_out, "--quiet").code == 0
    rows = list(csv.DictReader(csv_out.open()))
    assert len(rows) == 15 * len(users) and list(rows[0]) == ["user", "rank", "item", "score"]


def test_blocked_top_k_equals_tf_top_k_on_real_logits(runs):
    import numpy as np
    import tensorflow as tf

    from vaecf.data.dataset import Dataset
    from vaecf.model.rundir import RunDir
    from vaecf.serving.graph import blocked_top_k

    run = RunDir.open(runs["int"])
    foldin, _ = Dataset.open(run.dataset_path).heldout("test")
    rows = foldin[:64].toarray()
    logits = run.load_model()(rows / np.linalg.norm(rows, axis=1, keepdims=True)).numpy()
    logits[rows > 0] = -np.inf  # excluded items, as recommend scores them
    for k in (1, 10, 100, 999, run.n_items):
        values, columns = blocked_top_k(tf.constant(logits), tf.constant(k))
        expected = tf.math.top_k(logits, k).values.numpy()
        np.testing.assert_array_equal(values.numpy(), expected)
        # The columns hold those values (-inf slots mean "nothing left" and are not mapped).
        picked = np.take_along_axis(logits, columns.numpy(), axis=1)
        finite = np.isfinite(expected)
        np.testing.assert_array_equal(picked[finite], expected[finite])

"""Every bad input to `vaecf prepare` is one line naming the problem, exit code 2, no output."""

from __future__ import annotations

import pytest
from helpers import ML_SMALL

from vaecf.backend import gpu_status

HEADER = "userId,movieId,rating\n"


def _good_rows(n_users: int = 30, per_user: int = 6) -> str:
    return "".join(f"{u},{i},4\n" for u in range(n_users) for i in range(u, u + per_user))


CASES = {
    "missing file": (None, ["missing.csv"], "input file not found: "),
    "unknown column": (HEADER + _good_rows(), ["--item-col", "itemId"],
                       "unknown item column 'itemId' (columns: userId, movieId, rating)"),
    "non-numeric rating": (HEADER + _good_rows() + "7,8,great\n",
                           ["--rating-col", "rating", "--min-rating", "3"],
                           "column 'rating' row 181: rating 'great' is not a number"),
    "empty file": ("", [], "the file is empty"),
    "header only": (HEADER, [], "the file has no rows"),
    "missing id": (HEADER + _good_rows() + ",9,4\n", [], "column 'userId' row 181: missing id"),
    "empty string id": (HEADER + _good_rows() + 'u1," ",4\n', [],
                        "column 'movieId' row 181: empty id"),
    "too few users": (HEADER + _good_rows(n_users=2), [], "too few users for the split"),
    "names without header": (_good_rows(), ["--no-header"],
                             "--no-header files name columns by 0-based position, got user "
                             "column 'userId'"),
    "position out of range": (_good_rows(), ["--no-header", "--user-col", "0",
                                             "--item-col", "7"],
                              "item column position 7 is out of range (the file has 3 columns)"),
    "bad setting": (HEADER + _good_rows(), ["--holdout-fraction", "1.5"],
                    "invalid setting prepare.holdout_fraction = 1.5"),
    "min-rating without rating column": (HEADER + _good_rows(), ["--min-rating", "3"],
                                         "--min-rating needs --rating-col"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2(tmp_path, cli, case):
    content, extra, message = CASES[case]
    source = tmp_path / "ratings.csv"
    if content is not None:
        source.write_text(content)
    args = extra if case == "missing file" else [source, *extra]
    out = tmp_path / "out"
    result = cli("prepare", *args, "--out", out, "-q")
    assert result.code == 2
    assert message in result.err
    assert result.err.strip().count("\n") == 0, result.err  # one line
    assert "Traceback" not in result.err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_existing_output_refused_without_force(tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("prepare", ML_SMALL, "--out", out, "-q")
    assert result.code == 2 and "already exists (use --force" in result.err
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only a dataset: a directory of the user's own files is never deleted.
    result = cli("prepare", ML_SMALL, "--out", out, "-q", "--force")
    assert result.code == 2 and "not a vaecf dataset" in result.err
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert cli("prepare", ML_SMALL, "--out", out, "-q", "--force").code == 0
    assert cli("prepare", ML_SMALL, "--out", out, "-q", "--force").code == 0
    assert (out / "meta.json").exists()


def test_interrupt_leaves_nothing_behind(tmp_path, monkeypatch):
    """Ctrl-C while writing: no output directory and no temporary directory remain."""
    import vaecf.data.prepare as prepare_module
    from vaecf.backend import cpu_backend
    from vaecf.settings import PrepareSettings

    def interrupted(*args, **kwargs):
        (args[0] / "meta.json").write_text("{half")
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "write_dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_module.prepare([str(ML_SMALL)], tmp_path / "out", PrepareSettings(),
                               cpu_backend(), quiet=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(gpu_status()[0], reason="a GPU is present")
def test_gpu_backend_without_gpu(tmp_path, cli):
    result = cli("prepare", ML_SMALL, "--out", tmp_path / "o", "--backend", "gpu", "-q")
    assert result.code == 2 and "--backend gpu: no usable GPU" in result.err

"""Settings precedence (flag > environment > file > default) and the shipped settings.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from helpers import ML_SMALL, ROOT

from vaecf.errors import VaecfError
from vaecf.settings import Settings, load_settings


def test_precedence_flag_env_file_default(tmp_path, monkeypatch):
    config = tmp_path / "s.toml"
    config.write_text("[train]\nepochs = 11\nlr = 0.5\nbatch_size = 64\n")
    monkeypatch.setenv("VAECF_TRAIN__EPOCHS", "22")
    monkeypatch.setenv("VAECF_TRAIN__LR", "0.25")
    s = load_settings(config, train={"epochs": 33, "lr": None})
    assert s.train.epochs == 33  # flag beats env and file
    assert s.train.lr == 0.25  # env beats file (flag not given)
    assert s.train.batch_size == 64  # file beats default
    assert s.train.anneal_cap == Settings().train.anneal_cap  # default


def test_default_config_is_read_from_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("settings.toml").write_text("[prepare]\nseed = 7\n")
    assert load_settings().prepare.seed == 7


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[train]\nepochs = 'many'\n", re.escape("invalid setting train.epochs = 'many'")),
        ("[train]\nepoch = 3\n", re.escape("invalid setting train.epoch")),
        ("[train\n", re.escape("s.toml")),
        # A boolean is not a number.
        ("[train]\nepochs = true\n", r"invalid setting train\.epochs = True.*not true/false"),
        ("[train]\nlr = false\n", r"invalid setting train\.lr = False.*not true/false"),
        ("[prepare]\nval_users = true\n",
         r"invalid setting prepare\.val_users = True.*not true/false"),
    ],
)
def test_bad_config_is_named(tmp_path, text, message):
    config = tmp_path / "s.toml"
    config.write_text(text)
    with pytest.raises(VaecfError, match=message):
        load_settings(config)


def test_bad_env_value_is_named(monkeypatch):
    monkeypatch.setenv("VAECF_PREPARE__SHARDS", "0")
    with pytest.raises(VaecfError, match=r"invalid setting prepare.shards = '0'"):
        load_settings()


def test_env_reaches_the_cli(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("VAECF_PREPARE__SEED", "3")
    assert cli("prepare", ML_SMALL, "--out", tmp_path / "d", "-q").code == 0
    assert '"seed": 3' in (tmp_path / "d" / "meta.json").read_text()


def test_shipped_settings_toml_lists_every_key_and_loads():
    text = (ROOT / "settings.toml").read_text()
    data = tomllib.loads(text)
    # It states the defaults, so loading it changes nothing.
    assert load_settings(ROOT / "settings.toml").model_dump() == Settings().model_dump()
    for section, model in Settings.model_fields.items():
        assert section in data, section
        body = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
        for key in model.annotation.model_fields:
            assert re.search(rf"^#? ?{key} = ", body, re.M), f"{section}.{key} missing"


def test_booleans_still_set_boolean_settings(tmp_path):
    config = tmp_path / "s.toml"
    config.write_text("[prepare]\nheader = false\n")
    assert load_settings(config).prepare.header is False


def test_an_unknown_section_in_the_environment_is_named(monkeypatch):
    monkeypatch.setenv("VAECF_BOGUS__X", "1")
    with pytest.raises(VaecfError, match=r"^environment variable VAECF_BOGUS__X: unknown "
                                         r"settings section 'bogus' \(sections: prepare"):
        load_settings()


def test_a_bad_environment_value_names_the_variable_and_value(monkeypatch):
    monkeypatch.setenv("VAECF_EVALUATE__KS", "abc")
    with pytest.raises(VaecfError, match=r"^environment variable VAECF_EVALUATE__KS = 'abc': "):
        load_settings()
    monkeypatch.setenv("VAECF_EVALUATE__KS", "[20, 100]")
    monkeypatch.setenv("VAECF_TRAIN__EPOCHS", "abc")
    with pytest.raises(VaecfError, match=re.escape(
            "invalid setting train.epochs = 'abc' (from environment variable "
            "VAECF_TRAIN__EPOCHS)")):
        load_settings()


def test_other_vaecf_variables_are_not_settings(monkeypatch):
    monkeypatch.setenv("VAECF_TEST_KEY", "k-123")   # e.g. serve --api-key-env
    monkeypatch.setenv("VAECF_EVALUATE__KS", "[20, 100]")
    assert load_settings().evaluate.ks == [20, 100]


@pytest.mark.parametrize(("section", "values", "key"), [
    ("train", {"epochs": 2 ** 64}, "train.epochs"),
    ("prepare", {"seed": 10 ** 20}, "prepare.seed"),
    ("evaluate", {"ks": [20, 10 ** 20]}, "evaluate.ks"),
])
def test_whole_numbers_beyond_int64_are_refused(section, values, key):
    """They would overflow in NumPy or TensorFlow later (`test --k 99999999999999999999` was
    an OverflowError traceback)."""
    with pytest.raises(VaecfError, match=re.escape(f"invalid setting {key}") + ".*below 2\\*\\*63"):
        load_settings(None, **{section: values})


def test_test_k_beyond_int64_is_one_line(cli, tmp_path):
    result = cli("test", "--run", tmp_path / "nowhere", "--k", "99999999999999999999")
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "invalid setting evaluate.ks" in result.err and "below 2**63" in result.err

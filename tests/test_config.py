import pytest

from cleanloop.config import Config, load_config
from cleanloop.errors import CleanloopError


def test_toml_tables_are_flattened_and_overrides_win(tmp_path):
    path = tmp_path / "cleanloop.toml"
    path.write_text('[data]\ndataset = "x.csv"\nlabel_names = ["a", "b"]\n[training]\nepochs = 3\nclass_weights = true\n')
    cfg = load_config(path, epochs=2.5, learning_rate=None)
    assert cfg.dataset == "x.csv"
    assert cfg.label_names == ["a", "b"]
    assert cfg.epochs == 2.5  # option beats file
    assert cfg.class_weights is True
    assert cfg.learning_rate == Config().learning_rate  # None means "not given"


def test_unknown_key_names_file_and_fix(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("epoch = 3\n")
    with pytest.raises(CleanloopError, match=r"c.toml: unknown key 'epoch'.*epochs"):
        load_config(path)


def test_bad_value_type_is_a_clear_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('epochs = "many"\n')
    with pytest.raises(CleanloopError, match="'epochs' must be float"):
        load_config(path)


def test_comma_separated_list_override():
    assert load_config(None, label_names="neg, pos").label_names == ["neg", "pos"]


def test_invalid_method_rejected():
    with pytest.raises(CleanloopError, match="method must be"):
        Config(method="svm")

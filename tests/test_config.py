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


@pytest.mark.parametrize("changes, words", [
    ({"max_review": -1}, r"max_review must be 0 \(all\) or more"),
    ({"epochs": 0}, "epochs must be a number above 0"),
    ({"learning_rate": -1e-4}, "learning_rate must be a number above 0"),
    ({"learning_rate": float("nan")}, "learning_rate must be a number above 0"),
    ({"batch_size": 0}, "batch_size must be 1 or more"),
    ({"eval_batch_size": 0}, "eval_batch_size must be 1 or more"),
    ({"max_length": 0}, "max_length must be 1 or more"),
    ({"folds": 1}, "folds must be 2 or more"),
    ({"filter_by": "prune_by_magic"}, "filter_by must be one of cleanlab's filters"),
    ({"warmup_ratio": 1.5}, r"warmup_ratio must be in \[0, 1\)"),
    ({"seed": -1}, "seed must be from 0"),
    ({"weight_decay": -0.1}, "weight_decay must be 0 or more"),
    ({"max_train_samples": -3}, "max_train_samples must be 0"),
    ({"label_names": ["joy"]}, "label_names must be two or more different names"),
    ({"label_names": ["joy", "joy"]}, "label_names must be two or more different names"),
    ({"text_column": "label"}, "label_column must be another column than text_column"),
    ({"workdir": " "}, "workdir must be a non-empty text"),
    ({"argilla_url": "localhost:6900"}, "argilla_url must be an http:// or https:// URL"),
    ({"argilla_url": "http://127.0.0.1:99999"}, "argilla_url must be an http:// or https:// URL"),
])
def test_values_are_range_checked_at_load(changes, words):
    with pytest.raises(CleanloopError, match=words) as err:
        Config(**changes)
    assert "fix: set" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("toml, words", [
    ("batch_size = 3.5\n", "'batch_size' must be an integer, got 3.5"),
    ("epochs = true\n", "'epochs' must be a number, got True"),
    ('text_column = ["a", "b"]\n', "'text_column' must be a text"),
    ("max_review = -5\n", r"max_review must be 0 \(all\) or more"),
])
def test_wrong_toml_types_and_ranges_name_the_key(tmp_path, toml, words):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(CleanloopError, match=words):
        load_config(path)

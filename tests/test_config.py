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
    ({"epochs": -1}, r"epochs must be 0 \(auto\) or a number above 0"),
    ({"epochs": float("inf")}, r"epochs must be 0 \(auto\) or a number above 0"),
    ({"learning_rate": -1e-4}, "learning_rate must be a number above 0"),
    ({"learning_rate": float("nan")}, "learning_rate must be a number above 0"),
    ({"batch_size": 0}, "batch_size must be 1 or more"),
    ({"eval_batch_size": 0}, "eval_batch_size must be 1 or more"),
    ({"max_length": 0}, "max_length must be 1 or more"),
    ({"folds": 1}, "folds must be 2 or more"),
    ({"filter_by": "prune_by_magic"}, "filter_by must be auto or one of the filters"),
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


# --- groups (one validated dataclass per stage), TOML tables, per-command options ---------------------


def test_toml_tables_load_into_their_groups(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('workdir = "w"\nseed = 7\n[data]\ndataset = "x.csv"\n[model]\nmethod = "features"\n'
                    '[training]\nepochs = 3\n[flagging]\nfolds = 3\n[argilla]\nargilla_workers = 1\n'
                    '[review]\nreview_wave = 0\nmin_reviewed = 4\n[loop]\nrounds = 2\nwebhooks = true\n'
                    '[active]\nstrategy = "margin"\nbatch_size = 6\nfull_retrain = true\n')
    cfg = load_config(path)
    assert (cfg.workdir, cfg.seed, cfg.data.dataset, cfg.model.method, cfg.training.epochs) == ("w", 7, "x.csv",
                                                                                             "features", 3.0)
    assert (cfg.flagging.folds, cfg.argilla.argilla_workers, cfg.review.review_wave) == (3, 1, 0)
    assert (cfg.active.strategy, cfg.active.batch_size, cfg.active.full_retrain) == ("margin", 6, True)
    assert cfg.training.batch_size == 32  # [active] batch_size is the active group's own
    assert cfg.loop.min_reviewed == cfg.active.min_reviewed == 4  # a [review] wait is the loops' too
    assert cfg.epochs == 3.0 and cfg.method == "features"  # flat reads delegate to the groups
    assert Config(**cfg.to_dict()) == cfg  # to_dict is the tables, and reads back


def test_loop_options_load_from_a_loop_table(tmp_path):
    from cleanloop.config import LoopOptions
    from cleanloop.loops.retrain import LoopOptions as FromRetrain

    path = tmp_path / "c.toml"
    path.write_text("[review]\npoll_seconds = 2\n[loop]\nrounds = 3\nwebhooks = true\nreview_timeout = 60\n")
    cfg = load_config(path)
    assert FromRetrain is LoopOptions and isinstance(cfg.loop, LoopOptions)
    assert (cfg.loop.rounds, cfg.loop.webhooks, cfg.loop.review_timeout, cfg.loop.poll_seconds) == (3, True, 60.0, 2.0)
    assert cfg.review.review_timeout == 3600.0  # the [loop] wait is the loop's only
    path.write_text("[loop]\nrounds = 0\n")
    with pytest.raises(CleanloopError, match=r"c.toml \[loop\]: rounds must be 1 or more, got 0; fix: set rounds "
                                             r"\(--rounds, or rounds in \[loop\]\)"):
        load_config(path)
    path.write_text("rounds = 2\n")  # loop keys live in their table
    with pytest.raises(CleanloopError, match=r"c.toml: key 'rounds' belongs in \[loop\] or \[active\]; fix: put it in \[loop\]"):
        load_config(path)


@pytest.mark.parametrize("toml, words", [
    ("[training]\nepochs = -2\n", r"c.toml \[training\]: epochs must be 0 \(auto\) or a number above 0, got -2.0; "
                                 r"fix: set epochs \(--epochs, or epochs in \[training\]\) to a value in that range"),
    ('[model]\nmethod = "svm"\n', r"c.toml \[model\]: method must be one of finetune, features, got 'svm'; "
                                  r"fix: set method \(--method, or method in \[model\]\) to one of"),
    ("[active]\nprefetch = 50\n", r"c.toml \[active\]: prefetch must be in \[0, batch_size=20\], got 50; fix: set"),
    ("max_review = -5\n", r"c.toml: max_review must be 0 \(all\) or more, got -5; fix: set max_review"),
    ("[review]\npoll_seconds = 0\n", r"c.toml \[review\]: poll_seconds must be a number of seconds above 0"),
    ("[loop]\nround = 2\n", r"c.toml: unknown key \[loop\] 'round'; did you mean 'rounds'\?"),
])
def test_a_bad_value_names_key_file_table_and_fix(tmp_path, toml, words):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(CleanloopError, match=words) as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_a_bad_option_names_the_option():
    with pytest.raises(CleanloopError, match=r"^option --epochs: epochs must be 0 \(auto\) or a number above 0"):
        load_config(None, epochs=-1)
    with pytest.raises(CleanloopError, match=r"^option --batch: batch_size must be 1 or more"):
        load_config(None, groups={"active": {"batch_size": 0}})


def test_a_file_of_before_the_groups_still_loads(tmp_path, caplog):
    path = tmp_path / "c.toml"  # the layout of configs/emotion.toml before the groups: keys in any table
    path.write_text('[training]\nmethod = "features"\nseed = 3\nworkdir = "w"\n[anything]\nmax_review = 9\n')
    cfg = load_config(path)
    assert (cfg.model.method, cfg.seed, cfg.workdir, cfg.flagging.max_review) == ("features", 3, "w", 9)
    assert "'method' in [training] belongs in [model]" in caplog.text


def test_the_shipped_config_loads_without_warnings(caplog):
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[1] / "configs" / "emotion.toml")
    assert cfg.data.label_names[0] == "sadness" and cfg.loop.rounds == 1 and not caplog.records


def test_flat_access_replace_and_pickle():
    import pickle

    cfg = Config(epochs=2, workdir="w")
    moved = cfg.replace(learning_rate=3e-4, max_review=0)
    assert (moved.training.learning_rate, moved.training.epochs, moved.flagging.max_review) == (3e-4, 2.0, 0)
    assert cfg.learning_rate == 1e-4  # replace copies
    moved.epochs = 5  # a flat write lands in its group
    assert moved.training.epochs == 5 and "epochs" not in vars(moved)
    assert pickle.loads(pickle.dumps(moved)) == moved
    with pytest.raises(CleanloopError, match="fix: set epochs"):
        cfg.replace(epochs=-0.5)
    with pytest.raises(CleanloopError, match="unknown setting 'epoch'; did you mean 'epochs'"):
        Config(epoch=2)


def _help_options(*command: str) -> set[str]:
    from click.testing import CliRunner

    import cleanloop.cli  # noqa: F401  (registers the commands)
    from cleanloop.cli.options import app

    out = CliRunner().invoke(app, [*command, "--help"], terminal_width=200).output
    return {word.split("/")[0].rstrip(",") for line in out.splitlines() for word in line.split()[:3]
            if word.startswith("--")}


def test_each_command_offers_only_the_options_it_uses():
    export = _help_options("export")
    assert {"--to", "--method", "--base-model", "--workdir", "--config"} <= export
    assert not export & {"--learning-rate", "--epochs", "--pooling", "--argilla-workers", "--folds", "--rounds"}
    assert {"--argilla-url", "--argilla-workers"} <= _help_options("argilla", "up")
    assert "--epochs" not in _help_options("argilla", "up")
    loop = _help_options("retrain-loop")
    assert {"--rounds", "--webhooks", "--min-reviewed", "--review-wave", "--epochs", "--folds"} <= loop
    active = _help_options("active")
    assert {"--batch", "--strategy", "--head-c", "--full-retrain", "--poll-seconds", "--epochs"} <= active
    assert "--review-wave" not in active and "--folds" not in active


def test_cli_defaults_come_from_the_dataclasses_and_config_prints_groups(tmp_path):
    import json

    from click.testing import CliRunner

    import cleanloop.cli  # noqa: F401
    from cleanloop.cli.options import app

    out = CliRunner().invoke(app, ["retrain-loop", "--help"], terminal_width=200).output
    assert "Review rounds before the final retrain.  [default: 1]" in out
    path = tmp_path / "c.toml"
    path.write_text("[loop]\nrounds = 2\n")
    res = CliRunner().invoke(app, ["config", "--config", str(path), "--min-reviewed", "3", "--batch", "7"])
    shown = json.loads(res.output)
    assert list(shown) == ["workdir", "seed", "data", "model", "training", "flagging", "argilla", "review", "loop",
                           "active"]
    assert shown["loop"]["rounds"] == 2 and shown["active"]["batch_size"] == 7
    assert shown["review"]["min_reviewed"] == shown["loop"]["min_reviewed"] == shown["active"]["min_reviewed"] == 3


def test_the_config_module_example_runs():
    import doctest

    import cleanloop.config

    assert doctest.testmod(cleanloop.config).failed == 0

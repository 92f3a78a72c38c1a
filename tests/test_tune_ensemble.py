"""Integration: `cleanloop tune` (Optuna) and `cleanloop train --ensemble N`, with the real packaged
MiniLM on a few dozen emotion examples."""

from __future__ import annotations

import json
import sqlite3
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from cleanloop.cli import app
from cleanloop.config import Config, load_config
from cleanloop.errors import CleanloopError
from cleanloop.model.data import load_data
from cleanloop.model.metrics import classification_metrics
from cleanloop.model.predict import EnsemblePredictor, Predictor
from cleanloop.model.tune import SearchSpace, median_pruner, pruning_callback, top_settings, tune

@pytest.fixture(scope="module")
def tiny_emotion(make_emotion_slice):
    """train 48 / validation 24 / test 24 rows of the emotion data, as parquet files."""
    return make_emotion_slice(train=48, validation=24, test=24)


def test_tune_writes_a_resumable_study_a_trainable_config_and_a_report(tiny_emotion, tmp_path):
    runner = CliRunner()
    data = ["--dataset", str(tiny_emotion), "--workdir", str(tmp_path), "--eval-batch-size", "64", "--max-length", "32"]
    res = runner.invoke(app, ["tune", *data, "--trials", "2", "--min-epochs", "1", "--max-epochs", "1",
                              "--batch-size", "32", "--learning-rate", "2e-4"])
    assert res.exit_code == 0, res.output
    assert "trial 0 [1/2]" in res.output and "trial 1 [2/2]" in res.output
    folder = tmp_path / "tune"
    for name in ("study.db", "best.toml", "report.md", "optimization_history.png", "param_importances.png"):
        assert (folder / name).exists(), name
    assert not list(folder.glob("trial-*"))  # the trials' models are not kept
    with sqlite3.connect(folder / "study.db") as db:
        (n,) = db.execute("select count(*) from trials where state in ('COMPLETE', 'PRUNED')").fetchone()
    assert n == 2

    # trial 0 is the configuration as given, moved into the space; the report holds its score
    report = (folder / "report.md").read_text()
    assert "the configuration as given (trial 0): 0." in report and "![optimization_history]" in report

    # the best config keeps the data settings and trains as it is
    best = load_config(folder / "best.toml")
    assert best.dataset == str(tiny_emotion) and best.eval_batch_size == 64 and best.max_length == 32
    assert best.epochs == 1.0 and 2e-5 <= best.learning_rate <= 3e-4 and best.batch_size in (16, 32, 64)
    res = runner.invoke(app, ["train", "--config", str(folder / "best.toml"), "--no-record-dynamics"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["run"]["config"]["training"]["learning_rate"] == best.learning_rate and "test" in metrics

    # a second run resumes the study: one more trial to reach 3
    cfg = Config(dataset=str(tiny_emotion), workdir=str(tmp_path), eval_batch_size=64, batch_size=32,
                 learning_rate=2e-4, max_length=32)
    space = SearchSpace(epochs=(1, 1))
    dd = load_data(cfg)
    again = tune(cfg, dd, trials=3, space=space)
    assert again.trials_this_run == 1 and again.trials_complete + again.trials_pruned == 3
    assert again.best_value >= again.baseline_value
    tops = top_settings(cfg, 2)
    assert tops[0] == again.best_settings and set(tops[1]) == set(again.best_settings)
    with pytest.raises(CleanloopError, match="completed trials"):
        top_settings(cfg, 50)
    # another data setting is another search: refused, not mixed in
    with pytest.raises(CleanloopError, match="max_train_samples"):
        tune(cfg.replace(max_train_samples=24), load_data(cfg.replace(max_train_samples=24)), trials=4, space=space)


def test_ensemble_folder_loads_as_one_model_with_averaged_probabilities(tiny_emotion, tmp_path):
    runner = CliRunner()
    data = ["--dataset", str(tiny_emotion), "--workdir", str(tmp_path), "--max-length", "32"]
    res = runner.invoke(app, ["train", *data, "--ensemble", "2", "--epochs", "1", "--batch-size", "16",
                              "--learning-rate", "3e-4"])
    assert res.exit_code == 0, res.output
    assert "member-1 (seed 43) test" in res.output and "ensemble of 2 test" in res.output
    folder = tmp_path / "model"
    assert json.loads((folder / "ensemble.json").read_text())["members"] == ["member-0", "member-1"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [m["seed"] for m in metrics["members"]] == [42, 43]
    assert metrics["member_average"]["test"]["accuracy"] == pytest.approx(
        np.mean([m["test"]["accuracy"] for m in metrics["members"]]))
    assert np.load(folder / "dynamics.npz")["probs"].shape == (2, 48, 6)  # both members' epoch records

    pred = Predictor.load(folder, precision="fp32")
    assert isinstance(pred, EnsemblePredictor) and pred.label_names[0] == "sadness"
    assert pred.max_length == 32
    dd = load_data(Config(dataset=str(tiny_emotion)))
    texts = list(dd["test"]["text"])
    seen = []
    probs = pred.predict_arrays(texts, batch_size=8, progress=seen.append)["probs"]
    assert sum(seen) == len(texts)
    members = [Predictor.load(folder / m, precision="fp32").predict_arrays(texts)["probs"] for m in ("member-0", "member-1")]
    assert not np.allclose(members[0], members[1], atol=1e-3)  # two seeds, two models
    np.testing.assert_allclose(probs, (members[0] + members[1]) / 2, atol=1e-5)
    assert pred.packs()  # the served path: each member packed, then the mean
    np.testing.assert_allclose(pred.predict_group(texts[:12]), probs[:12], atol=1e-5)
    acc = classification_metrics(np.asarray(dd["test"]["label"]), probs.argmax(1), pred.label_names)["accuracy"]
    assert acc == pytest.approx(metrics["test"]["accuracy"])

    # score and flag take the ensemble folder like a single model
    res = runner.invoke(app, ["score", *data, "--split", "validation"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["flag", *data, "--no-map", "--max-review", "5", "--min-gain-over-baseline", "0",
                              "--dynamics-runs", "1"])
    assert res.exit_code == 0, res.output
    assert "training dynamics" in res.output and "(2 epoch records)" in res.output


def test_pruning_callback_stops_a_trial_below_the_median_of_earlier_ones():
    import optuna

    study = optuna.create_study(direction="maximize", pruner=median_pruner())
    for value in (0.80, 0.90):  # two completed trials: epoch 1 at 0.80 and 0.90
        t = study.ask()
        t.report(value, 1)
        study.tell(t, value)
    epoch_end = SimpleNamespace(epoch=1.0)
    good = study.ask()
    pruning_callback(good).on_evaluate(None, epoch_end, None, metrics={"eval_macro_f1": 0.88})
    assert good.storage.get_trial(good._trial_id).intermediate_values == {1: 0.88}
    poor = study.ask()
    with pytest.raises(optuna.TrialPruned, match="epoch 1"):
        pruning_callback(poor).on_evaluate(None, epoch_end, None, metrics={"eval_macro_f1": 0.5})


def test_docstring_examples():
    import doctest

    import cleanloop.model.ensemble
    import cleanloop.model.tune

    for module in (cleanloop.model.tune, cleanloop.model.ensemble):
        assert doctest.testmod(module).failed == 0, module.__name__

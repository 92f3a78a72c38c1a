"""Integration: the real packaged MiniLM, trained a few steps on a slice of the emotion data."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cleanloop.cli import app
from cleanloop.config import Config
from cleanloop.model.data import load_data
from cleanloop.model.predict import Predictor
from cleanloop.model.score import score_frame
from cleanloop.model.train import ClassifierTrainer, class_weights


@pytest.fixture(scope="module")
def emotion_slice(make_emotion_slice):
    """train 192 / validation 64 / test 64 rows of the emotion data, as parquet files."""
    return make_emotion_slice(train=192, validation=64, test=64)


@pytest.fixture(scope="module")
def trained(emotion_slice, tmp_path_factory):
    cfg = Config(dataset=str(emotion_slice), workdir=str(tmp_path_factory.mktemp("run")), epochs=2,
                 learning_rate=2e-4, batch_size=32)
    dd = load_data(cfg)
    return cfg, dd, ClassifierTrainer(cfg).train(dd)


def test_finetune_saves_model_metrics_card_and_dynamics(trained):
    cfg, dd, result = trained
    out = result.output_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json", "README.md",
                 "confusion_test.png", "confusion_validation.png", "dynamics.npz"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"validation", "test", "run"}
    assert metrics["test"]["examples"] == 64
    assert len(metrics["test"]["confusion_matrix"]) == 6
    dyn = np.load(out / "dynamics.npz")
    assert dyn["probs"].shape == (2, 192, 6)  # one record per epoch
    assert dyn["embeddings"].shape == (192, 384)  # the model's own, for the neighbour vote
    assert list(dyn["ids"][:2]) == ["train-00000", "train-00001"]
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in (out / "README.md").read_text()
    assert not (out.parent / "checkpoints").exists()
    p = metrics["precision"]  # the check on validation: int8 measured on CPU, auto's choice recorded
    assert p["requested"] == "auto" and p["checked_on"] == "validation (64 texts)"
    assert set(p["checks"]) >= {"fp32", "int8"} and 0.5 < p["checks"]["int8"]["agreement"] <= 1
    assert p["used"] == Predictor.load(out, device="cpu").precision


def test_small_data_trains_judge_epochs_by_default(emotion_slice, tmp_path, caplog):
    """--epochs 0, the default (auto): under 5,000 train examples a fine-tune trains --judge-epochs, which
    the model's record, card and log say; the data set and --judge-epochs decide, not a constant."""
    cfg = Config(dataset=str(emotion_slice), workdir=str(tmp_path), judge_epochs=3, learning_rate=2e-4)
    assert cfg.epochs == 0
    with caplog.at_level(logging.INFO, "cleanloop"):
        result = ClassifierTrainer(cfg).train(load_data(cfg))
    assert json.loads((result.output_dir / "metrics.json").read_text())["run"]["config"]["training"]["epochs"] == 3
    assert np.load(result.output_dir / "dynamics.npz")["probs"].shape == (3, 192, 6)  # one record per epoch
    assert "- epochs 3," in (result.output_dir / "README.md").read_text()
    assert "epochs: 3 (auto for 192 train examples: --judge-epochs under 5,000, else 1" in caplog.text
    # such a model judges its labels itself, beside two judging runs (--dynamics-runs auto: 3)
    res = CliRunner().invoke(app, ["flag", "--dataset", cfg.dataset, "--workdir", cfg.workdir, "--judge-epochs", "3",
                                   "--min-gain-over-baseline", "0", "--no-map"])
    assert res.exit_code == 0, res.output
    assert ("training dynamics of {} (3 epoch records, the first 2: --judge-stop 0.625) and of 2 judging run(s) of 2 of "
            "3 scheduled epochs, label smoothing 0.3, with seeds 43, 44 (auto: under 5,000 train examples 2 judging runs "
            "join the record of a model that trained 3 epochs)").format(result.output_dir) in res.output


def test_reloaded_model_scores_like_the_trained_one(trained):
    cfg, dd, result = trained
    pred = Predictor.load(result.output_dir, precision="fp32")  # metrics.json's figures are fp32
    assert pred.label_names == ["sadness", "joy", "love", "anger", "fear", "surprise"]
    test = dd["test"]
    df = score_frame(pred, test["id"], test["text"], np.asarray(test["label"]))
    probs = np.stack(df["probs"])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert df["id"].tolist() == test["id"]
    # accuracy in metrics.json came from the same model
    acc = float((df["predicted_label"] == df["label"]).mean())
    assert acc == pytest.approx(result.metrics["test"]["accuracy"], abs=1e-9)
    np.testing.assert_allclose(df["loss"], -np.log(probs[np.arange(64), test["label"]]), rtol=1e-4)
    assert len(df["embedding"][0]) == 384
    # batch order does not change the answer (length sorting is undone)
    one = pred.predict_arrays([test["text"][5]])["probs"][0]
    np.testing.assert_allclose(one, probs[5], atol=1e-5)


def test_training_fits_the_training_labels_more_each_epoch(trained):
    _, dd, result = trained
    dyn = np.load(result.output_dir / "dynamics.npz")
    given = dyn["probs"][:, np.arange(192), dyn["labels"]].astype(float)  # (epochs, N)
    assert given[1].mean() > given[0].mean() > 1 / 6


def test_dynamics_of_the_last_epoch_only(trained, tmp_path):
    cfg, dd, result = trained
    last = ClassifierTrainer(cfg.replace(workdir=str(tmp_path), dynamics_epochs=1)).train(dd)
    dyn = np.load(last.output_dir / "dynamics.npz")["probs"]
    assert dyn.shape == (1, 192, 6)  # one pass instead of two
    # the same seeded run: the one record is the full run's last one
    np.testing.assert_allclose(dyn[0], np.load(result.output_dir / "dynamics.npz")["probs"][1], atol=1e-4)
    assert json.loads((last.output_dir / "metrics.json").read_text())["run"]["dynamics_epochs"] == 1


def test_features_method_reports_dummy_and_predicts(emotion_slice, tmp_path):
    cfg = Config(dataset=str(emotion_slice), workdir=str(tmp_path), method="features")
    dd = load_data(cfg)
    result = ClassifierTrainer(cfg).train(dd)
    m = result.metrics
    assert m["test"]["accuracy"] > m["dummy"]["test"]["accuracy"]
    assert (tmp_path / "cache").exists()  # features cached for the next run
    pred = Predictor.load(result.output_dir)
    probs = pred.predict_arrays(dd["test"]["text"][:4])["probs"]
    assert probs.shape == (4, 6)
    assert pred.predict(["i am so happy"])[0].label in pred.label_names


def test_class_weights_are_inverse_frequency():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 1.0])


def test_cli_train_class_weights_then_score(emotion_slice, tmp_path):
    runner = CliRunner()
    args = ["--dataset", str(emotion_slice), "--workdir", str(tmp_path), "--max-train-samples", "64"]
    res = runner.invoke(app, ["train", *args, "--epochs", "1", "--class-weights"])
    assert res.exit_code == 0, res.output
    assert "finetune test" in res.output
    assert "trained 1 epoch in" in res.output and "{'train_runtime'" not in res.output  # a line, not a dict
    res = runner.invoke(app, ["score", *args, "--split", "validation"])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(tmp_path / "scores" / "validation.parquet")
    assert list(df.columns) == ["id", "text", "label", "predicted_label", "predicted_score", "loss", "probs", "embedding"]
    assert len(df) == 64


def test_cli_train_shows_transformers_load_report_only_with_verbose(emotion_slice, tmp_path):
    """A new classification head is expected to be missing from the base model: transformers' report of it
    ("LOAD REPORT ... newly initialized") is not shown unless --verbose."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "cleanloop"), "train", "--dataset", str(emotion_slice), "--workdir",
         str(tmp_path), "--epochs", "0.2", "--no-record-dynamics"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "finetune test" in proc.stdout + proc.stderr
    assert "LOAD REPORT" not in proc.stderr and "newly initialized" not in proc.stderr
    assert "train (steps)" in proc.stderr  # quieting transformers' logs keeps the training bar


def test_cli_bad_input_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_text("text,label\nhello,joy\n,sadness\n")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "cleanloop"), "data", "describe", "--dataset", str(bad)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "row 1" in lines[-1] and "fix:" in lines[-1]


def test_cli_flag_from_training_dynamics_writes_scores_queue_and_report(trained):
    cfg, dd, result = trained
    runner = CliRunner()
    # two epochs on 192 tweets: no better than the majority class, which the guard checks (test_checks.py)
    res = runner.invoke(app, ["flag", "--dataset", cfg.dataset, "--workdir", cfg.workdir, "--max-review", "10",
                              "--min-gain-over-baseline", "0", "--judge-epochs", "3"])
    assert res.exit_code == 0, res.output
    out = Path(cfg.workdir) / "flags"
    scores = pd.read_parquet(out / "scores.parquet")
    assert {"id", "text", "given_label", "suggested_label", "suggested_score", "label_quality", "loss",
            "is_issue", "suspicion", "rank"} <= set(scores.columns)
    assert sorted(scores["id"]) == sorted(dd["train"]["id"]) and scores["rank"].iloc[0] == 1
    queue = pd.read_parquet(out / "review_queue.parquet")
    assert len(queue) <= 10 and (queue["flagged_by"] != "").all()
    assert queue["queue_rank"].tolist() == list(range(1, len(queue) + 1))
    assert "checks:" in res.output and "outliers" in res.output
    report = (out / "report.md").read_text()
    assert "Top 20 suspects" in report and (out / "flag_matrix.png").exists() and (out / "embedding_map.png").exists()
    # small data, and the model trained 2 epochs: a judging run on a schedule of 3 epochs judges
    # instead (auto), stopped after 2 of them (--judge-stop 0.625), said in the output and the
    # report; the model's own embeddings vote, as a column; the judging run is cached, its model
    # folder gone
    said = ("training dynamics of 1 judging run(s) of 2 of 3 scheduled epochs, label smoothing 0.3, with seeds 43 "
            "(auto: under 5,000 "
            "train examples the model's own record is left out: it trained fewer than 3 epochs)")
    assert said in res.output and said in report
    # and on small data judged by dynamics, every example whose most probable label is not the given one is flagged
    assert "or a most probable label other than the given one (auto: under 5,000 train examples)" in res.output
    assert scores.loc[scores["suggested_label"] != scores["given_label"], "is_issue"].all()
    assert scores["model_neighbour_agreement"].between(0, 1).all()
    cache = Path(cfg.workdir) / "cache"
    # its record, and its confusion matrix on the validation split (what the guard checks)
    assert sorted(np.load(f).shape for f in cache.glob("dynamics-seed4[34]-*.npy")) == [(2, 192, 6), (6, 6)]
    assert np.load(next(cache.glob("dynamics-seed43-held-out-*.npy"))).sum() == len(dd["validation"])
    assert not (Path(cfg.workdir) / "dynamics" / "seed-43").exists()
    again = runner.invoke(app, ["flag", "--dataset", cfg.dataset, "--workdir", cfg.workdir, "--max-review", "10",
                                "--min-gain-over-baseline", "0", "--no-map", "--judge-epochs", "3"])
    assert again.exit_code == 0, again.output
    assert pd.read_parquet(out / "scores.parquet")["suspicion"].tolist() == scores["suspicion"].tolist()  # from the cache
    one = runner.invoke(app, ["flag", "--dataset", cfg.dataset, "--workdir", cfg.workdir, "--max-review", "10",
                              "--min-gain-over-baseline", "0", "--no-map", "--dynamics-runs", "1"])
    assert one.exit_code == 0, one.output
    assert "judging run" not in one.output and "2 epoch records" in one.output


def test_cli_flag_refuses_dynamics_of_another_train_set(trained, tmp_path):
    import shutil

    from cleanloop.identity import load_workdir_data

    cfg, _, _ = trained
    load_workdir_data(cfg)  # the workdir records its data, as any command on it does
    res = CliRunner().invoke(app, ["flag", "--dataset", cfg.dataset, "--workdir", cfg.workdir,
                                   "--max-train-samples", "100", "--no-map"])
    assert res.exit_code != 0  # the workdir knows its data: other data is refused before anything runs
    assert "is not the data workdir" in str(res.exception) and "removed" in str(res.exception)
    other = tmp_path / "work"  # a new workdir holding only the dynamics recorded on the full train split
    (other / "model").mkdir(parents=True)
    shutil.copy(Path(cfg.workdir) / "model" / "dynamics.npz", other / "model" / "dynamics.npz")
    res = CliRunner().invoke(app, ["flag", "--dataset", cfg.dataset, "--workdir", str(other),
                                   "--max-train-samples", "100", "--no-map"])
    assert res.exit_code != 0
    assert "another version of the train split" in str(res.exception)

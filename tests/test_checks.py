"""Checks beyond the classifier, on data the tests make: duplicates and near-duplicates with
conflicting labels, outliers, neighbour labels; the review queue that groups copies; and the guard
that stops flagging with a model no better than the majority class."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cleanloop.loops import neighbours as nb
from cleanloop.loops.flag import baseline_guard, check_table, majority_baseline, review_queue, scores_table, signal_table
from cleanloop.loops.oof import oof_logreg


def blobs(n_per_class=40, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 8, size=(classes, 16))
    y = np.repeat(np.arange(classes), n_per_class)
    return centers[y] + rng.normal(0, 1, size=(len(y), 16)), y


def test_exact_duplicates_ignore_case_and_whitespace():
    texts = ["I feel  GREAT", "i feel great ", "i feel great!", "so sad", "So sad", "alone"]
    groups = nb.exact_duplicate_groups(texts)
    assert groups.tolist() == [0, 0, -1, 1, 1, -1]
    assert nb.conflicting_groups(groups, np.array([0, 1, 0, 2, 2, 1])).tolist() == [True, True, False, False, False, False]


def test_near_duplicates_outliers_and_neighbour_agreement_find_the_planted_cases():
    X, y = blobs()
    rng = np.random.default_rng(1)
    X[5] = X[17] + rng.normal(0, 1e-3, size=16)  # a near copy of example 17 ...
    noisy = y.copy()
    noisy[5] = 1  # ... with another label
    noisy[[30, 50]] = [2, 0]  # two plain flips
    X[100] = rng.normal(0, 60, size=16)  # unlike any class
    neigh = nb.nearest_neighbours(X, k=10)
    assert not (neigh[0] == np.arange(len(X))[:, None]).any()  # never its own neighbour
    groups = nb.near_duplicate_groups(neigh)
    assert groups[5] == groups[17] >= 0 and (groups >= 0).sum() == 2
    assert np.flatnonzero(nb.outliers(nb.outlier_scores(neigh))).tolist() == [100]
    agree = nb.neighbour_agreement(noisy, neigh)
    assert set(np.argsort(agree)[:3]) == {5, 30, 50}
    table = check_table([f"text {i}" for i in range(len(y))], noisy, X)
    assert table.loc[table["near_duplicate"]].index.tolist() == [5, 17]
    assert table.loc[table["outlier"]].index.tolist() == [100] and not table["duplicate"].any()


def test_queue_reviews_copies_together_and_names_its_reasons():
    X, y = blobs()
    noisy = y.copy()
    noisy[[3, 45]] = [1, 2]
    texts = [f"text {i}" for i in range(len(y))]
    texts[60] = "Text  0"  # an exact copy of example 0 with another label (0 is class 0, 60 is class 1)
    probs = oof_logreg(X, noisy, 3, k=5, seed=0)
    ids = [f"ex-{i}" for i in range(len(y))]
    scores = scores_table(ids, texts, noisy, probs, ["a", "b", "c"], signal_table(noisy, probs),
                          check_table(texts, noisy, X))
    by_id = scores.set_index("id")
    assert "duplicate" in by_id.at["ex-0", "flagged_by"] and "duplicate" in by_id.at["ex-60", "flagged_by"]
    assert "cleanlab" in by_id.at["ex-3", "flagged_by"] and by_id.at["ex-1", "flagged_by"] == ""
    queue = review_queue(scores, max_review=0)
    pair = queue[queue["id"].isin(["ex-0", "ex-60"])]
    assert len(pair) == 1, "copies go to review as one record"
    row = pair.iloc[0]
    other = "ex-60" if row["id"] == "ex-0" else "ex-0"
    assert list(row["copy_ids"]) == [other] and list(row["copy_labels"]) == [by_id.at[other, "given_label"]]
    assert row["priority"] >= 0.5
    assert queue["queue_rank"].tolist() == list(range(1, len(queue) + 1))
    assert queue["priority"].is_monotonic_decreasing
    assert {"ex-3", "ex-45"} <= set(queue["id"])


def test_majority_baseline_and_guard():
    cm = np.array([[35, 0, 0], [40, 0, 0], [25, 0, 0]])  # predicts class 0 for everything
    base = majority_baseline(cm, majority=1)
    assert base == {"accuracy": 0.4, "macro_f1": round(2 * 40 / 140 / 3, 4)}
    assert baseline_guard({"accuracy": 0.42, "macro_f1": 0.2}, base) is not None  # 0.42 < 0.4 + 0.1 * 0.6
    assert baseline_guard({"accuracy": 0.47, "macro_f1": 0.4}, base) is None
    assert baseline_guard({"accuracy": 0.42, "macro_f1": 0.2}, base, min_gain=0.0) is None


def random_labels(folder):
    """Labels that have nothing to do with the texts: a model can only guess the majority class."""
    rng = np.random.default_rng(0)
    words = ["cat", "river", "blue", "engine", "quiet", "paper", "storm", "lamp", "green", "song"]
    for split, n in (("train", 60), ("validation", 20), ("test", 20)):
        texts = [" ".join(rng.choice(words, size=5)) + f" {split} {i}" for i in range(n)]
        labels = rng.choice(["joy", "sadness", "anger"], size=n, p=[0.7, 0.15, 0.15])
        pd.DataFrame({"text": texts, "label": labels}).to_parquet(folder / f"{split}.parquet")


def test_flag_stops_when_the_model_is_no_better_than_the_majority_class(tmp_path):
    import cleanloop.cli  # noqa: F401  (registers the commands)
    from cleanloop.cli.options import app

    random_labels(tmp_path)
    args = ["flag", "--dataset", str(tmp_path), "--workdir", str(tmp_path / "work"), "--method", "features",
            "--flag-source", "oof", "--folds", "3", "--no-map"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0
    assert "not clearly better than always predicting the majority class" in str(res.exception)
    assert "fix: train longer" in str(res.exception)
    assert not (tmp_path / "work" / "flags" / "scores.parquet").exists()
    res = CliRunner().invoke(app, [*args, "--min-gain-over-baseline", "0"])
    assert res.exit_code == 0, res.output
    assert "checks:" in res.output


@pytest.mark.parametrize("n", [1, 2])
def test_nearest_neighbours_handles_tiny_inputs(n):
    X = np.eye(3)[: n + 1]
    idx, sim = nb.nearest_neighbours(X, k=5)
    assert idx.shape == (n + 1, n) and np.allclose(sim, 0)



def test_retrain_loop_stops_before_review_and_retrains_when_run_again(tmp_path):
    from cleanloop.config import Config, LoopOptions
    from cleanloop.errors import WeakModelError
    from cleanloop.loops.retrain import run_loop
    from cleanloop.loops.rounds import LoopState
    from cleanloop.workdir import Workdir

    random_labels(tmp_path)
    cfg = Config(dataset=str(tmp_path), workdir=str(tmp_path / "work"), method="features", folds=3,
                 argilla_url="http://127.0.0.1:9")  # never reached: the loop stops before the push
    with pytest.raises(WeakModelError, match="not clearly better than always predicting the majority class"):
        run_loop(cfg, LoopOptions(rounds=1))
    state = LoopState.load(Workdir.of(cfg).loop_state)
    assert state.round == 1 and state.done == []  # run again (more epochs, more data): it trains again

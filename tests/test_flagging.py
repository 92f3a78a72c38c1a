"""Flagging on small data the test makes: well-separated classes with known flipped labels."""

import numpy as np
import pytest
from cleanlab.filter import find_label_issues

from cleanloop.errors import CleanloopError
from cleanloop.labeling.records import queue_frame, queue_items, read_queue
from cleanloop.loops import flag, signals
from cleanloop.loops.flag import confident_examples, review_queue, scores_table, signal_table
from cleanloop.loops.oof import oof_logreg


def blobs(n_per_class=60, classes=3, flips=9, seed=0):
    """Gaussian blobs far apart, with ``flips`` labels moved to the next class."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 8, size=(classes, 5))
    y = np.repeat(np.arange(classes), n_per_class)
    X = centers[y] + rng.normal(0, 1, size=(len(y), 5))
    flipped = rng.choice(len(y), size=flips, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + 1) % classes
    return X, y, noisy, flipped


@pytest.fixture(scope="module")
def data():
    X, y, noisy, flipped = blobs()
    probs = oof_logreg(X, noisy, 3, k=5, seed=0)
    return X, y, noisy, flipped, probs


def test_flipped_examples_rank_at_the_top(data):
    X, y, noisy, flipped, probs = data
    table = signal_table(noisy, probs)
    ids = [f"ex-{i}" for i in range(len(y))]
    scores = scores_table(ids, [f"text {i}" for i in ids], noisy, probs, ["a", "b", "c"], table)
    top = set(scores.head(len(flipped))["id"])
    assert top == {f"ex-{i}" for i in flipped}
    assert scores["rank"].tolist() == list(range(1, len(y) + 1))
    assert scores["suspicion"].between(0, 1).all()
    # the suggestion is the true class for the flipped ones
    head = scores.head(len(flipped)).set_index("id")
    assert all(head.loc[f"ex-{i}", "suggested_label"] == "abc"[y[i]] for i in flipped)


def test_is_issue_agrees_with_cleanlab_called_directly(data):
    _, _, noisy, _, probs = data
    for filter_by in ("prune_by_noise_rate", "both", "confident_learning"):
        ours = signal_table(noisy, probs, filter_by=filter_by)["is_issue"].to_numpy()
        theirs = find_label_issues(noisy, probs, filter_by=filter_by)
        assert np.array_equal(ours, theirs)


def test_review_queue_caps_orders_and_skips_reviewed(data):
    _, _, noisy, flipped, probs = data
    ids = [f"ex-{i}" for i in range(len(noisy))]
    scores = scores_table(ids, ids, noisy, probs, ["a", "b", "c"], signal_table(noisy, probs))
    first = scores[scores["is_issue"]].iloc[0]["id"]
    queue = review_queue(scores, max_review=4, reviewed_ids=[first])
    assert len(queue) == 4 and first not in set(queue["id"])
    assert queue["rank"].is_monotonic_increasing and queue["is_issue"].all()
    items = queue_items(queue)  # the parquet columns are the ReviewItem's, read back the same
    assert [i.id for i in items] == queue["id"].tolist() and [i.queue_rank for i in items] == [1, 2, 3, 4]
    assert all(i.flagged_by == ("cleanlab",) and i.given_label in "abc" for i in items)
    assert queue_items(queue_frame(items)) == items
    conf = confident_examples(scores, per_class=2)
    assert len(conf) == 6 and set(conf["id"]).isdisjoint({f"ex-{i}" for i in flipped})


def test_suspicion_beats_chance_and_loss_agrees_with_probs(data):
    _, _, noisy, flipped, probs = data
    table = signal_table(noisy, probs)
    np.testing.assert_allclose(table["loss"], -np.log(probs[np.arange(len(noisy)), noisy]), rtol=1e-6)
    assert table["suspicion"].to_numpy()[flipped].min() > np.median(table["suspicion"])


def test_noise_structure_tells_patterned_from_uniform_errors():
    partner = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]])  # 0 <-> 1 swaps only
    spread = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    assert signals.noise_structure(partner) == 1.0 and signals.noise_structure(spread) == 0.0
    half = signals.noise_structure(np.array([[0.8, 0.15, 0.05], [0.15, 0.8, 0.05], [0.05, 0.05, 0.9]]))
    assert 0 < half < 1
    shrunk = signals.shrink_to_uniform(partner, 0.0)
    np.testing.assert_allclose(np.diag(shrunk), np.diag(partner))
    np.testing.assert_allclose(shrunk[:, 0], [0.9, 0.05, 0.05])
    np.testing.assert_allclose(signals.shrink_to_uniform(partner, 1.0), partner)


def test_suspicion_follows_the_noise_pattern():
    # two "1" labels the model doubts alike, one leaning to 0, one to 2; true 0s get labelled 1 in
    # this data, true 2s never: the one leaning to 0 is the more suspicious
    labels = np.array([1, 1, 0, 2])
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])
    partner = np.array([[0.8, 0.2, 0.2], [0.2, 0.8, 0.0], [0.0, 0.0, 0.8]])  # T[given, true]
    q = signals.noise_aware_quality(labels, probs, partner)
    assert q[0] < q[1]
    uniform = signals.noise_aware_quality(labels, probs, signals.shrink_to_uniform(partner, 0.0))
    assert uniform[0] == pytest.approx(uniform[1])  # no pattern: only p(given) counts, as self-confidence
    assert flag.suspicion_weights(1.0) == {"noise_aware": 1.0, "normalized_margin": 1.0, "self_confidence": 0.0}
    assert flag.suspicion_weights(0.0)["normalized_margin"] == 0.0


def test_dynamics_average():
    epochs = np.array([[[0.6, 0.4], [0.2, 0.8]], [[0.8, 0.2], [0.4, 0.6]]])  # (E=2, N=2, C=2)
    np.testing.assert_allclose(signals.dynamics_probs(epochs), [[0.7, 0.3], [0.3, 0.7]])


def test_label_never_seen_is_a_clear_error():
    probs = np.full((4, 3), 1 / 3)
    with pytest.raises(CleanloopError, match="label 5 is outside 0..2"):
        signals.check_inputs(np.array([0, 1, 2, 5]), probs)
    with pytest.raises(CleanloopError, match="class 2 never occurs"):
        signals.check_inputs(np.array([0, 1, 0, 1]), probs)


def test_probabilities_that_do_not_sum_to_one_are_rejected():
    with pytest.raises(CleanloopError, match=r"row 1: pred_probs sum to 0.8000, not 1; fix: pass softmax"):
        signals.label_quality(np.array([0, 1]), np.array([[0.9, 0.1], [0.5, 0.3]]))
    with pytest.raises(CleanloopError, match=r"row 0: pred_probs has values outside \[0, 1\]"):
        signals.label_quality(np.array([0, 1]), np.array([[2.0, -1.0], [0.5, 0.5]]))


def test_more_folds_than_the_smallest_class_is_a_clear_error():
    X, _, noisy, _ = blobs(n_per_class=4, flips=0)
    with pytest.raises(CleanloopError, match=r"5 folds but class '0' has only 4 examples; fix: --folds 4"):
        oof_logreg(X, noisy, 3, k=5)


def test_disagreement_filter_adds_what_confident_learning_misses():
    """A judge that learnt wrong labels by heart: confident learning's per-class thresholds pass over
    an example whose given label still trails; the disagreement filter flags it too."""
    import doctest

    from cleanloop.loops import judge

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    probs = np.where(labels[:, None] == np.arange(2), 0.97, 0.03) + rng.uniform(0, 0.02, (100, 2))
    probs[0] = [0.45, 0.55]  # given 0, the judge leans to 1
    probs /= probs.sum(1, keepdims=True)
    noise_rate = signals.find_issues(labels, probs, "prune_by_noise_rate")
    both = signals.find_issues(labels, probs, signals.DISAGREEMENT)
    assert not noise_rate[0] and both[0]
    assert np.array_equal(both, noise_rate | (probs.argmax(1) != labels))
    assert doctest.testmod(judge).failed == 0  # issue_filter: auto picks it on small data judged by dynamics only


def test_unknown_filter_by_is_rejected():
    with pytest.raises(CleanloopError, match="unknown filter_by"):
        signals.find_issues(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), filter_by="magic")


def test_every_registered_signal_is_a_named_column_and_checks_run_once(data):
    X, _, noisy, flipped, probs = data
    ev = signals.Evidence.check(noisy, probs, embeddings=X)
    table = signals.compute(ev)
    assert list(table.columns) == [s.name for s in signals.SIGNALS.values() if all(ev.has(n) for n in s.needs)]
    for s in signals.SIGNALS.values():
        if s.name in table and s.name != "is_issue":  # each points its own way at the flipped labels
            col = table[s.name].to_numpy()
            worse = col if s.higher_is_worse else -col
            assert worse[flipped].mean() > np.median(worse), s.name
        if s.quality:
            assert table[s.name].between(0, 1).all(), s.name
    with pytest.raises(CleanloopError, match="unknown signal 'magic'; fix: use one of self_confidence"):
        signals.compute(ev, ["magic"])


def test_a_signal_that_needs_dynamics_runs_only_with_them(data):
    _, _, noisy, flipped, probs = data
    epochs = np.stack([probs * 0.5 + 0.5 / 3, probs])  # an early, flatter epoch and the last one

    @signals.signal("test_first_epoch_confidence", needs=(signals.DYNAMICS,))
    def _first(ev):
        return ev.epoch_probs[0][np.arange(len(ev.labels)), ev.labels]

    try:
        table = signal_table(noisy, signals.dynamics_probs(epochs), epoch_probs=epochs)
        assert table["test_first_epoch_confidence"].to_numpy()[flipped].max() < 0.5
        assert "test_first_epoch_confidence" not in signal_table(noisy, probs)  # no dynamics: left out
        with pytest.raises(CleanloopError, match="signal 'test_first_epoch_confidence' needs dynamics, which this "
                                                 "evidence lacks; fix: pass them"):
            signals.compute(signals.Evidence.check(noisy, probs), ["test_first_epoch_confidence"])
    finally:
        del signals.SIGNALS["test_first_epoch_confidence"]
    with pytest.raises(CleanloopError, match=r"expected per-epoch probabilities of shape \(E, 180, 3\), got \(2, 5, 3\)"):
        signals.Evidence.check(noisy, probs, epoch_probs=epochs[:, :5])


def test_a_new_signal_is_one_registration(data):
    _, _, noisy, flipped, probs = data

    @signals.signal("test_top_gap", higher_is_worse=True)
    def _gap(ev):
        return ev.probs.max(1) - ev.probs[np.arange(len(ev.labels)), ev.labels]

    try:
        table = signal_table(noisy, probs)
        ids = [f"ex-{i}" for i in range(len(noisy))]
        scores = scores_table(ids, ids, noisy, probs, ["a", "b", "c"], table)
        assert "test_top_gap" in table and "test_top_gap" in scores
        top = scores.sort_values("test_top_gap", ascending=False).head(len(flipped))["id"]
        assert set(top) == {f"ex-{i}" for i in flipped}
    finally:
        del signals.SIGNALS["test_top_gap"]
    with pytest.raises(CleanloopError, match=r"suspicion weights name signals that were not computed: \['loss_x'\]"):
        signal_table(noisy, probs, weights={"loss_x": 1.0})


def test_read_queue_says_what_is_wrong_with_a_queue_file(tmp_path):
    import pandas as pd

    good = queue_frame(queue_items(pd.DataFrame({"id": ["a"], "text": ["t"], "suggested_label": ["joy"],
                                                 "suggested_score": [0.9]})))
    good.to_parquet(tmp_path / "q.parquet")
    assert read_queue(tmp_path / "q.parquet")["id"].tolist() == ["a"]
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(CleanloopError, match=r"cannot read the review queue .*broken.parquet.*fix: make it again"):
        read_queue(tmp_path / "broken.parquet")
    good.drop(columns="suggested_label").to_parquet(tmp_path / "old.parquet")
    with pytest.raises(CleanloopError, match=r"old.parquet: column 'suggested_label' is missing"):
        read_queue(tmp_path / "old.parquet")
    with pytest.raises(CleanloopError, match="no review queue at .*fix: run 'cleanloop flag' first"):
        read_queue(tmp_path / "none.parquet")


def test_neighbour_vote_in_the_models_representation_is_a_column_beside_suspicion():
    """Probabilities of a weak judge (mostly uninformative) and a representation in which the
    classes are apart: the neighbour vote finds every flipped label; suspicion stays the probabilities'."""
    X, y, noisy, flipped = blobs(seed=3)
    rng = np.random.default_rng(3)
    weak = rng.dirichlet(np.ones(3), size=len(y)) * 0.8 + 0.2 * np.eye(3)[noisy]  # leans to the given label
    alone = signal_table(noisy, weak)
    with_vote = signal_table(noisy, weak, embeddings=X)
    assert "model_neighbour_agreement" not in alone and "model_neighbour_agreement" in with_vote
    agree = with_vote["model_neighbour_agreement"].to_numpy()
    assert agree[flipped].max() < np.delete(agree, flipped).min()  # every flipped label outvoted by its neighbours
    np.testing.assert_array_equal(with_vote["suspicion"], alone["suspicion"])
    with pytest.raises(CleanloopError, match="embeddings of shape"):
        signal_table(noisy, weak, embeddings=X[:-1])


def _recorded_model(cfg, probs: np.ndarray, confusion, trained_epochs: float):
    """A 60-example train split (labels a, b) and, in ``cfg``'s workdir, a model folder as ``cleanloop train``
    leaves it: its epoch records ``probs`` (E, 60, 2), and metrics with its validation ``confusion`` and the
    epochs its run trained. Returns the labels, the split and the Workdir."""
    import json

    import datasets

    from cleanloop.workdir import Workdir

    labels = np.repeat([0, 1], 30)
    names = datasets.ClassLabel(names=["a", "b"])
    train = datasets.Dataset.from_dict({"id": [f"t{i}" for i in range(60)], "text": [f"text {i}" for i in range(60)],
                                        "label": labels.tolist()}).cast_column("label", names)
    wd = Workdir.of(cfg)
    model = wd.model("finetune")
    model.mkdir(parents=True)
    np.savez(model / "dynamics.npz", ids=np.asarray(train["id"]), labels=labels, probs=probs)
    (model / "metrics.json").write_text(json.dumps({"validation": {"confusion_matrix": confusion},
                                                    "run": {"config": {"training": {"epochs": trained_epochs}}}}))
    return labels, train, wd


def test_a_judging_run_in_the_models_place_is_what_the_guard_checks(tmp_path):
    """On small data a model that trained fewer than --judge-epochs does not judge: a judging run does,
    and the majority-class guard checks that run on the held-out split, not the weaker model."""
    from cleanloop.config import Config
    from cleanloop.errors import WeakModelError
    from cleanloop.loops import judge

    rng = np.random.default_rng(0)
    cfg = Config(workdir=str(tmp_path), epochs=1)
    one_class = [[30, 0], [30, 0]]  # the trained model predicts class a for everything
    labels, train, wd = _recorded_model(cfg, np.full((1, 60, 2), 0.5), one_class, 1)
    held_out = train.select(range(10))
    with pytest.raises(WeakModelError, match="validation"):  # no held-out split: the trained model is checked
        judge.judging_probs(cfg, train, wd)

    key = judge._version_key(cfg, train)
    records = np.where(labels[:, None] == np.arange(2), 0.9, 0.1)[None].repeat(5, 0) + rng.uniform(0, 0.01, (5, 60, 2))
    records /= records.sum(2, keepdims=True)
    wd.save_npy(wd.cached("dynamics-seed43", key), records)  # the judging run of seed 43, as it caches itself
    wd.save_npy(wd.cached("dynamics-seed43-held-out", key), np.array([[5, 0], [0, 5]]))
    judged = judge.judging_probs(cfg, train, wd, held_out)  # the weak model is left out, the run judges
    assert "1 judging run(s) of 5 of 8 scheduled epochs, label smoothing 0.3" in judged.source and "left out" in judged.source
    np.testing.assert_allclose(judged.probs, records.mean(0) / records.mean(0).sum(1, keepdims=True))

    wd.save_npy(wd.cached("dynamics-seed43-held-out", key), np.array(one_class))  # a judging run no better
    with pytest.raises(WeakModelError, match=r"judging run, seed 43"):
        judge.judging_probs(cfg, train, wd, held_out)


def test_on_small_data_a_long_trained_model_judges_beside_two_judging_runs(tmp_path):
    """Under 5,000 train examples a model that trained --judge-epochs (8) is read up to --judge-stop (its
    first 5 records) and, by default, two judging runs of other seeds join it; --dynamics-runs 2 asks for one,
    --dynamics-runs 1 keeps it alone."""
    from cleanloop.config import Config
    from cleanloop.loops import judge

    cfg = Config(workdir=str(tmp_path), epochs=2)  # flag's own --epochs: the 8 the model's run recorded count
    given = np.repeat([0, 1], 30)[:, None] == np.arange(2)
    own = np.where(given, 0.8, 0.2)[None].repeat(8, 0)
    own[5:] = np.where(given, 0.99, 0.01)  # the last epochs: learnt by heart
    labels, train, wd = _recorded_model(cfg, own, [[30, 0], [0, 30]], 8)
    key = judge._version_key(cfg, train)
    for seed, p in ((43, 0.6), (44, 0.9)):  # the judging runs, as they cache themselves
        wd.save_npy(wd.cached(f"dynamics-seed{seed}", key), np.where(labels[:, None] == np.arange(2), p, 1 - p)[None].repeat(5, 0))

    judged = judge.judging_probs(cfg, train, wd)
    assert "(8 epoch records, the first 5" in judged.source and "2 judging run(s) of 5 of 8" in judged.source
    assert "with seeds 43, 44 (auto: under 5,000 train examples 2 judging runs join the record of a model that trained 8" \
        in judged.source
    np.testing.assert_allclose(judged.probs[:, 0], np.where(labels == 0, 2.3 / 3, 0.7 / 3))  # 5 own records, 5 of each run

    one = judge.judging_probs(cfg.replace(dynamics_runs=2), train, wd)
    assert "1 judging run(s) of 5 of 8" in one.source and "auto" not in one.source.split("seeds 43")[1].split(";")[0]
    np.testing.assert_allclose(one.probs[:, 0], np.where(labels == 0, 0.7, 0.3))

    alone = judge.judging_probs(cfg.replace(dynamics_runs=1), train, wd)
    assert "judging run" not in alone.source
    np.testing.assert_allclose(alone.probs[:, 0], np.where(labels == 0, 0.8, 0.2))

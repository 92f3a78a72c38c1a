"""The active-learning loop on the real embedded Argilla: a simulated annotator labels a batch through the
web UI's REST endpoints, the next batch leaves it out, and the model switches from SetFit to the
fine-tuned classifier at the threshold. Tiny data (the review-loop test's three topics), tiny training.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from test_review_loop import NAMES, make_data

from cleanloop.config import Config
from cleanloop.labeling import argilla_io as aio
from cleanloop.labeling.journal import Journal
from cleanloop.errors import CleanloopError
from cleanloop.loops.active import ActiveOptions, active_config, finetune_epochs, run_active
from cleanloop.workdir import Workdir


class Stop(KeyboardInterrupt):
    pass


def stop_after_push(rnd, step, res):
    if step == "push":
        raise Stop


def label_everything_pushed(argilla_server, cfg: Config, truth: dict[str, str]) -> dict[str, str]:
    """The annotator gives every unanswered record its true label; returns {example id: label}."""
    dataset = aio.get_dataset(argilla_server.client(), cfg)
    done = {}
    with argilla_server.http() as http:
        found = http.post(f"/api/v1/me/datasets/{dataset.id}/records/search", params={"limit": 1000}, json={})
        assert found.status_code == 200, found.text
        for item in found.json()["items"]:
            rec = item["record"]
            if rec.get("responses"):
                continue
            ex_id = rec["external_id"]
            body = {"values": {"label": {"value": truth[ex_id]}}, "status": "submitted"}
            answer = http.post(f"/api/v1/records/{rec['id']}/responses", json=body)
            assert answer.status_code == 201, answer.text
            done[ex_id] = truth[ex_id]
    return done


def batch_ids(cfg: Config, rnd: int) -> list[str]:
    return list(pd.read_parquet(Workdir.of(cfg).active().round(rnd).batch)["id"])


def test_active_loop_labels_a_batch_then_excludes_it_and_switches_model(tmp_path, argilla_server, monkeypatch, caplog):
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.owner_key)
    flipped = make_data(tmp_path / "data")
    train = pd.read_parquet(tmp_path / "data" / "train.parquet")
    truth = {i: NAMES[flipped[i]] if i in flipped else lbl for i, lbl in zip(train["id"], train["label"])}
    cfg = Config(dataset=str(tmp_path / "data"), id_column="id", label_names=NAMES, workdir=str(tmp_path / "work"),
                 seed=0, max_length=32, argilla_url=argilla_server.url, argilla_workspace="cleanloop",
                 argilla_dataset="active")
    # 2 seed labels per class (6, SetFit); one batch of 6 brings 12 = 4 per class: the fine-tuned classifier
    opts = ActiveOptions(strategy="margin", batch_size=6, rounds=2, seed_per_class=2, switch_per_class=4,
                         setfit_iterations=1, min_train_examples=0, review_timeout=60, poll_seconds=0.3,
                         final_train=False)
    caplog.set_level(logging.INFO, logger="cleanloop.active")

    with pytest.raises(Stop):
        run_active(cfg, opts, on_step=stop_after_push)  # round 1: train, query, push; then "Ctrl-C"
    first = batch_ids(cfg, 1)
    assert len(first) == 6
    acfg, awd = active_config(cfg), Workdir.of(cfg).active()
    assert acfg.argilla_dataset == "active-label" and aio.get_dataset(argilla_server.client(), cfg) is None
    labelled = label_everything_pushed(argilla_server, acfg, truth)
    assert sorted(labelled) == sorted(first)

    with pytest.raises(Stop):
        run_active(cfg, opts, on_step=stop_after_push)  # resumes at wait; pull, apply; round 2 up to its push
    state = json.loads((awd.loop_state).read_text())
    r1, r2 = state["rounds"]["1"], state["rounds"]["2"]
    assert (r1["model"], r1["labelled"], r1["reviewed"], r1["answered"]) == ("setfit", 6, 6, 6)
    assert (r2["model"], r2["labelled"]) == ("finetune", 12) and state["done"] == ["train", "query", "push"]
    assert "setfit -> finetune" in caplog.text
    second = batch_ids(cfg, 2)
    assert len(second) == 6 and not set(second) & set(first)  # the labelled batch is not asked again
    assert sorted(r2["pushed_ids"]) == sorted(second)
    assert 0.0 <= r1["test_accuracy"] <= 1.0 and 0.0 <= r2["test_macro_f1"] <= 1.0

    # the answers went through the journal (label "" = none before) into version 1
    with Journal(awd.journal) as j:
        decisions = j.current()
    assert {i: (d.old_label, d.action, d.new_label) for i, d in decisions.items()} == \
        {i: ("", "corrected", truth[i]) for i in first}
    from cleanloop.loops.versions import load_version

    version, meta = load_version(awd.version(1))
    labels = np.asarray(version["train"]["label"])
    assert (labels >= 0).sum() == 12 and meta["label_sources"]["train"]["corrected"] == 6
    got = {i: NAMES[lbl] for i, lbl in zip(version["train"]["id"], labels) if i in labelled}
    assert got == labelled


def test_an_unlabelled_record_has_no_given_label():
    rec = aio.ReviewRecord("train-00001", "i feel fine", None, aio.Suggestion("joy", 0.4, "cleanloop"), round=3,
                           flagged_by=("margin",))
    r = aio.to_argilla_record(rec)
    assert "given_label" not in r.metadata and r.metadata["flagged_by"] == ["margin"]
    assert r.suggestions["label"].value == "joy"
    queue = pd.DataFrame({"id": ["a"], "text": ["x"], "given_label": [None], "suggested_label": ["joy"],
                          "suggested_score": [0.4], "label_quality": [np.nan], "loss": [np.nan]})
    assert aio.records_from_queue(queue, 1, "agent", flagged_by=("margin",))[0].given_label is None


def test_a_version_labels_unlabelled_rows_from_the_journal():
    import datasets

    from cleanloop.labeling.journal import Vote
    from cleanloop.loops.versions import apply_decisions

    feats = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=NAMES)})
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"id": ["a", "b", "c"], "text": ["x", "y", "z"], "label": [0, -1, -1]}, features=feats)})
    j = Journal(":memory:")
    j.record_pull([Vote("b", "ann", "weather"), Vote("c", "ann", None, "discarded")], {"b": "", "c": ""}, round=1)
    v = apply_decisions(dd, j.current())["train"]
    assert list(v["label"]) == [0, 2, -1] and list(v["label_source"]) == ["original", "corrected", "removed"]


def test_cli_checks_options_before_any_work(tmp_path):
    from click.testing import CliRunner

    import cleanloop.cli  # noqa: F401  (registers the commands)
    from cleanloop.cli.options import app
    from cleanloop.errors import CleanloopError

    res = CliRunner().invoke(app, ["active", "--workdir", str(tmp_path), "--batch", "0", "--non-interactive"])
    assert isinstance(res.exception, CleanloopError) and "option --batch: batch_size must be 1 or more, got 0" in str(res.exception)
    assert not (tmp_path / "active").exists()
    res = CliRunner().invoke(app, ["active", "--strategy", "uncertainty"])
    assert res.exit_code == 2 and "'uncertainty' is not one of" in res.output


def test_review_progress_prints_one_line_per_change_when_non_interactive(capsys):
    from cleanloop.cli.loop import ReviewProgress

    show = ReviewProgress(non_interactive=True)
    for done in (0, 0, 3, 6):
        show(done, 6)
    show.close()
    assert capsys.readouterr().out.splitlines() == ["reviews: 0/6 answered", "reviews: 3/6 answered",
                                                    "reviews: 6/6 answered"]


def test_small_labelled_sets_get_more_epochs():
    assert finetune_epochs(688, 4, 10000) == pytest.approx(10000 / 688)  # 14.5 epochs, not 4
    assert finetune_epochs(5000, 4, 10000) == 4 and finetune_epochs(688, 4, 0) == 4
    assert finetune_epochs(0, 4, 10000) == 10000  # no labels: no division by zero
    with pytest.raises(CleanloopError, match="min_train_examples"):
        ActiveOptions(min_train_examples=-1)

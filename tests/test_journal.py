"""The corrections journal and dataset versions: reconciliation, idempotent pulls, reproducible versions."""

import sqlite3

import datasets
import numpy as np
import pytest

from cleanloop.errors import CleanloopError
from cleanloop.labeling.journal import Journal, Vote, consensus_quality, majority_vote, reconcile
from cleanloop.loops.versions import apply_decisions, load_version, training_view, write_version

NAMES = ["anger", "joy", "sadness"]


def small_dd():
    feats = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=NAMES)})
    train = datasets.Dataset.from_dict({"id": [f"train-{i:05d}" for i in range(6)], "text": [f"t{i}" for i in range(6)],
                                        "label": [0, 0, 1, 1, 2, 2]}, features=feats)
    test = datasets.Dataset.from_dict({"id": ["test-00000"], "text": ["u"], "label": [1]}, features=feats)
    return datasets.DatasetDict({"train": train, "test": test})


OLD = {f"train-{i:05d}": NAMES[lbl] for i, lbl in enumerate([0, 0, 1, 1, 2, 2])}


def test_majority_vote_tie_and_discard():
    assert majority_vote(["joy"]) == ("joy", 1.0, True)
    assert majority_vote(["joy", None, None]) == (None, 2 / 3, True)
    assert majority_vote(["joy", "anger"])[2] is False
    decisions = {d.example_id: d for d in reconcile(
        [Vote("train-00000", "a", "joy"), Vote("train-00000", "b", "joy"), Vote("train-00000", "c", "anger"),
         Vote("train-00001", "a", "joy"), Vote("train-00001", "b", "sadness"),
         Vote("train-00002", "a", None, "discarded"),
         Vote("train-00003", "a", "joy")], OLD, round=1)}
    assert decisions["train-00000"].action == "corrected" and decisions["train-00000"].new_label == "joy"
    assert decisions["train-00000"].agreement == pytest.approx(2 / 3)
    assert decisions["train-00000"].annotators == ("a", "b", "c")
    assert decisions["train-00001"].action == "open" and decisions["train-00001"].new_label is None
    assert decisions["train-00002"].action == "removed"
    assert decisions["train-00003"].action == "confirmed"


def test_pulling_twice_applies_nothing_twice(tmp_path):
    votes = [Vote("train-00000", "a", "joy"), Vote("train-00002", "a", None, "discarded"),
             Vote("train-00001", "a", "joy"), Vote("train-00001", "b", "sadness")]
    with Journal(tmp_path / "journal.sqlite") as j:
        first = j.record_pull(votes, OLD, round=1)
        assert first.new_votes == 4 and first.changed == 1 and first.removed == 1
        assert first.open_ids == ["train-00001"]
        second = j.record_pull(votes, OLD, round=1)
        assert second.new_votes == 0 and second.decisions == []
        assert len(j.history()) == 2 and len(j.pulls()) == 2
        assert j.reviewed_ids() == {"train-00000", "train-00002"}
        # a third annotator breaks the tie in a later round; the other answers are not re-applied
        third = j.record_pull(votes + [Vote("train-00001", "c", "joy")], OLD, round=2)
        assert third.new_votes == 1 and [d.example_id for d in third.decisions] == ["train-00001"]
        assert third.decisions[0].round == 2 and third.decisions[0].new_label == "joy"
        # an annotator changes their mind: one new decision, the latest wins
        fourth = j.record_pull([Vote("train-00000", "a", "sadness")], OLD, round=2)
        assert [(d.old_label, d.new_label) for d in fourth.decisions] == [("anger", "sadness")]
        assert j.current()["train-00000"].new_label == "sadness" and len(j.history()) == 4
    # reopening the file sees the same journal
    with Journal(tmp_path / "journal.sqlite") as j:
        assert j.last_seq() == 4 and j.summary()["corrected"] == 2 and j.summary()["removed"] == 1


def test_journal_is_append_only_and_a_failed_pull_writes_nothing(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as j:
        j.record_pull([Vote("train-00000", "a", "joy")], OLD, round=1)
        with pytest.raises(CleanloopError, match="no known label|no old label"):
            j.record_pull([Vote("train-00003", "a", "anger"), Vote("unknown", "a", "joy")], OLD, round=1)
        assert len(j.votes()) == 1 and len(j.pulls()) == 1  # the whole pull was rolled back
    db = sqlite3.connect(tmp_path / "journal.sqlite")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE decisions SET new_label = 'anger'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM votes")


def test_consensus_quality_with_enough_overlap():
    rng = np.random.default_rng(0)
    ids = [f"e{i}" for i in range(12)]
    truth = rng.integers(0, 3, size=12)
    probs = {i: np.eye(3)[t] * 0.7 + 0.1 for i, t in zip(ids, truth)}
    votes = {i: {"good": NAMES[t], "also_good": NAMES[t], "bad": NAMES[(t + 1) % 3]} for i, t in zip(ids, truth)}
    q = consensus_quality(votes, NAMES, probs)
    assert set(q) == set(ids) and all(0 <= v <= 1 for v in q.values())
    # one annotator only: not enough overlap, nothing computed
    assert consensus_quality({i: {"good": v["good"]} for i, v in votes.items()}, NAMES, probs) == {}
    decisions = reconcile([Vote(i, a, lbl) for i, v in votes.items() for a, lbl in v.items()],
                          {i: "anger" for i in ids}, label_names=NAMES, pred_probs=probs)
    assert all(d.consensus_quality is not None for d in decisions)


def test_version_applies_the_journal_and_is_reproducible(tmp_path):
    dd = small_dd()
    with Journal(tmp_path / "journal.sqlite") as j:
        j.record_pull([Vote("train-00000", "a", "joy"), Vote("train-00004", "a", None, "discarded"),
                       Vote("train-00002", "a", "joy")], OLD, round=1)
        path = write_version(dd, j, tmp_path / "versions", round=1)
        again = write_version(dd, j, tmp_path / "rebuilt", round=1)
    v, meta = load_version(path)
    assert meta["journal_seq"] == 3 and meta["label_sources"]["train"] == {"original": 4, "corrected": 1, "removed": 1}
    assert list(v["train"]["label"]) == [1, 0, 1, 1, 2, 2]
    assert list(v["train"]["original_label"]) == [0, 0, 1, 1, 2, 2]
    assert list(v["train"]["label_source"]) == ["corrected", "original", "original", "original", "removed", "original"]
    assert v["train"].features["label"].names == NAMES and v["train"].features["original_label"].names == NAMES
    assert list(v["test"]["label_source"]) == ["original"]
    w, _ = load_version(again)
    assert w["train"].to_list() == v["train"].to_list()  # from the original data + journal alone
    view = training_view(v)
    assert list(view["train"]["id"]) == [f"train-{i:05d}" for i in (0, 1, 2, 3, 5)]
    assert view["train"].column_names == ["id", "text", "label"]
    assert not (tmp_path / "versions" / "round-001.tmp").exists()


def test_journal_from_other_data_is_refused():
    from cleanloop.labeling.journal import Decision

    with pytest.raises(CleanloopError, match="had label 'joy'"):
        apply_decisions(small_dd(), {"train-00000": Decision("train-00000", "joy", "sadness", "corrected", ("a",), 1.0)})


# --- export (local folder fully; the Hub up to the call) ---------------------------------------------


def cleaned_version(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as j:
        j.record_pull([Vote("train-00000", "a", "joy"), Vote("train-00004", "a", None, "discarded")], OLD, round=1)
        v, _ = load_version(write_version(small_dd(), j, tmp_path / "versions", round=1))
    return v


def test_export_to_a_local_folder_reloads_with_load_dataset(tmp_path):
    import yaml

    from cleanloop.loops.export import CleaningInfo, export_dataset

    v = cleaned_version(tmp_path)
    folder = export_dataset(v, tmp_path / "export", CleaningInfo(rounds=1, model="test-model", reviewed=2))
    back = datasets.load_dataset(str(folder))
    assert set(back) == {"train", "test"}
    assert back["train"].features["label"].names == NAMES
    from cleanloop.identity import example_fingerprint

    assert back["train"]["fingerprint"] == [example_fingerprint("train", t) for t in back["train"]["text"]]
    back = back.remove_columns("fingerprint")
    assert back["train"].to_list() == [r for r in v["train"].to_list() if r["label_source"] != "removed"]
    assert back["test"].to_list() == v["test"].to_list()
    card = (folder / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert [(s["name"], s["num_examples"]) for s in header["dataset_info"]["splits"]] == [("train", 5), ("test", 1)]
    label_feat = next(f for f in header["dataset_info"]["features"] if f["name"] == "label")
    assert label_feat["dtype"]["class_label"]["names"] == {"0": "anger", "1": "joy", "2": "sadness"}
    assert "## Cleaning" in card and "| anger | 1 | 0 |" in card and "| sadness | 0 | 1 |" in card
    assert "- Model: test-model" in card


def test_push_to_hub_up_to_the_call(tmp_path, monkeypatch):
    """The Hub is out of reach here: this checks the exact calls made, with fakes passed as parameters."""
    from cleanloop.loops.export import CleaningInfo, push_dataset_to_hub, push_model_to_hub

    v = cleaned_version(tmp_path)
    calls = []

    class FakeApi:
        def __getattr__(self, name):
            return lambda **kw: calls.append((name, kw))

    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(CleanloopError, match="HF_TOKEN is not set"):
        push_dataset_to_hub(v, "me/clean", CleaningInfo(), push=lambda *a, **k: None, api=FakeApi())
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    pushed = []
    push_dataset_to_hub(v, "me/clean", CleaningInfo(rounds=1), private=True,
                        push=lambda dd, **kw: pushed.append((dd, kw)), api=FakeApi())
    [(dd, kw)] = pushed
    assert kw == {"repo_id": "me/clean", "private": True, "token": "hf_test"}
    assert len(dd["train"]) == 5 and "removed" not in set(dd["train"]["label_source"])
    [(name, kw)] = calls
    assert name == "upload_file" and kw["path_in_repo"] == "README.md" and kw["repo_type"] == "dataset"
    assert b"## Cleaning" in kw["path_or_fileobj"]
    calls.clear()
    push_model_to_hub(tmp_path, "me/model", private=True, api=FakeApi())
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == {"repo_id": "me/model", "repo_type": "model", "private": True, "exist_ok": True}
    with pytest.raises(CleanloopError, match="owner/name"):
        push_model_to_hub(tmp_path, "noslash", api=FakeApi())


def test_docstring_examples_run():
    import doctest

    from cleanloop.labeling import argilla_io, journal, records
    from cleanloop.loops import signals, versions
    from cleanloop.model import readers

    for module in (journal, versions, argilla_io, records, signals, readers):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__

"""Active learning from zero labels: the pool from a text-only file, zero-shot suggestions, the light head,
and a responsive session against the real embedded Argilla with an annotator answering through the UI's REST
endpoints (the review-loop test's three topics; the real packaged MiniLM)."""

from __future__ import annotations

import doctest
import threading
import time

import numpy as np
import pandas as pd
import pytest
from test_review_loop import NAMES, make_data

from cleanloop.config import ActiveOptions, Config
from cleanloop.errors import CleanloopError
from cleanloop.labeling import argilla_io as aio
from cleanloop.labeling.journal import Journal
from cleanloop.loops import online
from cleanloop.loops.active import active_config
from cleanloop.workdir import Workdir


def topic_pool(tmp_path) -> tuple[pd.DataFrame, list[str]]:
    """The three-topic train split: (frame with text and true label name, true labels by row)."""
    flipped = make_data(tmp_path / "data")
    train = pd.read_parquet(tmp_path / "data" / "train.parquet")
    truth = [NAMES[flipped[i]] if i in flipped else lbl for i, lbl in zip(train["id"], train["label"])]
    return train, truth


def test_a_text_only_csv_is_a_pool_with_the_config_label_names(tmp_path):
    pd.DataFrame({"text": ["rain all day", "we scored", "fresh bread"]}).to_csv(tmp_path / "pool.csv", index=False)
    pool = online.load_pool(Config(label_names=NAMES), str(tmp_path / "pool.csv"))
    assert pool.names == NAMES and pool.labels.tolist() == [-1, -1, -1] and pool.texts[1] == "we scored"
    assert len(set(pool.ids)) == 3


def test_a_partly_labelled_pool_keeps_its_labels_as_seeds(tmp_path):
    pd.DataFrame({"doc": ["a", "b", "c"], "text": ["rain all day", "we scored", "fresh bread"],
                  "label": [None, "sports", ""]}).to_json(tmp_path / "pool.jsonl", orient="records", lines=True)
    pool = online.load_pool(Config(label_names=NAMES, id_column="doc"), str(tmp_path / "pool.jsonl"))
    assert pool.ids == ["a", "b", "c"] and pool.labels.tolist() == [-1, 1, -1]
    # no label names in the config: the names come from the labels the pool has (here only one: an error)
    with pytest.raises(CleanloopError, match=r"1 label name\(s\) given and found in the data \(sports\); fix: pass "
                                             r"--label-names"):
        online.load_pool(Config(id_column="doc"), str(tmp_path / "pool.jsonl"))


def test_pool_errors_are_one_line_and_say_the_fix(tmp_path):
    pd.DataFrame({"text": ["rain all day", "we scored"]}).to_parquet(tmp_path / "pool.parquet")
    with pytest.raises(CleanloopError, match=r"0 label name\(s\) given and found in the data \(none\); fix: pass "
                                             r"--label-names a,b,c or set label_names"):
        online.load_pool(Config(), str(tmp_path / "pool.parquet"))
    pd.DataFrame({"text": ["rain all day", "we scored"], "label": ["", "golf"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(CleanloopError, match=r"bad.csv: row 1, column 'label': label 'golf' is not one of food, "
                                             r"sports, weather; fix"):
        online.load_pool(Config(label_names=NAMES), str(tmp_path / "bad.csv"))
    pd.DataFrame({"body": ["x"]}).to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(CleanloopError, match="column 'text' is missing .* fix: name the right column with --text-column"):
        online.load_pool(Config(label_names=NAMES), str(tmp_path / "nocol.csv"))
    with pytest.raises(CleanloopError, match="label_descriptions has 1 entries for 3 labels"):
        online.load_pool(Config(label_names=NAMES, label_descriptions=["food"]), str(tmp_path / "pool.parquet"))


def test_zero_shot_suggestions_find_the_topic_with_the_packaged_model(tmp_path):
    train, truth = topic_pool(tmp_path)
    cfg = Config(label_names=NAMES, workdir=str(tmp_path / "work"))
    emb = online.embed(cfg, list(train["id"]), list(train["text"]))
    assert emb.shape == (len(train), 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    names_acc = np.mean(online.zero_shot_probs(emb, online.label_anchors(cfg, NAMES)).argmax(1) == [NAMES.index(t) for t in truth])
    described = cfg.replace(label_descriptions=["a meal, cooking and eating", "a match, a team and a game",
                                                "rain, sun, wind and the forecast"])
    desc_acc = np.mean(online.zero_shot_probs(emb, online.label_anchors(described, NAMES)).argmax(1) ==
                       [NAMES.index(t) for t in truth])
    assert names_acc > 0.6 and desc_acc > 0.6  # chance: 1/3


def test_light_head_keeps_unseen_classes_and_is_zero_shot_without_labels():
    rng = np.random.default_rng(0)
    anchors = np.eye(3, 8)
    emb = anchors[rng.integers(0, 3, size=60)] + 0.1 * rng.normal(size=(60, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    y = emb[:, :3].argmax(1)
    head = online.LightHead(anchors)
    np.testing.assert_allclose(head.fit(emb[:0], y[:0]).predict_proba(emb), online.zero_shot_probs(emb, anchors))
    seen = y < 2  # nobody labelled class 2 yet
    probs = head.fit(emb[seen], y[seen]).predict_proba(emb)
    assert head.labels_seen == seen.sum() and probs.shape == (60, 3)
    assert (probs.argmax(1) == y).mean() > 0.9  # the anchor keeps class 2 reachable


def test_session_options_are_checked():
    with pytest.raises(CleanloopError, match="batch_size must be 1 or more, got 0"):
        ActiveOptions(batch_size=0)
    with pytest.raises(CleanloopError, match="strategy 'activelab' cannot drive a session; fix: use one of badge"):
        ActiveOptions(strategy="activelab")
    with pytest.raises(CleanloopError, match=r"finetune_holdout must be a share in \(0, 1\), got 1.0"):
        ActiveOptions(finetune_holdout=1.0)
    with pytest.raises(CleanloopError, match="finetune_after must be 0 or more, got -1"):
        ActiveOptions(finetune_after=-1)


class Annotator(threading.Thread):
    """Answers pending records (oldest batch first) with their true label, one every ``pause`` seconds;
    waits while ``hold(number of answers so far)`` is true."""

    def __init__(self, server, dataset: str, truth: dict[str, str], pause: float, hold=None):
        super().__init__(daemon=True)
        self.server, self.dataset, self.truth, self.pause = server, dataset, truth, pause
        self.hold = hold or (lambda answered: False)
        self.stop, self.answers = threading.Event(), []

    def run(self):
        with self.server.http() as http:
            while not self.stop.is_set():
                found = [d for d in http.get("/api/v1/me/datasets").json()["items"] if d["name"] == self.dataset]
                items = http.post(f"/api/v1/me/datasets/{found[0]['id']}/records/search", params={"limit": 1000},
                                  json={}).json()["items"] if found else []
                done = {ex for _, ex in self.answers}
                todo = sorted((it["record"]["metadata"]["round"], it["record"]["external_id"], it["record"]["id"])
                              for it in items if it["record"]["external_id"] not in done)
                for batch, ex_id, rec_id in todo:
                    time.sleep(self.pause)
                    while self.hold(len(self.answers)) and not self.stop.is_set():
                        time.sleep(0.1)
                    r = http.post(f"/api/v1/records/{rec_id}/responses",
                                  json={"values": {"label": {"value": self.truth[ex_id]}}, "status": "submitted"})
                    assert r.status_code == 201, r.text
                    self.answers.append((batch, ex_id))
                time.sleep(0.05)


def test_session_from_zero_labels_queues_ahead_and_goes_through_the_journal(tmp_path, argilla_server, monkeypatch):
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.owner_key)
    train, truth = topic_pool(tmp_path)
    train[["text"]].to_csv(tmp_path / "pool.csv", index=False)  # text only: no ids, no labels
    cfg = Config(dataset=str(tmp_path / "pool.csv"), label_names=NAMES, workdir=str(tmp_path / "work"), seed=0,
                 argilla_url=argilla_server.url, argilla_workspace="cleanloop", argilla_dataset="session")
    pool = online.load_pool(cfg)
    emb, anchors = online.embed(cfg, pool.ids, pool.texts), online.label_anchors(cfg, NAMES)
    gold = dict(zip(pool.ids, truth))
    annotator = Annotator(argilla_server, "session-label", gold, pause=0.6)  # time to queue ahead on a busy CI machine
    opts = ActiveOptions(strategy="margin", batch_size=4, max_labels=12, poll_seconds=0.2, idle_timeout=60)
    seen = []
    annotator.start()
    try:
        batches = online.run_session(cfg, opts, pool=pool, embeddings=emb, anchors=anchors,
                                     on_batch=lambda info, head: seen.append(head.labels_seen))
    finally:
        annotator.stop.set()
        annotator.join(10)

    assert [len(b.ids) for b in batches] == [4, 4, 4] and len({i for b in batches for i in b.ids}) == 12
    first = batches[0]
    assert (first.strategy, first.model, first.model_labels) == ("coverage", "zero-shot", 0)
    assert all(b.strategy == "margin" and b.model == "logreg" and b.model_labels > 0 for b in batches[1:])
    # queued once half a batch was left: the annotator never waited for batch 2 or 3
    assert batches[0].seconds_to_next_batch == 0.0 and batches[1].seconds_to_next_batch == 0.0
    assert all(b.staleness <= opts.batch_size for b in batches) and seen == [b.model_labels for b in batches]

    # the first batch went out with zero-shot suggestions and their scores
    client = argilla_server.client()
    dataset = aio.get_dataset(client, active_config(cfg))
    sugg = {str(m.external_id): m.suggestions[0] for m in aio._record_models(client, dataset)}
    assert all(0 < sugg[i].score <= 1 and sugg[i].value in NAMES for i in first.ids)
    assert np.mean([sugg[i].value == gold[i] for b in batches for i in b.ids]) > 0.5

    # every answer went through the journal into a data version
    with Journal(Workdir.of(cfg).active().journal) as j:
        decisions = j.current()
    assert {i: (d.action, d.new_label) for i, d in decisions.items()} == \
        {i: ("corrected", gold[i]) for b in batches for i in b.ids}
    from cleanloop.loops.versions import load_version

    version, _ = load_version(Workdir.of(cfg).active().version(1))
    assert (np.asarray(version["train"]["label"]) >= 0).sum() == 12

    # and out through `cleanloop export`: the labelled examples only, with a card saying how they were made
    from click.testing import CliRunner

    import cleanloop.cli  # noqa: F401  (registers the commands)
    from cleanloop.cli.options import app

    out = tmp_path / "export"
    res = CliRunner().invoke(app, ["export", "--workdir", str(Workdir.of(cfg).active().root), "--to", str(out)])
    assert res.exit_code == 0, res.output
    exported = pd.read_parquet(out / "data" / "train.parquet")
    assert len(exported) == 12 and {NAMES[i] for i in exported["label"]} <= set(NAMES)
    card = (out / "README.md").read_text()
    assert "Labelled by active learning: 12 examples in 3 batches" in card and "Strategy: coverage then margin" in card
    assert "annotator (12 answers)" in card and "Learning curve" in card


def test_the_held_out_check_keeps_the_better_head_and_holds_out_only_unseen_labels():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=90)
    anchors = np.eye(3, 8)
    clean = anchors[y] + 0.05 * rng.normal(size=(90, 8))  # an encoder that separates the classes
    noisy = anchors[rng.integers(0, 3, size=90)] + 0.05 * rng.normal(size=(90, 8))  # one that does not
    good, bad = online.Encoder(online.unit(clean), anchors), online.Encoder(online.unit(noisy), anchors)
    train, check = np.arange(60), np.arange(60, 90)

    def make(a):
        return online.LightHead(a, anchor_weight=1.0)

    won = online.held_out_check(bad, good, y, train, check, make)
    assert won["swapped"] and won["finetuned_accuracy"] > 0.9 > 0.6 > won["light_accuracy"]
    lost = online.held_out_check(good, bad, y, train, check, make)
    assert not lost["swapped"] and lost["light_accuracy"] == won["finetuned_accuracy"]
    ids = [f"x{i}" for i in range(90)]
    seen = frozenset(ids[:50])  # what the current encoder was fine-tuned on
    tr, ck = online.split_for_check(np.arange(80), ids, seen, 0.25, np.random.default_rng(1))
    assert len(ck) == 20 and ck.min() >= 50 and sorted(np.concatenate([tr, ck]).tolist()) == list(range(80))


def test_a_background_fine_tune_runs_while_batches_are_queued_and_swaps_in_after_the_check(tmp_path, argilla_server,
                                                                                             monkeypatch, caplog):
    import json
    import logging

    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.owner_key)
    train, truth = topic_pool(tmp_path)
    train[["text"]].to_csv(tmp_path / "pool.csv", index=False)
    cfg = Config(dataset=str(tmp_path / "pool.csv"), label_names=NAMES, workdir=str(tmp_path / "work"), seed=0,
                 epochs=1, batch_size=16, argilla_url=argilla_server.url, argilla_workspace="cleanloop",
                 argilla_dataset="background")
    pool = online.load_pool(cfg)
    emb, anchors = online.embed(cfg, pool.ids, pool.texts), online.label_anchors(cfg, NAMES)
    gold = dict(zip(pool.ids, truth))
    # the first fine-tune at 8 labels; the next one as soon as the first is done (at least 12 labels)
    opts = ActiveOptions(strategy="margin", batch_size=4, poll_seconds=0.2, idle_timeout=600, finetune_after=8,
                         finetune_growth=0.5, finetune_holdout=0.25, min_train_examples=160)
    models = []

    def on_batch(info, head):
        models.append(info.model)
        assert head.encoder.eval_embeddings is None or head.encoder.eval_embeddings.shape == (2, 384)

    def swapped_and_two_more() -> bool:  # then the second fine-tune is still training: the stop must end it
        return sum(m.startswith("finetuned") for m in models) >= 2

    # after 24 answers the annotator waits for the first fine-tune to be swapped in (at most 10 minutes), so
    # that a slow CI machine cannot label the whole pool of 90 before it is done
    accepted, t0 = Workdir.of(cfg).active().finetune("accepted").root, time.monotonic()
    annotator = Annotator(argilla_server, "background-label", gold, pause=0.5,
                          hold=lambda answered: answered >= 24 and not accepted.exists() and time.monotonic() - t0 < 600)
    annotator.start()
    try:
        with caplog.at_level(logging.INFO, "cleanloop.active"):
            batches = online.run_session(cfg, opts, pool=pool, embeddings=emb, anchors=anchors, on_batch=on_batch,
                                         should_stop=swapped_and_two_more, eval_texts=["rain all day", "we scored"])
    finally:
        annotator.stop.set()
        annotator.join(10)

    awd = Workdir.of(cfg).active()
    first, second = json.loads(awd.session.read_text())["finetunes"][:2]
    # the annotator kept getting batches while the first fine-tune trained
    during = [b for b in batches if first["started_at"] < b.pushed_at < first["finished_at"]]
    assert len(during) >= 1 and all(b.model == "logreg" for b in during)
    # the check: both heads on the labels held out of the snapshot, and the verdict follows the figures
    n = first["train"]  # 6 of the first 8 labels (a slow poll may bring one more)
    assert first["labels"] >= 8 and first["held_out"] == round(0.25 * first["labels"]) == first["labels"] - n
    assert first["against"] == "frozen"
    assert first["status"] == "swapped" and first["swapped"]
    assert (first["finetuned_accuracy"], -first["finetuned_log_loss"]) > (first["light_accuracy"], -first["light_log_loss"])
    assert f"background fine-tune 1 on {n} labels" in caplog.text and "swapped in" in caplog.text
    # the batches after the swap were picked by the light head on the fine-tuned embeddings, and say so
    after = [b for b in batches if b.pushed_at > first["finished_at"]]
    assert len(after) >= 2 and all(b.model == f"finetuned-logreg@{n}" for b in after)
    assert all(b.model in ("zero-shot", "logreg") for b in batches if b.pushed_at < first["finished_at"])
    # the stop ended the second fine-tune: nothing of it is left; the accepted one is whole
    assert second["status"] == "stopped" and second["labels"] >= 12 and second["against"] == f"finetuned@{n}"
    assert not awd.finetune("running").root.exists()
    accepted = awd.finetune("accepted")
    assert np.load(accepted.pool_embeddings).shape == emb.shape and accepted.finetune_info.exists()
    assert online.session_summary(awd)["Background fine-tunes"].startswith(f"on {n} labels: held-out accuracy ")
    assert online.session_summary(awd)["Background fine-tunes"].endswith("swapped in")
    # a resumed session starts on the accepted fine-tune
    caplog.clear()
    with caplog.at_level(logging.INFO, "cleanloop.active"):
        online.run_session(cfg, opts, pool=pool, embeddings=emb, anchors=anchors, should_stop=lambda: True)
    assert f"resuming on the accepted fine-tune (finetuned@{n})" in caplog.text


def test_cli_says_what_is_missing_for_a_text_only_pool(tmp_path):
    from click.testing import CliRunner

    import cleanloop.cli  # noqa: F401  (registers the commands)
    from cleanloop.cli.options import app

    pd.DataFrame({"text": ["rain all day", "we scored"]}).to_csv(tmp_path / "pool.csv", index=False)
    res = CliRunner().invoke(app, ["active", "--pool", str(tmp_path / "pool.csv"), "--workdir", str(tmp_path / "w")])
    assert isinstance(res.exception, CleanloopError) and "fix: pass --label-names" in str(res.exception)
    assert not (tmp_path / "w").exists()


def test_doctests():
    assert doctest.testmod(online).failed == 0


def test_only_a_fine_tune_folder_cleanloop_made_is_removed(tmp_path):
    from cleanloop.loops.online import remove_finetune
    from cleanloop.workdir import Workdir

    running = Workdir(tmp_path).active().finetune("running")
    running.root.mkdir(parents=True)
    (running.root / "notes.txt").write_text("mine")
    with pytest.raises(CleanloopError, match="holds files cleanloop did not write"):
        remove_finetune(running)
    assert (running.root / "notes.txt").read_text() == "mine"
    running.finetune_log.write_text("")  # what BackgroundFinetune writes first
    remove_finetune(running)
    assert not running.root.exists()
    remove_finetune(running)  # nothing there: nothing to do

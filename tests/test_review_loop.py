"""End to end on the real embedded Argilla: injected label flips -> flag -> push -> an annotator answers
through the web UI's REST endpoints -> pull -> apply -> retrain -> export; and a run killed between
pull and apply that resumes to the same result.

Training is the fast ``--method features`` (frozen packaged encoder + logistic regression) on ~140
short texts the test makes, three topics that the encoder separates well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cleanloop.config import Config
from cleanloop.labeling import argilla_io as aio
from cleanloop.labeling.journal import Journal
from cleanloop.loops.retrain import LoopOptions, run_loop
from cleanloop.workdir import Workdir

NAMES = ["food", "sports", "weather"]
TOPICS = {
    "sports": (["the striker", "our goalkeeper", "the coach", "the home team", "the tennis player", "the runner"],
               ["scored twice in", "trained hard before", "lost badly in", "celebrated after", "was injured during"],
               ["the cup final", "the league match", "the marathon", "the championship game", "the penalty shootout"]),
    "food": (["my grandmother", "the chef", "this bakery", "our neighbour", "the new restaurant"],
             ["cooked", "served", "baked", "burned", "seasoned"],
             ["a spicy curry with rice", "fresh bread and butter", "chocolate cake for dessert",
              "tomato soup with garlic", "grilled fish and salad"]),
    "weather": (["the forecast", "the morning sky", "the storm", "the north wind", "the meteorologist"],
                ["warned about", "brought", "promised", "predicted", "showed"],
                ["heavy rain and thunder", "snow on the mountains", "a sunny warm afternoon",
                 "thick fog over the coast", "freezing temperatures tonight"]),
}
FLIPS = 6


def make_data(folder: Path, seed: int = 0) -> dict[str, int]:
    """train/validation/test parquet files; returns {train id: true label} for the flipped examples."""
    rng = np.random.default_rng(seed)
    rows = {"train": [], "validation": [], "test": []}
    for label, (subj, verbs, objs) in TOPICS.items():
        texts = [f"{s} {v} {o}" for s in subj for v in verbs for o in objs]
        pick = rng.permutation(len(texts))
        for split, (a, b) in {"train": (0, 30), "validation": (30, 38), "test": (38, 46)}.items():
            rows[split] += [(texts[i], NAMES.index(label)) for i in pick[a:b]]
    folder.mkdir(parents=True, exist_ok=True)
    flipped = {}
    for split, items in rows.items():
        order = rng.permutation(len(items))
        df = pd.DataFrame([items[i] for i in order], columns=["text", "label"])
        df.insert(0, "id", [f"{split}-{i:05d}" for i in range(len(df))])
        if split == "train":
            for i in rng.choice(len(df), size=FLIPS, replace=False):
                flipped[df.at[i, "id"]] = int(df.at[i, "label"])
                df.at[i, "label"] = (int(df.at[i, "label"]) + 1) % len(NAMES)
        df["label"] = [NAMES[i] for i in df["label"]]
        df.to_parquet(folder / f"{split}.parquet")
    return flipped


def loop_config(tmp_path: Path, argilla_server, name: str) -> tuple[Config, dict[str, int]]:
    flipped = make_data(tmp_path / "data")
    cfg = Config(dataset=str(tmp_path / "data"), id_column="id", label_names=NAMES, workdir=str(tmp_path / "work"),
                 method="features", folds=3, max_review=20, seed=0, argilla_url=argilla_server.url,
                 argilla_workspace="cleanloop", argilla_dataset=name,
                 review_wave=0)  # the simulated annotator answers all at once (waves: test_review_order_browser.py)
    return cfg, flipped


def answer_as_annotator(argilla_server, cfg: Config, flipped: dict[str, int]) -> dict[str, str | None]:
    """The simulated annotator, through the UI's endpoints: true label for every pushed record, except
    that it discards the first flipped one and leaves the last flipped one unanswered.
    Returns {example id: label name or None (discarded)}."""
    client = argilla_server.client()
    dataset = aio.get_dataset(client, cfg)
    train = pd.read_parquet(Path(cfg.dataset) / "train.parquet").set_index("id")
    with argilla_server.http() as http:
        resp = http.post(f"/api/v1/me/datasets/{dataset.id}/records/search", params={"limit": 1000}, json={})
        assert resp.status_code == 200, resp.text
        records = {i["record"]["external_id"]: i["record"]["id"] for i in resp.json()["items"]}
        pushed_flips = sorted(i for i in records if i in flipped)
        assert len(pushed_flips) >= FLIPS - 2, f"the flag step found only {pushed_flips} of {sorted(flipped)}"
        discard, skip = pushed_flips[0], pushed_flips[-1]
        answers = {}
        for ex_id, rec_id in sorted(records.items()):
            if ex_id == skip:
                continue
            if ex_id == discard:
                body, answers[ex_id] = {"status": "discarded"}, None
            else:
                truth = NAMES[flipped[ex_id]] if ex_id in flipped else train.at[ex_id, "label"]
                body, answers[ex_id] = {"values": {"label": {"value": truth}}, "status": "submitted"}, truth
            r = http.post(f"/api/v1/records/{rec_id}/responses", json=body)
            assert r.status_code == 201, r.text
    return answers


def expected_train(cfg: Config, answers: dict[str, str | None]) -> pd.DataFrame:
    """The original train split with exactly the annotator's corrections applied and discards dropped."""
    df = pd.read_parquet(Path(cfg.dataset) / "train.parquet")
    df["original_label"] = df["label"]
    for ex_id, label in answers.items():
        if label is not None:
            df.loc[df["id"] == ex_id, "label"] = label
    df["label_source"] = np.where(df["label"] != df["original_label"], "corrected", "original")
    df = df[~df["id"].isin([i for i, lbl in answers.items() if lbl is None])]
    return df.reset_index(drop=True)


def exported_train(folder: Path) -> pd.DataFrame:
    ds = datasets.load_dataset(str(folder))["train"]
    names = ds.features["label"].names
    df = ds.to_pandas()
    for col in ("label", "original_label"):
        df[col] = [names[i] for i in df[col]]
    return df[["id", "text", "label", "original_label", "label_source"]]


def run_export(cfg: Config, out: Path) -> pd.DataFrame:
    import cleanloop.cli  # noqa: F401  (registers the commands)
    from cleanloop.cli.options import app

    result = CliRunner().invoke(app, ["export", "--workdir", cfg.workdir, "--method", "features", "--to", str(out),
                                      "--model-to", str(out.with_name(out.name + "-model"))])
    assert result.exit_code == 0, result.output
    return exported_train(out)


def wait_for(predicate, timeout=180.0):
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.3)


RESULTS: dict[str, pd.DataFrame] = {}


def test_review_round_trip_end_to_end(tmp_path, argilla_server, monkeypatch):
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.owner_key)
    cfg, flipped = loop_config(tmp_path, argilla_server, "loop-e2e")
    state_file = Workdir.of(cfg).loop_state
    pushed = lambda: state_file.exists() and "push" in json.loads(state_file.read_text())["done"]  # noqa: E731

    # the loop waits for the reviews in a thread; the annotator answers meanwhile
    errors, shown, ready = [], [], threading.Event()
    opts = LoopOptions(rounds=1, min_reviewed=0, review_timeout=120, poll_seconds=5, webhooks=True)

    def after_step(rnd, step, res):
        if step == "push":  # min_reviewed is set once we know how many records were pushed
            assert ready.wait(60)

    def loop():
        try:
            run_loop(cfg, opts, display=lambda done, target: shown.append((done, target)), on_step=after_step)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    # the annotator leaves one record unanswered: the loop goes on once all the others are in
    th = threading.Thread(target=loop)
    th.start()
    wait_for(lambda: pushed() or errors)
    assert not errors, errors
    n_pushed = json.loads(state_file.read_text())["rounds"]["1"]["pushed"]
    opts.min_reviewed = n_pushed - 1
    ready.set()
    answers = answer_as_annotator(argilla_server, cfg, flipped)
    th.join(timeout=240)
    assert not th.is_alive() and not errors, errors
    assert shown and shown[-1] == (n_pushed - 1, n_pushed - 1)

    state = json.loads(state_file.read_text())
    assert state["finished"] and state["round"] == 2
    r1 = state["rounds"]["1"]
    corrected = sum(1 for i, lbl in answers.items() if i in flipped and lbl is not None)
    assert (r1["changed"], r1["removed"]) == (corrected, 1) and r1["reviewed"] == len(answers)
    assert r1["agreement"] == 1.0 and "test_accuracy" in state["final"]
    history = json.loads((Workdir.of(cfg).history).read_text())
    assert [h["round"] for h in history] == [1, "final"] and history[0]["changed"] == corrected
    assert (Workdir.of(cfg).history_plot).stat().st_size > 0 and "| round |" in (Workdir.of(cfg).report).read_text()

    # the journal holds one decision per answered record; pulling again through the CLI adds nothing
    with Journal(Workdir.of(cfg).journal) as j:
        assert len(j.history()) == len(answers)
    import cleanloop.cli  # noqa: F401
    from cleanloop.cli.options import app

    again = CliRunner().invoke(app, ["pull", "--dataset", cfg.dataset, "--id-column", "id", "--label-names",
                                     ",".join(NAMES), "--workdir", cfg.workdir, "--argilla-url", cfg.argilla_url,
                                     "--argilla-dataset", cfg.argilla_dataset, "--round", "1"])
    assert again.exit_code == 0, again.output
    assert "0 new answers, 0 new decisions" in again.output
    # a progress bar, then one summary line; the SDK's own INFO lines only with --verbose
    assert "Logged in as" not in again.output
    assert sum("pulled " in line or "round 1:" in line for line in again.output.splitlines()) == 1
    with Journal(Workdir.of(cfg).journal) as j:
        assert len(j.history()) == len(answers)

    out = run_export(cfg, tmp_path / "export")
    want = expected_train(cfg, answers)
    pd.testing.assert_frame_equal(out, want, check_dtype=False)
    assert out["id"].is_unique
    assert (tmp_path / "export-model" / "README.md").exists()
    RESULTS["e2e"] = out

    # 'cleanloop flag' on the original data leaves the examples the journal decided out of the queue
    res = CliRunner().invoke(app, ["flag", "--dataset", cfg.dataset, "--id-column", "id", "--label-names", ",".join(NAMES),
                                   "--workdir", cfg.workdir, "--method", "features", "--flag-source", "oof", "--folds", "3",
                                   "--seed", "0", "--max-review", "0", "--no-map"])
    assert res.exit_code == 0, res.output
    scores = pd.read_parquet(Path(cfg.workdir) / "flags" / "scores.parquet")
    queue = pd.read_parquet(Path(cfg.workdir) / "flags" / "review_queue.parquet")
    assert set(scores.loc[scores["is_issue"], "id"]) & set(answers)  # flagged again...
    assert not set(queue["id"]) & set(answers)  # ...but not queued again


KILLER = r"""
import os, signal, sys
from cleanloop.config import Config
from cleanloop.loops import versions
from cleanloop.loops.retrain import LoopOptions, run_loop

real = versions.write_version
def write_version(dd, journal, root, round, upto_seq=None):
    if round == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # killed between pull and apply
    return real(dd, journal, root, round, upto_seq)
versions.write_version = write_version
cfg = Config(**__import__("json").loads(sys.argv[1]))
run_loop(cfg, LoopOptions(rounds=1, review_timeout=60, poll_seconds=0.3))
"""


def test_killed_between_pull_and_apply_resumes_to_the_same_result(tmp_path, argilla_server, monkeypatch):
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.owner_key)
    cfg, flipped = loop_config(tmp_path, argilla_server, "loop-killed")

    class Stop(KeyboardInterrupt):
        pass

    def stop_after_push(rnd, step, res):
        if step == "push":
            raise Stop  # Ctrl-C right after the push was checkpointed

    with pytest.raises(Stop):
        run_loop(cfg, LoopOptions(rounds=1), on_step=stop_after_push)
    answers = answer_as_annotator(argilla_server, cfg, flipped)

    n_pushed = json.loads((Workdir.of(cfg).loop_state).read_text())["rounds"]["1"]["pushed"]
    cfg_json = json.dumps(cfg.replace().to_dict())
    env = {**os.environ, "ARGILLA_API_KEY": argilla_server.owner_key}
    # resume in a process that gets SIGKILLed when it reaches apply (min_reviewed: what was answered)
    killer = KILLER.replace("rounds=1,", f"rounds=1, min_reviewed={n_pushed - 1},")
    proc = subprocess.run([sys.executable, "-c", killer, cfg_json], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    state = json.loads((Workdir.of(cfg).loop_state).read_text())
    assert state["done"] == ["train", "flag", "push", "wait", "pull"] and not state["finished"]
    with Journal(Workdir.of(cfg).journal) as j:
        assert len(j.history()) == len(answers) and len(j.pulls()) == 1  # the pull was committed

    final = run_loop(cfg, LoopOptions(rounds=1, min_reviewed=n_pushed - 1, review_timeout=60))
    assert final.finished
    with Journal(Workdir.of(cfg).journal) as j:
        assert len(j.history()) == len(answers)  # nothing applied twice
    r1 = final.rounds["1"]
    assert r1["removed"] == 1 and r1["changed"] == sum(1 for i, lbl in answers.items() if i in flipped and lbl)
    out = run_export(cfg, tmp_path / "export")
    pd.testing.assert_frame_equal(out, expected_train(cfg, answers), check_dtype=False)
    if "e2e" in RESULTS:  # same data, same annotator: the same cleaned data as the uninterrupted run
        pd.testing.assert_frame_equal(out, RESULTS["e2e"])

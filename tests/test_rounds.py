"""The round engine on its own (no Argilla, no model): steps run in order in each round's own workdir,
each checkpointed, a failed step resumes where it stopped, more rounds later go on, the final
result and the history come out the same way for every loop."""

from __future__ import annotations

import json

import datasets
import pytest

from cleanloop.config import Config
from cleanloop.lock import OWNER_FILE
from cleanloop.loops.retrain import LoopOptions
from cleanloop.loops.rounds import ApplyStep, LoopState, RoundLoop, Step
from cleanloop.workdir import Workdir


class Boom(RuntimeError):
    pass


class Note(Step):
    """Writes a file in the round's workdir and records the round; fails once in round ``fail_in``."""

    def __init__(self, name: str, calls: list, fail_in: int | None = None):
        self.name, self.calls, self.fail_in = name, calls, fail_in

    def run(self, loop, rnd):
        self.calls.append((rnd.number, self.name))
        assert json.loads((loop.owner.root / OWNER_FILE).read_text())["command"] == "cleanloop test-loop"
        if rnd.number == self.fail_in:
            self.fail_in = None
            raise Boom(self.name)
        rnd.workdir.write_text(rnd.workdir.root / f"{self.name}.txt", str(len(rnd.version["train"])))
        rnd.result[self.name] = rnd.number


def original():
    feats = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"])})
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"id": ["a", "b", "c"], "text": ["x", "y", "z"], "label": [0, 1, 0]}, features=feats)})


def make_loop(wd: Workdir, steps, rounds: int, finals: list) -> RoundLoop:
    def final(loop):
        finals.append(len(loop.version(rounds)["train"]))
        return {"round": "final", "score": 0.5}

    return RoundLoop("test-loop", Config(workdir=str(wd.root)), wd, steps, original(), LoopOptions(rounds=rounds),
                     final=final, history_keys=("round", "first", "second", "score"), title="test loop",
                     about=["what the rows are"])


def test_steps_checkpoint_resume_and_history(tmp_path):
    wd, calls, finals, steps = Workdir(tmp_path / "w"), [], [], []
    steps = [Note("first", calls), Note("second", calls, fail_in=2), ApplyStep()]
    with pytest.raises(Boom):
        make_loop(wd, steps, 2, finals).run()
    state = LoopState.load(wd.loop_state)
    assert (state.round, state.done, state.finished) == (2, ["first"], False)  # round 1 whole, round 2 up to "first"
    assert calls == [(1, "first"), (1, "second"), (2, "first"), (2, "second")]

    calls.clear()
    state = make_loop(wd, steps, 2, finals).run()  # resumes at round 2's failed step
    assert calls == [(2, "second")] and finals == [3]
    assert state.finished and state.round == 3 and state.final["score"] == 0.5
    assert [state.rounds[r]["second"] for r in ("1", "2")] == [1, 2]
    assert set(state.rounds["1"]["step_seconds"]) == {"first", "second", "apply"}
    for r in (1, 2):  # each round worked in its own folder; apply wrote its data version
        assert (wd.round(r).root / "first.txt").read_text() == "3"
        assert state.rounds[str(r)]["version"] == str(wd.version(r))
    assert wd.version(0).exists() and wd.latest_version() == 2

    rows = json.loads(wd.history.read_text())
    assert [r["round"] for r in rows] == [1, 2, "final"] and rows[-1]["score"] == 0.5
    report = wd.report.read_text()
    assert report.startswith("# test loop") and "what the rows are" in report and "| round | first |" in report
    assert wd.history_plot.stat().st_size > 0
    assert not (wd.root / OWNER_FILE).exists()  # the lock is released

    calls.clear()
    state = make_loop(wd, steps, 3, finals).run()  # more rounds later: round 3, then a new final result
    assert calls == [(3, "first"), (3, "second")] and finals == [3, 3] and state.finished
    assert [r["round"] for r in json.loads(wd.history.read_text())] == [1, 2, 3, "final"]


def test_a_step_can_send_the_loop_back(tmp_path):
    """A step that finds the round's model too weak marks the training as not done (the flag step does)."""
    wd, calls = Workdir(tmp_path / "w"), []

    class Judge(Step):
        name = "judge"

        def run(self, loop, rnd):
            loop.undo("first")
            raise Boom("too weak")

    with pytest.raises(Boom):
        make_loop(wd, [Note("first", calls), Judge()], 1, []).run()
    state = LoopState.load(wd.loop_state)
    assert state.round == 1 and state.done == []  # the next run trains again

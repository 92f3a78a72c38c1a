"""The round engine of the review loop and the active-learning loop: named steps, checkpointed, resumable.

A loop (:class:`RoundLoop`) runs rounds of :class:`Step` objects; each round gets its own child
workdir (``loop/round-NNN``, sharing the cache) and the data version the previous round wrote.
Each step is recorded in ``loop/state.json`` (temp + rename) only after it finished, and every
step can run again without harm (training writes to a temp folder; push updates records by id;
pull skips answers the journal has; apply rebuilds the version from the original data + journal),
so a crash or Ctrl-C at any point resumes at the step that did not finish, with nothing lost or
done twice. After the last round a final model may be trained; then the history is written
(``loop/history.json``, ``history.png``, ``report.md``).

The Argilla steps are shared: :class:`PushStep` (the round's queue, in waves), :class:`WaitStep`
(polling, woken by webhooks when the loop's options say so, feeding the next wave),
:class:`PullStep` (answers into the journal) and :class:`ApplyStep` (the next data version).
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cleanloop.atomic import write_json
from cleanloop.config import Config
from cleanloop.errors import CleanloopError
from cleanloop.labeling.journal import Journal
from cleanloop.loops.history import history, write_history
from cleanloop.loops.review import lazy_client, pull_step, round_stats, wait_for_reviews, wave_pusher
from cleanloop.workdir import Workdir

log = logging.getLogger("cleanloop.loop")


@dataclass
class LoopState:
    """What is done: the current round, the steps of it that finished, and every round's results."""

    round: int = 1
    done: list[str] = field(default_factory=list)
    rounds: dict[str, dict] = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    finished: bool = False

    @classmethod
    def load(cls, path: Path) -> "LoopState":
        if not path.exists():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise CleanloopError(f"{path} is not a loop state file ({exc}); fix: move it away to start over") from None

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    def result(self, rnd: int) -> dict:
        return self.rounds.setdefault(str(rnd), {"round": rnd})


@dataclass
class Round:
    """One round as its steps see it: its number, its results (saved in the state), its own workdir,
    and the data version it starts from (the one the previous round wrote; 0 = the original)."""

    number: int
    result: dict
    workdir: Workdir
    version: object  # DatasetDict with label_source


class Step(ABC):
    """One named step of a round. :meth:`run` does the work and records what it did in ``rnd.result``;
    it must be safe to run again after a crash (the state records a step only once it finished)."""

    name: str = ""

    @abstractmethod
    def run(self, loop: "RoundLoop", rnd: Round) -> None:
        """Run the step of round ``rnd`` of ``loop``."""


class RoundLoop:
    """A resumable loop of rounds: ``steps`` in order, each checkpointed; then ``final(loop)`` (optional).

    cfg: the loop's settings; its Argilla dataset is the one the loop pushes to. workdir: where the
    loop keeps its journal, versions and ``loop/`` (:class:`Workdir`). owner: the workdir whose lock
    the loop holds (default: ``workdir``). original: the original ``DatasetDict`` (version 0).
    opts: the loop's options (``rounds``, ``min_reviewed``, ``review_timeout``, ``poll_seconds``,
    ``webhooks``; read when a step needs them). client/home: the Argilla client, or the home of the
    embedded server whose credentials to connect with (connected on first use only). display(done,
    target): the wait's progress. on_step(round, step, result): after each step is checkpointed.
    history_keys, title, about: the history's columns and the report's header.
    """

    def __init__(self, name: str, cfg: Config, workdir: Workdir, steps: Sequence[Step], original, opts, *,
                 owner: Workdir | None = None, final: Callable[["RoundLoop"], dict] | None = None,
                 client=None, home: str | Path | None = None,
                 display: Callable[[int, int], None] | None = None,
                 on_step: Callable[[int, str, dict], None] | None = None,
                 history_keys: Sequence[str] = ("round",), title: str = "", about: Sequence[str] = ()):
        self.name, self.cfg, self.workdir, self.steps, self.original, self.opts = name, cfg, workdir, steps, original, opts
        self.owner = owner or workdir
        self.final = final
        self.client = lazy_client(cfg, home, client)
        self.display, self.on_step = display, on_step
        self.history_keys, self.title, self.about = history_keys, title or f"cleanloop {name}", about
        self.names = original["train"].features["label"].names
        self.state = LoopState()
        self.journal: Journal | None = None

    def version(self, rnd: int):
        """Data version ``rnd`` from disk (written by round ``rnd``'s apply; round 0 = the original)."""
        from cleanloop.loops import versions

        path = self.workdir.version(rnd)
        if not path.exists():
            if rnd != 0:
                raise CleanloopError(f"{path} is missing, but the loop state says round {rnd} was applied; "
                                     f"fix: rebuild it with 'cleanloop pull --round {rnd}'")
            versions.write_version(self.original, self.journal, self.workdir.versions, 0, upto_seq=0)
        return versions.load_version(path)[0]

    def undo(self, step: str) -> None:
        """Mark ``step`` of the current round as not done (it runs again on the next run)."""
        self.state.done.remove(step)
        self.state.save(self.workdir.loop_state)

    def run(self) -> LoopState:
        """Run (or resume) the loop until ``opts.rounds`` rounds are done and the final result is in."""
        with self.owner.lock(f"cleanloop {self.name}"):
            self.state = LoopState.load(self.workdir.loop_state)
            self.journal = Journal(self.workdir.journal)
            try:
                self._run()
                write_history(self.workdir, history(self.state, self.history_keys), self.history_keys, self.title,
                              self.about)
                return self.state
            finally:
                self.journal.close()

    def _run(self) -> None:
        state, state_file, rounds = self.state, self.workdir.loop_state, self.opts.rounds
        while state.round <= rounds:
            number = state.round
            if state.finished:  # run again with more rounds: new rounds, then a new final result
                state.finished, state.final = False, {}
            rnd = Round(number, state.result(number), self.workdir.round(number), self.version(number - 1))
            for step in self.steps:
                if step.name in state.done:
                    continue
                t0 = time.perf_counter()
                self.run_step(step, rnd)
                rnd.result.setdefault("step_seconds", {})[step.name] = round(time.perf_counter() - t0, 2)
                state.done.append(step.name)
                state.save(state_file)
                log.debug("%s round %s: %s done", self.name, number, step.name)  # on_step prints the summary
                if self.on_step:
                    self.on_step(number, step.name, rnd.result)
            state.round, state.done = number + 1, []
            state.save(state_file)
        if not state.finished:
            t0 = time.perf_counter()
            state.final = self.run_final()
            if state.final:
                state.final["step_seconds"] = {"train": round(time.perf_counter() - t0, 2)}
            state.finished = True
            state.save(state_file)
            if self.on_step:
                self.on_step(rounds + 1, "final", state.final)

    def run_step(self, step: Step, rnd: Round) -> None:
        step.run(self, rnd)

    def run_final(self) -> dict:
        return self.final(self) if self.final else {}


# --- the steps both loops share -----------------------------------------------------------------------


class PushStep(Step):
    """Push the round's queue to the loop's Argilla dataset, ``wave`` records pending at a time (0: all).

    queue(rnd) -> (DataFrame, (len, D) embeddings or None): the round's queue. Examples the journal
    has decided are left out, unless ``relabel`` (a strategy that asks for labels again).
    """

    name = "push"

    def __init__(self, queue: Callable[[Round], tuple], *, wave: int = 0, flagged_by: tuple[str, ...] = ("cleanlab",),
                 guidelines: str | None = None, relabel: bool = False):
        self.queue, self.wave, self.flagged_by, self.guidelines, self.relabel = queue, wave, flagged_by, guidelines, relabel

    def pusher(self, loop: RoundLoop, rnd: Round):
        """The round's queue as a :class:`~cleanloop.loops.review.WavePusher` (None for an empty queue)."""
        queue, embeddings = self.queue(rnd)
        skip = set() if self.relabel else loop.journal.reviewed_ids()
        return wave_pusher(loop.client(), loop.cfg, queue, embeddings, loop.names, rnd.number, skip,
                           flagged_by=self.flagged_by, guidelines=self.guidelines, wave=self.wave)

    def run(self, loop, rnd):
        pusher = self.pusher(loop, rnd)
        if pusher is not None:
            pusher.feed(0)
        rnd.result["pushed_ids"] = pusher.ids if pusher is not None else []
        rnd.result["pushed"] = len(rnd.result["pushed_ids"])


class WaitStep(Step):
    """Wait until the annotators answered ``opts.min_reviewed`` of the pushed records (0: all) or
    ``opts.review_timeout`` passed; woken by Argilla's webhooks with ``opts.webhooks``; pushes the
    next wave of ``push`` as answers come."""

    name = "wait"

    def __init__(self, push: PushStep):
        self.push = push

    def run(self, loop, rnd):
        from cleanloop.labeling import argilla_io as aio

        ids, opts = rnd.result.get("pushed_ids", []), loop.opts
        waker = aio.ReviewWaker(loop.client()).start() if opts.webhooks and ids else None
        pusher = self.push.pusher(loop, rnd) if ids and self.push.wave > 0 else None
        try:
            rnd.result["answered"] = wait_for_reviews(
                loop.client(), loop.cfg, ids, opts.min_reviewed, opts.review_timeout, opts.poll_seconds, loop.display,
                waker.event if waker else None, feed=pusher.feed if pusher is not None else None)
        finally:
            if waker:
                waker.stop()


class PullStep(Step):
    """Take every answer into the journal; the round's statistics from the journal."""

    name = "pull"

    def run(self, loop, rnd):
        pulled = pull_step(loop.client(), loop.cfg, loop.journal, loop.original["train"], rnd.number)
        rnd.result["new_votes_last_pull"] = pulled.new_votes
        rnd.result.update(round_stats(loop.journal, rnd.number))


class ApplyStep(Step):
    """Write the data version of this round: the original data with the journal's decisions applied."""

    name = "apply"

    def run(self, loop, rnd):
        from cleanloop.loops import versions

        path = versions.write_version(loop.original, loop.journal, loop.workdir.versions, rnd.number)
        rnd.result["version"] = str(path)
        rnd.result.update(round_stats(loop.journal, rnd.number))

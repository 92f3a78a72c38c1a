"""The corrections journal: every annotator answer and every label decision, append-only, in SQLite.

Three tables, never updated nor deleted from (triggers refuse it):

``pulls``      one row per :meth:`Journal.record_pull` (round, time, how much was new)
``votes``      one row per new annotator answer: example id, annotator, label or NULL (discarded)
``decisions``  one row per change of the reconciled outcome of an example: old label, new label
               or NULL (removed), action, annotators, agreement, consensus quality, round, time

A pull is one transaction: either all its votes and decisions are written or none. A vote is
stored only when it differs from that annotator's latest vote on that example, and a decision
only when the reconciled outcome differs from the example's latest decision, so pulling the
same answers twice writes (and applies) nothing twice. The current state of an example is its
latest decision; :mod:`cleanloop.loops.versions` applies those to the original data.

>>> j = Journal(":memory:")
>>> r = j.record_pull([Vote("train-00001", "ann", "joy")], {"train-00001": "anger"}, round=1)
>>> [(d.example_id, d.old_label, d.new_label, d.action) for d in r.decisions]
[('train-00001', 'anger', 'joy', 'corrected')]
>>> j.record_pull([Vote("train-00001", "ann", "joy")], {"train-00001": "anger"}, round=1).decisions
[]
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cleanloop.errors import CleanloopError
from cleanloop.labeling.records import Response

__all__ = ["ACTIONS", "Decision", "Journal", "PullResult", "Vote", "majority_vote", "reconcile"]

ACTIONS = ("corrected", "confirmed", "removed", "open")
WITHDRAWN = "withdrawn"  # a vote's status when the answer is no longer there (discarded -> draft, record deleted)
#: cleanlab's multi-annotator consensus quality is computed when at least this many examples
#: carry two or more label votes (fewer gives it nothing to estimate annotator quality from).
MIN_OVERLAP = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pulls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    round INTEGER NOT NULL,
    time TEXT NOT NULL,
    votes_new INTEGER NOT NULL,
    decisions_new INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS votes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pull_id INTEGER NOT NULL REFERENCES pulls(id),
    example_id TEXT NOT NULL,
    annotator TEXT NOT NULL,
    label TEXT,                      -- NULL: discarded ("no label fits")
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pull_id INTEGER NOT NULL REFERENCES pulls(id),
    example_id TEXT NOT NULL,
    old_label TEXT NOT NULL,
    new_label TEXT,                  -- NULL: removed (or open: no decision)
    action TEXT NOT NULL CHECK (action IN ('corrected', 'confirmed', 'removed', 'open')),
    annotators TEXT NOT NULL,        -- JSON list
    agreement REAL NOT NULL,
    consensus_quality REAL,
    round INTEGER NOT NULL,
    time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS votes_example ON votes(example_id);
CREATE INDEX IF NOT EXISTS decisions_example ON decisions(example_id);
CREATE TRIGGER IF NOT EXISTS votes_append_only_u BEFORE UPDATE ON votes
    BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS votes_append_only_d BEFORE DELETE ON votes
    BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_append_only_u BEFORE UPDATE ON decisions
    BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_append_only_d BEFORE DELETE ON decisions
    BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
"""


Vote = Response  # an annotator's answer as the journal keeps it (example, annotator, label, status)


@dataclass(frozen=True)
class Decision:
    """The reconciled outcome for one example.

    ``action``: ``corrected`` (new_label != old_label), ``confirmed`` (annotators kept the label),
    ``removed`` (the majority discarded it: no label fits; ``new_label`` is None) or ``open``
    (a tie: no decision, the original label stays). ``agreement`` is the share of the
    annotators' votes that went to the outcome, in [0, 1].
    """

    example_id: str
    old_label: str
    new_label: str | None
    action: str
    annotators: tuple[str, ...]
    agreement: float
    consensus_quality: float | None = None
    round: int = 0
    time: str = ""

    def outcome(self) -> tuple:
        """What applying this decision does (annotators and scores aside)."""
        return (self.action, self.new_label)


@dataclass
class PullResult:
    """What one pull added to the journal."""

    pull_id: int
    new_votes: int
    decisions: list[Decision] = field(default_factory=list)
    open_ids: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return sum(d.action == "corrected" for d in self.decisions)

    @property
    def removed(self) -> int:
        return sum(d.action == "removed" for d in self.decisions)


# --- pure reconciliation ----------------------------------------------------------------------------


def majority_vote(labels: Sequence[str | None]) -> tuple[str | None, float, bool]:
    """Majority of one example's votes (None = discard counts as a vote to remove).

    Returns ``(winner, agreement, decided)``: ``decided`` is False on a tie for first place
    (the example stays open), ``agreement`` = votes for the winner / all votes.

    >>> majority_vote(["joy", "joy", None])
    ('joy', 0.6666666666666666, True)
    >>> majority_vote(["joy", "sadness"])[2]
    False
    """
    if not labels:
        raise CleanloopError("majority_vote needs at least one vote, got none")
    counts = Counter(labels).most_common()
    top = counts[0][1]
    decided = len(counts) == 1 or counts[1][1] < top
    return counts[0][0], top / len(labels), decided


def consensus_quality(
    votes: Mapping[str, Mapping[str, str | None]], label_names: Sequence[str], pred_probs: Mapping[str, np.ndarray],
    min_overlap: int = MIN_OVERLAP,
) -> dict[str, float]:
    """cleanlab's multi-annotator consensus quality per example, when there is enough overlap.

    votes: example id -> {annotator: label name or None}. pred_probs: example id -> (C,)
    model probabilities in ``label_names`` order. Discard votes are left out (not a class).
    Returns {} unless at least two annotators answered and ``min_overlap`` examples carry two
    or more label votes. Higher = the consensus label is more likely right, in [0, 1].
    """
    index = {n: i for i, n in enumerate(label_names)}
    ids = [i for i, v in votes.items() if i in pred_probs and any(lbl is not None for lbl in v.values())]
    annotators = sorted({a for i in ids for a, lbl in votes[i].items() if lbl is not None})
    overlap = sum(sum(lbl is not None for lbl in votes[i].values()) >= 2 for i in ids)
    if len(annotators) < 2 or overlap < min_overlap:
        return {}
    import pandas as pd
    from cleanlab.multiannotator import get_label_quality_multiannotator

    table = pd.DataFrame(
        [[index[votes[i][a]] if votes[i].get(a) is not None else np.nan for a in annotators] for i in ids],
        columns=annotators,
    )
    probs = np.stack([np.asarray(pred_probs[i], dtype=float) for i in ids])
    out = get_label_quality_multiannotator(table, probs, verbose=False)["label_quality"]
    return {i: float(q) for i, q in zip(ids, out["consensus_quality_score"])}


def reconcile(
    votes: Iterable[Vote], old_labels: Mapping[str, str], round: int = 0, *,
    label_names: Sequence[str] | None = None, pred_probs: Mapping[str, np.ndarray] | None = None, time: str = "",
) -> list[Decision]:
    """One decision per example from the annotators' latest votes (majority vote; tie -> ``open``).

    votes: in the order given, a later vote of the same annotator on the same example replaces
    an earlier one (a ``withdrawn`` one takes it back; with none left the example is ``open``). old_labels: example id -> the label the data has. ``consensus_quality`` is
    filled in when ``label_names`` and ``pred_probs`` are given and the overlap is enough.
    """
    latest: dict[str, dict[str, str | None]] = {}
    for v in votes:
        latest.setdefault(v.example_id, {})[v.annotator] = v.label
        if v.status == WITHDRAWN:
            del latest[v.example_id][v.annotator]
    answered = {e: by for e, by in latest.items() if by}
    quality = consensus_quality(answered, label_names, pred_probs) if label_names and pred_probs else {}
    out = []
    for ex_id, by_annotator in latest.items():
        if ex_id not in old_labels:
            raise CleanloopError(f"vote on example {ex_id!r}, which has no known label; fix: pass its old label")
        old = old_labels[ex_id]
        if not by_annotator:  # every answer withdrawn: no decision, the original label stays
            out.append(Decision(ex_id, old, None, "open", (), 0.0, None, round, time))
            continue
        winner, agreement, decided = majority_vote(list(by_annotator.values()))
        if not decided:
            action, new = "open", None
        elif winner is None:
            action, new = "removed", None
        else:
            action, new = ("confirmed" if winner == old else "corrected"), winner
        out.append(Decision(ex_id, old, new if action != "open" else None, action, tuple(sorted(by_annotator)),
                            float(agreement), quality.get(ex_id), round, time))
    return out


# --- the SQLite journal -------------------------------------------------------------------------


class Journal:
    """The append-only corrections journal in one SQLite file.

    >>> j = Journal(":memory:")
    >>> _ = j.record_pull([Vote("a", "x", None, "discarded")], {"a": "joy"}, round=2)
    >>> j.current()["a"].action, j.reviewed_ids()
    ('removed', {'a'})
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))  # the user's only (SQLite keeps the mode)
        self._db = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # reading
    def votes(self) -> list[Vote]:
        rows = self._db.execute("SELECT example_id, annotator, label, status FROM votes ORDER BY seq")
        return [Vote(*r) for r in rows]

    def history(self) -> list[Decision]:
        """Every decision ever written, oldest first."""
        rows = self._db.execute(
            "SELECT example_id, old_label, new_label, action, annotators, agreement, consensus_quality, round, time "
            "FROM decisions ORDER BY seq"
        )
        return [Decision(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6], r[7], r[8]) for r in rows]

    def current(self, upto_seq: int | None = None) -> dict[str, Decision]:
        """The latest decision per example (optionally as of decision ``upto_seq``)."""
        out: dict[str, Decision] = {}
        history = self.history()
        for d in history[:upto_seq] if upto_seq is not None else history:
            out[d.example_id] = d
        return out

    def last_seq(self) -> int:
        """How many decisions the journal holds (a version is 'the journal up to this')."""
        return self._db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]

    def reviewed_ids(self) -> set[str]:
        """Examples with a decision other than ``open``: they need not be reviewed again."""
        return {i for i, d in self.current().items() if d.action != "open"}

    def pulls(self) -> list[dict]:
        cur = self._db.execute("SELECT id, round, time, votes_new, decisions_new FROM pulls ORDER BY id")
        return [dict(zip(("id", "round", "time", "votes_new", "decisions_new"), r)) for r in cur]

    # writing
    def record_pull(
        self, votes: Iterable[Vote], old_labels: Mapping[str, str], round: int, *,
        label_names: Sequence[str] | None = None, pred_probs: Mapping[str, np.ndarray] | None = None,
        now: datetime | None = None, complete: bool = False,
    ) -> PullResult:
        """Append the new votes of one pull and the decisions that change, in one transaction.

        votes: every answer read from the review tool (already-seen ones are skipped).
        old_labels: example id -> label in the data, for every example voted on.
        complete: ``votes`` are all the answers there are now, so an earlier answer missing from
        them was withdrawn (made a draft again, or its record deleted): it is journalled as a
        ``withdrawn`` vote and the example's decision is made again without it.
        """
        stamp = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
        votes = list(votes)
        for v in votes:
            if v.status not in ("submitted", "discarded"):
                raise CleanloopError(f"vote on {v.example_id!r} has status {v.status!r}; expected submitted or discarded")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute("INSERT INTO pulls (round, time, votes_new, decisions_new) VALUES (?, ?, 0, 0)",
                             (round, stamp))
            pull_id = cur.lastrowid
            latest = {(e, a): (lbl, st) for e, a, lbl, st in db.execute(
                "SELECT example_id, annotator, label, status FROM votes ORDER BY seq")}
            new_votes, touched = 0, set()
            for v in votes:
                if latest.get((v.example_id, v.annotator)) == (v.label, v.status):
                    continue
                db.execute("INSERT INTO votes (pull_id, example_id, annotator, label, status) VALUES (?, ?, ?, ?, ?)",
                           (pull_id, v.example_id, v.annotator, v.label, v.status))
                latest[(v.example_id, v.annotator)] = (v.label, v.status)
                new_votes += 1
                touched.add(v.example_id)
            if complete:
                present = {(v.example_id, v.annotator) for v in votes}
                for (e, a), (_, st) in list(latest.items()):
                    if st != WITHDRAWN and (e, a) not in present:
                        db.execute("INSERT INTO votes (pull_id, example_id, annotator, label, status) "
                                   "VALUES (?, ?, ?, NULL, ?)", (pull_id, e, a, WITHDRAWN))
                        latest[(e, a)] = (None, WITHDRAWN)
                        new_votes += 1
                        touched.add(e)
            all_votes = [Vote(e, a, lbl, st) for (e, a), (lbl, st) in latest.items()]
            current = self.current()
            olds = {e: current[e].old_label if e in current else old_labels.get(e) for e in touched}
            missing = [e for e, o in olds.items() if o is None]
            if missing:
                raise CleanloopError(f"votes on {missing[:3]} but no old label given for them; fix: pass old_labels")
            decided = reconcile([v for v in all_votes if v.example_id in touched], olds, round,
                                label_names=label_names, pred_probs=pred_probs, time=stamp)
            written = []
            for d in decided:
                before = current.get(d.example_id)
                if before is None and d.action == "open" or before is not None and before.outcome() == d.outcome():
                    continue
                db.execute(
                    "INSERT INTO decisions (pull_id, example_id, old_label, new_label, action, annotators, agreement, "
                    "consensus_quality, round, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (pull_id, d.example_id, d.old_label, d.new_label, d.action, json.dumps(list(d.annotators)),
                     d.agreement, d.consensus_quality, round, stamp),
                )
                written.append(d)
            db.execute("UPDATE pulls SET votes_new = ?, decisions_new = ? WHERE id = ?",
                       (new_votes, len(written), pull_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        open_ids = sorted(d.example_id for d in decided if d.action == "open")
        return PullResult(pull_id, new_votes, written, open_ids)

    def summary(self) -> dict:
        """Counts of the current decisions by action, and the mean agreement."""
        cur = list(self.current().values())
        out = {a: sum(d.action == a for d in cur) for a in ACTIONS}
        out["agreement"] = float(np.mean([d.agreement for d in cur])) if cur else None
        return out

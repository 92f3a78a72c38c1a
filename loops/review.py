"""The Argilla round trip of a loop step by step: push a queue, wait for the annotators, pull their answers.

Each function is usable on its own (``cleanloop push`` and ``pull`` call them) and can run again
without harm: push updates records by id, pull skips answers the journal has. Round statistics
(reviewed, changed, removed, agreement) are read from the journal's decisions of that round, not
from what one pull call returned: a pull repeated after a crash adds nothing and the counts stay right.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cleanloop.config import Config
from cleanloop.errors import CleanloopError
from cleanloop.labeling.journal import Journal, Vote
from cleanloop.workdir import Workdir

log = logging.getLogger("cleanloop.loop")


def reviewed_ids(workdir: Workdir) -> set[str]:
    """Examples the workdir's journal has a decision on (empty when there is no journal yet)."""
    if not workdir.journal.exists():
        return set()
    with Journal(workdir.journal) as j:
        return j.reviewed_ids()


def agent_name(cfg: Config, rnd: int) -> str:
    from cleanloop import __version__
    from cleanloop.model.infer import resolve_model_name

    return f"cleanloop-{__version__}/{cfg.method}/{Path(resolve_model_name(cfg.base_model)).name}/round-{rnd}"


def push_step(client, cfg: Config, queue, embeddings, label_names: list[str], rnd: int, skip_ids: set[str], *,
              flagged_by: tuple[str, ...] = ("cleanlab",), guidelines: str | None = None, wave: int = 0,
              progress: Callable[[int], None] | None = None) -> list[str]:
    """Push the queue to the review dataset (created if needed); returns the ids of the records to review.

    flagged_by: what chose the records (metadata); guidelines: for a new dataset (default: the review's).
    wave: push only the first ``wave`` records (0: all); :class:`WavePusher` pushes the rest as
    answers come. progress(n) is called as records are sent.
    """
    pusher = wave_pusher(client, cfg, queue, embeddings, label_names, rnd, skip_ids, flagged_by=flagged_by,
                         guidelines=guidelines, wave=wave, progress=progress)
    if pusher is None:
        return []
    pusher.feed(0)
    return pusher.ids


class WavePusher:
    """Keep at most ``wave`` records of a review queue unanswered in Argilla, pushing the next ones,
    in queue order, as annotators answer (``wave`` 0: everything at once).

    Argilla's annotator view shows pending records in a per-annotator shuffle, not in the order they
    were pushed, on any Argilla server; with one record pending at a time (``wave`` 1) every
    annotator sees the queue strictly most suspicious first. Pushing a record again is harmless
    (it updates by id, answers kept), so a resumed loop starts over with :meth:`feed`.
    """

    def __init__(self, client, dataset, records: list, wave: int = 1,
                 progress: Callable[[int], None] | None = None):
        self.client, self.dataset, self.records, self.wave = client, dataset, records, wave
        self.progress = progress
        self.pushed = 0

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    def feed(self, answered: int) -> int:
        """Push up to ``answered + wave`` records of the queue (all when ``wave`` is 0); returns how many are pushed."""
        from cleanloop.labeling import argilla_io as aio

        target = len(self.records) if self.wave <= 0 else min(len(self.records), answered + self.wave)
        if target > self.pushed:
            aio.push(self.client, self.dataset, self.records[self.pushed:target], progress=self.progress)
            self.pushed = target
        return self.pushed


def wave_pusher(client, cfg: Config, queue, embeddings, label_names: list[str], rnd: int, skip_ids: set[str], *,
                flagged_by: tuple[str, ...] = ("cleanlab",), guidelines: str | None = None, wave: int = 0,
                progress: Callable[[int], None] | None = None) -> WavePusher | None:
    """A :class:`WavePusher` for the queue's records not in ``skip_ids`` (None for an empty queue)."""
    from cleanloop.labeling import argilla_io as aio

    if len(queue) == 0:
        return None
    dim = int(embeddings.shape[1]) if embeddings is not None else None
    dataset = aio.ensure_dataset(client, cfg, label_names, dim, guidelines=guidelines or aio.GUIDELINES)
    records = [r for r in aio.records_from_queue(queue, rnd, agent_name(cfg, rnd), embeddings, flagged_by)
               if r.id not in skip_ids]
    return WavePusher(client, dataset, records, wave, progress)


def pull_step(client, cfg: Config, journal: Journal, original_train, rnd: int,
              progress: Callable[[int], None] | None = None):
    """Read every answer, append what is new to the journal (one transaction). Returns the PullResult.

    An answer withdrawn since the last pull (its record deleted, or back to draft) is journalled
    as withdrawn and the example decided again. Answers on a record whose fingerprint is not the
    local example's (another text under that id) are refused, with nothing written.
    progress(n): called as records are read (:func:`argilla_io.pull`).
    """
    from cleanloop.identity import fingerprints
    from cleanloop.labeling import argilla_io as aio

    dataset = aio.get_dataset(client, cfg)
    if dataset is None:
        raise CleanloopError(
            f"no Argilla dataset {cfg.argilla_dataset!r} in workspace {cfg.argilla_workspace!r}; fix: push first"
        )
    names = original_train.features["label"].names
    old = {i: names[lbl] if lbl >= 0 else "" for i, lbl in zip(original_train["id"], original_train["label"])}  # -1: unlabelled
    responses = aio.pull(client, dataset, progress)
    unknown = sorted({r.example_id for r in responses if r.example_id not in old})
    if unknown:
        log.warning("%d answered records are not in this data's train split (e.g. %s): left out",
                    len(unknown), unknown[0])
    responses = [r for r in responses if r.example_id in old]
    local = fingerprints(original_train, "train")
    wrong = sorted({r.example_id for r in responses if r.fingerprint is not None and r.fingerprint != local[r.example_id]})
    if wrong:
        raise CleanloopError(
            f"{len(wrong)} answered record(s) in Argilla dataset {cfg.argilla_dataset!r} were pushed for another text "
            f"than the local example with that id ({', '.join(wrong[:5])}); nothing was written; fix: the data changed "
            "since the push or another workdir shares the dataset: pull into the workdir that pushed, or use a new "
            "--argilla-dataset (give rows stable ids with --id-column)"
        )
    probs = {r.example_id: aio.suggestion_probs(r.suggestion, names) for r in responses
             if r.suggestion is not None and r.suggestion.label in names}
    # one answer on a record of copies settles every copy (the record lists them in its metadata)
    votes = [Vote(i, r.annotator, r.label, r.status) for r in responses
             for i in (r.example_id, *(c for c in r.copies if c in old))]
    return journal.record_pull(votes, old, rnd, label_names=names, pred_probs=probs, complete=True)


def round_stats(journal: Journal, rnd: int) -> dict:
    """Reviewed, changed, removed, open and mean agreement of the decisions made in round ``rnd``."""
    latest = {}
    for d in journal.history():
        if d.round == rnd:
            latest[d.example_id] = d
    decided = [d for d in latest.values() if d.action != "open"]
    return {
        "reviewed": len(decided),
        "changed": sum(d.action == "corrected" for d in decided),
        "removed": sum(d.action == "removed" for d in decided),
        "confirmed": sum(d.action == "confirmed" for d in decided),
        "open": sum(d.action == "open" for d in latest.values()),
        "agreement": float(np.mean([d.agreement for d in decided])) if decided else None,
    }


def wait_for_reviews(client, cfg: Config, ids: list[str], min_reviewed: int, timeout: float, poll: float,
                     display: Callable[[int, int], None] | None = None, wake=None,
                     feed: Callable[[int], object] | None = None) -> int:
    """Poll until ``min_reviewed`` of ``ids`` (0: all) have an answer, or ``timeout`` seconds pass.

    display(done, target) is called after every poll. wake: a ``threading.Event`` set by
    webhooks (:class:`argilla_io.ReviewWaker`): a set event ends the pause between polls early.
    feed(done): called after every poll (:meth:`WavePusher.feed`: push the next records); with it,
    polls come at least every second. A poll that fails is tried again; three failures in a row
    raise :class:`CleanloopError`. Returns how many were answered.
    """
    import httpx
    from argilla._exceptions import ArgillaError

    from cleanloop.labeling import argilla_io as aio

    if not ids:
        return 0
    target = min(min_reviewed or len(ids), len(ids))
    dataset = aio.get_dataset(client, cfg)
    start = time.monotonic()
    failures = 0
    while True:
        try:
            done, _ = aio.progress(client, dataset, ids)
            if feed:
                feed(done)
            failures = 0
        except (CleanloopError, httpx.HTTPError, ArgillaError) as exc:  # a blip between polls (a busy server): ask again
            failures += 1
            if failures >= 3:
                raise CleanloopError(f"lost Argilla at {cfg.argilla_url} while waiting for reviews ({exc}); fix: "
                                     "check the server ('cleanloop argilla status') and run the command again") from None
            log.warning("Argilla did not answer (%s); asking again", str(exc)[:160])
            time.sleep(min(poll, 1.0))
            continue
        if display:
            display(done, target)
        if done >= target:
            return done
        if time.monotonic() - start >= timeout:
            log.info("review timeout (%.0f s): going on with %d of %d answered", timeout, done, target)
            return done
        # feeding waves: the next record must be there soon after the annotator submits
        pause = min(poll if feed is None else min(poll, 1.0), max(0.0, timeout - (time.monotonic() - start)))
        if wake is not None:
            wake.wait(pause)
            wake.clear()
        else:
            time.sleep(pause)


def lazy_client(cfg: Config, home: str | Path | None = None, client=None) -> Callable[[], object]:
    """A function returning ``client``, connecting (:func:`argilla_io.connect`) on first use only, so a
    loop resumed past its Argilla steps needs no server."""
    box = [client]

    def get():
        if box[0] is None:
            from cleanloop.labeling import argilla_io as aio

            box[0] = aio.connect(cfg, home)
        return box[0]

    return get

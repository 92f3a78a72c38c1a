"""The review loop: train -> flag -> push -> wait for reviews -> pull -> apply, round after round, then retrain.

Everything lives under ``WORKDIR``::

    journal.sqlite            the corrections journal (labeling/journal.py)
    versions/round-NNN/       the data after round NNN (round-000: the original), save_to_disk
    loop/state.json           the checkpoint: round, steps done, per-round results (temp + rename)
    loop/round-NNN/           that round's model (trained on version NNN-1) and flags
    loop/final/               the model trained on the last version
    loop/history.json, loop/report.md, loop/history.png

Each step is recorded in ``state.json`` only after it finished, and every step can run again
without harm (training writes to a temp folder; push updates records by id; pull skips answers
the journal has; apply rebuilds the version from the original data + journal). So a crash or
Ctrl-C at any point resumes at the step that did not finish, with nothing lost or done twice.

Round statistics (reviewed, changed, removed, agreement) are read from the journal's decisions
of that round, not from what one pull call returned: a pull repeated after a crash adds nothing
and the counts stay right.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cleanloop.atomic import save_npy, write_file, write_json, write_text
from cleanloop.config import Config, LoopOptions  # noqa: F401  (LoopOptions: importable here as before)
from cleanloop.errors import CleanloopError, WeakModelError
from cleanloop.labeling.journal import Journal, Vote

log = logging.getLogger("cleanloop.loop")

STEPS = ("train", "flag", "push", "wait", "pull", "apply")
JOURNAL_FILE = "journal.sqlite"


# --- paths --------------------------------------------------------------------------------------------


def journal_path(cfg: Config) -> Path:
    return cfg.workpath / JOURNAL_FILE


def versions_root(cfg: Config) -> Path:
    return cfg.workpath / "versions"


def loop_root(cfg: Config) -> Path:
    return cfg.workpath / "loop"


def reviewed_ids(cfg: Config) -> set[str]:
    """Examples the journal has a decision on (empty when there is no journal yet)."""
    path = journal_path(cfg)
    if not path.exists():
        return set()
    with Journal(path) as j:
        return j.reviewed_ids()


def round_config(cfg: Config, rnd: int | str) -> Config:
    """The config of one round's training: its own folder; frozen features flag out-of-fold."""
    name = rnd if isinstance(rnd, str) else f"round-{rnd:03d}"
    flag_source = "oof" if cfg.method == "features" else cfg.flag_source
    return cfg.replace(workdir=str(loop_root(cfg) / name), flag_source=flag_source)


def _share_cache(cfg: Config, rcfg: Config) -> None:
    """Let every round use WORKDIR/cache (feature and out-of-fold caches are keyed by content)."""
    link, target = rcfg.workpath / "cache", (cfg.workpath / "cache").absolute()
    target.mkdir(parents=True, exist_ok=True)
    if not link.exists() and not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)


# --- the state file -------------------------------------------------------------------------------------


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


# --- the steps, each usable on its own ------------------------------------------------------------------


def metrics_summary(metrics: dict) -> dict:
    out = {}
    for split in ("validation", "test"):
        if split in metrics:
            out[f"{'val' if split == 'validation' else split}_accuracy"] = metrics[split]["accuracy"]
            out[f"{'val' if split == 'validation' else split}_macro_f1"] = metrics[split]["macro_f1"]
    return out


def train_step(rcfg: Config, train_dd) -> dict:
    """Train on ``train_dd`` into the round's model folder; returns val/test accuracy and macro F1."""
    from cleanloop.model.train import ClassifierTrainer

    result = ClassifierTrainer(rcfg).train(train_dd)
    return {"train_examples": len(train_dd["train"]), **metrics_summary(result.metrics)}


@dataclass
class FlagResult:
    scores: object  # pandas DataFrame (scores.parquet)
    queue: object  # pandas DataFrame (review_queue.parquet)
    embeddings: np.ndarray | None  # (len(queue), D)


def flag_step(rcfg: Config, train_ds, max_review: int, skip_ids: set[str]) -> FlagResult:
    """Score the train split, build the review queue without ``skip_ids``, embed the queue's texts."""
    from cleanloop.loops.flagging import flag_examples

    flags = flag_examples(rcfg, train_ds, max_review, skip_ids, rcfg.workpath / "flags")
    emb = embed_queue(rcfg, train_ds, flags.queue, flags.embeddings)
    if emb is not None:
        save_npy(flags.folder / "queue_embeddings.npy", emb)
    return FlagResult(flags.scores, flags.queue, emb)


def embed_queue(cfg: Config, train_ds, queue, feats: np.ndarray | None = None) -> np.ndarray | None:
    """Embeddings (len(queue), D) of the queue's texts: frozen features if at hand, else the model's."""
    if len(queue) == 0:
        return None
    if feats is not None:
        order = {i: n for n, i in enumerate(train_ds["id"])}
        return np.asarray(feats)[[order[i] for i in queue["id"]]].astype(np.float32)
    from cleanloop.model.predict import Predictor
    from cleanloop.model.train import model_dir

    folder = model_dir(cfg)
    if not folder.exists():
        return None
    pred = Predictor.load(folder, max_length=cfg.max_length, precision=cfg.precision)
    return pred.predict_arrays(list(queue["text"]), cfg.eval_batch_size)["embeddings"].astype(np.float32)


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


# --- the loop ---------------------------------------------------------------------------------------------


def _version(original, journal: Journal, cfg: Config, rnd: int):
    """Version ``rnd`` from disk (written by round ``rnd``'s apply; round 0 = original)."""
    from cleanloop.loops.versions import load_version, version_dir, write_version

    path = version_dir(versions_root(cfg), rnd)
    if not path.exists():
        if rnd != 0:
            raise CleanloopError(f"{path} is missing, but the loop state says round {rnd} was applied; "
                                 f"fix: rebuild it with 'cleanloop pull --round {rnd}'")
        write_version(original, journal, versions_root(cfg), 0, upto_seq=0)
    return load_version(path)[0]


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


def run_rounds(state: LoopState, state_file: Path, rounds: int, steps: Sequence[str],
               begin_round: Callable[[int, dict], Callable[[str], None]], final: Callable[[], dict] | None = None,
               on_step: Callable[[int, str, dict], None] | None = None, name: str = "loop") -> LoopState:
    """The resumable skeleton of a round-based loop (the review loop and the active-learning loop).

    For each round up to ``rounds``: ``begin_round(round, result)`` returns ``do(step)``, which runs
    one step and records what it did in ``result`` (the round's dict in the state); each step runs
    only when not done yet and is checkpointed (``state_file``, temp + rename) right after it
    finished, then ``on_step(round, step, result)``. After the last round, ``final()`` (if given)
    returns the final result; ``on_step(rounds + 1, "final", state.final)``.
    """
    while state.round <= rounds:
        rnd = state.round
        if state.finished:  # run again with more rounds: new rounds, then a new final result
            state.finished, state.final = False, {}
        res = state.result(rnd)
        do = begin_round(rnd, res)
        for step in steps:
            if step in state.done:
                continue
            t0 = time.perf_counter()
            do(step)
            res.setdefault("step_seconds", {})[step] = round(time.perf_counter() - t0, 2)
            state.done.append(step)
            state.save(state_file)
            log.debug("%s round %s: %s done", name, rnd, step)  # on_step prints the summary
            if on_step:
                on_step(rnd, step, res)
        state.round, state.done = rnd + 1, []
        state.save(state_file)
    if not state.finished:
        t0 = time.perf_counter()
        state.final = final() if final else {}
        if state.final:
            state.final["step_seconds"] = {"train": round(time.perf_counter() - t0, 2)}
        state.finished = True
        state.save(state_file)
        if on_step:
            on_step(rounds + 1, "final", state.final)
    return state


def run_loop(cfg: Config, opts: LoopOptions, *, client=None, home: str | Path | None = None,
             display: Callable[[int, int], None] | None = None,
             on_step: Callable[[int, str, dict], None] | None = None) -> LoopState:
    """Run (or resume) the loop until ``opts.rounds`` rounds are applied and the final model is trained.

    client: an ``argilla.Argilla`` (default: :func:`argilla_io.connect` on ``cfg``, key from
    ARGILLA_API_KEY or the embedded server's credentials in ``home``). on_step(round, step, result)
    is called after each step is checkpointed.
    """
    from cleanloop.lock import workdir_lock

    with workdir_lock(cfg.workpath, "cleanloop retrain-loop"):
        return _run_loop(cfg, opts, client, home, display, on_step)


def _run_loop(cfg: Config, opts: LoopOptions, client, home, display, on_step) -> LoopState:
    from cleanloop.identity import load_workdir_data
    from cleanloop.labeling import argilla_io as aio
    from cleanloop.loops.versions import training_view, write_version

    root = loop_root(cfg)
    state_file = root / "state.json"
    state = LoopState.load(state_file)
    max_review = cfg.max_review
    original = load_workdir_data(cfg)
    names = original["train"].features["label"].names
    journal = Journal(journal_path(cfg))
    connected = lazy_client(cfg, home, client)

    def round_pusher(rnd: int, skip: set[str]) -> WavePusher | None:
        """The round's queue as a :class:`WavePusher` (``cfg.review_wave`` records pending at a time)."""
        import pandas as pd

        flags = round_config(cfg, rnd).workpath / "flags"
        queue = pd.read_parquet(flags / "review_queue.parquet")
        emb_file = flags / "queue_embeddings.npy"
        emb = np.load(emb_file) if emb_file.exists() and len(queue) else None
        return wave_pusher(connected(), cfg, queue, emb, names, rnd, skip, wave=cfg.review_wave)

    def begin_round(rnd: int, res: dict) -> Callable[[str], None]:
        rcfg = round_config(cfg, rnd)
        _share_cache(cfg, rcfg)
        train_dd = training_view(_version(original, journal, cfg, rnd - 1))

        def do(step: str) -> None:
            if step == "train":
                res.update(train_step(rcfg, train_dd))
            elif step == "flag":
                try:
                    fr = flag_step(rcfg, train_dd["train"], max_review, journal.reviewed_ids())
                except WeakModelError:  # run again with more epochs or data: that round's training again
                    state.done.remove("train")
                    state.save(state_file)
                    raise
                res.update(flagged=int(fr.scores["is_issue"].sum()), queued=len(fr.queue))
            elif step == "push":
                pusher = round_pusher(rnd, set(journal.reviewed_ids()))
                if pusher is not None:
                    pusher.feed(0)
                res["pushed_ids"] = pusher.ids if pusher is not None else []
                res["pushed"] = len(res["pushed_ids"])
            elif step == "wait":
                waker = aio.ReviewWaker(connected()).start() if opts.webhooks and res.get("pushed_ids") else None
                pusher = round_pusher(rnd, set(journal.reviewed_ids())) if res.get("pushed_ids") else None
                try:
                    res["answered"] = wait_for_reviews(
                        connected(), cfg, res.get("pushed_ids", []), opts.min_reviewed, opts.review_timeout,
                        opts.poll_seconds, display, waker.event if waker else None,
                        feed=pusher.feed if pusher is not None else None)
                finally:
                    if waker:
                        waker.stop()
            elif step == "pull":
                pulled = pull_step(connected(), cfg, journal, original["train"], rnd)
                res["new_votes_last_pull"] = pulled.new_votes
                res.update(round_stats(journal, rnd))
            elif step == "apply":
                path = write_version(original, journal, versions_root(cfg), rnd)
                res["version"] = str(path)
                res.update(round_stats(journal, rnd))

        return do

    def final() -> dict:
        fcfg = round_config(cfg, "final")
        _share_cache(cfg, fcfg)
        return {"round": "final", **train_step(fcfg, training_view(_version(original, journal, cfg, opts.rounds)))}

    try:
        run_rounds(state, state_file, opts.rounds, STEPS, begin_round, final, on_step)
        write_history(cfg, state)
        return state
    finally:
        journal.close()


# --- history and report -------------------------------------------------------------------------------------


HISTORY_KEYS = ("round", "train_examples", "flagged", "pushed", "reviewed", "changed", "removed", "agreement",
                "val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1")


def history(state: LoopState) -> list[dict]:
    """One row per round (the model trained at its start and its reviews), then the final model."""
    rows = [{k: r.get(k) for k in HISTORY_KEYS} | {"step_seconds": r.get("step_seconds", {})}
            for _, r in sorted(state.rounds.items(), key=lambda kv: int(kv[0]))]
    if state.final:
        rows.append({k: state.final.get(k) for k in HISTORY_KEYS} | {"step_seconds": state.final.get("step_seconds", {})})
    return rows


def write_history(cfg: Config, state: LoopState) -> Path:
    """loop/history.json, loop/history.png and loop/report.md; returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = loop_root(cfg)
    rows = history(state)
    write_json(root / "history.json", rows)
    labels = [str(r["round"]) for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, style in (("test_accuracy", "o-"), ("test_macro_f1", "s--"), ("val_accuracy", "o:")):
        vals = [r.get(key) for r in rows]
        if any(v is not None for v in vals):
            a1.plot(labels, [np.nan if v is None else v for v in vals], style, label=key)
    a1.set_xlabel("round (model trained at its start; final = after the last round)")
    a1.set_title("evaluation")
    a1.legend()
    x = np.arange(len(rows))
    for off, key in ((-0.27, "reviewed"), (0.0, "changed"), (0.27, "removed")):
        a2.bar(x + off, [r.get(key) or 0 for r in rows], width=0.27, label=key)
    a2.set_xticks(x, labels)
    a2.set_title("reviews per round")
    a2.legend()
    fig.tight_layout()
    write_file(root / "history.png", lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)

    def fmt(v):
        return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    cols = [k for k in HISTORY_KEYS]
    lines = ["# cleanloop review loop", "", f"Data: {cfg.dataset}; method: {cfg.method}; base model: {cfg.base_model}; "
             f"label smoothing: {cfg.label_smoothing}.", "",
             "Each row is a round: the model trained at its start (on the data as cleaned so far), what it flagged, "
             "and what the annotators decided. The last row is the model trained after the last round.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    lines += ["", "![history](history.png)", ""]
    report = root / "report.md"
    write_text(report, "\n".join(lines))
    return report

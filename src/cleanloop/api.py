"""cleanloop from Python: one call per step of the cleaning round, each the command of the same name.

Every call takes a :class:`~cleanloop.config.Config` and a few plain values, does what ``cleanloop
<step>`` does (the commands are a thin layer over these calls) and returns a small result object
with what the command prints. Bad input raises :class:`~cleanloop.errors.CleanloopError` with a
one-line message; a call that writes into the workdir holds its lock while it runs.

    import cleanloop

    cfg = cleanloop.Config(dataset="my_data.csv", workdir="runs/mine")
    cleanloop.train(cfg)
    flags = cleanloop.flag(cfg)                # flags.queue: what the annotators should look at
    cleanloop.push(cfg)                        # ... they answer in Argilla ...
    cleanloop.pull(cfg)
    cleanloop.apply(cfg)
    cleanloop.export(cfg, to="cleaned")

``progress=True`` shows progress bars (tqdm); the messages the commands log (which precision a
model runs, what training uses) go to the ``cleanloop`` logger.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cleanloop.config import SERVE_MAX_BATCH, SERVE_MAX_WAIT_MS, Config
from cleanloop.errors import CleanloopError
from cleanloop.workdir import Workdir

if TYPE_CHECKING:
    from cleanloop.model.train import TrainResult
    from cleanloop.model.tune import TuneResult

__all__ = [
    "ActiveResult", "ApplyResult", "DescribeResult", "ExportResult", "FlagResult", "LoadResult", "LoopResult",
    "PredictResult", "PullResult", "PushResult", "ReviewProgress", "ScoreResult", "ScoredSplit",
    "active", "apply", "describe", "export", "flag", "load", "predict", "pull", "push", "retrain_loop", "score",
    "serve", "train", "tune",
]

log = logging.getLogger("cleanloop")


@contextmanager
def _writing(cfg: Config, step: str):
    """Hold the workdir's write lock (re-entrant: a command holding it already goes on); under
    ``accelerate launch`` only the main process (rank 0, the one that saves) takes it."""
    if int(os.environ.get("RANK", "0")) > 0:
        yield
        return
    with Workdir.of(cfg).lock(f"cleanloop.{step}()"):
        yield


def _bar(progress: bool, total: int | None, desc: str, unit: str):
    """A tqdm progress bar (None when ``progress`` is off)."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def _load_predictor(cfg: Config, model: str | Path | None):
    """The model folder (``model`` or the workdir's) and its Predictor; logs the precision it runs."""
    from cleanloop.model.precision import checks_of, describe
    from cleanloop.model.predict import Predictor
    from cleanloop.model.train import model_dir

    folder = Path(model) if model else model_dir(cfg)
    if not folder.exists():
        raise CleanloopError(f"no model at {folder}; fix: run 'cleanloop train' first or pass --model DIR")
    predictor = Predictor.load(folder, max_length=cfg.max_length, precision=cfg.precision)
    log.info(describe(predictor.precision, predictor.precision_reason, checks_of(folder)))
    return folder, predictor


# --- data -----------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """The workdir's data: a ``DatasetDict`` (splits with id, text, label as a ClassLabel)."""

    data: object  # datasets.DatasetDict
    label_names: list[str]

    @property
    def sizes(self) -> dict[str, int]:
        return {split: len(ds) for split, ds in self.data.items()}


def load(cfg: Config) -> LoadResult:
    """Load ``cfg.dataset`` as every step sees it, checked against the data the workdir was made on
    (recorded on first use; a changed data set is refused, see :func:`cleanloop.identity.check_source`)."""
    from cleanloop.identity import load_workdir_data

    with _writing(cfg, "load"):
        dd = load_workdir_data(cfg)
    return LoadResult(dd, dd["train"].features["label"].names)


@dataclass
class DescribeResult:
    """Per split and label: examples, share, words per example (``table``), and the plots written."""

    table: object  # pandas DataFrame: split, label, examples, share, words_mean, words_median, words_max
    plots: list[Path]


def describe(cfg: Config, plots: str | Path | None = None) -> DescribeResult:
    """Class distribution and words per example per class (``cleanloop data describe``); the two PNG
    plots go to ``plots`` (default: WORKDIR/data)."""
    from cleanloop.model.data import describe as describe_table
    from cleanloop.model.data import load_data, plot_describe

    with _writing(cfg, "describe"):
        dd = load_data(cfg)
        return DescribeResult(describe_table(dd), plot_describe(dd, Path(plots) if plots else Workdir.of(cfg).data_plots))


# --- train and score ------------------------------------------------------------------------------------


def train(cfg: Config, *, ensemble: int = 1, from_study: bool = False, study_name: str = "cleanloop") -> TrainResult:
    """Train the classifier (fine-tune, or ``cfg.method == "features"``), evaluate it on validation and
    test, save it in the workdir. Returns :class:`cleanloop.model.train.TrainResult` (``output_dir``,
    ``metrics``, ``train_seconds``).

    ensemble: N fine-tuned models (seeds ``cfg.seed``, ``+1``, ... or, with ``from_study``, the N best
    settings of the ``cleanloop tune`` study ``study_name``) saved as one model folder.
    """
    from cleanloop.identity import load_workdir_data
    from cleanloop.model.ensemble import seed_members, train_ensemble
    from cleanloop.model.train import ClassifierTrainer
    from cleanloop.model.tune import top_settings

    members = seed_members(cfg, ensemble)
    if from_study:
        members = [cfg.replace(**s) for s in top_settings(cfg, ensemble, study_name)]
    with _writing(cfg, "train"):
        dd = load_workdir_data(cfg)
        sizes = ", ".join(f"{s} {len(d):,}" for s, d in dd.items())
        log.info("data: %s (%s); method %s; base model %s", cfg.dataset, sizes, cfg.method, cfg.base_model)
        if len(members) > 1:
            return train_ensemble(members, dd, progress=log.info)
        return ClassifierTrainer(members[0]).train(dd)


def tune(cfg: Config, *, trials: int = 20, timeout: float | None = None, study_name: str = "cleanloop",
         min_epochs: int = 2, max_epochs: int = 6, progress: Callable[[str], None] | None = None) -> TuneResult:
    """Search the training settings with Optuna for the best validation macro F1 (``cleanloop tune``);
    returns :class:`cleanloop.model.tune.TuneResult`. progress(line): one line per trial."""
    from cleanloop.identity import load_workdir_data
    from cleanloop.model.tune import SearchSpace
    from cleanloop.model.tune import tune as run_tune

    with _writing(cfg, "tune"):
        dd = load_workdir_data(cfg)
        log.info("tuning on %s: train %s, validation %s examples; %d trials%s", cfg.dataset, f"{len(dd['train']):,}",
                 f"{len(dd['validation']):,}" if "validation" in dd else "no", trials,
                 f", timeout {timeout:.0f} s" if timeout else "")
        return run_tune(cfg, dd, trials=trials, timeout=timeout, study_name=study_name,
                        space=SearchSpace(epochs=(min_epochs, max_epochs)), progress=progress)


@dataclass
class ScoredSplit:
    split: str
    path: Path  # <split>.parquet: id, label, predicted_label, loss, probabilities, embedding
    examples: int
    accuracy: float
    mean_loss: float


@dataclass
class ScoreResult:
    model: Path
    splits: list[ScoredSplit]


def score(cfg: Config, *, model: str | Path | None = None, splits: Sequence[str] = ("train", "validation", "test"),
          output: str | Path | None = None, progress: bool = True) -> ScoreResult:
    """Score every example of ``splits`` with ``model`` (default: the workdir's): probabilities,
    prediction, per-sample loss and embedding, as ``<split>.parquet`` in ``output`` (default WORKDIR/scores)."""
    from cleanloop.identity import load_workdir_data
    from cleanloop.model.score import score_frame, write_parquet_atomic

    with _writing(cfg, "score"):
        folder, predictor = _load_predictor(cfg, model)
        dd = load_workdir_data(cfg)
        if predictor.label_names != dd["train"].features["label"].names:
            raise CleanloopError(
                f"model {folder} predicts {predictor.label_names} but the data has labels "
                f"{dd['train'].features['label'].names}; fix: score with the model trained on this data"
            )
        out = Path(output) if output else Workdir.of(cfg).scores
        result = ScoreResult(folder, [])
        for split in splits:
            if split not in dd:
                raise CleanloopError(f"no split '{split}' in {cfg.dataset} (has {', '.join(dd)}); fix: pick one of those")
            ds = dd[split]
            bar = _bar(progress, len(ds), f"score {split}", "ex")
            try:
                df = score_frame(predictor, list(ds["id"]), list(ds["text"]), ds["label"], cfg.eval_batch_size,
                                 bar.update if bar is not None else None)
            finally:
                if bar is not None:
                    bar.close()
            path = write_parquet_atomic(df, out / f"{split}.parquet")
            result.splits.append(ScoredSplit(split, path, len(df), float((df["predicted_label"] == df["label"]).mean()),
                                             float(df["loss"].mean())))
    return result


# --- flag -----------------------------------------------------------------------------------------------


@dataclass
class FlagResult:
    """The ranked train split, the review queue and the report (``cleanloop flag``)."""

    scores: object  # pandas DataFrame, scores.parquet: one row per example, rank 1 = most suspicious
    queue: object  # pandas DataFrame, review_queue.parquet: what goes to the annotators, in order
    confident: object  # pandas DataFrame: the most confident examples per class (to look for shortcuts)
    source: str  # what judged the labels
    folder: Path
    report: Path


def flag(cfg: Config, *, with_map: bool = True, output: str | Path | None = None, progress: bool = True) -> FlagResult:
    """Rank every training example by how likely its label is wrong; write ``scores.parquet``,
    ``review_queue.parquet`` (at most ``cfg.max_review``, without examples the journal has decided),
    ``confident_examples.parquet`` and ``report.md`` (with a 2-D map of the embeddings unless
    ``with_map`` is off) to ``output`` (default WORKDIR/flags)."""
    from cleanloop.identity import load_workdir_data
    from cleanloop.loops.flag import confident_examples
    from cleanloop.loops.flagging import flag_examples
    from cleanloop.loops.judge import held_out_split
    from cleanloop.loops.report import write_report
    from cleanloop.loops.review import reviewed_ids
    from cleanloop.model.score import write_parquet_atomic

    with _writing(cfg, "flag"):
        dd = load_workdir_data(cfg)
        train_ds = dd["train"]
        wd = Workdir.of(cfg)
        flags = flag_examples(cfg, train_ds, cfg.max_review, reviewed_ids(wd), wd,  # already reviewed: not again
                              folder=Path(output) if output else None, held_out=held_out_split(dd))
        confident = confident_examples(flags.scores)
        write_parquet_atomic(confident, flags.folder / "confident_examples.parquet")
        emb = None
        if with_map:
            embeddings = flags.embeddings if flags.embeddings is not None else _embed_for_map(cfg, train_ds, progress)
            order = {i: n for n, i in enumerate(train_ds["id"])}
            emb = embeddings[[order[i] for i in flags.scores["id"]]]
        names = train_ds.features["label"].names
        report = write_report(flags.scores, flags.queue, confident, names, flags.folder, flags.source, emb, cfg.seed)
    return FlagResult(flags.scores, flags.queue, confident, flags.source, flags.folder, report)


def _embed_for_map(cfg: Config, train_ds, progress: bool) -> np.ndarray:
    """(N, D) embeddings of the train split by the fine-tuned model, for the report's map."""
    from cleanloop.model.predict import Predictor

    pred = Predictor.load(Workdir.of(cfg).model("finetune"), max_length=cfg.max_length, precision=cfg.precision)
    bar = _bar(progress, len(train_ds), "embed for the map", "ex")
    try:
        return pred.predict_arrays(train_ds["text"], cfg.eval_batch_size,
                                   bar.update if bar is not None else None)["embeddings"]
    finally:
        if bar is not None:
            bar.close()


# --- the review round trip ------------------------------------------------------------------------------


class ReviewProgress:
    """A wait's display(done, target): a progress bar, or one printed line per change when non-interactive.

    >>> show = ReviewProgress(non_interactive=True)
    >>> for done in (0, 0, 2):
    ...     show(done, 2)
    reviews: 0/2 answered
    reviews: 2/2 answered
    """

    def __init__(self, non_interactive: bool = False):
        self.non_interactive = non_interactive
        self.bar = None
        self.last = -1

    def __call__(self, done: int, target: int) -> None:
        if self.non_interactive:
            if done != self.last:
                print(f"reviews: {done}/{target} answered", flush=True)
                self.last = done
            return
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=target, desc="waiting for reviews", unit="rec")
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.last = -1


@dataclass
class PushResult:
    """What went to Argilla: the records to review (``ids``, queue order) and, in waves, how many were answered."""

    round: int
    ids: list[str]  # the queue's records to review (already reviewed examples left out)
    skipped: int  # queue rows left out: already reviewed
    pushed: int  # records sent so far (in waves: up to the answered ones + cfg.review_wave)
    url: str
    dataset: str  # workspace/dataset
    answered: int | None = None  # in waves: answered when push stopped waiting; None: pushed all at once


def push(cfg: Config, *, home: str | Path | None = None, round: int | None = None, queue: str | Path | None = None,
         progress: bool = True,
         display: Callable[[int, int], None] | None = None,
         on_pushed: Callable[[PushResult], None] | None = None) -> PushResult:
    """Send the review queue (``queue``, default WORKDIR/flags/review_queue.parquet) to Argilla as
    round ``round`` (default: the next); examples the journal has decided are skipped.

    With ``cfg.review_wave`` N > 0 (default 1) only N records are pending at a time: push calls
    ``on_pushed(result)`` once the first wave is out, then stays and sends the next record as each is
    answered, until ``cfg.review.min_reviewed`` (0: all) are answered or ``cfg.review.review_timeout``
    seconds pass (polling every ``cfg.review.poll_seconds``; display(done, target) after each poll,
    default a progress bar).
    ``cfg.review_wave = 0`` sends the whole queue and returns. home: the embedded server's home,
    for its owner API key (default WORKDIR/argilla; ARGILLA_API_KEY wins).
    """
    from cleanloop.identity import load_workdir_data
    from cleanloop.labeling import argilla_io as aio
    from cleanloop.labeling.records import read_queue
    from cleanloop.loops.retrain import embed_queue
    from cleanloop.loops.review import reviewed_ids, wait_for_reviews, wave_pusher

    wd = Workdir.of(cfg)
    frame = read_queue(Path(queue) if queue else wd.review_queue)
    with _writing(cfg, "push"):
        rnd = round if round is not None else wd.latest_version() + 1
        train_ds = load_workdir_data(cfg)["train"]
        emb = embed_queue(cfg, train_ds, frame)
        client = aio.connect(cfg, home)
        skip = reviewed_ids(wd)
        bar = _bar(progress, len(frame) - len(skip & set(frame["id"])), "push", "rec")
        with aio.server_errors(cfg.argilla_url, "push"):
            pusher = wave_pusher(client, cfg, frame, emb, train_ds.features["label"].names, rnd, skip,
                                 wave=cfg.review_wave, progress=bar.update if bar is not None else None)
            ids = pusher.ids if pusher is not None else []
            result = PushResult(rnd, ids, len(frame) - len(ids), 0, cfg.argilla_url,
                                f"{cfg.argilla_workspace}/{cfg.argilla_dataset}")
            if pusher is not None:
                result.pushed = pusher.feed(0)
            if bar is not None:
                bar.close()
            if pusher is None or cfg.review_wave <= 0:
                return result
            if on_pushed is not None:
                on_pushed(result)
            display = display if display is not None else (ReviewProgress() if progress else None)
            try:
                wait = cfg.review
                result.answered = wait_for_reviews(client, cfg, ids, wait.min_reviewed, wait.review_timeout,
                                                   wait.poll_seconds, display, feed=pusher.feed)
            finally:
                if isinstance(display, ReviewProgress):
                    display.close()
            result.pushed = pusher.pushed
    return result


@dataclass
class PullResult:
    """What a pull brought into the corrections journal, and the round's totals so far."""

    round: int
    new_votes: int  # answers the journal did not have
    decisions: int  # new decisions they made
    changed: int
    removed: int
    open: int  # examples whose answers tie: decided by the next answer
    stats: dict = field(default_factory=dict)  # the round's reviewed, changed, removed, confirmed, open, agreement


def pull(cfg: Config, *, home: str | Path | None = None, round: int | None = None,
         progress: bool = True) -> PullResult:
    """Take the annotators' answers into the corrections journal (WORKDIR/journal.sqlite) as round
    ``round`` (default: the next); answers already there are not taken twice. :func:`apply` then
    writes the cleaned data version."""
    from cleanloop.identity import load_workdir_data
    from cleanloop.labeling import argilla_io as aio
    from cleanloop.labeling.journal import Journal
    from cleanloop.loops.review import pull_step, round_stats

    with _writing(cfg, "pull"):
        wd = Workdir.of(cfg)
        rnd = round if round is not None else wd.latest_version() + 1
        original = load_workdir_data(cfg)
        client = aio.connect(cfg, home)
        bar = _bar(progress, None, "pull", "rec")
        with Journal(wd.journal) as journal:
            try:
                with aio.server_errors(cfg.argilla_url, "pull"):
                    res = pull_step(client, cfg, journal, original["train"], rnd,
                                    progress=bar.update if bar is not None else None)
            finally:
                if bar is not None:
                    bar.close()
            stats = round_stats(journal, rnd)
    return PullResult(rnd, res.new_votes, len(res.decisions), res.changed, res.removed, len(res.open_ids), stats)


@dataclass
class ApplyResult:
    round: int
    version: Path  # WORKDIR/versions/round-NNN: the data with the journal's decisions applied
    stats: dict  # the round's reviewed, changed, removed, confirmed, open, agreement


def apply(cfg: Config, *, round: int | None = None) -> ApplyResult:
    """Write the cleaned data version of round ``round`` (default: the next, as :func:`pull`): the
    original data with every decision of the journal applied (corrected labels, removed examples)."""
    from cleanloop.identity import load_workdir_data
    from cleanloop.labeling.journal import Journal
    from cleanloop.loops.review import round_stats
    from cleanloop.loops.versions import write_version

    with _writing(cfg, "apply"):
        wd = Workdir.of(cfg)
        rnd = round if round is not None else wd.latest_version() + 1
        original = load_workdir_data(cfg)
        with Journal(wd.journal) as journal:
            path = write_version(original, journal, wd.versions, rnd)
            return ApplyResult(rnd, path, round_stats(journal, rnd))


@dataclass
class ExportResult:
    """Where each export went (None: not asked for)."""

    dataset: Path | None = None
    dataset_hub: str | None = None  # owner/name on the Hub
    model: Path | None = None
    model_hub: str | None = None


def export(cfg: Config, *, to: str | Path | None = None, hub: str | None = None, private: bool = True,
           overwrite: bool = False, keep_removed: bool = False, version: str | Path | None = None,
           model_to: str | Path | None = None, model_hub: str | None = None) -> ExportResult:
    """Publish the cleaned data set (parquet per split + dataset card) to the folder ``to`` and/or the
    Hub repo ``hub``, and optionally the model (``model_to``, ``model_hub``).

    version: the data version folder (default: the latest, WORKDIR/versions/round-NNN). overwrite:
    replace an earlier export of cleanloop's (never a folder cleanloop did not make). keep_removed:
    keep the examples annotators removed. A workdir of ``cleanloop active`` exports its labelled examples.
    """
    from cleanloop.labeling.journal import Journal
    from cleanloop.loops import export as ex
    from cleanloop.loops.online import labelled_only, session_summary
    from cleanloop.loops.versions import load_version
    from cleanloop.model.train import model_dir

    if not (to or hub or model_to or model_hub):
        raise CleanloopError("nothing to export to; fix: pass --to FOLDER and/or --hub OWNER/NAME")
    for folder in (to, model_to):
        if folder:
            ex.check_export_folder(folder, overwrite)  # both checked before anything is written
    with _writing(cfg, "export"):
        wd = Workdir.of(cfg)
        path = Path(version) if version else wd.version(wd.latest_version())
        data, meta = load_version(path)
        summary = Journal(wd.journal).summary() if wd.journal.exists() else {}
        info = ex.CleaningInfo(rounds=meta["round"], model=f"{cfg.method} on {cfg.base_model}",
                               reviewed=sum(summary.get(k, 0) for k in ("corrected", "confirmed", "removed")),
                               agreement=summary.get("agreement"))
        active_session = session_summary(wd)
        if active_session:  # WORKDIR/active of `cleanloop active`: the labelled examples, and how they were chosen
            data = labelled_only(data)
            info = ex.CleaningInfo(rounds=meta["round"], method="cleanloop active learning: labelled in Argilla from "
                                   "model-chosen batches", model=f"logistic regression on {cfg.base_model} embeddings",
                                   reviewed=info.reviewed, agreement=info.agreement, extra=active_session)
        result = ExportResult()
        if to:
            result.dataset = ex.export_dataset(data, to, info, keep_removed=keep_removed, overwrite=overwrite)
        if hub:
            result.dataset_hub = ex.push_dataset_to_hub(data, hub, info, private=private, keep_removed=keep_removed)
        if model_to or model_hub:
            final = wd.round("final").model(cfg.method)
            folder = final if final.exists() else model_dir(cfg)
            if model_to:
                result.model = ex.export_model(folder, model_to, info, overwrite=overwrite)
            if model_hub:
                result.model_hub = ex.push_model_to_hub(folder, model_hub, private=private)
    return result


# --- loops ----------------------------------------------------------------------------------------------


@dataclass
class LoopResult:
    """A finished (or resumed and finished) loop: its state and where its history is."""

    state: object  # cleanloop.loops.retrain.LoopState: every round's results and the final model's
    history: Path
    report: Path | None = None


def retrain_loop(cfg: Config, options=None, *, home: str | Path | None = None,
                 display: Callable[[int, int], None] | None = None,
                 on_step: Callable[[int, str, dict], None] | None = None) -> LoopResult:
    """Train -> flag -> push -> wait for reviews -> pull -> apply, per round; then retrain and evaluate
    (``cleanloop retrain-loop``). options: :class:`cleanloop.config.LoopOptions` (default ``cfg.loop``).
    Resumable: called again after a crash or Ctrl-C it goes on where it stopped.
    on_step(round, step, result): after each step is checkpointed."""
    from cleanloop.labeling.argilla_io import server_errors
    from cleanloop.loops.retrain import run_loop

    with _writing(cfg, "retrain_loop"), server_errors(cfg.argilla_url, "retrain-loop"):
        state = run_loop(cfg, options or cfg.loop, home=home, display=display, on_step=on_step)
    wd = Workdir.of(cfg)
    return LoopResult(state, wd.history, wd.report)


@dataclass
class ActiveResult:
    """An active-learning run: the batches queued in a session, or the state of the round loop."""

    batches: list = field(default_factory=list)  # cleanloop.loops.online.BatchInfo, in a session
    state: object = None  # cleanloop.loops.retrain.LoopState, with ActiveOptions (the round loop)
    workdir: Path | None = None  # WORKDIR/active: export the labels from there
    history: Path | None = None
    stopped: bool = False  # a session stopped by Ctrl-C (run again to go on)


def active(cfg: Config, options=None, *, home: str | Path | None = None,
           on_batch: Callable | None = None, on_answers: Callable[[int, int], None] | None = None,
           on_pool: Callable | None = None, display: Callable[[int, int], None] | None = None,
           on_step: Callable[[int, str, dict], None] | None = None) -> ActiveResult:
    """Active learning (``cleanloop active``): label what the model learns most from, in Argilla
    dataset ``<cfg.argilla_dataset>-label``; the labels go to WORKDIR/active.

    options: :class:`cleanloop.config.ActiveOptions` (default ``cfg.active``). By default a responsive
    session: a light head on cached sentence embeddings refitted as answers arrive, the next batch
    queued before the current one is done, the encoder fine-tuned in the background and swapped in
    when it wins on held-out labels (``options.finetune_after``; ``options.pool``: the texts to label, default
    ``cfg.dataset``'s train split; on_pool(pool), on_batch(info, head), on_answers(labels, pending)
    report as it goes; Ctrl-C stops it, ``stopped`` says so). With ``options.full_retrain``, the
    blocking round loop that retrains SetFit / the fine-tuned classifier after each batch (display
    and on_step as :func:`retrain_loop`).
    """
    from cleanloop.labeling.argilla_io import server_errors
    from cleanloop.loops import online
    from cleanloop.loops.active import run_active

    awd = Workdir.of(cfg).active()
    opts = options or cfg.active
    if opts.full_retrain:
        with _writing(cfg, "active"), server_errors(cfg.argilla_url, "active"):  # resumable: again goes on
            state = run_active(cfg, opts, home=home, display=display, on_step=on_step)
        return ActiveResult(state=state, workdir=awd.root, history=awd.history)
    with _writing(cfg, "active"):
        data = online.load_pool(cfg, opts.pool)
        if on_pool is not None:
            on_pool(data)
        emb = online.embed(cfg, data.ids, data.texts)
        anchors = online.label_anchors(cfg, data.names)
        try:
            batches = online.run_session(cfg, opts, pool=data, embeddings=emb, anchors=anchors, home=home,
                                         on_batch=on_batch, on_answers=on_answers)
        except KeyboardInterrupt:
            return ActiveResult(workdir=awd.root, stopped=True)
    return ActiveResult(batches=batches, workdir=awd.root)


# --- predict --------------------------------------------------------------------------------------------


@dataclass
class PredictResult:
    """Predictions for ``texts``, in order; ``output``: the file written, if one was asked for."""

    texts: list[str]
    predictions: list  # cleanloop.model.predict.Prediction: label, score, probabilities (.top(k))
    probs: np.ndarray  # (N, C), columns in label_names order
    label_names: list[str]
    model: Path
    output: Path | None = None

    def frame(self):
        """A table with ``text``, ``label``, ``score`` and one ``prob_<label>`` column per label."""
        import pandas as pd

        probs = np.asarray(self.probs, dtype=np.float32)
        top = probs.argmax(1) if len(probs) else np.zeros(0, dtype=int)
        df = pd.DataFrame({"text": self.texts, "label": [self.label_names[i] for i in top]})
        df["score"] = probs[np.arange(len(top)), top]
        for j, name in enumerate(self.label_names):
            df[f"prob_{name}"] = probs[:, j]
        return df


def predict(cfg: Config, texts: Sequence[str], *, model: str | Path | None = None, top_k: int | None = None,
            output: str | Path | None = None, progress: bool = False) -> PredictResult:
    """Predict the label of each text with ``model`` (default: the workdir's).

    top_k: checked against the model's labels (each prediction's ``.top(k)`` gives them). output: also
    write the predictions (:meth:`PredictResult.frame`) to a ``.parquet`` or ``.csv`` file.
    """
    from cleanloop.model.serve import predictions_from_probs

    out = Path(output) if output else None
    if out is not None and out.suffix.lower() not in (".parquet", ".csv"):
        raise CleanloopError(f"--output must end in .parquet or .csv, got {out.name!r}; fix: rename it")
    texts = list(texts)
    folder, predictor = _load_predictor(cfg, model)
    if top_k is not None and top_k > len(predictor.label_names):
        raise CleanloopError(f"--top-k {top_k} but the model has {len(predictor.label_names)} labels; fix: lower it")
    bar = _bar(progress, len(texts), "predict", "text")
    try:
        probs = predictor.predict_arrays(texts, cfg.eval_batch_size, bar.update if bar is not None else None)["probs"]
    finally:
        if bar is not None:
            bar.close()
    result = PredictResult(texts, predictions_from_probs(probs, predictor.label_names), probs, predictor.label_names,
                           folder)
    if out is not None:
        from cleanloop.atomic import write_file
        from cleanloop.model.score import write_parquet_atomic

        df = result.frame()
        if out.suffix.lower() == ".parquet":
            result.output = write_parquet_atomic(df, out)
        else:
            result.output = write_file(out, lambda tmp: df.to_csv(tmp, index=False))
    return result


def serve(cfg: Config, *, model: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
          max_texts: int = 256, max_chars: int = 2000, truncate: bool = False,
          max_wait_ms: float = SERVE_MAX_WAIT_MS, max_batch: int = SERVE_MAX_BATCH, on_ready: Callable[[str, Path, list[str]], None] | None = None) -> None:
    """Serve ``model`` (default: the workdir's) over HTTP until stopped (``cleanloop serve``): POST /predict
    {"texts": [...]}, GET /health, GET /labels, docs at /docs. A taken port is refused before the model
    loads; on_ready(url, model folder, label names) is called once it listens (``port`` 0: any free one)."""
    import uvicorn

    from cleanloop.model.serve import create_app, listen_socket

    sock = listen_socket(host, port)  # a taken port is said now, not after the model has loaded
    port = sock.getsockname()[1]
    folder, predictor = _load_predictor(cfg, model)
    log.info("each group of requests runs packed into unpadded sequences (checked: same answers as padded batches)"
             if predictor.packs() else "each group of requests runs in padded batches (this model cannot be packed)")
    app = create_app(
        predictor, max_texts=max_texts, max_chars=max_chars, truncate=truncate,
        max_wait_ms=max_wait_ms, max_batch=max_batch,
        batch_size=cfg.eval_batch_size, model_name=str(folder),
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the service is reachable from other machines, without authentication", host)
    if on_ready is not None:
        on_ready(f"http://{host}:{port}", folder, list(predictor.label_names))
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", access_log=True)).run(sockets=[sock])

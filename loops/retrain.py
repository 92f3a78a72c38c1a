"""The review loop: train -> flag -> push -> wait for reviews -> pull -> apply, round after round, then retrain.

Its steps run on the round engine (:mod:`cleanloop.loops.rounds`: checkpointed, resumable); push,
wait, pull and apply are the engine's shared steps (:mod:`cleanloop.loops.review`). Everything lives
under ``WORKDIR`` (:class:`~cleanloop.workdir.Workdir`): the journal, ``versions/round-NNN/`` (the
data after round NNN; round-000: the original), ``loop/state.json``, ``loop/round-NNN/`` (that
round's model, trained on version NNN-1, and its flags), ``loop/final/`` (the model trained on the
last version) and the history (``loop/history.json``, ``report.md``, ``history.png``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleanloop.config import Config, LoopOptions  # noqa: F401  (LoopOptions: importable here as before)
from cleanloop.errors import WeakModelError
from cleanloop.loops.rounds import ApplyStep, LoopState, PullStep, PushStep, Round, RoundLoop, Step, WaitStep
from cleanloop.workdir import Workdir


# --- the steps of the review loop, each usable on its own -----------------------------------------------


def round_settings(cfg: Config) -> Config:
    """The settings of a round's training: frozen features flag out-of-fold (they record no dynamics)."""
    return cfg.replace(flag_source="oof") if cfg.method == "features" else cfg


def metrics_summary(metrics: dict) -> dict:
    out = {}
    for split in ("validation", "test"):
        if split in metrics:
            out[f"{'val' if split == 'validation' else split}_accuracy"] = metrics[split]["accuracy"]
            out[f"{'val' if split == 'validation' else split}_macro_f1"] = metrics[split]["macro_f1"]
    return out


def train_step(cfg: Config, train_dd, workdir: Workdir | None = None) -> dict:
    """Train on ``train_dd`` into the model folder of ``workdir`` (default ``Workdir.of(cfg)``); returns
    the number of train examples and val/test accuracy and macro F1."""
    from cleanloop.model.train import ClassifierTrainer

    result = ClassifierTrainer(cfg, workdir=workdir).train(train_dd)
    return {"train_examples": len(train_dd["train"]), **metrics_summary(result.metrics)}


@dataclass
class FlagResult:
    scores: object  # pandas DataFrame (scores.parquet)
    queue: object  # pandas DataFrame (review_queue.parquet)
    embeddings: np.ndarray | None  # (len(queue), D)


def flag_step(cfg: Config, train_ds, max_review: int, skip_ids: set[str], workdir: Workdir | None = None,
              held_out=None) -> FlagResult:
    """Score the train split, build the review queue without ``skip_ids``, embed the queue's texts; written
    to ``workdir``'s flags (default ``Workdir.of(cfg)``), judged by its model (or by judging runs, checked
    on ``held_out``)."""
    from cleanloop.loops.flagging import flag_examples

    wd = workdir or Workdir.of(cfg)
    flags = flag_examples(cfg, train_ds, max_review, skip_ids, wd, held_out=held_out)
    emb = embed_queue(cfg, train_ds, flags.queue, flags.embeddings, wd)
    if emb is not None:
        wd.save_npy(wd.queue_embeddings, emb)
    return FlagResult(flags.scores, flags.queue, emb)


def embed_queue(cfg: Config, train_ds, queue, feats: np.ndarray | None = None,
                workdir: Workdir | None = None) -> np.ndarray | None:
    """Embeddings (len(queue), D) of the queue's texts: frozen features if at hand, else those of
    ``workdir``'s model (default ``Workdir.of(cfg)``; None when there is no model)."""
    if len(queue) == 0:
        return None
    if feats is not None:
        order = {i: n for n, i in enumerate(train_ds["id"])}
        return np.asarray(feats)[[order[i] for i in queue["id"]]].astype(np.float32)
    from cleanloop.model.predict import Predictor

    folder = (workdir or Workdir.of(cfg)).model(cfg.method)
    if not folder.exists():
        return None
    pred = Predictor.load(folder, max_length=cfg.max_length, precision=cfg.precision)
    return pred.predict_arrays(list(queue["text"]), cfg.eval_batch_size)["embeddings"].astype(np.float32)


class TrainStep(Step):
    """Train the round's model on the data as cleaned so far (removed examples left out)."""

    name = "train"

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def run(self, loop, rnd):
        from cleanloop.loops.versions import training_view

        rnd.result.update(train_step(self.cfg, training_view(rnd.version), rnd.workdir))


class FlagStep(Step):
    """Flag the round's train split and write its review queue, without the examples the journal decided.

    A model no better than the majority class (:class:`WeakModelError`) marks the round's training as
    not done, so that running again (with more epochs or data) trains again.
    """

    name = "flag"

    def __init__(self, cfg: Config, max_review: int):
        self.cfg, self.max_review = cfg, max_review

    def run(self, loop, rnd):
        from cleanloop.loops.judge import held_out_split
        from cleanloop.loops.versions import training_view

        view = training_view(rnd.version)
        try:
            fr = flag_step(self.cfg, view["train"], self.max_review, loop.journal.reviewed_ids(), rnd.workdir,
                           held_out_split(view))
        except WeakModelError:
            loop.undo("train")
            raise
        rnd.result.update(flagged=int(fr.scores["is_issue"].sum()), queued=len(fr.queue))


def round_queue(rnd: Round) -> tuple:
    """The review queue a round's flag step wrote, with its embeddings (or None)."""
    from cleanloop.labeling.records import read_queue

    wd = rnd.workdir
    queue = read_queue(wd.review_queue)
    emb = np.load(wd.queue_embeddings) if wd.queue_embeddings.exists() and len(queue) else None
    return queue, emb


HISTORY_KEYS = ("round", "train_examples", "flagged", "pushed", "reviewed", "changed", "removed", "agreement",
                "val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1")


def run_loop(cfg: Config, opts: LoopOptions, *, client=None, home: str | Path | None = None,
             display: Callable[[int, int], None] | None = None,
             on_step: Callable[[int, str, dict], None] | None = None,
             workdir: Workdir | None = None) -> LoopState:
    """Run (or resume) the loop until ``opts.rounds`` rounds are applied and the final model is trained.

    client: an ``argilla.Argilla`` (default: :func:`argilla_io.connect` on ``cfg``, key from
    ARGILLA_API_KEY or the embedded server's credentials in ``home``). on_step(round, step, result)
    is called after each step is checkpointed. workdir: default ``Workdir.of(cfg)``.
    """
    from cleanloop.identity import load_workdir_data
    from cleanloop.loops.versions import training_view

    wd = workdir or Workdir.of(cfg)
    rcfg = round_settings(cfg)
    max_review = cfg.max_review
    push = PushStep(round_queue, wave=cfg.review_wave)

    def final(loop: RoundLoop) -> dict:
        return {"round": "final", **train_step(rcfg, training_view(loop.version(opts.rounds)), wd.round("final"))}

    about = [f"Data: {cfg.dataset}; method: {cfg.method}; base model: {cfg.base_model}; "
             f"label smoothing: {cfg.label_smoothing}.",
             "Each row is a round: the model trained at its start (on the data as cleaned so far), what it flagged, "
             "and what the annotators decided. The last row is the model trained after the last round."]
    with wd.lock("cleanloop retrain-loop"):
        loop = RoundLoop("retrain-loop", cfg, wd,
                         [TrainStep(rcfg), FlagStep(rcfg, max_review), push, WaitStep(push), PullStep(), ApplyStep()],
                         load_workdir_data(cfg, wd), opts, final=final, client=client, home=home, display=display,
                         on_step=on_step, history_keys=HISTORY_KEYS, title="cleanloop review loop", about=about)
        return loop.run()

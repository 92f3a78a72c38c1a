"""The active-learning loop: train on what is labelled -> score the pool -> pick a batch -> label it in Argilla.

Each round:

``train``  fit a model on the labelled examples (SetFit while there are few labels, the fine-tuned
           classifier once ``switch_per_class`` labels per class are reached; the switch is logged),
           evaluate it on the test split and score the whole pool (``probs.npy``);
``query``  pick ``batch_size`` examples with the query strategy (:mod:`cleanloop.loops.strategies`);
``push``   send them to the Argilla dataset ``<argilla_dataset>-label`` (the model's suggestion, no
           given label; a separate dataset from the review queue);
``wait``   until the annotators answered (or the timeout);
``pull``   take the answers into the journal, and ``apply`` write the next data version.

It runs on the round engine of the review loop (:mod:`cleanloop.loops.rounds`): the same push,
wait (webhooks included), pull and apply steps, the journal, the versions, the resumable state file
and the history. Everything lives in the workdir's active-learning workdir (:meth:`Workdir.active
<cleanloop.workdir.Workdir.active>`, ``WORKDIR/active``: its own journal, where an active-learning
label is a decision on an example whose original label is "none", stored as label ``-1``; each
round's ``probs.npy``, ``batch.parquet`` and ``model/`` in ``loop/round-NNN/``).

The pool is ``--pool`` (default: the data set's train split) with its labels hidden, except
``seed_per_class`` examples per class that start the loop.
"""

from __future__ import annotations

import json
import logging
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cleanloop.config import ActiveOptions, Config
from cleanloop.errors import CleanloopError
from cleanloop.labeling.records import queue_frame, read_queue, unlabelled_items
from cleanloop.loops.rounds import ApplyStep, LoopState, PullStep, PushStep, Round, RoundLoop, Step, WaitStep
from cleanloop.loops.strategies import Pool, QueryStrategy, make_strategy
from cleanloop.workdir import Workdir

log = logging.getLogger("cleanloop.active")

SEED_ANNOTATOR = "seed"
LABEL_GUIDELINES = """\
# Label each text

Each record is an unlabelled text that the model chose because labelling it should teach the
model the most. The model's **suggestion** is pre-selected with its confidence; it is often wrong
(that is why the text was chosen).

* Pick the label that describes the emotion the author expresses, then **Submit**.
* **Discard** means *no emotion of the list fits* (or the text is not understandable).
* Judge the text alone, not the suggestion.
"""


# --- models: one small base, a fresh one per round --------------------------------------------------


class Learner(ABC):
    """A classifier the loop trains from scratch each round: ``fit`` then ``predict_proba``."""

    name: str = ""

    @abstractmethod
    def fit(self, texts: Sequence[str], labels: np.ndarray, label_names: Sequence[str]) -> "Learner":
        """Train on N texts with (N,) integer labels."""

    @abstractmethod
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(N, C) probabilities, columns in ``label_names`` order."""


def _full_columns(probs: np.ndarray, classes: Sequence[int], n_classes: int) -> np.ndarray:
    """Probabilities over the classes a head saw -> (N, C) with zeros for the classes it did not."""
    out = np.zeros((len(probs), n_classes), dtype=np.float32)
    out[:, np.asarray(classes, dtype=int)] = probs
    return out


class SetFitLearner(Learner):
    """SetFit on the packaged sentence-transformer (offline): contrastive fine-tuning + logistic head."""

    name = "setfit"

    def __init__(self, opts: ActiveOptions, seed: int, base: str | Path | None = None):
        self.opts, self.seed, self.base = opts, seed, base
        self.model = None
        self.n_classes = 0

    def fit(self, texts, labels, label_names):
        import datasets
        from setfit import SetFitModel, Trainer, TrainingArguments

        from cleanloop.model.infer import packaged_model_dir

        self.n_classes = len(label_names)
        self.model = SetFitModel.from_pretrained(str(self.base or packaged_model_dir()))
        train = datasets.Dataset.from_dict({"text": list(texts), "label": np.asarray(labels).tolist()})
        with tempfile.TemporaryDirectory(prefix="cleanloop-setfit-") as scratch:  # it saves nothing there
            args = TrainingArguments(batch_size=self.opts.setfit_batch_size, num_epochs=self.opts.setfit_epochs,
                                     num_iterations=self.opts.setfit_iterations, seed=self.seed, show_progress_bar=False,
                                     report_to="none", save_strategy="no", output_dir=scratch)
            Trainer(model=self.model, args=args, train_dataset=train).train()
        return self

    def predict_proba(self, texts):
        probs = self.model.predict_proba(list(texts), as_numpy=True, show_progress_bar=False)
        return _full_columns(np.asarray(probs), self.model.model_head.classes_, self.n_classes)


class FinetuneLearner(Learner):
    """The fine-tuned classifier of ``cleanloop train`` (:class:`ClassifierTrainer`), saved in the model
    folder of ``workdir``.

    ``min_examples``: train at least ``cfg.epochs`` epochs (:func:`~cleanloop.model.train.train_epochs` when it
    is auto), more on a small labelled set, so that the
    model sees at least this many examples (``epochs = max(cfg.epochs, min_examples / n)``).
    """

    name = "finetune"

    def __init__(self, cfg: Config, workdir: Workdir, min_examples: int = 0):
        self.cfg = cfg.replace(method="finetune", record_dynamics=False)
        self.workdir = workdir
        self.min_examples = min_examples
        self.predictor = None

    def fit(self, texts, labels, label_names):
        import datasets

        from cleanloop.model.predict import Predictor
        from cleanloop.model.train import ClassifierTrainer, train_epochs

        feats = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                   "label": datasets.ClassLabel(names=list(label_names))})
        train = datasets.Dataset.from_dict({"id": [str(i) for i in range(len(texts))], "text": list(texts),
                                            "label": np.asarray(labels).tolist()}, features=feats)
        cfg = self.cfg.replace(epochs=finetune_epochs(len(texts), train_epochs(self.cfg, len(texts)), self.min_examples))
        folder = ClassifierTrainer(cfg, workdir=self.workdir).train(datasets.DatasetDict({"train": train})).output_dir
        self.predictor = Predictor.load(folder, max_length=self.cfg.max_length, precision=self.cfg.precision)
        return self

    def predict_proba(self, texts):
        return self.predictor.predict_arrays(list(texts), self.cfg.eval_batch_size)["probs"]


def finetune_epochs(n: int, epochs: float, min_examples: int) -> float:
    """Epochs for a fine-tune on ``n`` labels: ``epochs``, or enough to see ``min_examples`` examples.

    >>> finetune_epochs(500, 4, 10000), finetune_epochs(5000, 4, 10000)
    (20.0, 4)
    """
    return max(epochs, min_examples / max(n, 1))


class EmbeddingLogReg(Learner):
    """The fast path: logistic regression on fixed sentence embeddings, ``embed(texts) -> (N, D)``."""

    name = "logreg"

    def __init__(self, embed: Callable[[Sequence[str]], np.ndarray], seed: int = 0, C: float = 1.0):
        self.embed, self.seed, self.C = embed, seed, C
        self.head = None
        self.n_classes = 0

    def fit(self, texts, labels, label_names):
        from sklearn.linear_model import LogisticRegression

        self.n_classes = len(label_names)
        self.head = LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed).fit(self.embed(texts), labels)
        return self

    def predict_proba(self, texts):
        return _full_columns(self.head.predict_proba(self.embed(texts)), self.head.classes_, self.n_classes)


def learner_kind(labels: np.ndarray, n_classes: int, switch_per_class: int) -> str:
    """``setfit`` while labelled / classes < ``switch_per_class``, then ``finetune``.

    The average per class, not the minimum: a rare class the strategy seldom picks would
    otherwise hold SetFit (slow beyond a few hundred labels) forever.

    >>> learner_kind(np.zeros(95, int), 6, 16), learner_kind(np.zeros(96, int), 6, 16)
    ('setfit', 'finetune')
    """
    return "finetune" if len(labels) >= switch_per_class * n_classes else "setfit"


def seed_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` random rows of each class (all of a smaller class), sorted.

    >>> seed_indices(np.array([0, 0, 0, 1, 1, 2]), 2, np.random.default_rng(0)).size
    5
    """
    picks = [rng.choice(np.flatnonzero(labels == c), size=min(per_class, int((labels == c).sum())), replace=False)
             for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def fit_and_score(learner: Learner, texts: Sequence[str], labels: np.ndarray, label_names: Sequence[str],
                  pool_texts: Sequence[str], test_texts: Sequence[str] = (), test_labels: np.ndarray | None = None):
    """Fit on (texts, labels); return the pool's (N, C) probabilities (None for no pool) and test
    accuracy / macro F1 (empty without test texts)."""
    from cleanloop.model.metrics import classification_metrics

    learner.fit(texts, labels, label_names)
    probs = learner.predict_proba(pool_texts) if len(pool_texts) else None
    metrics = {}
    if len(test_texts):
        m = classification_metrics(np.asarray(test_labels), learner.predict_proba(test_texts).argmax(1), list(label_names))
        metrics = {"test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"]}
    return probs, metrics


def annotation_matrix(ids: Sequence[str], seed_labels: dict[str, int], votes, label_names: Sequence[str]) -> np.ndarray:
    """(N, A) label index per example and annotator (NaN: no vote): the seed labels as annotator
    ``seed``, then each annotator's latest vote (discards are NaN)."""
    index = {n: i for i, n in enumerate(label_names)}
    annotators = [SEED_ANNOTATOR] + sorted({v.annotator for v in votes})
    row = {i: n for n, i in enumerate(ids)}
    out = np.full((len(ids), len(annotators)), np.nan)
    for ex_id, lbl in seed_labels.items():
        out[row[ex_id], 0] = lbl
    for v in votes:
        if v.example_id in row:
            out[row[v.example_id], annotators.index(v.annotator)] = index[v.label] if v.label in index else np.nan
    return out


# --- data ----------------------------------------------------------------------------------------


def active_config(cfg: Config) -> Config:
    """``cfg`` with the active-learning loops' own Argilla dataset (<argilla_dataset>-label); their
    files are in :meth:`Workdir.active <cleanloop.workdir.Workdir.active>`."""
    return cfg.replace(argilla_dataset=cfg.argilla_dataset + "-label")


def active_data(cfg: Config, opts: ActiveOptions):
    """The loop's original data: the pool (train; label -1 = unlabelled, except the seed labels)
    and cfg.dataset's validation/test splits for evaluation. Deterministic in cfg.seed."""
    import datasets

    from cleanloop.model.data import load_data

    evaluation = load_data(cfg)
    pool = load_data(cfg.replace(dataset=opts.pool))["train"] if opts.pool else evaluation["train"]
    names = evaluation["train"].features["label"].names
    if pool.features["label"].names != names:
        raise CleanloopError(f"the pool {opts.pool!r} has labels {pool.features['label'].names}, the data set {names}; "
                             "fix: give both the same --label-names")
    gold = np.asarray(pool["label"])
    seed = set(seed_indices(gold, opts.seed_per_class, np.random.default_rng(cfg.seed)).tolist())
    hidden = [int(g) if i in seed else -1 for i, g in enumerate(gold)]
    pool = pool.remove_columns("label").add_column("label", hidden, feature=evaluation["train"].features["label"])
    out = {"train": pool.select_columns(["id", "text", "label"])}
    out.update({s: evaluation[s] for s in ("validation", "test") if s in evaluation})
    return datasets.DatasetDict(out)


def _make_learner(kind: str, cfg: Config, opts: ActiveOptions, workdir: Workdir) -> Learner:
    if kind == "setfit":
        return SetFitLearner(opts, cfg.seed)
    return FinetuneLearner(cfg, workdir, opts.min_train_examples)


def _train(cfg: Config, opts: ActiveOptions, version, workdir: Workdir, previous: str | None, score_pool: bool = True):
    """Train a model in ``workdir`` on the labelled rows of ``version``; (pool probs or None, result dict)."""
    train, names = version["train"], version["train"].features["label"].names
    labels = np.asarray(train["label"])
    keep = np.flatnonzero((labels >= 0) & (np.asarray(train["label_source"]) != "removed"))
    kind = learner_kind(labels[keep], len(names), opts.switch_per_class)
    if previous and kind != previous:
        log.info("%d labels (%.1f per class) reached the switch at %d per class: %s -> %s", len(keep),
                 len(keep) / len(names), opts.switch_per_class, previous, kind)
    texts = list(train["text"])
    test = version["test"] if "test" in version else None
    probs, metrics = fit_and_score(_make_learner(kind, cfg, opts, workdir), [texts[i] for i in keep], labels[keep],
                                   names, texts if score_pool else [], list(test["text"]) if test else [],
                                   np.asarray(test["label"]) if test else None)
    counts = np.bincount(labels[keep], minlength=len(names))
    return probs, {"model": kind, "labelled": int(len(keep)), "per_class": dict(zip(names, counts.tolist())), **metrics}


def _previous_model(loop: RoundLoop, rnd: int) -> str | None:
    return loop.state.rounds.get(str(rnd - 1), {}).get("model")


class TrainStep(Step):
    """Fit the round's model on what is labelled, evaluate it on the test split and score the pool."""

    name = "train"

    def __init__(self, cfg: Config, opts: ActiveOptions):
        self.cfg, self.opts = cfg, opts

    def run(self, loop, rnd):
        probs, info = _train(self.cfg, self.opts, rnd.version, rnd.workdir, _previous_model(loop, rnd.number))
        rnd.workdir.save_npy(rnd.workdir.pool_probs, probs)
        rnd.result.update(info)


class QueryStep(Step):
    """Pick the round's batch with the query strategy from the pool's probabilities."""

    name = "query"

    def __init__(self, cfg: Config, opts: ActiveOptions, strategy: QueryStrategy, seed_labels: dict[str, int]):
        self.cfg, self.opts, self.strategy, self.seed_labels = cfg, opts, strategy, seed_labels

    def run(self, loop, rnd):
        import pandas as pd

        from cleanloop.model.score import write_parquet_atomic
        from cleanloop.model.train import extract_features

        pool, names = loop.original["train"], loop.names
        pool_ids, pool_texts = list(pool["id"]), list(pool["text"])
        probs = np.load(rnd.workdir.pool_probs)
        labelled = np.asarray(rnd.version["train"]["label"]) >= 0
        emb = extract_features(self.cfg, pool, loop.workdir) if self.strategy.needs_embeddings else None
        ann = annotation_matrix(pool_ids, self.seed_labels, loop.journal.votes(), names) if self.strategy.relabels else None
        idx = self.strategy.query(Pool(probs, labelled, emb, ann), self.opts.batch_size,
                                  np.random.default_rng([self.cfg.seed, rnd.number]))
        queue = queue_frame(unlabelled_items([pool_ids[i] for i in idx], [pool_texts[i] for i in idx], probs[idx], names),
                            pd.DataFrame({"relabel": labelled[idx]}))
        write_parquet_atomic(queue, rnd.workdir.batch)
        rnd.result.update(queried=len(queue), relabel=int(labelled[idx].sum()))


def _round_batch(rnd: Round) -> tuple:
    return read_queue(rnd.workdir.batch), None


HISTORY_KEYS = ("round", "model", "labelled", "queried", "relabel", "pushed", "answered", "reviewed", "removed",
                "agreement", "test_accuracy", "test_macro_f1")


def _check_resume(workdir: Workdir, opts: ActiveOptions) -> None:
    """Refuse to resume a loop with other seed labels; record the options."""
    path = workdir.loop_options
    if path.exists() and LoopState.load(workdir.loop_state).rounds:
        before = json.loads(path.read_text())
        changed = [k for k in ("seed_per_class", "pool") if (before.get(k) or None) != (getattr(opts, k) or None)]
        if changed:
            raise CleanloopError(
                f"{workdir.loop} was started with {', '.join(f'{k}={before.get(k)!r}' for k in changed)}, not "
                f"{', '.join(f'{k}={getattr(opts, k)!r}' for k in changed)}: the seed labels would differ; "
                "fix: pass the same options to resume, or another --workdir to start over")
    workdir.write_json(path, opts.to_dict())


def run_active(cfg: Config, opts: ActiveOptions, *, client=None, home: str | Path | None = None,
               display: Callable[[int, int], None] | None = None,
               on_step: Callable[[int, str, dict], None] | None = None,
               workdir: Workdir | None = None) -> LoopState:
    """Run (or resume) the active-learning loop for ``opts.rounds`` rounds; returns the LoopState.

    Resumable like the review loop (the same round engine): each step is checkpointed in the
    active-learning workdir's ``loop/state.json`` after it finished, and each can run again without
    harm. workdir: the user's workdir (default ``Workdir.of(cfg)``); the loop works in its
    :meth:`~cleanloop.workdir.Workdir.active`.
    """
    owner = workdir or Workdir.of(cfg)
    awd = owner.active()
    with owner.lock("cleanloop active"):
        _check_resume(awd, opts)
        strategy = make_strategy(opts.strategy)
        original = active_data(cfg, opts)
        pool = original["train"]
        seed_labels = {i: int(lbl) for i, lbl in zip(pool["id"], pool["label"]) if lbl >= 0}
        push = PushStep(_round_batch, flagged_by=(strategy.name,), guidelines=LABEL_GUIDELINES,
                        relabel=strategy.relabels)

        def final(loop: RoundLoop) -> dict:
            _, info = _train(cfg, opts, loop.version(opts.rounds), awd.round("final"),
                             _previous_model(loop, opts.rounds + 1), score_pool=False)
            return {"round": "final", **info}

        about = [f"Pool: {opts.pool or cfg.dataset}; strategy: {opts.strategy}, {opts.batch_size} per round; "
                 f"SetFit until {opts.switch_per_class} labels per class, then fine-tuning {cfg.base_model}.",
                 "Each row is a round: the model trained at its start on the labels so far, the batch it picked "
                 "and what the annotators answered. The last row is the model trained after the last round."]
        loop = RoundLoop("active", active_config(cfg), awd,
                         [TrainStep(cfg, opts), QueryStep(cfg, opts, strategy, seed_labels), push, WaitStep(push),
                          PullStep(), ApplyStep()],
                         original, opts, owner=owner, final=final if opts.final_train else None, client=client,
                         home=home, display=display, on_step=on_step, history_keys=HISTORY_KEYS,
                         title="cleanloop active learning", about=about)
        return loop.run()

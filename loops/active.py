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

It shares every moving part with the review loop (:mod:`cleanloop.loops.retrain`): push, pull,
wait, the journal, the versions and the resumable state file. Everything lives under
``WORKDIR/active`` (its own journal: an active-learning label is a decision on an example whose
original label is "none", stored as label ``-1``)::

    journal.sqlite, versions/round-NNN/, loop/state.json, loop/round-NNN/{probs.npy,batch.parquet,model/}

The pool is ``--pool`` (default: the data set's train split) with its labels hidden, except
``seed_per_class`` examples per class that start the loop.
"""

from __future__ import annotations

import json
import logging
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cleanloop.atomic import save_npy, write_json
from cleanloop.config import Config
from cleanloop.errors import CleanloopError
from cleanloop.labeling.records import queue_frame, unlabelled_items
from cleanloop.loops.strategies import STRATEGIES, Pool, make_strategy

log = logging.getLogger("cleanloop.active")

STEPS = ("train", "query", "push", "wait", "pull", "apply")
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


@dataclass
class ActiveOptions:
    """How the active-learning loop runs."""

    strategy: str = "margin"
    batch_size: int = 64
    rounds: int = 1
    seed_per_class: int = 8  # labels per class revealed from the pool to start with
    switch_per_class: int = 16  # labels per class (labelled / classes) from which the fine-tuned classifier is used
    # a fine-tune on few labels gets enough epochs to see at least this many examples (4 epochs of a
    # few hundred labels are too few optimizer steps: 69% vs 82% test accuracy at 688 labels on emotion)
    min_train_examples: int = 10000
    pool: str | None = None  # the unlabelled pool's source; None: cfg.dataset's train split
    min_reviewed: int = 0  # 0: every record pushed this round
    review_timeout: float = 3600.0
    poll_seconds: float = 5.0
    interactive: bool = True
    setfit_iterations: int = 20  # SetFit's contrastive pairs per example (SetFit's default)
    setfit_epochs: int = 1
    setfit_batch_size: int = 16
    final_train: bool = True  # train and evaluate once more on the labels of the last round

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise CleanloopError(f"unknown strategy {self.strategy!r}; fix: use one of {', '.join(sorted(STRATEGIES))}")
        for name in ("batch_size", "rounds", "seed_per_class", "setfit_iterations", "setfit_epochs", "setfit_batch_size"):
            if getattr(self, name) < 1:
                raise CleanloopError(f"{name} must be at least 1, got {getattr(self, name)}")
        counts = (self.switch_per_class, self.min_train_examples, self.min_reviewed, self.review_timeout)
        if min(counts) < 0 or self.poll_seconds <= 0:
            raise CleanloopError(
                f"switch_per_class, min_train_examples, min_reviewed and review_timeout must be >= 0 and "
                f"poll_seconds > 0, got {', '.join(map(str, counts))}, {self.poll_seconds}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ActiveOptions":
        return cls(**d)


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
    """The fine-tuned classifier of ``cleanloop train`` (:class:`ClassifierTrainer`), saved in ``folder``.

    ``min_examples``: train at least ``cfg.epochs`` epochs, more on a small labelled set, so that the
    model sees at least this many examples (``epochs = max(cfg.epochs, min_examples / n)``).
    """

    name = "finetune"

    def __init__(self, cfg: Config, folder: Path, min_examples: int = 0):
        self.cfg = cfg.replace(method="finetune", record_dynamics=False, workdir=str(Path(folder).parent))
        self.folder = Path(folder)
        self.min_examples = min_examples
        self.predictor = None

    def fit(self, texts, labels, label_names):
        import datasets

        from cleanloop.model.predict import Predictor
        from cleanloop.model.train import ClassifierTrainer

        feats = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                   "label": datasets.ClassLabel(names=list(label_names))})
        train = datasets.Dataset.from_dict({"id": [str(i) for i in range(len(texts))], "text": list(texts),
                                            "label": np.asarray(labels).tolist()}, features=feats)
        cfg = self.cfg.replace(epochs=finetune_epochs(len(texts), self.cfg.epochs, self.min_examples))
        ClassifierTrainer(cfg).train(datasets.DatasetDict({"train": train}), self.folder)
        self.predictor = Predictor.load(self.folder, max_length=self.cfg.max_length, precision=self.cfg.precision)
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
    """The loop's own workdir (WORKDIR/active) and Argilla dataset (<argilla_dataset>-label)."""
    return cfg.replace(workdir=str(cfg.workpath / "active"), argilla_dataset=cfg.argilla_dataset + "-label")


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


def _make_learner(kind: str, cfg: Config, opts: ActiveOptions, folder: Path) -> Learner:
    if kind == "setfit":
        return SetFitLearner(opts, cfg.seed)
    return FinetuneLearner(cfg, folder / "model", opts.min_train_examples)


def _train(cfg: Config, opts: ActiveOptions, version, folder: Path, previous: str | None, score_pool: bool = True):
    """Train this round's model on the labelled rows of ``version``; (pool probs or None, result dict)."""
    train, names = version["train"], version["train"].features["label"].names
    labels = np.asarray(train["label"])
    keep = np.flatnonzero((labels >= 0) & (np.asarray(train["label_source"]) != "removed"))
    kind = learner_kind(labels[keep], len(names), opts.switch_per_class)
    if previous and kind != previous:
        log.info("%d labels (%.1f per class) reached the switch at %d per class: %s -> %s", len(keep),
                 len(keep) / len(names), opts.switch_per_class, previous, kind)
    texts = list(train["text"])
    test = version["test"] if "test" in version else None
    probs, metrics = fit_and_score(_make_learner(kind, cfg, opts, folder), [texts[i] for i in keep], labels[keep],
                                   names, texts if score_pool else [], list(test["text"]) if test else [],
                                   np.asarray(test["label"]) if test else None)
    counts = np.bincount(labels[keep], minlength=len(names))
    return probs, {"model": kind, "labelled": int(len(keep)), "per_class": dict(zip(names, counts.tolist())), **metrics}


def run_active(cfg: Config, opts: ActiveOptions, *, client=None, home: str | Path | None = None,
               display: Callable[[int, int], None] | None = None,
               on_step: Callable[[int, str, dict], None] | None = None):
    """Run (or resume) the active-learning loop for ``opts.rounds`` rounds; returns the LoopState.

    Resumable like the review loop: each step is checkpointed in WORKDIR/active/loop/state.json
    (temp + rename) after it finished, and each can run again without harm.
    """
    import pandas as pd

    from cleanloop.labeling.journal import Journal
    from cleanloop.loops.retrain import (LoopState, _version, journal_path, lazy_client, loop_root,
                                         pull_step, push_step, round_stats, run_rounds, versions_root,
                                         wait_for_reviews)
    from cleanloop.loops.versions import write_version
    from cleanloop.model.score import write_parquet_atomic
    from cleanloop.model.train import extract_features

    acfg = active_config(cfg)
    root = loop_root(acfg)
    state_file = root / "state.json"
    state = LoopState.load(state_file)
    options_file = root / "options.json"
    if options_file.exists() and state.rounds:
        before = json.loads(options_file.read_text())
        changed = [k for k in ("seed_per_class", "pool") if before.get(k) != getattr(opts, k)]
        if changed:
            raise CleanloopError(
                f"{root} was started with {', '.join(f'{k}={before.get(k)!r}' for k in changed)}, not "
                f"{', '.join(f'{k}={getattr(opts, k)!r}' for k in changed)}: the seed labels would differ; "
                "fix: pass the same options to resume, or another --workdir to start over")
    write_json(options_file, opts.to_dict())
    strategy = make_strategy(opts.strategy)
    original = active_data(cfg, opts)
    pool = original["train"]
    names = pool.features["label"].names
    pool_ids, pool_texts = list(pool["id"]), list(pool["text"])
    seed_labels = {i: int(lbl) for i, lbl in zip(pool_ids, pool["label"]) if lbl >= 0}
    journal = Journal(journal_path(acfg))
    connected = lazy_client(cfg, home, client)  # cfg: the embedded server's home is WORKDIR/argilla

    def previous_model(rnd: int) -> str | None:
        return state.rounds.get(str(rnd - 1), {}).get("model")

    def begin_round(rnd: int, res: dict) -> Callable[[str], None]:
        folder = root / f"round-{rnd:03d}"
        version = _version(original, journal, acfg, rnd - 1)

        def do(step: str) -> None:
            if step == "train":
                probs, info = _train(acfg, opts, version, folder, previous_model(rnd))
                save_npy(folder / "probs.npy", probs)
                res.update(info)
            elif step == "query":
                probs = np.load(folder / "probs.npy")
                labelled = np.asarray(version["train"]["label"]) >= 0
                emb = extract_features(acfg, pool) if strategy.needs_embeddings else None
                ann = annotation_matrix(pool_ids, seed_labels, journal.votes(), names) if strategy.relabels else None
                idx = strategy.query(Pool(probs, labelled, emb, ann), opts.batch_size,
                                     np.random.default_rng([cfg.seed, rnd]))
                queue = queue_frame(unlabelled_items([pool_ids[i] for i in idx], [pool_texts[i] for i in idx],
                                                     probs[idx], names), pd.DataFrame({"relabel": labelled[idx]}))
                write_parquet_atomic(queue, folder / "batch.parquet")
                res.update(queried=len(queue), relabel=int(labelled[idx].sum()))
            elif step == "push":
                queue = pd.read_parquet(folder / "batch.parquet")
                skip = set() if strategy.relabels else journal.reviewed_ids()
                res["pushed_ids"] = push_step(connected(), acfg, queue, None, names, rnd, skip,
                                              flagged_by=(strategy.name,), guidelines=LABEL_GUIDELINES)
                res["pushed"] = len(res["pushed_ids"])
            elif step == "wait":
                res["answered"] = wait_for_reviews(connected(), acfg, res.get("pushed_ids", []), opts.min_reviewed,
                                                   opts.review_timeout, opts.poll_seconds, display)
            elif step == "pull":
                res["new_votes_last_pull"] = pull_step(connected(), acfg, journal, pool, rnd).new_votes
                res.update(round_stats(journal, rnd))
            elif step == "apply":
                res["version"] = str(write_version(original, journal, versions_root(acfg), rnd))
                res.update(round_stats(journal, rnd))

        return do

    def final() -> dict:
        _, info = _train(acfg, opts, _version(original, journal, acfg, opts.rounds), root / "final",
                         previous_model(opts.rounds + 1), score_pool=False)
        return {"round": "final", **info}

    try:
        run_rounds(state, state_file, opts.rounds, STEPS, begin_round, final if opts.final_train else None, on_step,
                   name="active")
        rows = [{k: v for k, v in r.items() if k != "pushed_ids"}
                for _, r in sorted(state.rounds.items(), key=lambda kv: int(kv[0]))]
        write_json(root / "history.json", rows + ([state.final] if state.final else []))
        return state
    finally:
        journal.close()

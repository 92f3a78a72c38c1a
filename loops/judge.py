"""The probabilities that judge each training label, and the check that the model behind them is
worth listening to: training dynamics or out-of-fold probabilities (cached per data version and
settings), stopped by :func:`check_model` when the model is no better than the majority class.

Used by ``cleanloop flag`` and by each round of ``cleanloop retrain-loop``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleanloop.config import SMALL_DATA, Config
from cleanloop.errors import CleanloopError, WeakModelError
from cleanloop.workdir import Workdir

log = logging.getLogger("cleanloop")


@dataclass
class Judgement:
    """What judges the train labels: probabilities (N, C), the frozen encoder's features (N, D) when
    they were computed on the way (the checks reuse them), the judging model's own embeddings (N, D)
    when it recorded them (the neighbour vote), and a description of the source."""

    probs: np.ndarray
    features: np.ndarray | None
    representation: np.ndarray | None
    source: str
    filter_by: str  # which examples are flagged (:func:`issue_filter`)


def judging_probs(cfg: Config, train_ds, workdir: Workdir | None = None, held_out=None) -> Judgement:
    """The :class:`Judgement` of the train labels as ``cfg.flag_source`` says.

    workdir (default ``Workdir.of(cfg)``): whose model's dynamics judge, where the out-of-fold models
    train and the caches are. held_out: a labelled split (validation) on which judging runs are checked
    (:func:`check_model`) when they judge in the trained model's place; without it the trained model is.
    """
    from cleanloop.loops.oof import oof_finetune, oof_logreg
    from cleanloop.loops.signals import dynamics_probs
    from cleanloop.model.train import extract_features, train_epochs

    wd = workdir or Workdir.of(cfg)
    labels = np.asarray(train_ds["label"])
    names = train_ds.features["label"].names
    if cfg.flag_source == "dynamics":
        path = wd.model("finetune") / "dynamics.npz"
        if not path.exists():
            raise CleanloopError(
                f"no training dynamics at {path}; fix: run 'cleanloop train' first (it records them), "
                "or use --flag-source oof"
            )
        dyn = np.load(path)
        if list(dyn["ids"]) != list(train_ds["id"]) or not np.array_equal(dyn["labels"], labels):
            raise CleanloopError(
                f"{path} was recorded on another version of the train split (ids or labels differ); "
                "fix: run 'cleanloop train' on this data first"
            )
        metrics = json.loads((path.parent / "metrics.json").read_text()) if (path.parent / "metrics.json").exists() else {}
        # the epochs the model trained, as its run recorded them (else as these settings would train it)
        trained = metrics.get("run", {}).get("config", {}).get("training", {}).get("epochs") or train_epochs(cfg, len(labels))
        runs = dynamics_runs(cfg, len(labels), trained)
        own = judged_records(cfg, dyn["probs"], trained, len(labels), more_runs=runs > 1)
        split = next((s for s in ("validation", "test") if s in metrics), None)
        if split and (own is not None or held_out is None):  # else the judging runs are checked
            check_model(cfg, np.asarray(metrics[split]["confusion_matrix"]), labels, f"{split} ({path.parent})")
        records = ([] if own is None else [own]) + [
            _seed_dynamics(cfg, train_ds, wd, cfg.seed + i, (len(labels), len(names)), held_out if own is None else None)
            for i in range(1, runs)]
        recorded = len(dyn["probs"])
        parts = [] if own is None else [f"{path.parent} ({recorded} epoch records" + (
            ")" if len(own) == recorded else f", the first {len(own)}: --judge-stop {cfg.judge_stop:g})")]
        if runs > 1:
            epochs = max(cfg.epochs, cfg.judge_epochs)
            parts.append(f"{runs - 1} judging run(s) of {stop_epochs(cfg, epochs)} of {epochs:g} scheduled epochs, label "
                         f"smoothing {cfg.judge_label_smoothing:g}, with seeds {', '.join(str(cfg.seed + i) for i in range(1, runs))}")
        source = "training dynamics of " + " and of ".join(parts)
        if own is None:
            source += (f" ({'auto: ' if not cfg.dynamics_runs else ''}under {SMALL_DATA:,} train examples the model's own "
                       f"record is left out: it trained fewer than {cfg.judge_epochs:g} epochs)")
        elif runs > 1 and not cfg.dynamics_runs:
            source += (f" (auto: under {SMALL_DATA:,} train examples {runs - 1} judging runs join the record of a model "
                       f"that trained {cfg.judge_epochs:g} epochs)")
        representation = dyn["embeddings"] if "embeddings" in dyn.files else None  # older runs did not record them
        filter_by, why = issue_filter(cfg, len(labels))
        return Judgement(dynamics_probs(np.concatenate(records)), None, representation, source + why, filter_by)
    cache = wd.cached(f"oof-{cfg.method}-{cfg.folds}", _version_key(cfg, train_ds))
    probs = _load_cache(cache, (len(labels), len(names)))
    feats = extract_features(cfg, train_ds, wd) if cfg.method == "features" else None
    if probs is None:
        if feats is not None:
            probs = oof_logreg(feats, labels, len(names), cfg.folds, cfg.seed)
        else:
            probs = oof_finetune(cfg, train_ds, cfg.folds, progress=log.info, workdir=wd)
        wd.save_npy(cache, probs)  # atomic: a kill never leaves half a cache
    from sklearn.metrics import confusion_matrix

    check_model(cfg, confusion_matrix(labels, probs.argmax(1), labels=range(len(names))), labels,
                f"held-out folds of train ({cfg.folds}-fold {cfg.method})")
    filter_by, why = issue_filter(cfg, len(labels))
    return Judgement(probs, feats, None, f"{cfg.folds}-fold out-of-fold {cfg.method}" + why, filter_by)


def held_out_split(dd):
    """The labelled split that checks judging runs: ``validation``, else ``test``, else None."""
    return next((dd[s] for s in ("validation", "test") if s in dd), None)


def issue_filter(cfg: Config, n_examples: int) -> tuple[str, str]:
    """Which examples are flagged, and in words for the report: ``cfg.filter_by``, or when it is
    ``auto`` :data:`~cleanloop.loops.signals.DISAGREEMENT` on training dynamics of small data (under
    :data:`SMALL_DATA` examples) and cleanlab's ``prune_by_noise_rate`` otherwise.

    Small data is judged by runs of 8 epochs (:func:`dynamics_runs`), which learn many of the wrong
    labels by heart; confident learning's per-class thresholds then pass over most errors. On 3,000
    tweets with 10% errors (bench/noise.py, 8 epochs) prune_by_noise_rate flagged precision / recall
    0.96 / 0.31 (class-conditional) and 0.95 / 0.41 (uniform); adding every example whose most
    probable label is not the given one, 0.82 / 0.64 and 0.85 / 0.70. On full-size emotion (16,000,
    3 epochs) it would cost precision (0.865 -> 0.706), so there it stays off.

    >>> issue_filter(Config(), 3000)[0], issue_filter(Config(), 16000)[0], issue_filter(Config(flag_source="oof"), 3000)[0]
    ('noise_rate_or_disagreement', 'prune_by_noise_rate', 'prune_by_noise_rate')
    """
    from cleanloop.loops.signals import DISAGREEMENT

    if cfg.filter_by != "auto":
        return cfg.filter_by, f"; flagged by {cfg.filter_by}"
    if cfg.flag_source == "dynamics" and n_examples < SMALL_DATA:
        return DISAGREEMENT, (f"; flagged by confident learning (prune_by_noise_rate) or a most probable label other "
                              f"than the given one (auto: under {SMALL_DATA:,} train examples)")
    return "prune_by_noise_rate", "; flagged by confident learning (prune_by_noise_rate)"


def dynamics_runs(cfg: Config, n_examples: int, trained_epochs: float) -> int:
    """How many training runs' dynamics judge ``n_examples`` labels, the trained model's counted:
    ``cfg.dynamics_runs``, or when it is 0 (auto) 1 from :data:`SMALL_DATA` examples up; under it 3 after a
    model that trained ``cfg.judge_epochs`` (it and two judging runs), else 2 (one judging run, the model
    left out: :func:`judged_records`).

    On 3,000 emotion tweets with 10% class-conditional errors (bench/noise.py), how long the judge
    trained mattered, how many judged much less: AP 0.46 for one run of 3 epochs, 0.59 for three;
    0.824 for one run of 8 epochs, 0.833 for three; 0.779 for one of 12 (it learns the wrong labels
    by heart). So the judging runs train 8 epochs (:func:`_seed_dynamics`). Beside a model that already
    did (label smoothing 0.1, its first 5 of 8 records), one judging run (label smoothing 0.3) ranked the
    errors at AP 0.851 and 0.837 (class-conditional, model seeds 42 and 1), 0.909 (uniform) and 0.859
    (model-confusion); two at 0.854 and 0.852, 0.911 and 0.870, for 1.29-1.34x that model's plain
    training, within the 2x budget. After a shorter model one judging run is already 1.58x a 3-epoch
    model's training.

    >>> cfg = Config()
    >>> dynamics_runs(cfg, 3000, 8), dynamics_runs(cfg, 3000, 3), dynamics_runs(cfg, 16000, 1)
    (3, 2, 1)
    >>> dynamics_runs(Config(dynamics_runs=4), 16000, 1)
    4
    """
    if cfg.dynamics_runs:
        return cfg.dynamics_runs
    if n_examples >= SMALL_DATA:
        return 1
    return 3 if trained_epochs >= cfg.judge_epochs else 2


def stop_epochs(cfg: Config, epochs: float) -> int:
    """Epoch ends of a judging run of ``epochs`` scheduled epochs that judge: the first ``cfg.judge_stop``
    share of its learning-rate schedule, at least one.

    >>> stop_epochs(Config(), 8), stop_epochs(Config(), 12), stop_epochs(Config(judge_stop=1), 8)
    (5, 8, 8)
    """
    return max(1, math.ceil(cfg.judge_stop * math.ceil(epochs) - 1e-9))


def judged_records(cfg: Config, records: np.ndarray, trained_epochs: float, n_examples: int,
                   more_runs: bool = False) -> np.ndarray | None:
    """The epoch records (E, N, C) of the trained model that judge, or None when they do not.

    On small data (under :data:`SMALL_DATA` examples) a model that trained at least ``cfg.judge_epochs``
    is a judging run itself and is read up to :func:`stop_epochs`; one that trained less does not judge
    when judging runs do (``more_runs``). Elsewhere every record judges (also when the run recorded only
    its last epochs).

    On 3,000 tweets with 10% errors (bench/noise.py, 8 epochs) the first 5 of 8 epoch records ranked the
    errors better than all 8 in each noise type: AP 0.835 / 0.872 / 0.826 against 0.824 / 0.860 / 0.814
    (class-conditional / uniform / model-confusion): the last epochs learn the wrong labels by heart.
    Adding a 3-epoch model's records (test accuracy 79%) to those 5 lowered AP to 0.797 (class-conditional).

    >>> rec = np.zeros((8, 3000, 2))
    >>> len(judged_records(Config(), rec, 8, 3000)), len(judged_records(Config(), rec, 8, 9000))
    (5, 8)
    >>> judged_records(Config(), rec[:3], 3, 3000, more_runs=True) is None, len(judged_records(Config(), rec[:3], 3, 3000))
    (True, 3)
    """
    if n_examples >= SMALL_DATA:
        return records
    if trained_epochs < cfg.judge_epochs:
        return None if more_runs else records
    if len(records) != math.ceil(trained_epochs):
        return records
    return records[:stop_epochs(cfg, trained_epochs)]


def _stop_after(n: int):
    """A TrainerCallback that stops training at the end of epoch ``n``; the schedule stays the whole run's."""
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kw):
            if state.epoch is not None and state.epoch >= n - 1e-6:
                control.should_training_stop = True

    return StopAfter()


def _seed_dynamics(cfg: Config, train_ds, wd: Workdir, seed: int, shape: tuple[int, int], held_out=None) -> np.ndarray:
    """The epoch records (E, N, C) of one more training run on ``train_ds`` with ``seed`` (cached per data
    version and settings, with its confusion matrix on ``held_out``; the run's model folder is removed once
    they are cached). With ``held_out`` (a labelled split), the run is checked on it (:func:`check_model`).

    Its learning-rate schedule is ``cfg.judge_epochs`` epochs (at least ``cfg.epochs``), and it stops
    after :func:`stop_epochs` of them: on 3,000 tweets with 10% class-conditional errors, one run of 8
    epochs ranked them at AP 0.824 (test accuracy 88.1%) against 0.46 for 3 epochs (79%) and 0.779 for 12,
    and its first 5 epoch records at 0.835 (bench/noise.py). It trains with label smoothing
    ``cfg.judge_label_smoothing`` (0.3): its first 5 records then ranked at 0.849 (89.0%).
    """
    import shutil

    import datasets

    from cleanloop.model.train import ClassifierTrainer

    key = _version_key(cfg, train_ds)
    cache, confusion_cache = wd.cached(f"dynamics-seed{seed}", key), wd.cached(f"dynamics-seed{seed}-held-out", key)
    records = _load_cache(cache, shape, ndim=3)
    confusion = _load_cache(confusion_cache, (shape[1], shape[1])) if held_out is not None else None
    if records is not None and (held_out is None or confusion is not None):
        if confusion is not None:
            _check_judging_run(cfg, confusion, train_ds, seed)
        return records
    epochs = max(cfg.epochs, cfg.judge_epochs)
    stop = stop_epochs(cfg, epochs)
    log.info("judging with one more training run (seed %d, %d of %.3g scheduled epochs) on %s examples", seed, stop,
             epochs, f"{shape[0]:,}")
    out = wd.dynamics_run(seed)
    run_cfg = cfg.replace(seed=seed, epochs=epochs, method="finetune", record_dynamics=True, dynamics_epochs=0,
                          label_smoothing=cfg.judge_label_smoothing)
    splits = {"train": train_ds} if held_out is None else {"train": train_ds, "test": held_out}  # "test": scored once
    result = ClassifierTrainer(run_cfg, callbacks=(_stop_after(stop),), workdir=wd).train(datasets.DatasetDict(splits), out)
    records = np.load(out / "dynamics.npz")["probs"]
    wd.save_npy(cache, records)  # atomic: a kill never leaves half a cache
    shutil.rmtree(out, ignore_errors=True)
    if held_out is not None:
        confusion = np.asarray(result.metrics["test"]["confusion_matrix"])
        wd.save_npy(confusion_cache, confusion)
        _check_judging_run(cfg, confusion, train_ds, seed)
    return records


def _check_judging_run(cfg: Config, confusion: np.ndarray, train_ds, seed: int) -> None:
    check_model(cfg, confusion, np.asarray(train_ds["label"]), f"the held-out split (judging run, seed {seed})")


def _load_cache(path: Path, shape: tuple[int, ...], ndim: int = 2) -> np.ndarray | None:
    """The cached array of ``ndim`` dimensions ending in ``shape``, or None when there is none or it is
    unreadable or of another shape (then it is redone)."""
    if not path.exists():
        return None
    try:
        array = np.load(path)
    except (ValueError, OSError, EOFError) as exc:
        log.warning("cache %s is unreadable (%s): computing it again", path, exc)
        return None
    return array if array.ndim == ndim and array.shape[ndim - len(shape):] == shape else None


def check_model(cfg: Config, confusion: np.ndarray, train_labels: np.ndarray, where: str) -> None:
    """Stop when the model behind the flags is not clearly better than predicting the train majority class.

    confusion: (C, C) counts of the model on held-out data (rows = true class). A model that
    predicts one class for everything "doubts" every label of the other classes: its flags are noise.
    """
    from cleanloop.loops.flag import baseline_guard, majority_baseline

    if cfg.min_gain_over_baseline <= 0:
        return
    confusion = np.asarray(confusion)
    total = confusion.sum()
    metrics = {"accuracy": float(np.trace(confusion) / total),
               "macro_f1": float(np.mean([2 * confusion[c, c] / max(confusion[c].sum() + confusion[:, c].sum(), 1)
                                          for c in range(len(confusion))]))}
    why = baseline_guard(metrics, majority_baseline(confusion, int(np.bincount(train_labels).argmax())),
                         cfg.min_gain_over_baseline)
    if why:
        raise WeakModelError(
            f"the model behind the flags is not clearly better than always predicting the majority class on {where}: "
            f"{why}, so its flags would be noise; fix: train longer (--epochs 3 or more), label more data, "
            "or use --flag-source oof --method features (--min-gain-over-baseline 0 skips this check)"
        )


def _version_key(cfg: Config, ds) -> str:
    """A key for this dataset version and these training settings (cache of out-of-fold scores)."""
    import hashlib

    h = hashlib.sha1(json.dumps({k: v for k, v in cfg.to_flat_dict().items() if k not in ("workdir", "max_review", "dynamics_runs")},
                                sort_keys=True).encode())
    for i, label in zip(ds["id"], ds["label"]):
        h.update(f"{i}\0{label}\0".encode())
    return h.hexdigest()[:16]

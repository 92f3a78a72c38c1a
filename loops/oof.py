"""Out-of-fold probabilities: no example is scored by a model that saw its label.

Two paths, both stratified and seeded k-fold cross-validation:
``oof_logreg`` (frozen features, k logistic regressions: seconds) and
``oof_finetune`` (k fine-tunes with label smoothing: k training runs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cleanloop.config import Config
from cleanloop.errors import CleanloopError
from cleanloop.workdir import Workdir


def check_folds(labels: np.ndarray, k: int, label_names: list[str] | None = None) -> None:
    """Raise when ``k`` is not usable: below 2, or larger than the smallest class."""
    if k < 2:
        raise CleanloopError(f"folds must be at least 2, got {k}")
    counts = np.bincount(labels)
    present = np.flatnonzero(counts)
    smallest = present[np.argmin(counts[present])]
    if counts[smallest] < k:
        name = label_names[smallest] if label_names else str(smallest)
        raise CleanloopError(
            f"{k} folds but class '{name}' has only {counts[smallest]} examples; "
            f"fix: --folds {max(2, int(counts[smallest]))} or fewer, or label more examples of that class"
        )


def fold_indices(labels: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (train_idx, held_out_idx) pairs for k folds."""
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))


def oof_logreg(features: np.ndarray, labels: np.ndarray, num_classes: int, k: int = 5, seed: int = 42) -> np.ndarray:
    """Out-of-fold probabilities (N, C) from k logistic regressions on frozen features (N, D)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    check_folds(labels, k)
    probs = np.zeros((len(labels), num_classes))
    for train_idx, held in fold_indices(labels, k, seed):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        clf.fit(features[train_idx], labels[train_idx])
        probs[np.ix_(held, clf.classes_)] = clf.predict_proba(features[held])
    return probs


def oof_finetune(
    cfg: Config, train_ds, k: int = 5, progress: Callable[[str], None] | None = None, workdir: Workdir | None = None
) -> np.ndarray:
    """Out-of-fold probabilities (N, C) from k fine-tunes, each on the other k-1 folds.

    train_ds: the train ``Dataset`` (id, text, label). Each fold trains with ``cfg``'s settings
    (label smoothing included) in ``workdir`` (default ``Workdir.of(cfg)``; :meth:`Workdir.oof_fold`).
    """
    import datasets

    from cleanloop.model.predict import Predictor
    from cleanloop.model.train import ClassifierTrainer

    labels = np.asarray(train_ds["label"])
    names = train_ds.features["label"].names
    check_folds(labels, k, names)
    probs = np.zeros((len(labels), len(names)))
    fold_cfg = cfg.replace(method="finetune", record_dynamics=False)
    wd = workdir or Workdir.of(cfg)
    for i, (train_idx, held) in enumerate(fold_indices(labels, k, cfg.seed)):
        if progress:
            progress(f"fold {i + 1}/{k}: fine-tuning on {len(train_idx):,} examples")
        out = wd.oof_fold(i)
        ClassifierTrainer(fold_cfg, workdir=wd).train(datasets.DatasetDict({"train": train_ds.select(train_idx)}), out)
        pred = Predictor.load(out, max_length=cfg.max_length, precision=cfg.precision)
        probs[held] = pred.predict_arrays(train_ds.select(held)["text"], batch_size=cfg.eval_batch_size)["probs"]
    return probs

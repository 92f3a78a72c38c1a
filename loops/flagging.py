"""The flag pipeline, in one place: judge the train labels, compute the signals and the checks, rank
every example and pick the review queue; written as ``scores.parquet`` and ``review_queue.parquet``.

:func:`flag_examples` is what :func:`cleanloop.api.flag` (``cleanloop flag``) and each round of the
retrain loop run; they differ only in what they add around it (the report and its map; the queue's
embeddings for the push).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cleanloop.config import Config
from cleanloop.workdir import Workdir


@dataclass
class Flags:
    """What the pipeline found, and where it wrote it."""

    scores: pd.DataFrame  # one row per train example, rank 1 = most suspicious (scores.parquet)
    queue: pd.DataFrame  # what goes to the annotators, most suspicious first (review_queue.parquet)
    embeddings: np.ndarray | None  # (N, D) of the train split when the judge or the checks computed them
    source: str  # what judged the labels, in words
    folder: Path  # where scores.parquet and review_queue.parquet are


def flag_examples(cfg: Config, train_ds, max_review: int, skip_ids: Iterable[str], workdir: Workdir | None = None,
                  folder: Path | None = None, held_out=None) -> Flags:
    """Flag the examples of ``train_ds`` (a ``Dataset`` with id, text, label) as ``cfg`` says.

    max_review: the queue's length (0: every flagged example). skip_ids: examples already reviewed,
    left out of the queue (they stay in the scores). workdir: whose model judges (default
    ``Workdir.of(cfg)``); folder: where the tables go (default the workdir's flags). held_out: a labelled
    split (validation) that checks judging runs (:func:`~cleanloop.loops.judge.judging_probs`). Raises
    :class:`~cleanloop.errors.WeakModelError` when the model behind the flags is no better than the majority class.
    """
    from cleanloop.loops.flag import example_checks, review_queue, scores_table, signal_table
    from cleanloop.loops.judge import judging_probs
    from cleanloop.model.score import write_parquet_atomic

    names = train_ds.features["label"].names
    labels = np.asarray(train_ds["label"])
    wd = workdir or Workdir.of(cfg)
    judged = judging_probs(cfg, train_ds, wd, held_out)
    checks, features = example_checks(cfg, train_ds, judged.features)
    scores = scores_table(list(train_ds["id"]), list(train_ds["text"]), labels, judged.probs, names,
                          signal_table(labels, judged.probs, judged.filter_by, embeddings=judged.representation), checks)
    queue = review_queue(scores, max_review, skip_ids)
    if folder is None:
        folder, scores_file, queue_file = wd.flags, wd.flag_scores, wd.review_queue
    else:  # --output: a folder of the user's choice
        folder = Path(folder)
        scores_file, queue_file = folder / wd.flag_scores.name, folder / wd.review_queue.name
    write_parquet_atomic(scores, scores_file)
    write_parquet_atomic(queue, queue_file)
    return Flags(scores, queue, judged.features if features is None else features, judged.source, folder)

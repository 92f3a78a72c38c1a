"""Score every example of a split: probabilities, prediction, per-sample loss, embedding."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cleanloop.atomic import write_file
from cleanloop.model.predict import Predictor


def per_sample_loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each example against its given label.

    probs: (N, C) probabilities, rows summing to one. labels: (N,) integer labels.
    Returns (N,) ``-log p[label]``, clipped away from log(0).
    """
    p = probs[np.arange(len(labels)), labels]
    return -np.log(np.clip(p, 1e-12, 1.0))


def score_frame(
    predictor: Predictor,
    ids: list[str],
    texts: list[str],
    labels: np.ndarray | None,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """One row per example keyed by ``id``.

    Columns: ``id``, ``text``, ``label`` (given, when known), ``predicted_label``,
    ``predicted_score``, ``loss`` (when labels are known), ``probs`` (list of C
    floats in ``predictor.label_names`` order) and ``embedding`` (list of D floats).
    """
    arrays = predictor.predict_arrays(texts, batch_size=batch_size, progress=progress)
    probs = arrays["probs"]
    pred = probs.argmax(1)
    df = pd.DataFrame({"id": ids, "text": texts})
    if labels is not None:
        df["label"] = np.asarray(labels, dtype=np.int64)
    df["predicted_label"] = pred.astype(np.int64)
    df["predicted_score"] = probs[np.arange(len(pred)), pred].astype(np.float32)
    if labels is not None:
        df["loss"] = per_sample_loss(probs, np.asarray(labels)).astype(np.float32)
    df["probs"] = list(probs.astype(np.float32))
    df["embedding"] = list(arrays["embeddings"].astype(np.float32))
    return df


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` as parquet to ``path`` atomically (:func:`cleanloop.atomic.write_file`)."""
    return write_file(path, lambda tmp: df.to_parquet(tmp, index=False))

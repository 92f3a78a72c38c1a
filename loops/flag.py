"""Rank every training example by how likely its label is wrong, and build the review queue.

:func:`signal_table` turns probabilities that judge the given labels into one
column per signal; :func:`scores_table` adds ids, texts, names and rank;
:func:`review_queue` picks what goes to annotators.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from cleanloop.loops import signals


def suspicion_weights(structure: float) -> dict[str, float]:
    """The suspicion score's weights for a noise structure in [0, 1] (:func:`signals.noise_structure`).

    Chosen on bench/noise.py. With patterned errors (class-conditional 10%, training dynamics)
    normalized margin (AP 0.926) and the noise-aware posterior (0.950) lead and their mean reaches
    0.953, while self-confidence (= loss order) has 0.889. With uniform errors self-confidence
    leads (0.979) and the other two trail (0.972-0.974). So: the noise-aware posterior always
    (its noise matrix shrunk toward uniform by the same structure), plus normalized margin as
    far as the errors show a pattern and self-confidence for the rest.
    """
    return {"noise_aware": 1.0, "normalized_margin": structure, "self_confidence": 1.0 - structure}


def signal_table(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    filter_by: str = "prune_by_noise_rate",
    weights: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Every signal for N examples, one column each.

    labels: (N,) given labels. pred_probs: (N, C) probabilities from models that
    did not train on each example's label (out-of-fold), or averaged over the
    epochs of one training run (training dynamics).
    Columns: the three cleanlab label-quality scores and ``noise_aware`` (lower = worse), ``loss``
    (higher = worse), ``is_issue`` (cleanlab's confident-learning mask with
    ``filter_by``) and ``suspicion`` in [0, 1] (higher = worse; weights: ``weights``, default
    :func:`suspicion_weights` of the estimated noise structure). ``table.attrs["noise_structure"]``
    holds that structure.
    """
    labels, probs = signals.check_inputs(labels, pred_probs)
    table = pd.DataFrame({m: signals.label_quality(labels, probs, m) for m in signals.QUALITY_METHODS})
    noise = signals.noise_matrix(labels, probs)
    structure = signals.noise_structure(noise)
    table["noise_aware"] = signals.noise_aware_quality(labels, probs, signals.shrink_to_uniform(noise, structure))
    table["loss"] = signals.loss(labels, probs)
    table["is_issue"] = signals.find_issues(labels, probs, filter_by)
    table.attrs["noise_structure"] = structure
    weights = weights or suspicion_weights(structure)
    table["suspicion"] = signals.suspicion({k: table[k].to_numpy() for k in weights}, weights)
    return table


def scores_table(
    ids: list[str], texts: list[str], labels: np.ndarray, pred_probs: np.ndarray, label_names: list[str],
    table: pd.DataFrame,
) -> pd.DataFrame:
    """The ``scores.parquet`` table: one row per example, rank 1 = most suspicious.

    Columns: id, text, given_label, suggested_label, suggested_score,
    label_quality (normalized margin), loss, is_issue, suspicion, rank, and
    the other signals.
    """
    probs = np.asarray(pred_probs)
    top = probs.argmax(1)
    df = pd.DataFrame(
        {
            "id": list(ids),
            "text": list(texts),
            "given_label": [label_names[i] for i in labels],
            "suggested_label": [label_names[i] for i in top],
            "suggested_score": probs[np.arange(len(top)), top].astype(np.float32),
            "label_quality": table["normalized_margin"].to_numpy(np.float32),
            "loss": table["loss"].to_numpy(np.float32),
            "is_issue": table["is_issue"].to_numpy(bool),
            "suspicion": table["suspicion"].to_numpy(np.float32),
        }
    )
    df["rank"] = df["suspicion"].rank(ascending=False, method="first").astype(np.int64)
    for col in ("self_confidence", "confidence_weighted_entropy", "noise_aware"):
        df[col] = table[col].to_numpy(np.float32)
    return df.sort_values("rank").reset_index(drop=True)


def review_queue(scores: pd.DataFrame, max_review: int, reviewed_ids: Iterable[str] = ()) -> pd.DataFrame:
    """Flagged examples (``is_issue``) not yet reviewed by a human, by rank, at most ``max_review``."""
    done = set(reviewed_ids)
    queue = scores[scores["is_issue"] & ~scores["id"].isin(done)].sort_values("rank")
    return queue.head(max_review).reset_index(drop=True) if max_review > 0 else queue.reset_index(drop=True)


def confident_examples(scores: pd.DataFrame, per_class: int = 5) -> pd.DataFrame:
    """The lowest-loss, most confident examples of each given label (to look for shortcuts)."""
    return (
        scores.sort_values("loss").groupby("given_label", sort=True).head(per_class)
        .sort_values(["given_label", "loss"]).reset_index(drop=True)
    )

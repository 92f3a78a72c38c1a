"""Rank every training example by how likely its label is wrong, and build the review queue.

:func:`signal_table` turns probabilities that judge the given labels into one
column per signal; :func:`scores_table` adds ids, texts, names and rank;
:func:`review_queue` picks what goes to annotators.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from cleanloop.errors import CleanloopError
from cleanloop.labeling.records import ReviewItem, queue_frame
from cleanloop.loops import neighbours as nb
from cleanloop.loops import signals

# why an example is in the review queue (the ``flagged_by`` column, comma-separated)
REASONS = ("cleanlab", "duplicate", "near_duplicate", "outlier")
CONFLICT_PRIORITY = 0.5  # a group of copies with two labels: at least one label is wrong


def suspicion_weights(structure: float) -> dict[str, float]:
    """The suspicion score's weights for a noise structure in [0, 1] (:func:`signals.noise_structure`).

    Chosen on bench/noise.py (figures: bench/results/noise.json and the README). With patterned
    errors normalized margin and the noise-aware posterior lead and their mean does best, while
    self-confidence (= loss order) trails; with uniform errors self-confidence leads and the other
    two trail a little. So: the noise-aware posterior always
    (its noise matrix shrunk toward uniform by the same structure), plus normalized margin as
    far as the errors show a pattern and self-confidence for the rest. The neighbour vote in the
    judging model's representation (``model_neighbour_agreement``) is a column, not a weight here:
    mixed in at a third it lifted AP by 0.08-0.19 behind weak 3-epoch judges on 3,000 tweets, and
    cost 0.025 behind the 8-epoch judges that small data now gets (0.833 -> 0.809) and 0.005 on
    full-size emotion (0.953 -> 0.948).
    """
    return {"noise_aware": 1.0, "normalized_margin": structure, "self_confidence": 1.0 - structure}


def signal_table(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    filter_by: str = "prune_by_noise_rate",
    weights: dict[str, float] | None = None,
    *,
    epoch_probs: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Every signal for N examples, one column each, and their ``suspicion``.

    labels: (N,) given labels. pred_probs: (N, C) probabilities from models that
    did not train on each example's label (out-of-fold), or averaged over the
    epochs of one training run (training dynamics). epoch_probs: (E, N, C) those epochs, for
    the signals that need training dynamics. embeddings: (N, D) the judging model's own embeddings
    of the examples, for the neighbour vote. names: the signals to compute (default: every
    signal of :data:`signals.SIGNALS` the inputs allow, see :func:`signals.compute`), checked once.
    Columns: the signals (the three cleanlab label-quality scores and ``noise_aware``, lower =
    worse; ``loss``, higher = worse; ``is_issue``, cleanlab's confident-learning mask with
    ``filter_by``) and ``suspicion`` in [0, 1] (higher = worse; weights: ``weights``, default
    :func:`suspicion_weights` of the estimated noise structure). ``table.attrs["noise_structure"]``
    holds that structure.
    """
    evidence = signals.Evidence.check(labels, pred_probs, epoch_probs=epoch_probs, embeddings=embeddings)
    table = signals.compute(evidence, names, filter_by=filter_by)
    table.attrs["noise_structure"] = evidence.structure
    weights = weights or suspicion_weights(evidence.structure)
    missing = [k for k in weights if k not in table]
    if missing:
        raise CleanloopError(f"suspicion weights name signals that were not computed: {missing}; "
                             "fix: compute them (names=...) or drop their weights")
    table["suspicion"] = signals.suspicion({k: table[k].to_numpy() for k in weights}, weights)
    return table


def check_table(texts: list[str], labels: np.ndarray, embeddings: np.ndarray | None = None,
                near_duplicate_threshold: float = 0.13, k: int = 10) -> pd.DataFrame:
    """The checks that need no classifier, one row per example (:mod:`cleanloop.loops.neighbours`).

    texts: (N,); labels: (N,) given labels; embeddings: (N, D) sentence embeddings, or None for the
    exact-duplicate check alone. Columns: ``duplicate_group`` (copies share an id >= 0: exact
    duplicates after normalising case and whitespace, joined with near-duplicates unless
    ``near_duplicate_threshold`` is 0), ``duplicate`` / ``near_duplicate`` (in a group of exact /
    near copies whose labels differ), ``outlier``, ``outlier_score`` and ``neighbour_agreement``
    (NaN without embeddings).
    """
    labels = np.asarray(labels)
    exact = nb.exact_duplicate_groups(texts)
    out = pd.DataFrame({"duplicate": nb.conflicting_groups(exact, labels)})
    groups = exact
    nan = np.full(len(labels), np.nan)
    if embeddings is not None and len(labels) > 1:
        neigh = nb.nearest_neighbours(embeddings, k)
        if near_duplicate_threshold > 0:
            groups = _merge_groups(exact, nb.near_duplicate_groups(neigh, near_duplicate_threshold))
        out["near_duplicate"] = nb.conflicting_groups(groups, labels) & ~out["duplicate"].to_numpy()
        score = nb.outlier_scores(neigh)
        out["outlier"], out["outlier_score"] = nb.outliers(score), score
        out["neighbour_agreement"] = nb.neighbour_agreement(labels, neigh)
    else:
        out["near_duplicate"], out["outlier"], out["outlier_score"], out["neighbour_agreement"] = False, False, nan, nan
    out.insert(0, "duplicate_group", groups)
    return out


def example_checks(cfg, train_ds, features: np.ndarray | None = None) -> tuple[pd.DataFrame, np.ndarray | None]:
    """:func:`check_table` for a train ``Dataset`` (id, text, label) as ``cfg`` asks, and the embeddings used.

    With ``cfg.neighbour_checks`` the embeddings are the frozen encoder's sentence features
    (``features`` when given, else computed once and cached); without, only exact duplicates.
    """
    texts, labels = list(train_ds["text"]), np.asarray(train_ds["label"])
    if not cfg.neighbour_checks:
        return check_table(texts, labels), None
    if features is None:
        from cleanloop.model.train import extract_features

        features = extract_features(cfg, train_ds)
    return check_table(texts, labels, features, cfg.near_duplicate_threshold), features


def _merge_groups(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Group ids (N,) of the union of two groupings (-1: no group), renumbered 0, 1, ..."""
    def links(g: np.ndarray):
        first: dict[int, int] = {}
        for i in np.flatnonzero(g >= 0):
            yield i, first.setdefault(int(g[i]), int(i))

    return nb.connected_groups(len(a), [*links(a), *links(b)])


def scores_table(
    ids: list[str], texts: list[str], labels: np.ndarray, pred_probs: np.ndarray, label_names: list[str],
    table: pd.DataFrame, checks: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The ``scores.parquet`` table: one row per example, rank 1 = most suspicious.

    Columns: id, text, given_label, suggested_label, suggested_score,
    label_quality (normalized margin), loss, is_issue, suspicion, rank, the other signals of ``table``,
    ``flagged_by`` (why it goes to review, comma-separated :data:`REASONS`; empty: not flagged)
    and :func:`check_table`'s columns (``checks``; default: the exact-duplicate check on ``texts``).
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
    for col in table.columns:  # every other signal, under its own name
        if col not in df and col != "normalized_margin":
            df[col] = table[col].to_numpy(np.float32 if table[col].dtype.kind == "f" else table[col].dtype)
    checks = check_table(list(texts), labels) if checks is None else checks.reset_index(drop=True)
    for col in checks.columns:
        df[col] = checks[col].to_numpy()
    flags = {"cleanlab": df["is_issue"], **{r: df[r] for r in REASONS[1:]}}
    df["flagged_by"] = [",".join(r for r, f in zip(flags, row) if f) for row in zip(*(f.to_numpy() for f in flags.values()))]
    return df.sort_values("rank").reset_index(drop=True)


def review_queue(scores: pd.DataFrame, max_review: int, reviewed_ids: Iterable[str] = ()) -> pd.DataFrame:
    """Flagged examples not yet reviewed by a human, most suspicious first, at most ``max_review``.

    A table of :class:`~cleanloop.labeling.records.ReviewItem` s (:func:`~cleanloop.labeling.records.queue_frame`)
    followed by the rest of each row's ``scores`` columns. Flagged: a non-empty ``flagged_by``
    (``is_issue`` for a table without it). Copies with conflicting labels (``duplicate`` /
    ``near_duplicate``) are reviewed together: one row per group, its most suspicious member, with
    the other members in ``copy_ids`` / ``copy_labels`` / ``copy_texts``; its place in the queue is
    the group's highest suspicion, at least :data:`CONFLICT_PRIORITY`. ``priority`` holds that
    order; ``queue_rank`` is 1, 2, ...
    """
    done = set(reviewed_ids)
    flagged = scores["flagged_by"] != "" if "flagged_by" in scores else scores["is_issue"]
    queue = scores[flagged & ~scores["id"].isin(done)].copy()
    queue["priority"] = queue["suspicion"].astype(np.float64)
    copies: dict[int, pd.DataFrame] = {}  # queue row -> the other members of its group
    if "duplicate_group" in scores:
        conflict = (queue["duplicate"] | queue["near_duplicate"]) & (queue["duplicate_group"] >= 0)
        members = scores[scores["duplicate_group"].isin(queue.loc[conflict, "duplicate_group"])]
        drop = []
        for group, rows in queue[conflict].sort_values("rank").groupby("duplicate_group", sort=False):
            head = rows.index[0]
            group_rows = members[members["duplicate_group"] == group]
            copies[head] = group_rows[group_rows["id"] != queue.at[head, "id"]]
            queue.at[head, "priority"] = max(CONFLICT_PRIORITY, float(group_rows["suspicion"].max()))
            drop += list(rows.index[1:])
        queue = queue.drop(index=drop)
    queue = queue.sort_values(["priority", "rank"], ascending=[False, True])
    queue = queue.head(max_review) if max_review > 0 else queue
    no_copies = pd.DataFrame(columns=["id", "given_label", "text"])
    items = [
        ReviewItem(row.id, row.text, row.given_label, row.suggested_label, float(row.suggested_score),
                   float(row.label_quality), float(row.loss),
                   tuple(r for r in str(getattr(row, "flagged_by", "cleanlab")).split(",") if r),
                   *(tuple(copies.get(index, no_copies)[c]) for c in ("id", "given_label", "text")), n + 1)
        for n, (index, row) in enumerate(zip(queue.index, queue.itertuples(index=False)))
    ]
    return queue_frame(items, queue)


def majority_baseline(confusion: np.ndarray, majority: int | None = None) -> dict[str, float]:
    """Accuracy and macro F1 of always predicting one class, on the data of a confusion matrix.

    confusion: (C, C) counts, rows = true class. majority: the class predicted (default: the most
    frequent true class of ``confusion``; pass the train split's majority to judge a model trained
    on it). Predicting class m for all N examples gives accuracy n_m / N and, for class m,
    precision n_m / N and recall 1, so F1_m = 2 n_m / (N + n_m) and macro F1 = F1_m / C.

    >>> majority_baseline(np.array([[6, 0], [2, 2]]))
    {'accuracy': 0.6, 'macro_f1': 0.375}
    """
    counts = np.asarray(confusion).sum(1)
    n = counts.sum()
    m = int(np.argmax(counts)) if majority is None else int(majority)
    return {"accuracy": round(float(counts[m] / n), 4), "macro_f1": round(float(2 * counts[m] / (n + counts[m]) / len(counts)), 4)}


def baseline_guard(metrics: dict, baseline: dict, min_gain: float = 0.1) -> str | None:
    """Why a model is not clearly better than the majority-class baseline, or None when it is.

    metrics, baseline: ``accuracy`` and ``macro_f1`` of the model and of :func:`majority_baseline`
    on the same data. Clearly better = both close at least ``min_gain`` of the gap between the
    baseline and a perfect score (0.1: a 35% baseline needs 41.5% accuracy; a 90% one needs 91%).

    >>> baseline_guard({"accuracy": 0.35, "macro_f1": 0.09}, {"accuracy": 0.35, "macro_f1": 0.09})
    'accuracy 35.0% (majority class: 35.0%), macro F1 0.090 (majority class: 0.090)'
    >>> baseline_guard({"accuracy": 0.9, "macro_f1": 0.85}, {"accuracy": 0.35, "macro_f1": 0.09}) is None
    True
    """
    weak = [k for k in ("accuracy", "macro_f1")
            if metrics[k] < baseline[k] + min_gain * (1 - baseline[k]) or metrics[k] <= baseline[k]]
    if not weak:
        return None
    return (f"accuracy {metrics['accuracy']:.1%} (majority class: {baseline['accuracy']:.1%}), "
            f"macro F1 {metrics['macro_f1']:.3f} (majority class: {baseline['macro_f1']:.3f})")


def confident_examples(scores: pd.DataFrame, per_class: int = 5) -> pd.DataFrame:
    """The lowest-loss, most confident examples of each given label (to look for shortcuts)."""
    return (
        scores.sort_values("loss").groupby("given_label", sort=True).head(per_class)
        .sort_values(["given_label", "loss"]).reset_index(drop=True)
    )

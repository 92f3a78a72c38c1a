"""Label-quality signals: one pure function per signal, arrays in, arrays out.

Every signal takes ``labels`` (N,) integer given labels and probabilities that
did not see those labels (out-of-fold), or a per-epoch record of an ordinary
training run, and returns an (N,) array. Label-quality scores are in [0, 1],
**lower = more likely mislabelled**; ``suspicion`` is the reverse, higher = more
likely mislabelled. Inputs are checked once, in :func:`check_inputs`.
"""

from __future__ import annotations

import numpy as np

from cleanloop.errors import CleanloopError

QUALITY_METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
FILTER_BY = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
             "low_normalized_margin", "low_self_confidence")


def check_inputs(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``labels`` (N,) and ``pred_probs`` (N, C) and return them as arrays.

    Raises CleanloopError when shapes differ, a label is outside 0..C-1, a row
    does not sum to one, or a class never occurs among the labels.
    """
    labels = np.asarray(labels)
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.ndim != 2 or labels.ndim != 1 or len(labels) != len(probs):
        raise CleanloopError(
            f"expected labels of shape (N,) and pred_probs of shape (N, C), got {labels.shape} and {probs.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise CleanloopError(f"labels must be integers 0..C-1, got dtype {labels.dtype}")
    num_classes = probs.shape[1]
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise CleanloopError(
            f"row {bad[0]}: label {labels[bad[0]]} is outside 0..{num_classes - 1} (pred_probs has {num_classes} "
            "columns); fix: score with a model trained on the same label set"
        )
    neg = np.flatnonzero(((probs < 0) | (probs > 1)).any(1))
    if len(neg):
        raise CleanloopError(
            f"row {neg[0]}: pred_probs has values outside [0, 1]; fix: pass softmax probabilities, not logits"
        )
    sums = probs.sum(1)
    off = np.flatnonzero(np.abs(sums - 1) > 1e-3)
    if len(off):
        raise CleanloopError(
            f"row {off[0]}: pred_probs sum to {sums[off[0]]:.4f}, not 1; fix: pass softmax probabilities, not logits"
        )
    missing = np.setdiff1d(np.arange(num_classes), labels)
    if len(missing):
        raise CleanloopError(
            f"class {missing[0]} never occurs among the given labels; fix: drop it from label_names or add examples"
        )
    return labels, probs


def label_quality(labels: np.ndarray, pred_probs: np.ndarray, method: str = "self_confidence") -> np.ndarray:
    """cleanlab's label-quality score (N,) in [0, 1], lower = more likely mislabelled.

    method: ``self_confidence`` (p of the given label), ``normalized_margin``
    (p given - max p other, rescaled) or ``confidence_weighted_entropy``.
    """
    from cleanlab.rank import get_label_quality_scores

    if method not in QUALITY_METHODS:
        raise CleanloopError(f"unknown label-quality method {method!r}; fix: use one of {', '.join(QUALITY_METHODS)}")
    labels, probs = check_inputs(labels, pred_probs)
    return get_label_quality_scores(labels, probs, method=method)


def noise_matrix(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """The estimated label-noise matrix (C, C): ``T[i, j] = P(given = i | true = j)``, columns sum to one.

    From cleanlab's confident joint (``cleanlab.count.estimate_joint``) on the given labels and
    probabilities that judge them (out-of-fold or training dynamics).
    """
    from cleanlab.count import estimate_joint

    labels, probs = check_inputs(labels, pred_probs)
    joint = estimate_joint(labels, probs)  # (C, C): P(given = i, true = j)
    return joint / np.clip(joint.sum(0, keepdims=True), 1e-12, None)


def noise_structure(noise: np.ndarray, uniform_below: float = 0.25, structured_from: float = 0.5) -> float:
    """How far label errors follow a pattern, in [0, 1]: 0 = uniform noise, 1 = each class to one partner.

    noise: (C, C) noise matrix as from :func:`noise_matrix`. Per true class, the share of its
    off-diagonal mass that goes to its most frequent wrong label, rescaled so that an even spread
    over the C - 1 other classes is 0 and a single partner is 1; averaged with the classes' noise
    mass as weights. Estimated matrices of truly uniform noise measure 0.19-0.26 on the emotion
    benchmark (``bench/noise.py``, 5-20% noise, both paths) and class-conditional noise 0.40
    (frozen features) to 0.98 (fine-tuned); the result maps ``uniform_below`` to 0 and
    ``structured_from`` to 1, linearly between.

    >>> noise_structure(np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]]))
    1.0
    >>> noise_structure(np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]))
    0.0
    """
    t = np.asarray(noise, dtype=np.float64)
    c = len(t)
    off = t - np.diag(np.diag(t))
    mass = off.sum(0)
    if c < 3 or mass.sum() <= 0:  # two classes: every error goes to the one other class
        return 1.0 if mass.sum() > 0 else 0.0
    top = off.max(0) / np.clip(mass, 1e-12, None)
    concentration = float(np.average((top - 1 / (c - 1)) / (1 - 1 / (c - 1)), weights=mass))
    return float(np.clip((concentration - uniform_below) / (structured_from - uniform_below), 0.0, 1.0))


def shrink_to_uniform(noise: np.ndarray, strength: float) -> np.ndarray:
    """``strength * noise + (1 - strength) * U`` where U keeps each column's diagonal and spreads
    its off-diagonal mass evenly: trust the estimated error pattern only as far as it shows one."""
    t = np.asarray(noise, dtype=np.float64)
    c = len(t)
    diag = np.diag(t)
    uniform = np.tile((1 - diag) / max(c - 1, 1), (c, 1))
    np.fill_diagonal(uniform, diag)
    return strength * t + (1 - strength) * uniform


def noise_aware_quality(labels: np.ndarray, pred_probs: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    """Posterior that the given label is the true one, given the label noise (N,), lower = worse.

    noise: (C, C) ``T[i, j] = P(given = i | true = j)``; default :func:`noise_matrix`. With
    ``pred_probs`` as ``P(true | x)``, Bayes gives
    ``P(true = given | x, given) = T[g, g] p_g / sum_j T[g, j] p_j``.
    A "love" tweet the model calls "joy" scores low when joy is often labelled love
    in this data, but stays high when the model's other guess is a class that is
    never confused with love: the model is then more likely wrong than the label.
    Under uniform noise it orders examples like ``self_confidence``.
    """
    labels, probs = check_inputs(labels, pred_probs)
    t = (noise_matrix(labels, probs) if noise is None else np.asarray(noise, dtype=np.float64))[labels]
    idx = np.arange(len(labels))
    return t[idx, labels] * probs[idx, labels] / np.clip((t * probs).sum(1), 1e-12, None)


def loss(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy ``-log p[given label]`` (N,), higher = more likely mislabelled."""
    from cleanloop.model.score import per_sample_loss

    labels, probs = check_inputs(labels, pred_probs)
    return per_sample_loss(probs, labels)


def find_issues(labels: np.ndarray, pred_probs: np.ndarray, filter_by: str = "prune_by_noise_rate") -> np.ndarray:
    """cleanlab's confident-learning mask (N,) bool, True = label issue; ``filter_by`` as in cleanlab."""
    from cleanlab.filter import find_label_issues

    if filter_by not in FILTER_BY:
        raise CleanloopError(f"unknown filter_by {filter_by!r}; fix: use one of {', '.join(FILTER_BY)}")
    labels, probs = check_inputs(labels, pred_probs)
    return find_label_issues(labels, probs, filter_by=filter_by)


def dynamics_probs(epoch_probs: np.ndarray) -> np.ndarray:
    """Average the per-epoch probabilities of a training run: (E, N, C) -> (N, C).

    Each example's probabilities at every epoch end of one ordinary training run
    (training dynamics). Averaging over epochs keeps the early epochs, before the
    model starts to memorise wrong labels, in the estimate.
    """
    p = np.asarray(epoch_probs, dtype=np.float64)
    if p.ndim != 3:
        raise CleanloopError(f"expected per-epoch probabilities of shape (E, N, C), got {p.shape}")
    mean = p.mean(0)
    return mean / mean.sum(1, keepdims=True)


def area_under_margin(labels: np.ndarray, epoch_probs: np.ndarray) -> np.ndarray:
    """Mean over epochs of (p given - max p other) (N,) in [-1, 1], lower = more likely mislabelled."""
    p = np.asarray(epoch_probs, dtype=np.float64)
    idx = np.arange(p.shape[1])
    given = p[:, idx, labels]
    other = p.copy()
    other[:, idx, labels] = -np.inf
    return (given - other.max(2)).mean(0)


def suspicion(qualities: dict[str, np.ndarray], weights: dict[str, float] | None = None) -> np.ndarray:
    """Combine label-quality scores into one suspicion score (N,) in [0, 1], higher = more suspicious.

    qualities: name -> (N,) label-quality scores in [0, 1], lower = worse.
    weights: name -> weight (default equal). The score is ``1 - weighted mean``
    of the qualities, so it keeps their scale (0.9 means the models give the
    given label about 10% on average), not just their order.
    """
    if not qualities:
        raise CleanloopError("suspicion needs at least one label-quality signal")
    weights = weights or {k: 1.0 for k in qualities}
    missing = set(weights) - set(qualities)
    if missing:
        raise CleanloopError(f"weights name signals that were not computed: {sorted(missing)}")
    total = sum(weights.values())
    combined = sum(weights[k] * np.clip(np.asarray(qualities[k], dtype=np.float64), 0, 1) for k in weights) / total
    return 1.0 - combined

"""Label-quality signals: pure functions, arrays in, arrays out, and a registry of them by name.

Every signal takes ``labels`` (N,) integer given labels and probabilities that
did not see those labels (out-of-fold), or a per-epoch record of an ordinary
training run, and returns an (N,) array. Label-quality scores are in [0, 1],
**lower = more likely mislabelled**; ``suspicion`` is the reverse, higher = more
likely mislabelled.

The public functions check their inputs (:func:`check_inputs`). The registry
(:data:`SIGNALS`) holds each signal as a :class:`Signal`: its name, what it needs
(``probs``, ``dynamics``, ``embeddings``), its direction and whether it is a quality in
[0, 1] that :func:`suspicion` may mix. :func:`compute` checks the arrays once, as an
:class:`Evidence`, and runs a list of signals on it. A new signal is one decorated
function here::

    @signal("my_signal", needs=(PROBS,), higher_is_worse=True)
    def _my_signal(ev: Evidence) -> np.ndarray:
        return 1 - ev.probs.max(1)

>>> ev = Evidence.check(np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]))
>>> compute(ev, ["self_confidence", "loss"]).round(3).to_dict("list")
{'self_confidence': [0.9, 0.8, 0.3], 'loss': [0.105, 0.223, 1.204]}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from cleanloop.errors import CleanloopError
from cleanloop.loops import neighbours as nb

QUALITY_METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
# cleanlab's filters, and DISAGREEMENT: cleanlab's prune_by_noise_rate or a predicted label other than the given one
DISAGREEMENT = "noise_rate_or_disagreement"
FILTER_BY = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
             "low_normalized_margin", "low_self_confidence", DISAGREEMENT)
PROBS, DYNAMICS, EMBEDDINGS = "probs", "dynamics", "embeddings"  # what a signal needs
NEEDS = (PROBS, DYNAMICS, EMBEDDINGS)


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
    if method not in QUALITY_METHODS:
        raise CleanloopError(f"unknown label-quality method {method!r}; fix: use one of {', '.join(QUALITY_METHODS)}")
    return _label_quality(*check_inputs(labels, pred_probs), method)


def _label_quality(labels: np.ndarray, probs: np.ndarray, method: str) -> np.ndarray:
    from cleanlab.rank import get_label_quality_scores

    return get_label_quality_scores(labels, probs, method=method)


def noise_matrix(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """The estimated label-noise matrix (C, C): ``T[i, j] = P(given = i | true = j)``, columns sum to one.

    From cleanlab's confident joint (``cleanlab.count.estimate_joint``) on the given labels and
    probabilities that judge them (out-of-fold or training dynamics).
    """
    return _noise_matrix(*check_inputs(labels, pred_probs))


def _noise_matrix(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    from cleanlab.count import estimate_joint

    joint = estimate_joint(labels, probs)  # (C, C): P(given = i, true = j)
    return joint / np.clip(joint.sum(0, keepdims=True), 1e-12, None)


def noise_structure(noise: np.ndarray, uniform_below: float = 0.25, structured_from: float = 0.5) -> float:
    """How far label errors follow a pattern, in [0, 1]: 0 = uniform noise, 1 = each class to one partner.

    noise: (C, C) noise matrix as from :func:`noise_matrix`. Per true class, the share of its
    off-diagonal mass that goes to its most frequent wrong label, rescaled so that an even spread
    over the C - 1 other classes is 0 and a single partner is 1; averaged with the classes' noise
    mass as weights. The two thresholds sit between what the estimated matrices of uniform and of
    class-conditional noise measure on the emotion benchmark (``bench/noise.py``): the result maps
    ``uniform_below`` to 0 and ``structured_from`` to 1, linearly between.

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
    return _noise_aware_quality(labels, probs, _noise_matrix(labels, probs) if noise is None else noise)


def _noise_aware_quality(labels: np.ndarray, probs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    t = np.asarray(noise, dtype=np.float64)[labels]
    idx = np.arange(len(labels))
    return t[idx, labels] * probs[idx, labels] / np.clip((t * probs).sum(1), 1e-12, None)


def loss(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy ``-log p[given label]`` (N,), higher = more likely mislabelled."""
    from cleanloop.model.score import per_sample_loss

    labels, probs = check_inputs(labels, pred_probs)
    return per_sample_loss(probs, labels)


def find_issues(labels: np.ndarray, pred_probs: np.ndarray, filter_by: str = "prune_by_noise_rate") -> np.ndarray:
    """cleanlab's confident-learning mask (N,) bool, True = label issue; ``filter_by`` as in cleanlab, or
    :data:`DISAGREEMENT`: prune_by_noise_rate's mask or where the most probable label is not the given one."""
    if filter_by not in FILTER_BY:
        raise CleanloopError(f"unknown filter_by {filter_by!r}; fix: use one of {', '.join(FILTER_BY)}")
    return _find_issues(*check_inputs(labels, pred_probs), filter_by)


def _find_issues(labels: np.ndarray, probs: np.ndarray, filter_by: str) -> np.ndarray:
    from cleanlab.filter import find_label_issues

    if filter_by == DISAGREEMENT:
        return find_label_issues(labels, probs, filter_by="prune_by_noise_rate") | (probs.argmax(1) != labels)
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


# --- the registry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """What signals are computed from, checked once by :meth:`check`; signals trust it.

    labels: (N,) given labels 0..C-1. probs: (N, C) probabilities that judge them (out-of-fold,
    or the epoch average of training dynamics). epoch_probs: (E, N, C) each epoch end's
    probabilities of one training run, or None. embeddings: (N, D) sentence embeddings, or None.
    """

    labels: np.ndarray
    probs: np.ndarray
    epoch_probs: np.ndarray | None = None
    embeddings: np.ndarray | None = None

    @classmethod
    def check(cls, labels: np.ndarray, pred_probs: np.ndarray, *, epoch_probs: np.ndarray | None = None,
              embeddings: np.ndarray | None = None) -> "Evidence":
        """The arrays validated (:func:`check_inputs`, and the shapes of the optional ones)."""
        labels, probs = check_inputs(labels, pred_probs)
        if epoch_probs is not None:
            epoch_probs = np.asarray(epoch_probs, dtype=np.float64)
            if epoch_probs.ndim != 3 or epoch_probs.shape[1:] != probs.shape:
                raise CleanloopError(f"expected per-epoch probabilities of shape (E, {len(probs)}, {probs.shape[1]}), "
                                     f"got {epoch_probs.shape}; fix: pass the dynamics of a run on these labels")
        if embeddings is not None:
            embeddings = np.asarray(embeddings)
            if embeddings.ndim != 2 or len(embeddings) != len(labels):
                raise CleanloopError(f"expected embeddings of shape ({len(labels)}, D), got {embeddings.shape}")
        return cls(labels, probs, epoch_probs, embeddings)

    def has(self, need: str) -> bool:
        """Whether this evidence holds what ``need`` (one of :data:`NEEDS`) names."""
        return {PROBS: True, DYNAMICS: self.epoch_probs is not None, EMBEDDINGS: self.embeddings is not None}[need]

    @cached_property
    def noise(self) -> np.ndarray:
        """(C, C) :func:`noise_matrix` of these labels and probabilities (computed once)."""
        return _noise_matrix(self.labels, self.probs)

    @cached_property
    def structure(self) -> float:
        """:func:`noise_structure` of :attr:`noise`, in [0, 1]."""
        return noise_structure(self.noise)


@dataclass(frozen=True)
class Signal:
    """One named signal: ``function(evidence, **options) -> (N,)``.

    needs: what of :class:`Evidence` it reads (:data:`NEEDS`). higher_is_worse: its direction
    (True: higher = more likely mislabelled). quality: a label-quality score in [0, 1], lower =
    worse, that :func:`suspicion` may mix. options: the keyword options it takes from :func:`compute`.
    """

    name: str
    function: Callable[..., np.ndarray]
    needs: frozenset[str]
    higher_is_worse: bool = False
    quality: bool = False
    options: tuple[str, ...] = ()


SIGNALS: dict[str, Signal] = {}


def signal(name: str, *, needs: Sequence[str] = (PROBS,), higher_is_worse: bool = False, quality: bool = False,
           options: Sequence[str] = ()) -> Callable:
    """Register the decorated ``function(evidence, **options)`` in :data:`SIGNALS` under ``name``."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise CleanloopError(f"signal {name!r} needs {sorted(unknown)}; expected some of {', '.join(NEEDS)}")

    def register(function: Callable) -> Callable:
        SIGNALS[name] = Signal(name, function, frozenset(needs), higher_is_worse, quality, tuple(options))
        return function

    return register


def compute(evidence: Evidence, names: Sequence[str] | None = None, **options) -> pd.DataFrame:
    """A table (N rows) with one column per signal, in ``names`` order.

    names: signals of :data:`SIGNALS` (default: every registered one whose needs ``evidence``
    meets). options: the signals' keyword options (e.g. ``filter_by``).
    """
    if names is None:
        chosen = [s for s in SIGNALS.values() if all(evidence.has(n) for n in s.needs)]
    else:
        unknown = [n for n in names if n not in SIGNALS]
        if unknown:
            raise CleanloopError(f"unknown signal {unknown[0]!r}; fix: use one of {', '.join(SIGNALS)}")
        chosen = [SIGNALS[n] for n in names]
        for s in chosen:
            lacking = [n for n in sorted(s.needs) if not evidence.has(n)]
            if lacking:
                raise CleanloopError(f"signal {s.name!r} needs {', '.join(lacking)}, which this evidence lacks; "
                                     f"fix: pass them to Evidence.check or leave {s.name!r} out")
    return pd.DataFrame({s.name: s.function(evidence, **{k: options[k] for k in s.options if k in options})
                         for s in chosen})


for _method in QUALITY_METHODS:  # cleanlab's three label-quality scores
    signal(_method, quality=True)(lambda ev, _m=_method: _label_quality(ev.labels, ev.probs, _m))


@signal("noise_aware", quality=True)
def _noise_aware(ev: Evidence) -> np.ndarray:
    """:func:`noise_aware_quality` with the noise matrix shrunk toward uniform as far as it shows no pattern."""
    return _noise_aware_quality(ev.labels, ev.probs, shrink_to_uniform(ev.noise, ev.structure))


@signal("loss", higher_is_worse=True)
def _loss(ev: Evidence) -> np.ndarray:
    from cleanloop.model.score import per_sample_loss

    return per_sample_loss(ev.probs, ev.labels)


@signal("is_issue", higher_is_worse=True, options=("filter_by",))
def _is_issue(ev: Evidence, filter_by: str = "prune_by_noise_rate") -> np.ndarray:
    if filter_by not in FILTER_BY:
        raise CleanloopError(f"unknown filter_by {filter_by!r}; fix: use one of {', '.join(FILTER_BY)}")
    return _find_issues(ev.labels, ev.probs, filter_by)


@signal("model_neighbour_agreement", needs=(EMBEDDINGS,), quality=True, options=("k",))
def _model_neighbour_agreement(ev: Evidence, k: int = 10) -> np.ndarray:
    """Share of the ``k`` nearest neighbours in the judging model's own representation
    (``ev.embeddings``) that carry the given label, in [0, 1], lower = worse: the labels of texts the
    model sees as alike vote, in the spirit of SimiFeat. Kept apart from the frozen-encoder
    ``neighbour_agreement`` check: on frozen sentence embeddings the vote is weak (bench/noise.py)."""
    return nb.neighbour_agreement(ev.labels, nb.nearest_neighbours(ev.embeddings, k))


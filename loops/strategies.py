"""Query strategies: which pool examples an annotator should label next.

One small abstract base, :class:`QueryStrategy`, with one method::

    strategy.query(pool, n, rng) -> indices   # (n,) unique row indices into the pool

A :class:`Pool` holds what a strategy may look at, all plain arrays in the same row order:
the model's probabilities ``probs`` (N, C), which rows are ``labelled`` (N,) bool, optionally
the ``embeddings`` (N, D) and the annotators' votes ``annotations`` (N, A) (label index or NaN).
No model and no I/O inside: the loop trains, scores the pool and hands the arrays over.
Randomness comes only from the ``numpy.random.Generator`` passed in (ties are broken with it).

An uncertainty strategy is a :class:`ScoreStrategy` with a ``score(probs) -> (N,)`` (higher =
more worth labelling); the base picks the top ``n`` unlabelled rows. Adding one is ~ten lines in
this file: a subclass with a ``name`` is registered in :data:`STRATEGIES` when it is defined (the
CLI's ``--strategy`` choices, the loops and the contract test in ``tests/test_strategies.py`` read
it), and says what the loops must compute for it: ``needs_embeddings``, ``relabels``.

>>> probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.55, 0.45]])
>>> pool = Pool(probs, labelled=np.array([False, True, False, False]))
>>> LeastConfidence().query(pool, 2, np.random.default_rng(0)).tolist()
[3, 2]
>>> sorted(STRATEGIES)
['activelab', 'badge', 'coverage', 'diversity', 'entropy', 'least_confidence', 'margin', 'random']
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from cleanloop.errors import CleanloopError

__all__ = ["STRATEGIES", "ActiveLab", "Badge", "Coverage", "DiverseBatch", "Entropy", "LeastConfidence", "Margin", "Pool",
           "QueryStrategy", "RandomSampling", "ScoreStrategy", "make_strategy"]


@dataclass(frozen=True)
class Pool:
    """What a strategy sees, rows in the same order.

    probs: (N, C) model probabilities, rows summing to one. labelled: (N,) bool, True where the
    example has a label. embeddings: (N, D) or None. annotations: (N, A) float, annotator a's
    label index for example i or NaN (only :class:`ActiveLab` uses it), or None.
    """

    probs: np.ndarray
    labelled: np.ndarray
    embeddings: np.ndarray | None = None
    annotations: np.ndarray | None = None

    @property
    def unlabelled_idx(self) -> np.ndarray:
        return np.flatnonzero(~self.labelled)


def _validate(pool: Pool, n: int) -> None:
    probs, labelled = pool.probs, pool.labelled
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise CleanloopError(f"probs must be (N, C) with C >= 2, got shape {probs.shape}")
    if labelled.shape != (len(probs),) or labelled.dtype != bool:
        raise CleanloopError(f"labelled must be a bool array of shape ({len(probs)},), got {labelled.dtype} "
                             f"{labelled.shape}")
    for name in ("embeddings", "annotations"):
        arr = getattr(pool, name)
        if arr is not None and (arr.ndim != 2 or len(arr) != len(probs)):
            raise CleanloopError(f"{name} must be ({len(probs)}, k), got shape {arr.shape}")
    if n < 1:
        raise CleanloopError(f"n must be at least 1, got {n}")


STRATEGIES: dict[str, type["QueryStrategy"]] = {}


class QueryStrategy(ABC):
    """Pick ``n`` pool rows to label next. Subclasses implement :meth:`_select`.

    ``name``: a subclass with one is registered in :data:`STRATEGIES` (an abstract helper base
    leaves it empty). ``relabels``: True when the strategy may pick already labelled rows (for
    another annotator's label; it reads ``pool.annotations``); False means unlabelled rows only.
    ``needs_embeddings``: it reads ``pool.embeddings``, so the loop must compute them.
    """

    name: str = ""
    relabels: bool = False
    needs_embeddings: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            if cls.name in STRATEGIES:
                raise CleanloopError(f"two query strategies named {cls.name!r}: {STRATEGIES[cls.name].__name__} "
                                     f"and {cls.__name__}; fix: rename one")
            STRATEGIES[cls.name] = cls

    def query(self, pool: Pool, n: int, rng: np.random.Generator) -> np.ndarray:
        """(min(n, available),) unique int indices into the pool, most wanted first.

        Raises CleanloopError on inconsistent shapes or ``n < 1``.
        """
        _validate(pool, n)
        if self.needs_embeddings and pool.embeddings is None:
            raise CleanloopError(f"the {self.name} strategy needs pool embeddings; fix: pass Pool(..., embeddings=...)")
        available = len(pool.probs) if self.relabels else int((~pool.labelled).sum())
        idx = self._select(pool, min(n, available), rng)
        return np.asarray(idx, dtype=np.int64)

    @abstractmethod
    def _select(self, pool: Pool, n: int, rng: np.random.Generator) -> np.ndarray:
        """Trusts its inputs; ``n`` <= the rows it may pick."""


def _top(scores: np.ndarray, candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """The ``n`` candidates with the highest score; ties broken at random by ``rng``."""
    shuffled = rng.permutation(candidates)
    order = np.argsort(-scores[shuffled], kind="stable")
    return shuffled[order[:n]]


class RandomSampling(QueryStrategy):
    """The baseline: ``n`` unlabelled rows uniformly at random."""

    name = "random"

    def _select(self, pool, n, rng):
        return rng.choice(pool.unlabelled_idx, size=n, replace=False)


class ScoreStrategy(QueryStrategy):
    """Uncertainty sampling: the ``n`` unlabelled rows with the highest :meth:`score`."""

    @staticmethod
    @abstractmethod
    def score(probs: np.ndarray) -> np.ndarray:
        """(N,) uncertainty of each row of ``probs`` (N, C); higher = more worth labelling."""

    def _select(self, pool, n, rng):
        return _top(self.score(pool.probs), pool.unlabelled_idx, n, rng)


class LeastConfidence(ScoreStrategy):
    """1 - the top probability: the flattest rows first."""

    name = "least_confidence"

    @staticmethod
    def score(probs):
        return 1.0 - probs.max(axis=1)


class Margin(ScoreStrategy):
    """Minus the gap between the two most likely classes: the closest calls first."""

    name = "margin"

    @staticmethod
    def score(probs):
        top2 = np.sort(probs, axis=1)[:, -2:]
        return -(top2[:, 1] - top2[:, 0])


class Entropy(ScoreStrategy):
    """Shannon entropy of the predicted distribution (nats)."""

    name = "entropy"

    @staticmethod
    def score(probs):
        p = np.clip(probs, 1e-12, 1.0)
        return -(p * np.log(p)).sum(axis=1)


class DiverseBatch(QueryStrategy):
    """Uncertain *and* spread out: k-means over the most uncertain candidates, one pick per cluster.

    Takes the ``candidates * n`` unlabelled rows with the highest ``uncertainty`` score, clusters
    their embeddings into ``n`` groups and picks each group's most uncertain row, so a batch does
    not spend its labels on near-duplicates. Needs ``pool.embeddings``.
    """

    name = "diversity"
    needs_embeddings = True

    def __init__(self, uncertainty: ScoreStrategy | None = None, candidates: int = 10):
        if candidates < 1:
            raise CleanloopError(f"candidates must be at least 1, got {candidates}")
        self.uncertainty = uncertainty or Margin()
        self.candidates = candidates

    def _select(self, pool, n, rng):
        from sklearn.cluster import KMeans

        scores = self.uncertainty.score(pool.probs)
        cand = _top(scores, pool.unlabelled_idx, self.candidates * n, rng)
        if len(cand) <= n:
            return cand
        emb = pool.embeddings[cand].astype(np.float64)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        seed = int(rng.integers(2**31 - 1))
        clusters = KMeans(n_clusters=n, n_init=1, random_state=seed).fit_predict(emb)
        picks = []
        for c in range(n):
            members = cand[clusters == c]  # cand is sorted most uncertain first
            if len(members):
                picks.append(members[0])
        if len(picks) < n:  # k-means left a cluster empty: fill with the next most uncertain
            rest = [i for i in cand if i not in set(picks)]
            picks += rest[: n - len(picks)]
        picks = np.asarray(picks)
        return picks[np.argsort(-scores[picks], kind="stable")]


class ActiveLab(QueryStrategy):
    """cleanlab's ActiveLab: label a new example, or re-label a labelled one, whichever helps more.

    Scores every row with ``cleanlab.multiannotator.get_active_learning_scores`` (labelled rows
    from ``pool.annotations`` and ``probs``, unlabelled rows from ``probs``) and picks the lowest
    scores, labelled or not: a labelled example whose annotators disagree can be worth more than a
    confident new one. Rows without any annotation count as unlabelled.
    """

    name = "activelab"
    relabels = True

    def _select(self, pool, n, rng):
        from cleanlab.multiannotator import get_active_learning_scores

        labelled = pool.labelled
        if pool.annotations is not None:
            labelled = labelled & ~np.isnan(pool.annotations).all(axis=1)
        elif labelled.any():
            raise CleanloopError("ActiveLab needs pool.annotations (N, annotators) for the labelled rows")
        lab, unl = np.flatnonzero(labelled), np.flatnonzero(~labelled)
        scores = np.full(len(pool.probs), np.inf)
        probs = pool.probs.astype(np.float64)
        if len(lab):
            ann = pool.annotations[lab]
            ann = ann[:, ~np.isnan(ann).all(axis=0)]  # annotators with no vote here
            s_lab, s_unl = get_active_learning_scores(ann, probs[lab], probs[unl] if len(unl) else None)
            scores[lab] = s_lab
            if len(unl):
                scores[unl] = s_unl
        else:
            _, scores[unl] = get_active_learning_scores(pred_probs_unlabeled=probs[unl])
        return _top(-scores, np.arange(len(scores)), n, rng)


def _unit(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


class Coverage(QueryStrategy):
    """Cold start, no model needed: k-means of the unlabelled embeddings into ``n`` clusters, and
    each cluster's most typical row (nearest its centre), biggest clusters first. The first
    batch then covers the pool's main kinds of text instead of its densest corner."""

    name = "coverage"
    needs_embeddings = True

    def _select(self, pool, n, rng):
        from sklearn.cluster import KMeans

        cand = pool.unlabelled_idx
        emb = _unit(pool.embeddings[cand])
        km = KMeans(n_clusters=n, n_init=1, random_state=int(rng.integers(2**31 - 1))).fit(emb)
        dist = np.linalg.norm(emb - km.cluster_centers_[km.labels_], axis=1)
        sizes = np.bincount(km.labels_, minlength=n)
        picks = [cand[np.flatnonzero(km.labels_ == c)[np.argmin(dist[km.labels_ == c])]]
                 for c in np.argsort(-sizes, kind="stable") if sizes[c]]
        chosen = set(picks)  # an empty cluster: fill with the next most typical rows
        return np.asarray((picks + [i for i in cand[np.argsort(dist, kind="stable")] if i not in chosen])[:n])


class Badge(QueryStrategy):
    """BADGE (Ash et al., ICLR 2020) on the sentence embeddings: each row's gradient embedding
    ``(p - onehot(argmax p)) x emb`` (the last layer's loss gradient, were its guess the label),
    then k-means++ seeding over them: big gradients (uncertain) that point different ways (diverse)."""

    name = "badge"
    needs_embeddings = True

    def _select(self, pool, n, rng):
        cand = pool.unlabelled_idx
        p = pool.probs[cand].astype(np.float32)
        g = p - np.eye(p.shape[1], dtype=np.float32)[p.argmax(1)]
        grad = (g[:, :, None] * _unit(pool.embeddings[cand])[:, None, :]).reshape(len(cand), -1)
        sq = (grad**2).sum(1)
        picks = [int(np.argmax(sq))]
        d2 = np.maximum(sq + sq[picks[0]] - 2 * grad @ grad[picks[0]], 0)
        while len(picks) < n:  # k-means++: the next centre with probability ~ squared distance
            d2[picks] = 0.0
            left = np.setdiff1d(np.arange(len(cand)), picks)
            nxt = int(rng.choice(len(cand), p=d2 / d2.sum())) if d2.sum() > 0 else int(rng.choice(left))
            picks.append(nxt)
            d2 = np.minimum(d2, np.maximum(sq + sq[nxt] - 2 * grad @ grad[nxt], 0))
        return cand[picks]


def make_strategy(name: str) -> QueryStrategy:
    """A strategy by its name (one of :data:`STRATEGIES`)."""
    if name not in STRATEGIES:
        raise CleanloopError(f"unknown query strategy {name!r}; fix: use one of {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]()

"""Checks that need no trained classifier, only the texts and their embeddings: duplicates,
near-duplicates, outliers and how far an example's neighbours share its label.

Pure functions, arrays in, arrays out (as in :mod:`cleanloop.loops.signals`). The reference is
cleanlab's ``Datalab``: its near-duplicate check calls two examples near-duplicates when their
distance is below ``threshold`` (default 0.13) times the median nearest-neighbour distance, and its
outlier check scores each example by its mean distance to its k nearest neighbours. Embeddings
are compared by cosine similarity; :func:`nearest_neighbours` runs once and its result feeds the
other checks.

>>> groups = exact_duplicate_groups(["I am  Happy", "i am happy", "so sad"])
>>> groups.tolist()
[0, 0, -1]
>>> conflicting_groups(groups, np.array([1, 2, 0])).tolist()
[True, True, False]
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from cleanloop.errors import CleanloopError

_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Lower case, whitespace runs collapsed to one space, stripped: what exact duplicates share."""
    return _SPACE.sub(" ", str(text)).strip().lower()


def exact_duplicate_groups(texts: Sequence[str]) -> np.ndarray:
    """Group id (N,) of each text among texts equal after :func:`normalise_text`; -1 for a unique text.

    Group ids are 0, 1, ... in order of first occurrence.
    """
    first: dict[str, int] = {}
    keys = [normalise_text(t) for t in texts]
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    out = np.full(len(keys), -1, dtype=np.int64)
    for i, k in enumerate(keys):
        if counts[k] > 1:
            out[i] = first.setdefault(k, len(first))
    return out


def nearest_neighbours(embeddings: np.ndarray, k: int = 10, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other examples of each example by cosine similarity.

    embeddings: (N, D). Returns (indices (N, k), similarities (N, k)), most similar first; an
    example is never its own neighbour. Blocks of ``block`` rows keep memory at block x N floats.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) < 2:
        raise CleanloopError(f"expected embeddings of shape (N, D) with N >= 2, got {emb.shape}")
    k = min(k, len(emb) - 1)
    emb = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
    idx = np.empty((len(emb), k), dtype=np.int64)
    sim = np.empty((len(emb), k), dtype=np.float32)
    for start in range(0, len(emb), block):
        s = emb[start:start + block] @ emb.T
        rows = np.arange(len(s))
        s[rows, start + rows] = -np.inf  # not its own neighbour
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(s, part, 1)
        order = np.argsort(-top, axis=1, kind="stable")
        idx[start:start + block] = np.take_along_axis(part, order, 1)
        sim[start:start + block] = np.take_along_axis(top, order, 1)
    return idx, sim


def near_duplicate_groups(neighbours: tuple[np.ndarray, np.ndarray], threshold: float = 0.13) -> np.ndarray:
    """Group id (N,) of each example among near-duplicates; -1 for an example with none.

    neighbours: :func:`nearest_neighbours`' (indices, similarities). As cleanlab's Datalab, two
    examples are near-duplicates when their cosine distance is below ``threshold`` x the median
    nearest-neighbour distance; groups are the connected components of that relation.
    """
    idx, sim = neighbours
    dist = 1.0 - sim.astype(np.float64)
    radius = threshold * float(np.median(dist[:, 0]))
    rows, cols = np.nonzero(dist <= max(radius, 1e-6))
    return connected_groups(len(idx), zip(rows, idx[rows, cols]))


def connected_groups(n: int, pairs) -> np.ndarray:
    """Group id (n,) of each of n items under the links ``pairs`` (i, j); -1 for an item with no link.

    Groups are the connected components with more than one member, numbered 0, 1, ... by their
    smallest member.

    >>> connected_groups(5, [(0, 3), (3, 4)]).tolist()
    [0, -1, -1, 0, 0]
    """
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = np.array([root(i) for i in range(n)], dtype=np.int64)
    out = np.full(n, -1, dtype=np.int64)
    member = np.bincount(roots, minlength=n)[roots] > 1
    _, out[member] = np.unique(roots[member], return_inverse=True)
    return out


def conflicting_groups(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) bool: the example is in a group (id >= 0) whose members carry more than one label."""
    groups, labels = np.asarray(groups), np.asarray(labels)
    out = np.zeros(len(groups), dtype=bool)
    member = groups >= 0
    if not member.any():
        return out
    g = groups[member]
    lo = np.full(g.max() + 1, np.iinfo(np.int64).max)
    hi = np.full(g.max() + 1, np.iinfo(np.int64).min)
    np.minimum.at(lo, g, labels[member])
    np.maximum.at(hi, g, labels[member])
    out[member] = lo[g] != hi[g]
    return out


def outlier_scores(neighbours: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Mean cosine distance to the k nearest neighbours (N,), higher = less like any other text."""
    return 1.0 - neighbours[1].astype(np.float64).mean(1)


def outliers(scores: np.ndarray, fence: float = 3.0) -> np.ndarray:
    """(N,) bool: far out on :func:`outlier_scores`, above Q3 + ``fence`` x IQR (Tukey's far-out fence).

    A fixed fence, not a share: data with no odd texts gets no outliers.
    """
    q1, q3 = np.percentile(scores, [25, 75])
    return np.asarray(scores) > q3 + fence * (q3 - q1)


def neighbour_agreement(labels: np.ndarray, neighbours: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Share of the k nearest neighbours that carry the example's given label (N,) in [0, 1],
    lower = more likely mislabelled (in the spirit of SimiFeat: labels of similar texts vote).

    labels: (N,) given labels; neighbours: :func:`nearest_neighbours`' result on the same rows.
    """
    labels = np.asarray(labels)
    idx = neighbours[0]
    if len(idx) != len(labels):
        raise CleanloopError(f"{len(labels)} labels but neighbours of {len(idx)} examples")
    return (labels[idx] == labels[:, None]).mean(1)

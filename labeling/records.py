"""cleanloop's own review records, shared by flagging, active learning, the journal and the Argilla adapter.

:class:`ReviewItem` is one row of a review queue (``review_queue.parquet`` of ``cleanloop flag``,
``batch.parquet`` of active learning): what goes to an annotator and why. The parquet file stays
the storage; :func:`queue_frame` and :func:`queue_items` are the one place that converts
between items and a table. :class:`Response` is one annotator's answer, as pulled from Argilla and
as journalled (the journal calls it a vote).

>>> item = ReviewItem("train-00042", "i feel sad", "joy", "sadness", 0.91, 0.05, 3.2, flagged_by=("cleanlab",))
>>> queue_items(queue_frame([item])) == [ReviewItem(**{**item.__dict__, "queue_rank": 1})]
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from cleanloop.errors import CleanloopError

__all__ = ["QUEUE_COLUMNS", "Response", "ReviewItem", "Suggestion", "queue_frame", "queue_items", "unlabelled_items"]


@dataclass(frozen=True)
class Suggestion:
    """The model's label for a record, its probability and who made it (model name and version)."""

    label: str
    score: float
    agent: str


@dataclass(frozen=True)
class Response:
    """One annotator's answer on one example: ``label`` None when the record was discarded (no label fits).

    status: "submitted" or "discarded"; in the journal also "withdrawn" (the answer is gone). The
    other fields say what the answer was given on, when it comes from the review tool: the given
    label, the model's suggestion, the review round, the fingerprint of the example the record
    was pushed for (None: pushed before fingerprints) and the ids of the other copies of the text
    (the answer settles them too).
    """

    example_id: str
    annotator: str
    label: str | None
    status: str = "submitted"
    given_label: str | None = None
    suggestion: Suggestion | None = None
    round: int | None = None
    fingerprint: str | None = None
    copies: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReviewItem:
    """One example in a review queue, most wanted first by ``queue_rank`` (1, 2, ...).

    given_label: None for an unlabelled example (active learning). suggested_label /
    suggested_score: the model's top label and its probability. label_quality (lower = more
    doubtful) and loss (higher = more doubtful): NaN when not scored. flagged_by: why it is in the
    queue (``cleanlab``, ``duplicate``, ``near_duplicate``, ``outlier`` or a query strategy's
    name). copy_*: the other copies of its text with other labels, reviewed with it.
    """

    id: str
    text: str
    given_label: str | None
    suggested_label: str
    suggested_score: float
    label_quality: float = float("nan")
    loss: float = float("nan")
    flagged_by: tuple[str, ...] = ()
    copy_ids: tuple[str, ...] = ()
    copy_labels: tuple[str, ...] = ()
    copy_texts: tuple[str, ...] = ()
    queue_rank: int = 0


QUEUE_COLUMNS = tuple(f.name for f in fields(ReviewItem))
_REQUIRED = ("id", "text", "suggested_label", "suggested_score")


def queue_frame(items: Sequence[ReviewItem], extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table of ``items`` in their order: :data:`QUEUE_COLUMNS` (``flagged_by`` comma-joined,
    ``copy_*`` as lists, ``queue_rank`` 1, 2, ... where an item has none), then ``extra``'s other
    columns (the same rows in the same order: the signals behind each item)."""
    frame = pd.DataFrame({
        "id": [i.id for i in items], "text": [i.text for i in items],
        "given_label": pd.Series([i.given_label for i in items], dtype=object),
        "suggested_label": [i.suggested_label for i in items],
        "suggested_score": np.array([i.suggested_score for i in items], dtype=np.float64),
        "label_quality": np.array([i.label_quality for i in items], dtype=np.float64),
        "loss": np.array([i.loss for i in items], dtype=np.float64),
        "flagged_by": [",".join(i.flagged_by) for i in items],
        **{c: pd.Series([list(getattr(i, c)) for i in items], dtype=object) for c in ("copy_ids", "copy_labels", "copy_texts")},
        "queue_rank": np.array([i.queue_rank or n + 1 for n, i in enumerate(items)], dtype=np.int64),
    })
    if extra is not None:
        if len(extra) != len(frame):
            raise CleanloopError(f"{len(extra)} rows of signals for a queue of {len(frame)} items")
        rest = extra.reset_index(drop=True)
        for col in rest.columns:
            if col not in frame:
                frame[col] = rest[col].to_numpy()
    return frame


def read_queue(path: str | Path) -> pd.DataFrame:
    """The queue table a flag or query step wrote (``review_queue.parquet``, ``batch.parquet``), checked
    to have the columns :func:`queue_items` needs."""
    path = Path(path)
    if not path.is_file():
        raise CleanloopError(f"no review queue at {path}; fix: run 'cleanloop flag' first or pass --queue")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise CleanloopError(f"cannot read the review queue {path} as parquet ({str(exc).splitlines()[0][:160]}); "
                             "fix: make it again with 'cleanloop flag'") from None
    _check_columns(frame, str(path))
    return frame


def _check_columns(frame: pd.DataFrame, where: str) -> None:
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise CleanloopError(f"{where}: column {missing[0]!r} is missing (columns: {', '.join(map(str, frame.columns))}); "
                             "fix: make it with 'cleanloop flag'")


def queue_items(frame: pd.DataFrame, where: str = "the review queue") -> list[ReviewItem]:
    """The :class:`ReviewItem` s of a queue table (as :func:`queue_frame` writes it; columns it lacks
    other than id, text, suggested_label and suggested_score take their defaults)."""
    _check_columns(frame, where)
    has = set(frame.columns)

    def col(name: str, default):
        return frame[name].tolist() if name in has else [default] * len(frame)

    copies = [col(c, ()) for c in ("copy_ids", "copy_labels", "copy_texts")]
    return [
        ReviewItem(str(i), str(t), g if isinstance(g, str) else None, str(s), float(p), _float(q), _float(loss),
                   tuple(r for r in str(f or "").split(",") if r), *(tuple(map(str, c[n])) for c in copies),
                   int(rank) if rank is not None and rank == rank else n + 1)
        for n, (i, t, g, s, p, q, loss, f, rank) in enumerate(zip(
            col("id", ""), col("text", ""), col("given_label", None), col("suggested_label", ""),
            col("suggested_score", np.nan), col("label_quality", np.nan), col("loss", np.nan), col("flagged_by", ""),
            col("queue_rank", None)))
    ]


def _float(value) -> float:
    return float("nan") if value is None else float(value)


def unlabelled_items(ids: Sequence[str], texts: Sequence[str], probs: np.ndarray,
                     label_names: Sequence[str]) -> list[ReviewItem]:
    """Items for examples to label (active learning): no given label, the model's top label as the
    suggestion. probs: (N, C) the model's probabilities for these N examples, in ``label_names`` order."""
    probs = np.asarray(probs, dtype=np.float64)
    top = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    return [ReviewItem(str(i), str(t), None, label_names[k], float(probs[n, k]))
            for n, (i, t, k) in enumerate(zip(ids, texts, top))]

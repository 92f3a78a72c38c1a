"""Responsive active learning on a user's own unlabelled text: start from zero labels, never make the annotator wait.

The pool is any text file or data set (only a text column needed, optional ids, optional labels
that become seeds) and the label names come from the config. Everything the loop needs from the
encoder is computed once: the pool's sentence embeddings (packaged MiniLM, cached on disk) and one
*anchor* embedding per label (its name, or the config's ``label_descriptions``).

A session, :func:`run_session`:

1. cold start: with no labels, the first batch is chosen for coverage (:class:`~cleanloop.loops.strategies.Coverage`:
   the most typical text of each k-means cluster), each record suggested zero-shot (:func:`zero_shot_probs`:
   cosine similarity to the label anchors) and pushed to Argilla (``<argilla_dataset>-label``) with
   the suggestion pre-selected and its score;
2. as answers arrive (polled from Argilla into the journal, the same path as the review loop) the
   light head (:class:`LightHead`, logistic regression on the cached embeddings: under a second)
   is refitted on all of them just before it picks the next batch;
3. once only ``prefetch`` records of the pending batches are left unanswered, the next batch is picked
   with the freshest head and queued in Argilla: the annotator finds it there when they finish.

Each batch records how many labels its model had seen (``model_labels``) against the labels answered
when it was queued (``labels_at_push``), and the seconds between the annotator's last answer of the
batch before it and its push (0 when it was queued in time). Everything is in the workdir's
active-learning workdir (:meth:`Workdir.active <cleanloop.workdir.Workdir.active>`, ``WORKDIR/active``):
the batches in its ``loop/session.json``, the answers in its journal; the session ends by writing a
data version there that ``cleanloop export --workdir WORKDIR/active`` publishes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cleanloop.config import ActiveOptions, Config
from cleanloop.errors import CleanloopError
from cleanloop.labeling.records import queue_frame, unlabelled_items
from cleanloop.loops.strategies import Coverage, Pool, make_strategy
from cleanloop.workdir import Workdir

log = logging.getLogger("cleanloop.active")


# --- the pool --------------------------------------------------------------------------------------------


@dataclass
class PoolData:
    """The pool as plain lists: ids, texts, labels (N,) int with -1 = unlabelled, and the label names."""

    ids: list[str]
    texts: list[str]
    labels: np.ndarray
    names: list[str]

    def dataset(self):
        """A one-split ``DatasetDict`` (train; label -1 = unlabelled) for the journal and the data versions."""
        import datasets

        feats = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                   "label": datasets.ClassLabel(names=self.names)})
        train = datasets.Dataset.from_dict({"id": self.ids, "text": self.texts, "label": self.labels.tolist()},
                                           features=feats)
        return datasets.DatasetDict({"train": train})


def load_pool(cfg: Config, source: str | None = None) -> PoolData:
    """The unlabelled pool ``source`` (default ``cfg.dataset``; its train split): a data file
    (:mod:`cleanloop.model.readers`), a folder or a Hub id with a text column, optional ids (``id_column``) and optional labels
    (``label_column``; empty cells = unlabelled, the rest are seed labels).

    The label names come from ``cfg.label_names``, else from the labels the pool has. Raises a
    one-line CleanloopError for a missing text column, an empty text, an unknown label or no label names.
    """
    from cleanloop.model.data import RawSplit, _label_index, read_source, resolve_label_names, validate_split
    from cleanloop.model.readers import is_missing

    src = source or cfg.dataset
    raw = read_source(cfg.replace(dataset=src))
    if "train" not in raw:
        raise CleanloopError(f"{src}: no 'train' split (found {', '.join(raw)}); fix: name the pool's split train")
    rs = raw["train"]
    if cfg.label_column in rs.frame.columns:  # an empty cell is an unlabelled row, not a label named ""
        col = rs.frame[cfg.label_column]
        rs = RawSplit(rs.frame.assign(**{cfg.label_column: col.where(col != "", None)}), rs.where, rs.label_names)
    names = resolve_label_names({"train": rs}, cfg)
    if len(names) < 2:
        raise CleanloopError(
            f"{rs.where}: {len(names)} label name(s) given and found in the data ({', '.join(names) or 'none'}); "
            "fix: pass --label-names a,b,c or set label_names = [...] in the config")
    if cfg.label_descriptions and len(cfg.label_descriptions) != len(names):
        raise CleanloopError(f"label_descriptions has {len(cfg.label_descriptions)} entries for {len(names)} labels "
                             f"({', '.join(names)}); fix: give one description per label, in label_names order")
    frame = validate_split(rs, "pool", cfg, names, require_labels=False)
    labels = np.full(len(frame), -1, dtype=np.int64)
    if cfg.label_column in rs.frame.columns:
        index = {n: i for i, n in enumerate(names)}
        for row, v in enumerate(rs.frame[cfg.label_column].tolist()):
            if is_missing(v):
                continue
            i = _label_index(v, names, index)
            if i is None:
                raise CleanloopError(
                    f"{rs.where}: row {row}, column '{cfg.label_column}': label {v!r} is not one of {', '.join(names)}; "
                    "fix: correct the row, leave it empty (unlabelled) or add the name to label_names")
            labels[row] = i
    return PoolData(frame["id"].tolist(), frame["text"].tolist(), labels, names)


def embed(cfg: Config, ids: Sequence[str], texts: Sequence[str], workdir: Workdir | None = None) -> np.ndarray:
    """(N, D) unit-length sentence embeddings (mean pooling of ``cfg.base_model``), cached on disk by content
    (in the cache of ``workdir``, default ``Workdir.of(cfg)``)."""
    from cleanloop.model.train import extract_features

    import datasets

    feats = extract_features(cfg.replace(pooling="mean"), datasets.Dataset.from_dict({"id": list(ids), "text": list(texts)}),
                             workdir)
    return unit(feats)


def anchor_texts(cfg: Config, names: Sequence[str]) -> list[str]:
    """Each label's description (``cfg.label_descriptions``) or else its name.

    >>> anchor_texts(Config(), ["no_emotion", "joy"])
    ['no emotion', 'joy']
    """
    return list(cfg.label_descriptions) or [n.replace("_", " ") for n in names]


def label_anchors(cfg: Config, names: Sequence[str]) -> np.ndarray:
    """(C, D) embeddings of each label's :func:`anchor_texts`."""
    texts = anchor_texts(cfg, names)
    return embed(cfg, [f"label-{i}" for i in range(len(texts))], texts)


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def zero_shot_probs(embeddings: np.ndarray, anchors: np.ndarray, temperature: float = 0.05) -> np.ndarray:
    """(N, C) softmax over the cosine similarities of each text (N, D) to each label anchor (C, D).

    Both inputs unit-length. ``temperature``: lower = sharper; the argmax does not depend on it.

    >>> e = np.array([[1.0, 0.0], [0.6, 0.8]]); a = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> zero_shot_probs(e, a).argmax(1).tolist()
    [0, 1]
    """
    logits = embeddings @ anchors.T / temperature
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


class LightHead:
    """Logistic regression on the cached embeddings, refitted in well under a second.

    The label anchors join the training data as one example per label (weight ``anchor_weight``;
    for a class no annotator has labelled yet, at least the weight of an average class): a prior
    that the labels overrule as they come, and a class nobody labelled yet can still be predicted.
    With zero labels the head is the zero-shot model (:func:`zero_shot_probs`). The default weight
    was chosen on the emotion pool with ``bench/active.py`` (figures in the README).
    """

    def __init__(self, anchors: np.ndarray, *, C: float = 1.0, temperature: float = 0.05, anchor_weight: float = 50.0,
                 seed: int = 0, encoder: "Encoder | None" = None):
        self.anchors, self.C, self.temperature, self.anchor_weight, self.seed = anchors, C, temperature, anchor_weight, seed
        self.encoder = encoder  # in a session: the embeddings it sits on (frozen, or a background fine-tune's)
        self.clf = None
        self.labels_seen = 0

    def fit(self, embeddings: np.ndarray, labels: np.ndarray) -> "LightHead":
        """Train on (N, D) embeddings with (N,) label indices (N may be 0)."""
        from sklearn.linear_model import LogisticRegression

        self.labels_seen = len(labels)
        if len(labels) == 0:
            self.clf = None
            return self
        k = len(self.anchors)
        x = np.vstack([embeddings, self.anchors])
        y = np.concatenate([labels, np.arange(k)])
        counts = np.bincount(labels, minlength=k)
        unseen = max(self.anchor_weight, len(labels) / k)  # a class nobody labelled yet weighs as an average one
        w = np.concatenate([np.ones(len(labels)), np.where(counts == 0, unseen, self.anchor_weight)])
        self.clf = LogisticRegression(C=self.C, max_iter=500, random_state=self.seed).fit(x, y, sample_weight=w)
        return self

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, C) probabilities, columns in label order."""
        if self.clf is None:
            return zero_shot_probs(embeddings, self.anchors, self.temperature)
        return self.clf.predict_proba(embeddings)


# --- the background fine-tune ----------------------------------------------------------------------------


@dataclass
class Encoder:
    """What the light head sits on: one encoder's (N, D) unit-length embeddings of the pool and (C, D) label anchors.

    name: ``frozen`` (the packaged encoder as it is) or ``finetuned@<labels>`` (a background fine-tune of it on
    that many labels); trained_on: the ids of the labels it was fine-tuned on (none when frozen);
    eval_embeddings: its embeddings of the session's ``eval_texts`` (None when frozen: the caller has those).
    """

    embeddings: np.ndarray
    anchors: np.ndarray
    name: str = "frozen"
    trained_on: frozenset = frozenset()
    eval_embeddings: np.ndarray | None = None

    @classmethod
    def load(cls, folder: Workdir) -> "Encoder":
        """The encoder a finished background fine-tune wrote in ``folder`` (:meth:`Workdir.finetune`)."""
        info = json.loads(folder.finetune_info.read_text())
        extra = np.load(folder.eval_embeddings) if folder.eval_embeddings.exists() else None
        return cls(np.load(folder.pool_embeddings), np.load(folder.label_anchors),
                   f"finetuned@{len(info['train_ids'])}", frozenset(info["train_ids"]), extra)


def held_out_check(current: Encoder, candidate: Encoder, labels: np.ndarray, train: np.ndarray, check: np.ndarray,
                   make_head: Callable[[np.ndarray], LightHead]) -> dict:
    """Fit the light head on the ``train`` rows with each encoder's embeddings and score both on the ``check`` rows.

    labels (N,): label index per pool row; train, check: row indices (disjoint). make_head(anchors): a fresh
    :class:`LightHead`. Returns held-out accuracy and log loss of each, and ``swapped``: the candidate is
    better (higher accuracy; on a tie, lower log loss).

    >>> y = np.array([0, 1, 0, 1])
    >>> good, bad = Encoder(np.eye(2)[y], np.eye(2)), Encoder(np.eye(2)[[0, 0, 1, 1]], np.eye(2))
    >>> def head(anchors):
    ...     return LightHead(anchors, anchor_weight=1)
    >>> held_out_check(bad, good, y, np.array([0, 1]), np.array([2, 3]), head)["swapped"]
    True
    """
    out = {}
    for key, enc in (("light", current), ("finetuned", candidate)):
        head = make_head(enc.anchors).fit(enc.embeddings[train], labels[train])
        p = head.predict_proba(enc.embeddings[check])
        y = labels[check]
        out[f"{key}_accuracy"] = round(float((p.argmax(1) == y).mean()), 4)
        out[f"{key}_log_loss"] = round(float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean()), 4)
    out["swapped"] = ((out["finetuned_accuracy"], -out["finetuned_log_loss"]) >
                      (out["light_accuracy"], -out["light_log_loss"]))
    return out


def split_for_check(rows: np.ndarray, ids: Sequence[str], seen: frozenset, share: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, check) rows of a fine-tune's labelled ``rows``: ``share`` of them (at least one) held out for the
    check, drawn among those the current encoder was not fine-tuned on (``seen``: their ids), so that neither
    model trained on them.

    >>> split_for_check(np.arange(10), [str(i) for i in range(10)], frozenset(map(str, range(8))), 0.2,
    ...                 np.random.default_rng(0))[1].tolist()
    [8, 9]
    """
    fresh = np.array([r for r in rows if ids[r] not in seen], dtype=np.int64)
    n = min(len(fresh), max(1, round(share * len(rows))))
    check = np.sort(rng.choice(fresh, size=n, replace=False)) if n else fresh
    return np.setdiff1d(rows, check), check


class BackgroundFinetune:
    """One fine-tune of the encoder on a snapshot of the labels, in a child process at lower priority.

    The child (``python -m cleanloop.loops.online``, the job pickled on its stdin) trains
    :class:`~cleanloop.loops.active.FinetuneLearner` (the fine-tuned classifier of ``cleanloop train``, epochs by
    :func:`~cleanloop.loops.active.finetune_epochs`) on the ``train`` rows, then writes the pool's embeddings and
    probabilities, the label anchors and the ``eval_texts`` embeddings into ``folder``, and ``finetune.json``
    last: a folder without it is unfinished. Its output goes to ``finetune.log`` there.
    """

    def __init__(self, number: int, folder: Workdir, cfg: Config, opts: ActiveOptions, pool: PoolData,
                 labels: np.ndarray, train: np.ndarray, check: np.ndarray, eval_texts: Sequence[str],
                 started_at: float):
        import subprocess
        import sys

        self.number, self.folder, self.labels, self.train, self.check = number, folder, labels, train, check
        self.started_at = started_at
        self.t0 = time.monotonic()
        remove_finetune(folder)
        folder.root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.root.mkdir(mode=0o700)
        job = {"cfg": cfg, "min_examples": opts.min_train_examples, "folder": folder, "names": pool.names,
               "texts": [pool.texts[i] for i in train], "labels": labels[train],
               "pool_texts": pool.texts, "anchor_texts": anchor_texts(cfg, pool.names), "eval_texts": list(eval_texts),
               "info": {"number": number, "train_ids": [pool.ids[i] for i in train],
                        "check_ids": [pool.ids[i] for i in check]}}
        with open(os.open(folder.finetune_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "cleanloop.loops.online"], stdin=subprocess.PIPE,
                                         stdout=logf, stderr=subprocess.STDOUT)
        import pickle
        import threading

        # the child reads its job once its imports are done: a thread waits for that, not the session
        threading.Thread(target=self._send, args=(pickle.dumps(job),), daemon=True).start()

    def _send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):  # it died (or was stopped) first: finished() reports it, with its log
            pass

    def finished(self) -> bool:
        return self.proc.poll() is not None

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def succeeded(self) -> bool:
        return self.proc.returncode == 0 and self.folder.finetune_info.exists()

    def last_log_line(self) -> str:
        lines = self.folder.finetune_log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {self.proc.returncode}"

    def stop(self) -> None:
        """Terminate the child (if still running) and remove its unfinished folder."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:  # noqa: BLE001  (it ignored SIGTERM)
                self.proc.kill()
                self.proc.wait()
        remove_finetune(self.folder)


def remove_finetune(folder: Workdir) -> None:
    """Remove a background fine-tune's folder: only one that :class:`BackgroundFinetune` made (its
    ``finetune.log``, written first, marks it); anything else there is refused, never deleted."""
    if not folder.root.exists():
        return
    if not folder.finetune_log.exists():
        raise CleanloopError(f"{folder.root} holds files cleanloop did not write (no {folder.finetune_log.name}); "
                             "fix: move them elsewhere, then start the session again")
    shutil.rmtree(folder.root, ignore_errors=True)


def _finetune_job(job: dict) -> None:
    """The child of :class:`BackgroundFinetune`: fine-tune, embed, write (``finetune.json`` last)."""
    import threading

    import torch

    from cleanloop.loops.active import FinetuneLearner

    os.nice(10)  # the annotator-facing session keeps the priority...
    torch.set_num_threads(os.cpu_count() or 1)  # ...and the fine-tune takes every core the session leaves idle
    parent = os.getppid()

    def orphaned() -> None:  # the session was killed: stop rather than write into a folder nobody watches
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()
    cfg, folder, t0 = job["cfg"], job["folder"], time.perf_counter()
    learner = FinetuneLearner(cfg, folder, job["min_examples"]).fit(job["texts"], job["labels"], job["names"])
    train_seconds = time.perf_counter() - t0
    batch = learner.cfg.eval_batch_size
    out = learner.predictor.predict_arrays(job["pool_texts"], batch)
    folder.save_npy(folder.pool_embeddings, unit(out["embeddings"]))
    folder.save_npy(folder.pool_probs, np.asarray(out["probs"], dtype=np.float32))
    for path, texts in ((folder.label_anchors, job["anchor_texts"]), (folder.eval_embeddings, job["eval_texts"])):
        if texts:
            folder.save_npy(path, unit(learner.predictor.predict_arrays(texts, batch)["embeddings"]))
    folder.write_json(folder.finetune_info, job["info"] | {"train_seconds": round(train_seconds, 1),
                                                            "seconds": round(time.perf_counter() - t0, 1)})


# --- the session -----------------------------------------------------------------------------------------


@dataclass
class BatchInfo:
    """One queued batch: what picked it, from how many labels, and how long the annotator waited for it."""

    batch: int
    strategy: str
    ids: list[str]
    model: str  # "zero-shot", "logreg" or "finetuned-logreg@<labels>" (on a background fine-tune's embeddings)
    model_labels: int  # labels the model that picked it had seen
    labels_at_push: int  # labels answered when it was queued
    pushed_at: float  # seconds since the session started
    pick_seconds: float
    suggested: list[str] = field(default_factory=list)  # the pre-selected suggestion of each record
    seconds_to_next_batch: float | None = None  # this batch's last answer -> the next batch queued (0: in time)
    completed_at: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def staleness(self) -> int:
        return self.labels_at_push - self.model_labels


def _labels_from_journal(pool: PoolData, journal) -> np.ndarray:
    """The pool's labels: the seeds, overridden by the journal's decisions (removed: -2, left out)."""
    labels = pool.labels.copy()
    index = {n: i for i, n in enumerate(pool.names)}
    row = {i: n for n, i in enumerate(pool.ids)}
    for ex_id, d in journal.current().items():
        if ex_id not in row:
            continue
        if d.action == "removed":
            labels[row[ex_id]] = -2
        elif d.action in ("corrected", "confirmed") and d.new_label in index:
            labels[row[ex_id]] = index[d.new_label]
    return labels


def pick_batch(strategy_name: str, head: LightHead, embeddings: np.ndarray, labels: np.ndarray, pending: np.ndarray,
               n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """(indices, the pool's probabilities, strategy used): ``n`` rows neither labelled, discarded
    nor pending; :class:`Coverage` while the pool has no label at all (cold start)."""
    probs = head.predict_proba(embeddings)
    taken = (labels != -1) | pending
    strategy = Coverage() if (labels >= 0).sum() == 0 else make_strategy(strategy_name)
    if taken.all():
        return np.zeros(0, dtype=np.int64), probs, strategy.name
    return strategy.query(Pool(probs, taken, embeddings), n, rng), probs, strategy.name


def run_session(cfg: Config, opts: ActiveOptions, *, pool: PoolData, embeddings: np.ndarray, anchors: np.ndarray,
                client=None, home: str | Path | None = None, on_batch: Callable[[BatchInfo, LightHead], None] | None = None,
                on_answers: Callable[[int, int], None] | None = None, should_stop: Callable[[], bool] | None = None,
                clock: Callable[[], float] = time.monotonic, workdir: Workdir | None = None,
                eval_texts: Sequence[str] = ()) -> list[BatchInfo]:
    """Run a responsive session until ``max_labels``, the pool's end, ``idle_timeout`` or ``should_stop()``.

    pool, embeddings (N, D), anchors (C, D): from :func:`load_pool`, :func:`embed` and :func:`label_anchors`.
    on_batch(info, head): after each batch is queued; on_answers(labels, pending): after each pull
    that brought answers. Returns the batches queued in this call. Resumable: the answers are in the
    journal, the batches in ``loop/session.json`` of the active-learning workdir (of ``workdir``, default
    ``Workdir.of(cfg)``); records pushed but unanswered stay pending.

    The background fine-tune (``opts.finetune_after`` labels, then each time the labels grew by
    ``opts.finetune_growth``): a snapshot of the labels fine-tunes the encoder in a child process
    (:class:`BackgroundFinetune`) while the session goes on polling and queueing. When it is done,
    :func:`held_out_check` compares it with the light model it would replace: both as the light head fitted
    on the snapshot's training labels, scored on ``opts.finetune_holdout`` of the snapshot that neither
    encoder trained on. A held-out share of the snapshot, rather than the answers that came in meanwhile:
    those were picked by the current head as the ones it is least sure of (a check biased against it),
    and few may come in; the held-out share is there the moment the fine-tune ends and is drawn like the
    training labels. If the fine-tune wins, the light head moves onto its embeddings (and anchors) and is
    refitted there from then on: the batches say ``finetuned-logreg@<labels>``; if not,
    the current head stays. Each fine-tune is recorded in ``session.json`` (``finetunes``). The session's
    end (any) terminates a running fine-tune and removes its folder; a resumed session starts from the
    last accepted one (``loop/finetune/accepted``). eval_texts: texts the fine-tunes also embed (a labelled
    test split, say), as ``head.encoder.eval_embeddings``, so a caller can score the head on them.
    """
    from cleanloop.labeling.journal import Journal
    from cleanloop.loops.active import LABEL_GUIDELINES, active_config
    from cleanloop.loops.review import lazy_client, pull_step, push_step
    from cleanloop.loops.versions import write_version

    acfg = active_config(cfg)
    awd = (workdir or Workdir.of(cfg)).active()
    names = pool.names
    state_file = awd.session
    previous = json.loads(state_file.read_text()) if state_file.exists() else {"batches": []}
    done_before = previous["batches"]
    original = pool.dataset()
    row = {i: n for n, i in enumerate(pool.ids)}
    journal = Journal(awd.journal)
    connected = lazy_client(cfg, home, client)
    rng = np.random.default_rng([cfg.seed, len(done_before)])
    finetunes: list[dict] = previous.get("finetunes", [])
    for f in finetunes:
        if f["status"] == "running":  # the session that started it was killed
            f["status"] = "stopped"

    def make_head(anchors_: np.ndarray, encoder_: Encoder | None = None) -> LightHead:
        return LightHead(anchors_, C=opts.C, temperature=opts.temperature, anchor_weight=opts.anchor_weight,
                         seed=cfg.seed, encoder=encoder_)

    encoder = Encoder(embeddings, anchors)
    accepted = awd.finetune("accepted")
    if accepted.finetune_info.exists():
        ft = Encoder.load(accepted)
        if ft.embeddings.shape[0] == len(pool.ids) and ft.trained_on <= set(pool.ids):
            encoder = ft
            log.info("resuming on the accepted fine-tune (%s)", ft.name)
        else:
            log.warning("%s was fine-tuned on another pool: starting from the frozen encoder", accepted.root)
    remove_finetune(awd.finetune("running"))  # what a killed session's fine-tune left
    running: BackgroundFinetune | None = None
    head = make_head(encoder.anchors, encoder)
    start = clock()
    batches: list[BatchInfo] = []
    pending = np.zeros(len(pool.ids), dtype=bool)
    for b in done_before:
        pending[[row[i] for i in b["ids"] if i in row]] = True
    labels = _labels_from_journal(pool, journal)
    pending &= labels == -1
    if pending.any():
        from cleanloop.labeling.argilla_io import get_dataset

        if get_dataset(connected(), acfg) is None:  # the dataset was deleted: its records are not waiting anywhere
            log.warning("Argilla dataset %r is gone: its %d unanswered records go back to the pool",
                        acfg.argilla_dataset, int(pending.sum()))
            pending[:] = False

    stale = True  # labels came in (or the encoder changed) since the head was last fitted

    def refit() -> None:
        """Fit the head on every label so far. Only just before it picks: fitting on every answer kept
        the session at 137% CPU on 2 cores (one `top` reading), taken from the background fine-tune."""
        nonlocal stale
        lab = np.flatnonzero(labels >= 0)
        head.fit(encoder.embeddings[lab], labels[lab])
        stale = False

    def finetune_step() -> None:
        """Start a background fine-tune when it is due; take in (or refuse) a finished one."""
        nonlocal running, encoder, head, stale
        if running is not None:
            if not running.finished():
                return
            job, running = running, None
            record = finetunes[job.number - 1]
            record.update(finished_at=round(clock() - start, 3), seconds=job.seconds)
            if not job.succeeded():
                record["status"] = "failed"
                log.warning("background fine-tune %d failed (%s); its log: %s", job.number, job.last_log_line(),
                            job.folder.finetune_log)
                return
            candidate = Encoder.load(job.folder)
            check = held_out_check(encoder, candidate, job.labels, job.train, job.check, make_head)
            own = np.load(job.folder.pool_probs)[job.check].argmax(1)  # the fine-tuned classifier itself (recorded)
            record.update(check, status="swapped" if check["swapped"] else "kept",
                          classifier_accuracy=round(float((own == job.labels[job.check]).mean()), 4),
                          train_seconds=json.loads(job.folder.finetune_info.read_text())["train_seconds"])
            verdict = "swapped in" if check["swapped"] else f"kept the {encoder.name} head"
            log.info("background fine-tune %d on %d labels (%.0f s): held-out accuracy %.3f vs %.3f for the %s head "
                     "on %d labels neither trained on: %s", job.number, len(job.train), job.seconds,
                     check["finetuned_accuracy"], check["light_accuracy"], encoder.name, len(job.check), verdict)
            if check["swapped"]:
                from cleanloop.atomic import replace_folder

                replace_folder(job.folder.root, accepted.root)
                encoder = Encoder.load(accepted)
                head = make_head(encoder.anchors, encoder)
                stale = True
            else:
                remove_finetune(job.folder)
            save()
            return
        n = int((labels >= 0).sum())
        done = [f["labels"] for f in finetunes if f.get("status") != "stopped"]
        if not opts.finetune_after or n < opts.finetune_after or (done and n < done[-1] * (1 + opts.finetune_growth)):
            return
        rows = np.flatnonzero(labels >= 0)
        train, check = split_for_check(rows, pool.ids, encoder.trained_on, opts.finetune_holdout,
                                       np.random.default_rng([cfg.seed, len(finetunes) + 1]))
        if len(check) == 0:
            return
        number = len(finetunes) + 1
        running = BackgroundFinetune(number, awd.finetune("running"), cfg, opts, pool, labels.copy(), train, check,
                                     eval_texts, round(clock() - start, 3))
        finetunes.append({"number": number, "labels": n, "train": len(train), "held_out": len(check),
                          "against": encoder.name, "started_at": running.started_at, "status": "running"})
        log.info("background fine-tune %d started on %d labels (%d held out for the check)", number, len(train),
                 len(check))
        save()

    def queue_next() -> BatchInfo | None:
        room = opts.max_labels - int((labels >= 0).sum()) - int(pending.sum()) if opts.max_labels else opts.batch_size
        n = min(opts.batch_size, room)
        if n <= 0:
            return None
        t0 = clock()
        if stale:
            refit()
        idx, probs, used = pick_batch(opts.strategy, head, encoder.embeddings, labels, pending, n, rng)
        if len(idx) == 0:
            return None
        number = len(done_before) + len(batches) + 1
        queue = queue_frame(unlabelled_items([pool.ids[i] for i in idx], [pool.texts[i] for i in idx], probs[idx], names))
        pick = clock() - t0
        push_step(connected(), acfg, queue, None, names, number, set(), flagged_by=(used,), guidelines=LABEL_GUIDELINES)
        pending[idx] = True
        model = ("zero-shot" if head.clf is None else "logreg" if encoder.name == "frozen"
                 else f"finetuned-logreg@{len(encoder.trained_on)}")
        info = BatchInfo(number, used, queue["id"].tolist(), model,
                         head.labels_seen, int((labels >= 0).sum()), round(clock() - start, 3), round(pick, 3),
                         queue["suggested_label"].tolist())
        if batches and batches[-1].completed_at is not None and batches[-1].seconds_to_next_batch is None:
            batches[-1].seconds_to_next_batch = round(max(0.0, info.pushed_at - batches[-1].completed_at), 3)
        batches.append(info)
        log.info("batch %d queued: %d records by %s from a %s head on %d labels (%d answered)", number, len(idx), used,
                 info.model, info.model_labels, info.labels_at_push)
        if on_batch:
            on_batch(info, head)
        return info

    def save() -> None:
        awd.write_json(state_file, {"options": asdict(opts), "batches": done_before + [asdict(b) for b in batches],
                                    "finetunes": finetunes})

    try:
        if not pending.any():
            queue_next()
            save()
        last_answer = clock()
        while True:
            if should_stop and should_stop():
                break
            time.sleep(opts.poll_seconds)
            if pull_step(connected(), acfg, journal, original["train"], len(done_before) + len(batches)).new_votes:
                labels = _labels_from_journal(pool, journal)
                pending &= labels == -1
                last_answer = clock()
                stale = True
                now = round(clock() - start, 3)
                for k, b in enumerate(batches):
                    if b.completed_at is None and not pending[[row[i] for i in b.ids]].any():
                        b.completed_at = now
                        if k + 1 < len(batches):  # the next one was queued before this one was done
                            b.seconds_to_next_batch = 0.0
                if on_answers:
                    on_answers(int((labels >= 0).sum()), int(pending.sum()))
            finetune_step()
            if pending.sum() <= opts.queue_at:
                queued = queue_next()
                save()
                if queued is None and not pending.any():
                    log.info("nothing left to queue: %d labels", int((labels >= 0).sum()))
                    break
            if clock() - last_answer > opts.idle_timeout:
                log.info("no answer for %.0f s: stopping with %d labels", opts.idle_timeout, int((labels >= 0).sum()))
                break
        return batches
    finally:
        if running is not None:  # never wait for it, never leave it half-written
            running.stop()
            finetunes[running.number - 1].update(status="stopped", seconds=running.seconds)
            log.info("background fine-tune %d stopped with the session", running.number)
        save()
        write_version(original, journal, awd.versions, awd.latest_version() + 1)
        journal.close()


def session_summary(workdir: Workdir) -> dict | None:
    """What a dataset card says about the active-learning session in ``workdir`` (an active-learning
    workdir, WORKDIR/active): labels, annotators, strategies, and the learning curve on the user's own
    data (the share of each batch's pre-selected suggestions the annotators kept, against the labels
    the model had seen). None when no session ran there."""
    from cleanloop.labeling.journal import Journal

    path = workdir.session
    if not path.exists() or not workdir.journal.exists():
        return None
    state = json.loads(path.read_text())
    batches = state["batches"]
    with Journal(workdir.journal) as journal:
        decided = {i: d.new_label for i, d in journal.current().items() if d.action in ("corrected", "confirmed")}
        votes = journal.votes()
    by = {}
    for v in votes:
        by[v.annotator] = by.get(v.annotator, 0) + 1
    curve = []
    for b in batches:
        kept = [s == decided[i] for i, s in zip(b["ids"], b.get("suggested", [])) if i in decided]
        if kept:
            curve.append(f"{b['model_labels']} labels: {np.mean(kept):.0%}")
    strategies = list(dict.fromkeys(b["strategy"] for b in batches))
    finetunes = [f"on {f['train']} labels: held-out accuracy {f['finetuned_accuracy']:.0%} vs "
                 f"{f['light_accuracy']:.0%}, " + ("swapped in" if f["swapped"] else "kept the light head")
                 for f in state.get("finetunes", []) if f["status"] in ("swapped", "kept")]
    return {"Labelled by active learning": f"{len(decided):,} examples in {len(batches)} batches",
            "Annotators": ", ".join(f"{a} ({n:,} answers)" for a, n in sorted(by.items())) or "none",
            "Strategy": " then ".join(strategies),
            "Learning curve (suggestions kept per batch, by labels the model had seen)": "; ".join(curve) or "none",
            "Background fine-tunes": "; ".join(finetunes) or "none"}


def labelled_only(version):
    """A data version without its unlabelled (label -1) and discarded rows: what an active-learning export publishes."""
    import datasets

    return datasets.DatasetDict({s: ds.filter(lambda lbl, src: lbl >= 0 and src != "removed",
                                              input_columns=["label", "label_source"]) for s, ds in version.items()})


if __name__ == "__main__":  # the child process of a BackgroundFinetune
    import pickle
    import sys

    _finetune_job(pickle.load(sys.stdin.buffer))

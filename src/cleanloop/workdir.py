"""The workdir: every path inside it, the round naming, the write lock and atomic writes.

Nothing else in cleanloop builds a path inside a workdir: a module asks its :class:`Workdir`
(``Workdir.of(cfg)`` for ``cfg.workdir``). The layout::

    model/ or features/     the model of `cleanloop train` (features/: --method features)
    checkpoints/            the Trainer's checkpoints while it fine-tunes (removed after)
    cache/                  frozen features, out-of-fold probabilities and extra runs' dynamics, keyed by content
    oof/fold-K/             the out-of-fold fine-tunes
    dynamics/seed-N/        an extra judging run while it trains (removed once its record is cached)
    tune/                   study.db, best.toml, report.md, plots; trial-N/ while a trial trains
    data/                   the plots of `cleanloop data describe`
    scores/                 `cleanloop score`: <split>.parquet
    flags/                  `cleanloop flag`: scores.parquet, review_queue.parquet, queue_embeddings.npy
    source.json             what the workdir's data was (identity.py)
    journal.sqlite          the corrections journal
    versions/round-NNN/     the data after round NNN (round-000: the original)
    loop/                   a round loop: state.json, options.json, session.json, history.json,
                            history.png, report.md
    loop/round-NNN/, loop/final/   one round's own workdir (:meth:`Workdir.round`): model, flags, batch
    loop/finetune/running/, loop/finetune/accepted/   a session's background fine-tune
                            (:meth:`Workdir.finetune`): model, embeddings.npy, anchors.npy, probs.npy,
                            finetune.json (written last), finetune.log
    argilla/                the embedded Argilla server's home (the default one)
    active/                 the active-learning loops' own workdir (:meth:`Workdir.active`), same layout
    .cleanloop.lock         the write lock (lock.py)

A child workdir (a round, a tuning trial, the active-learning workdir) shares its parent's
``cache/``: the caches are keyed by content, so a round reuses what an earlier one computed.

>>> wd = Workdir("runs/emotion")
>>> wd.round(3).root.as_posix(), wd.round(3).cache.as_posix()
('runs/emotion/loop/round-003', 'runs/emotion/cache')
>>> wd.version(0).as_posix(), wd.round("final").model("finetune").as_posix()
('runs/emotion/versions/round-000', 'runs/emotion/loop/final/model')
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cleanloop import atomic

__all__ = ["Workdir", "round_dir", "round_name", "rounds_in"]


def round_name(rnd: int | str) -> str:
    """The folder name of round ``rnd``: ``round-003``; a name (``"final"``) is kept as it is.

    >>> round_name(3), round_name(120), round_name("final")
    ('round-003', 'round-120', 'final')
    """
    return rnd if isinstance(rnd, str) else f"round-{rnd:03d}"


def round_dir(parent: str | Path, rnd: int | str) -> Path:
    """The folder of round ``rnd`` in ``parent`` (a versions folder, a loop folder)."""
    return Path(parent) / round_name(rnd)


def rounds_in(parent: str | Path) -> list[int]:
    """The round numbers that have a folder in ``parent``, sorted (none when ``parent`` is missing).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     for r in (2, 10):
    ...         round_dir(d, r).mkdir()
    ...     rounds_in(d)
    [2, 10]
    """
    return sorted(int(p.name.split("-")[1]) for p in Path(parent).glob("round-[0-9][0-9][0-9]*")
                  if p.name.split("-")[1].isdigit())


class Workdir:
    """One workdir: its layout (every path in it), its child workdirs, its lock and atomic writes.

    root: the folder (``cfg.workdir``). cache: where the content-keyed caches live (default
    ``root/cache``; a child workdir gets its parent's).
    """

    def __init__(self, root: str | Path, *, cache: str | Path | None = None):
        self.root = Path(root)
        self.cache = Path(cache) if cache is not None else self.root / "cache"

    @classmethod
    def of(cls, cfg) -> "Workdir":
        """The workdir of a :class:`~cleanloop.config.Config` (``cfg.workdir``)."""
        return cls(cfg.workdir)

    def __repr__(self) -> str:
        return f"Workdir({str(self.root)!r})"

    def cached(self, kind: str, key: str) -> Path:
        """The cache file of one ``kind`` of array (``features``, ``oof-...``) for a content ``key``."""
        return self.cache / f"{kind}-{key}.npy"

    # --- models and training ----------------------------------------------------------------------
    def model(self, method: str = "finetune") -> Path:
        """The model folder of ``method``: ``model/`` (fine-tuned) or ``features/`` (frozen features)."""
        return self.root / ("model" if method == "finetune" else "features")

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def oof_fold(self, k: int) -> Path:
        """The model folder of out-of-fold fine-tune ``k``."""
        return self.root / "oof" / f"fold-{k}"

    def dynamics_run(self, seed: int) -> Path:
        """The model folder of an extra training run whose dynamics judge the labels (``dynamics/seed-N``)."""
        return self.root / "dynamics" / f"seed-{seed}"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def study_db(self) -> Path:
        """The Optuna study file of ``cleanloop tune``."""
        return self.tune / "study.db"

    def trial(self, number: int) -> "Workdir":
        """Tuning trial ``number``'s own workdir (``tune/trial-N``), sharing this one's cache."""
        return Workdir(self.tune / f"trial-{number}", cache=self.cache)

    # --- data, scores, flags ----------------------------------------------------------------------
    @property
    def source(self) -> Path:
        """What the workdir's data was: fingerprints per split (:mod:`cleanloop.identity`)."""
        return self.root / "source.json"

    @property
    def data_plots(self) -> Path:
        return self.root / "data"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    @property
    def flags(self) -> Path:
        return self.root / "flags"

    @property
    def flag_scores(self) -> Path:
        return self.flags / "scores.parquet"

    @property
    def review_queue(self) -> Path:
        return self.flags / "review_queue.parquet"

    @property
    def queue_embeddings(self) -> Path:
        """(len(review queue), D) embeddings of the review queue's texts, for Argilla's similarity search."""
        return self.flags / "queue_embeddings.npy"

    # --- review: journal, versions, Argilla -------------------------------------------------------
    @property
    def journal(self) -> Path:
        return self.root / "journal.sqlite"

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    def version(self, rnd: int) -> Path:
        """The data version written by round ``rnd`` (0: the original data)."""
        return round_dir(self.versions, rnd)

    def latest_version(self) -> int:
        """The last round that wrote a data version (0 when none did)."""
        return max(rounds_in(self.versions), default=0)

    @property
    def argilla_home(self) -> Path:
        """The embedded Argilla server's default home, absolute."""
        return (self.root / "argilla").absolute()

    # --- round loops ------------------------------------------------------------------------------
    @property
    def loop(self) -> Path:
        return self.root / "loop"

    @property
    def loop_state(self) -> Path:
        """A round loop's checkpoint (:class:`cleanloop.loops.rounds.LoopState`)."""
        return self.loop / "state.json"

    @property
    def loop_options(self) -> Path:
        """The options a loop was started with, checked when it resumes."""
        return self.loop / "options.json"

    @property
    def session(self) -> Path:
        """A responsive active-learning session's batches (:mod:`cleanloop.loops.online`)."""
        return self.loop / "session.json"

    @property
    def history(self) -> Path:
        return self.loop / "history.json"

    @property
    def history_plot(self) -> Path:
        return self.loop / "history.png"

    @property
    def report(self) -> Path:
        return self.loop / "report.md"

    def round(self, rnd: int | str) -> "Workdir":
        """Round ``rnd``'s own workdir (``loop/round-NNN``; ``"final"``: ``loop/final``), sharing this one's cache."""
        return Workdir(round_dir(self.loop, rnd), cache=self.cache)

    @property
    def pool_probs(self) -> Path:
        """An active-learning round's (N, C) probabilities of the pool."""
        return self.root / "probs.npy"

    @property
    def batch(self) -> Path:
        """An active-learning round's batch to label."""
        return self.root / "batch.parquet"

    def finetune(self, which: str) -> "Workdir":
        """A responsive session's background fine-tune (``loop/finetune/running`` while it trains,
        ``loop/finetune/accepted``: the last one swapped in), sharing this one's cache.

        >>> Workdir("w").finetune("accepted").pool_embeddings.as_posix()
        'w/loop/finetune/accepted/embeddings.npy'
        """
        if which not in ("running", "accepted"):
            raise ValueError(f"which must be 'running' or 'accepted', got {which!r}")
        return Workdir(self.loop / "finetune" / which, cache=self.cache)

    @property
    def pool_embeddings(self) -> Path:
        """A fine-tuned encoder's (N, D) unit-length embeddings of the pool."""
        return self.root / "embeddings.npy"

    @property
    def label_anchors(self) -> Path:
        """A fine-tuned encoder's (C, D) embeddings of the label names (or descriptions)."""
        return self.root / "anchors.npy"

    @property
    def eval_embeddings(self) -> Path:
        """A fine-tuned encoder's embeddings of the caller's evaluation texts (a test split)."""
        return self.root / "eval_embeddings.npy"

    @property
    def finetune_info(self) -> Path:
        """What a background fine-tune trained on and how long it took; written last (its presence = complete)."""
        return self.root / "finetune.json"

    @property
    def finetune_log(self) -> Path:
        """A background fine-tune's output (the Trainer's progress, a traceback if it failed)."""
        return self.root / "finetune.log"

    def active(self) -> "Workdir":
        """The active-learning loops' own workdir (``active/``: journal, versions, loop), sharing this one's cache."""
        return Workdir(self.root / "active", cache=self.cache)

    # --- the lock and atomic writes ---------------------------------------------------------------
    @contextmanager
    def lock(self, command: str) -> Iterator["Workdir"]:
        """Hold the workdir's write lock for the ``with`` block (:func:`cleanloop.lock.workdir_lock`)."""
        from cleanloop.lock import workdir_lock

        with workdir_lock(self.root, command):
            yield self

    def _inside(self, path: str | Path) -> Path:
        path = Path(path)
        resolved = path.absolute()
        if not any(resolved.is_relative_to(p.absolute()) for p in (self.root, self.cache)):
            raise ValueError(f"{path} is not inside workdir {self.root}")
        return path

    def write_file(self, path: str | Path, write: Callable[[str], None]) -> Path:
        """:func:`cleanloop.atomic.write_file` to a path inside this workdir."""
        return atomic.write_file(self._inside(path), write)

    def write_text(self, path: str | Path, text: str) -> Path:
        return atomic.write_text(self._inside(path), text)

    def write_json(self, path: str | Path, obj, indent: int | None = 2) -> Path:
        return atomic.write_json(self._inside(path), obj, indent)

    def save_npy(self, path: str | Path, array) -> Path:
        return atomic.save_npy(self._inside(path), array)

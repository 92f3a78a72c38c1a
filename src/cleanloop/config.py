"""The configuration of every cleanloop command: one small validated dataclass per stage.

A :class:`Config` is read from ``cleanloop.toml`` and composed of groups, one per TOML table::

    workdir = "runs/emotion"   # top level: where everything goes, and the random seed
    seed = 42
    [data]      dataset, columns, label names          -> DataOptions      (cfg.data)
    [model]     base model, method, precision          -> ModelOptions     (cfg.model)
    [training]  epochs, learning rate, ...             -> TrainingOptions  (cfg.training)
    [flagging]  signals' source, filter, review size   -> FlaggingOptions  (cfg.flagging)
    [argilla]   server URL, workspace, annotators      -> ArgillaOptions   (cfg.argilla)
    [review]    records pending, waiting for answers   -> ReviewOptions    (cfg.review)
    [loop]      retrain-loop rounds, webhooks          -> LoopOptions      (cfg.loop)
    [active]    active-learning strategy, batch, ...   -> ActiveOptions    (cfg.active)

Every value is checked when its group is built, and a bad one stops with the key, where it came
from (file and table, or option) and the fix. The keys of the first six groups are unique, so they
may also sit at the top level of the file, and read flat: ``cfg.learning_rate`` is
``cfg.training.learning_rate``; ``Config(learning_rate=1e-4)`` and ``cfg.replace(epochs=2)`` work
too. Each command offers the options of the groups it uses (``cleanloop train --help``).

>>> cfg = Config(epochs=2)
>>> cfg.training.epochs, cfg.epochs, cfg.replace(learning_rate=3e-4).training.learning_rate
(2, 2, 0.0003)
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, get_args, get_origin, get_type_hints
from urllib.parse import urlparse

from cleanloop.errors import CleanloopError

log = logging.getLogger("cleanloop")

DEFAULT_BASE_MODEL = "packaged:all-MiniLM-L6-v2"
DEFAULT_DATASET = "dair-ai/emotion"


# `cleanloop serve` micro-batching defaults. A group gathers requests until it holds SERVE_MAX_BATCH
# texts, its oldest request has waited SERVE_MAX_WAIT_MS, or no request came for SERVE_MAX_GAP_MS (the
# clients that are coming have come: a group of every waiting client is not held for company that will
# not arrive). Chosen with bench/serve.py and A/B runs (figures: bench/results/serve.json, the README).
SERVE_MAX_WAIT_MS = 10.0
SERVE_MAX_BATCH = 16
SERVE_MAX_GAP_MS = 2.0

# Train examples under which a data set is small: a fine-tune trains --judge-epochs by default
# (cleanloop.model.train.train_epochs), and flagging judges with judging runs beside or in place of
# the model (cleanloop.loops.judge).
SMALL_DATA = 5000

# Numeric precisions (cleanloop.model.precision): 'auto' picks bf16 where the hardware runs it natively.
PRECISIONS = ("auto", "fp32", "bf16", "int8")


def _strategies() -> list[str]:
    from cleanloop.loops.strategies import STRATEGIES

    return sorted(STRATEGIES)


def _filters() -> list[str]:
    from cleanloop.loops.signals import FILTER_BY

    return ["auto", *FILTER_BY]


class ConfigError(CleanloopError):
    """A setting out of its range: ``key`` names it, so that the loader can say where it came from."""

    def __init__(self, message: str, key: str = "", table: str = ""):
        super().__init__(message)
        self.key, self.table = key, table


def option_name(f: dataclasses.Field) -> str:
    """The command-line option of a field: ``--learning-rate`` (or the field's ``flag`` metadata)."""
    return "--" + f.metadata.get("flag", f.name.replace("_", "-"))


class Options:
    """Base of the option groups: checks in :meth:`check` (run on creation), ``to_dict`` and ``from_dict``."""

    table: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise a :class:`ConfigError` for the first value out of its range."""

    def bad(self, name: str, want: str, fix: str = "") -> ConfigError:
        """The error for field ``name``: what it must be, what it is, and how to set it."""
        f = next(f for f in dataclasses.fields(self) if f.name == name)
        where = f"{option_name(f)}, or {name} in [{self.table}]" if self.table else option_name(f)
        return ConfigError(f"{name} must be {want}, got {getattr(self, name)!r}; fix: set {name} ({where}) "
                           f"{fix or 'to a value in that range'}", name, self.table)

    def non_empty(self, *names: str) -> None:
        for name in names:
            if not str(getattr(self, name)).strip():
                raise self.bad(name, "a non-empty text", "to a name")

    def one_of(self, name: str, choices) -> None:
        if getattr(self, name) not in choices:
            listed = ", ".join(map(str, choices))
            raise self.bad(name, f"one of {listed}", f"to one of {listed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        return cls(**values)


@dataclass
class DataOptions(Options):
    """Where the labelled texts are and how to read them (``[data]``)."""

    table: ClassVar[str] = "data"
    dataset: str = field(
        default=DEFAULT_DATASET,
        metadata={"help": "Hub id, a parquet/csv/jsonl file or folder of them, or a save_to_disk folder."},
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    label_column: str = field(default="label", metadata={"help": "Column holding the label (name or index)."})
    id_column: str = field(
        default="", metadata={"help": "Column with a stable example id; empty: '<split>-<row>' ids."}
    )
    label_names: list[str] = field(
        default_factory=list, metadata={"help": "Label names in index order; empty: taken from the data."}
    )
    max_train_samples: int = field(
        default=0, metadata={"help": "Train on a stratified sample of this many examples (0: all)."}
    )
    label_descriptions: list[str] = field(
        default_factory=list,
        metadata={"help": "A short description per label, in label_names order, for active learning's zero-shot "
                          "suggestions (descriptions with commas: a list in the TOML); empty: the label names."},
    )

    def check(self) -> None:
        self.non_empty("dataset", "text_column", "label_column")
        if self.text_column == self.label_column:
            raise self.bad("label_column", f"another column than text_column ({self.text_column!r})",
                           "to the label's column")
        if self.label_names and (len(set(self.label_names)) != len(self.label_names) or len(self.label_names) < 2):
            raise self.bad("label_names", "two or more different names", "to the names in index order, or leave it empty")
        if self.max_train_samples < 0:
            raise self.bad("max_train_samples", "0 (all) or more")


@dataclass
class ModelOptions(Options):
    """Which model, and how it runs (``[model]``): used by every step that trains or loads one."""

    table: ClassVar[str] = "model"
    base_model: str = field(
        default=DEFAULT_BASE_MODEL,
        metadata={"help": "'packaged:all-MiniLM-L6-v2' (offline), a Hub name or a local model folder."},
    )
    max_length: int = field(default=64, metadata={"help": "Tokens per text; longer texts are truncated."})
    precision: str = field(
        default="auto",
        metadata={"help": "Numeric precision of training and inference: 'auto' (bf16 where the CPU has "
                          "avx512_bf16/amx or the GPU bf16, else fp32), 'fp32', 'bf16', or 'int8' (CPU inference "
                          "only, opt-in: faster, changes a few labels).", "choices": PRECISIONS},
    )
    method: str = field(default="finetune", metadata={"help": "'finetune' or 'features' (frozen encoder + logreg).",
                                                      "choices": ("finetune", "features")})
    pooling: str = field(default="mean", metadata={"help": "Feature pooling for --method features: 'mean' or 'cls'.",
                                                   "choices": ("mean", "cls")})
    eval_batch_size: int = field(default=32, metadata={"help": "Batch size for evaluation and scoring."})

    def check(self) -> None:
        self.non_empty("base_model")
        self.one_of("method", ("finetune", "features"))
        self.one_of("pooling", ("mean", "cls"))
        self.one_of("precision", PRECISIONS)
        for name in ("eval_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise self.bad(name, "1 or more")


@dataclass
class TrainingOptions(Options):
    """How the classifier is fine-tuned (``[training]``)."""

    table: ClassVar[str] = "training"
    epochs: float = field(
        default=0.0,
        metadata={"help": "Training epochs (full quality on emotion: 4). 0: auto, --judge-epochs (8) under 5,000 train "
                          "examples (on 3,000 tweets 3 epochs reached 80% test accuracy, 8 reached 88%), else 1."},
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.06, metadata={"help": "Share of steps with linear warm-up."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing factor of the loss."})
    class_weights: bool = field(default=False, metadata={"help": "Weight the loss by inverse class frequency."})
    record_dynamics: bool = field(
        default=True, metadata={"help": "Record each train example's probabilities at every epoch end."}
    )
    dynamics_epochs: int = field(
        default=0,
        metadata={"help": "Record only the last N epoch ends (0: all). Each is one pass over the train split: "
                          "fewer cost less training time, at a little ranking quality."},
    )

    def check(self) -> None:
        if not (math.isfinite(self.epochs) and self.epochs >= 0):
            raise self.bad("epochs", "0 (auto) or a number above 0")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise self.bad("learning_rate", "a number above 0")
        if self.batch_size < 1:
            raise self.bad("batch_size", "1 or more")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise self.bad("weight_decay", "0 or more")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise self.bad("warmup_ratio", "in [0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise self.bad("label_smoothing", "in [0, 1)")
        if self.dynamics_epochs < 0:
            raise self.bad("dynamics_epochs", "0 (all) or more")


@dataclass
class FlaggingOptions(Options):
    """How likely mislabels are found and how many go to review (``[flagging]``)."""

    table: ClassVar[str] = "flagging"
    flag_source: str = field(
        default="dynamics",
        metadata={"help": "'dynamics' (the training run's per-epoch record) or 'oof' (k-fold with --method).",
                  "choices": ("dynamics", "oof")},
    )
    folds: int = field(default=5, metadata={"help": "Folds for out-of-fold probabilities (--flag-source oof)."})
    filter_by: str = field(
        default="auto",
        metadata={"help": "Which examples are flagged: a cleanlab find_label_issues filter_by, or "
                          "noise_rate_or_disagreement (prune_by_noise_rate, or the judge's most probable label is not "
                          "the given one). auto: that on training dynamics under 5,000 train examples (their long "
                          "judging runs learn many wrong labels, which confident learning then misses), else "
                          "prune_by_noise_rate.", "choices": _filters},
    )
    max_review: int = field(default=500, metadata={"help": "Most examples sent for review per round (0: all)."})
    min_gain_over_baseline: float = field(
        default=0.1,
        metadata={"help": "'flag' stops unless the model closes this share of the gap between the majority-class "
                          "baseline and a perfect score, in accuracy and macro F1 on held-out data (0: no check)."},
    )
    neighbour_checks: bool = field(
        default=True,
        metadata={"help": "Near-duplicates with conflicting labels, outliers and neighbour labels, on the frozen "
                          "encoder's sentence embeddings (one cached pass over train); off: exact duplicates only."},
    )
    near_duplicate_threshold: float = field(
        default=0.13,
        metadata={"help": "Near-duplicates: cosine distance below this x the median nearest-neighbour distance "
                          "(cleanlab Datalab's rule; 0: exact duplicates only)."},
    )
    dynamics_runs: int = field(
        default=0,
        metadata={"help": "Training runs whose dynamics judge the labels (--flag-source dynamics): the trained model's "
                          "and N-1 judging runs with other seeds, averaged; under 5,000 train examples a model that "
                          "trained fewer than --judge-epochs is left out when judging runs judge. 0: auto: under 5,000 "
                          "train examples 3 after a model that trained --judge-epochs, else 2; from 5,000 up 1."},
    )
    judge_epochs: float = field(
        default=8.0,
        metadata={"help": "Epochs of the extra judging runs (--dynamics-runs), at least --epochs, and of training under "
                          "5,000 examples when --epochs is auto: on 3,000 tweets with 10% errors 8 ranked them best "
                          "(AP 0.46 at 3, 0.82 at 8, 0.78 at 12)."},
    )
    judge_label_smoothing: float = field(
        default=0.3,
        metadata={"help": "Label smoothing of the judging runs: on 3,000 tweets with 10% errors, 0.3 ranked them better "
                          "than the 0.1 of training in each noise type (AP 0.849 / 0.879 / 0.848 against 0.835 / 0.872 "
                          "/ 0.826 on the first 5 of 8 epochs)."},
    )
    judge_stop: float = field(
        default=0.625,
        metadata={"help": "Share of a judging run's learning-rate schedule whose epoch records judge, on small data: "
                          "the extra runs stop there, and a trained model of at least --judge-epochs is read up to "
                          "there. 0.625: the first 5 of 8 epochs, before the run learns wrong labels by heart. 1: all."},
    )

    def check(self) -> None:
        self.one_of("flag_source", ("dynamics", "oof"))
        if self.dynamics_runs < 0:
            raise self.bad("dynamics_runs", "0 (auto) or more")
        if self.judge_epochs <= 0:
            raise self.bad("judge_epochs", "above 0")
        if not 0.0 <= self.judge_label_smoothing < 1.0:
            raise self.bad("judge_label_smoothing", "in [0, 1)")
        if not 0.0 < self.judge_stop <= 1.0:
            raise self.bad("judge_stop", "in (0, 1]")
        if self.folds < 2:
            raise self.bad("folds", "2 or more")
        if self.filter_by not in _filters():
            raise self.bad("filter_by", "auto or one of the filters", f"to one of {', '.join(_filters())}")
        if self.max_review < 0:
            raise self.bad("max_review", "0 (all) or more")
        for name in ("min_gain_over_baseline", "near_duplicate_threshold"):
            if not getattr(self, name) >= 0:
                raise self.bad(name, "0 or more")


@dataclass
class ArgillaOptions(Options):
    """The Argilla server and dataset the review goes through (``[argilla]``)."""

    table: ClassVar[str] = "argilla"
    argilla_url: str = field(default="http://127.0.0.1:6900", metadata={"help": "Argilla server URL."})
    argilla_workspace: str = field(default="cleanloop", metadata={"help": "Argilla workspace."})
    argilla_dataset: str = field(default="emotion-review", metadata={"help": "Argilla dataset for the review queue."})
    argilla_annotators: list[str] = field(
        default_factory=lambda: ["annotator"], metadata={"help": "Annotator user names created by 'argilla up'."}
    )
    argilla_workers: int = field(
        default=2, metadata={"help": "Server processes of the embedded Argilla ('argilla up'): one per core."}
    )

    def check(self) -> None:
        self.non_empty("argilla_workspace", "argilla_dataset")
        if self.argilla_workers < 1:
            raise self.bad("argilla_workers", "1 or more")
        try:
            url = urlparse(self.argilla_url)
            url_ok = url.scheme in ("http", "https") and bool(url.hostname) and (url.port is None or url.port > 0)
        except ValueError:  # a port that is not a number, or over 65535
            url_ok = False
        if not url_ok:
            raise self.bad("argilla_url", "an http:// or https:// URL with a host", "to e.g. http://127.0.0.1:6900")


@dataclass
class ReviewWait(Options):
    """How a step waits for the annotators' answers (the ``[review]`` keys that loops share)."""

    min_reviewed: int = field(
        default=0, metadata={"help": "Go on once this many pushed records are answered (0: all of them)."}
    )
    review_timeout: float = field(
        default=3600.0, metadata={"help": "Seconds to wait for answers; then go on with those there are."}
    )
    poll_seconds: float = field(default=5.0, metadata={"help": "How often to ask Argilla, in seconds."})

    def check(self) -> None:
        if self.min_reviewed < 0:
            raise self.bad("min_reviewed", "0 (all) or more")
        if not self.review_timeout >= 0:
            raise self.bad("review_timeout", "0 or more seconds")
        if not (math.isfinite(self.poll_seconds) and self.poll_seconds > 0):
            raise self.bad("poll_seconds", "a number of seconds above 0")


@dataclass
class ReviewOptions(ReviewWait):
    """How records go to the annotators and how long to wait for them (``[review]``)."""

    table: ClassVar[str] = "review"
    review_wave: int = field(
        default=1,
        metadata={"help": "Review records pending in Argilla at a time; the next are pushed as annotators answer. "
                          "Argilla shows pending records in a per-annotator shuffle: 1 keeps the queue strictly "
                          "most suspicious first. 0: push the whole queue at once."},
    )

    def check(self) -> None:
        super().check()
        if self.review_wave < 0:
            raise self.bad("review_wave", "0 (all at once) or more")


@dataclass
class LoopOptions(ReviewWait):
    """How ``retrain-loop`` runs (``[loop]``; its wait comes from ``[review]`` unless set here)."""

    table: ClassVar[str] = "loop"
    rounds: int = field(default=1, metadata={"help": "Review rounds before the final retrain."})
    webhooks: bool = field(
        default=False,
        metadata={"help": "Also be woken by Argilla webhooks (listener on 127.0.0.1; for a server on this machine)."},
    )

    def check(self) -> None:
        super().check()
        if self.rounds < 1:
            raise self.bad("rounds", "1 or more")


@dataclass
class ActiveOptions(ReviewWait):
    """How ``cleanloop active`` runs (``[active]``): the responsive session, or ``full_retrain`` rounds.

    Its wait comes from ``[review]`` unless set here; it polls every second by default, so that a
    session answers the annotator at once.
    """

    table: ClassVar[str] = "active"
    poll_seconds: float = field(default=1.0, metadata={"help": "How often to ask Argilla, in seconds."})
    strategy: str = field(
        default="diversity",
        metadata={"help": "How to pick the next batch (the first batch of a pool without labels: coverage; "
                          "activelab, which may pick labelled examples again, only with --full-retrain).",
                  "choices": _strategies},
    )
    batch_size: int = field(default=20, metadata={"help": "Examples to label per batch.", "flag": "batch"})
    max_labels: int = field(
        default=0,
        metadata={"help": "Stop once this many labels are in (0: when the pool is done or no answer came for "
                          "--idle-timeout)."},
    )
    prefetch: int = field(
        default=0,
        metadata={"help": "Queue the next batch once this many records are left unanswered (0: half a batch)."},
    )
    idle_timeout: float = field(default=3600.0, metadata={"help": "Stop after this many seconds without a new answer."})
    pool: str = field(
        default="",
        metadata={"help": "The pool to label: a csv/jsonl/parquet file, folder or Hub id with a text column "
                          "(optional id and label columns; given labels are seeds). Empty: the --dataset train split."},
    )
    temperature: float = field(default=0.05, metadata={"help": "Softmax temperature of the zero-shot suggestions."})
    C: float = field(
        default=1.0, metadata={"help": "Inverse regularisation of the light head (logistic regression C).",
                               "flag": "head-c"},
    )
    anchor_weight: float = field(
        default=50.0, metadata={"help": "Weight of each label's description among the labels of the light head."}
    )
    full_retrain: bool = field(
        default=False,
        metadata={"help": "The blocking round loop instead: retrain SetFit / the fine-tuned classifier after each "
                          "batch (the pool's labels are hidden except --seed-per-class; --rounds rounds)."},
    )
    rounds: int = field(default=1, metadata={"help": "Rounds to run with --full-retrain (a resumed run goes on to this)."})
    seed_per_class: int = field(
        default=8, metadata={"help": "Labels per class revealed from the pool to start with (--full-retrain)."}
    )
    switch_per_class: int = field(
        default=16,
        metadata={"help": "From this many labels per class on, train the fine-tuned classifier instead of SetFit."},
    )
    # a fine-tune on few labels gets enough epochs to see at least this many examples (4 epochs of a
    # few hundred labels are too few optimizer steps; bench/active_rounds.py measures it)
    min_train_examples: int = field(
        default=10000,
        metadata={"help": "A fine-tune on few labels runs enough epochs to see at least this many examples."},
    )
    setfit_iterations: int = field(default=20, metadata={"help": "SetFit's contrastive pairs per example."})
    setfit_epochs: int = field(default=1, metadata={"help": "SetFit's contrastive training epochs."})
    setfit_batch_size: int = field(default=16, metadata={"help": "SetFit's batch size."})
    final_train: bool = field(
        default=True, metadata={"help": "With --full-retrain: train and evaluate once more on the last round's labels."}
    )
    webhooks: bool = field(
        default=False,
        metadata={"help": "With --full-retrain: also be woken by Argilla webhooks (listener on 127.0.0.1; for a "
                          "server on this machine)."},
    )
    finetune_after: int = field(
        default=100,
        metadata={"help": "In a session: once this many labels are in, fine-tune the encoder in the background and "
                          "swap it in when it beats the light head on held-out labels (0: never)."},
    )
    finetune_growth: float = field(
        default=0.5,
        metadata={"help": "Fine-tune again once the labels grew by this share since the last fine-tune started."},
    )
    finetune_holdout: float = field(
        default=0.2,
        metadata={"help": "Share of a fine-tune's labels held out of its training to check it against the light head."},
    )

    def check(self) -> None:
        from cleanloop.loops.strategies import STRATEGIES

        super().check()
        self.one_of("strategy", _strategies())
        if STRATEGIES[self.strategy].relabels and not self.full_retrain:
            choices = ", ".join(sorted(n for n, s in STRATEGIES.items() if not s.relabels))
            raise ConfigError(f"strategy {self.strategy!r} cannot drive a session; fix: use one of {choices} (--strategy, "
                              "or strategy in [active]), or set full_retrain (--full-retrain)", "strategy", self.table)
        for name in ("batch_size", "rounds", "seed_per_class", "setfit_iterations", "setfit_epochs", "setfit_batch_size"):
            if getattr(self, name) < 1:
                raise self.bad(name, "1 or more")
        for name in ("switch_per_class", "min_train_examples", "max_labels", "finetune_after"):
            if getattr(self, name) < 0:
                raise self.bad(name, "0 or more")
        if not 0 <= self.prefetch <= self.batch_size:
            raise self.bad("prefetch", f"in [0, batch_size={self.batch_size}]")
        for name in ("idle_timeout", "temperature", "C", "anchor_weight", "finetune_growth"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise self.bad(name, "a number above 0")
        if not 0 < self.finetune_holdout < 1:
            raise self.bad("finetune_holdout", "a share in (0, 1)")

    @property
    def queue_at(self) -> int:
        """Unanswered records at which a session queues the next batch."""
        return self.prefetch or max(1, self.batch_size // 2)


# The groups of a Config, in TOML table order. The keys of FLAT_GROUPS are unique across them: they
# may sit at the top level of a file, are read flat (cfg.epochs) and set flat (Config(epochs=2)).
GROUPS: dict[str, type[Options]] = {
    "data": DataOptions, "model": ModelOptions, "training": TrainingOptions, "flagging": FlaggingOptions,
    "argilla": ArgillaOptions, "review": ReviewOptions, "loop": LoopOptions, "active": ActiveOptions,
}
FLAT_GROUPS = ("data", "model", "training", "flagging", "argilla", "review")
# groups whose wait (ReviewWait's keys) defaults to the [review] table's
WAITS = ("loop", "active")


@dataclass(init=False)
class Config:
    """Every setting of cleanloop: ``workdir``, ``seed`` and one group per stage.

    ``Config(**values)`` takes group objects or dicts (``training={"epochs": 2}``) and flat keys of the
    flat groups (``epochs=2``); flat keys win over the group they belong to.
    """

    workdir: str = field(default="runs/emotion", metadata={"help": "Where models, scores and reports go."})
    seed: int = field(default=42, metadata={"help": "Random seed."})
    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    training: TrainingOptions = field(default_factory=TrainingOptions)
    flagging: FlaggingOptions = field(default_factory=FlaggingOptions)
    argilla: ArgillaOptions = field(default_factory=ArgillaOptions)
    review: ReviewOptions = field(default_factory=ReviewOptions)
    loop: LoopOptions = field(default_factory=LoopOptions)
    active: ActiveOptions = field(default_factory=ActiveOptions)

    def __init__(self, **values: Any) -> None:
        flat: dict[str, dict[str, Any]] = {}
        for key in list(values):
            if key in _FLAT:
                flat.setdefault(_FLAT[key], {})[key] = values.pop(key)
        object.__setattr__(self, "workdir", values.pop("workdir", "runs/emotion"))
        object.__setattr__(self, "seed", values.pop("seed", 42))
        for name, cls in GROUPS.items():
            group = values.pop(name, None)
            if group is None:
                group = cls(**flat.get(name, {}))
            else:
                if isinstance(group, dict):
                    group = cls.from_dict(group)
                elif not isinstance(group, cls):
                    raise ConfigError(f"{name} must be a {cls.__name__} or a dict, got {type(group).__name__}", name)
                if name in flat:
                    group = dataclasses.replace(group, **flat[name])
            object.__setattr__(self, name, group)
        if values:
            key = next(iter(values))
            raise ConfigError(f"unknown setting '{key}'{_did_you_mean(key)}", key)
        self.check()

    def check(self) -> None:
        """The top-level values (each group checks its own when it is built)."""
        if not str(self.workdir).strip():
            raise ConfigError(f"workdir must be a non-empty text, got {self.workdir!r}; fix: set workdir "
                              "(--workdir, or workdir at the top of the file) to a folder", "workdir")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be from 0 to {2**32 - 1}, got {self.seed!r}; fix: set seed (--seed, or "
                              "seed at the top of the file) to a value in that range", "seed")

    def __getattr__(self, name: str) -> Any:  # only for names that are not attributes: the flat keys
        group = _FLAT.get(name)
        if group is None or group not in self.__dict__:
            raise AttributeError(f"'Config' object has no attribute {name!r}")
        return getattr(self.__dict__[group], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FLAT:
            setattr(getattr(self, _FLAT[name]), name, value)
        else:
            object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes`` (flat keys, ``workdir``/``seed`` or whole groups), checked again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """``{"workdir", "seed", "data": {...}, ...}``: the TOML tables; ``Config(**d)`` reads it back."""
        return {"workdir": self.workdir, "seed": self.seed,
                **{name: getattr(self, name).to_dict() for name in GROUPS}}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        return cls(**values)

    def to_flat_dict(self) -> dict[str, Any]:
        """``workdir``, ``seed`` and every key of the flat groups in one dict (the settings before groups)."""
        return {"workdir": self.workdir, "seed": self.seed,
                **{k: v for name in FLAT_GROUPS for k, v in getattr(self, name).to_dict().items()}}


_FLAT: dict[str, str] = {f.name: name for name in FLAT_GROUPS for f in dataclasses.fields(GROUPS[name])}


def group_fields(name: str) -> tuple[dataclasses.Field, ...]:
    """The fields of group ``name`` (``"workdir"``/``"seed"`` are Config's own)."""
    return dataclasses.fields(GROUPS[name])


def group_types(name: str) -> dict[str, Any]:
    """Map each field of group ``name`` to its Python type (``list[str]`` stays a generic alias)."""
    hints = get_type_hints(GROUPS[name])
    return {f.name: hints[f.name] for f in group_fields(name)}


def field_types() -> dict[str, Any]:
    """Map each flat key (``workdir``, ``seed`` and the flat groups' fields) to its Python type."""
    types = {"workdir": str, "seed": int}
    for name in FLAT_GROUPS:
        types.update(group_types(name))
    return types


def _did_you_mean(key: str, names=None) -> str:
    names = names or [*_FLAT, "workdir", "seed", *GROUPS, *(f.name for g in WAITS for f in group_fields(g))]
    close = difflib.get_close_matches(key, list(names), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _coerce(name: str, value: Any, typ: Any, where: str) -> Any:
    if get_origin(typ) is list:
        inner = get_args(typ)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise CleanloopError(f"{where}: '{name}' must be a list, got {value!r}; fix: write {name} = [\"a\", \"b\"]")
        return [inner(v) for v in value]
    if typ is bool and not isinstance(value, bool):
        raise CleanloopError(f"{where}: '{name}' must be true or false, got {value!r}; fix: write {name} = true "
                             "or false")
    if typ in (int, float) and (isinstance(value, (bool, list, dict)) or (typ is int and isinstance(value, float)
                                                                          and not value.is_integer())):
        raise CleanloopError(f"{where}: '{name}' must be {'an integer' if typ is int else 'a number'}, got {value!r}; "
                             f"fix: write {name} = {'3' if typ is int else '0.5'} (no quotes)")
    if typ is str and isinstance(value, (list, dict, bool)):
        raise CleanloopError(f"{where}: '{name}' must be a text, got {value!r}; fix: write {name} = \"...\"")
    try:
        return typ(value)
    except (TypeError, ValueError):
        raise CleanloopError(f"{where}: '{name}' must be {typ.__name__}, got {value!r}; fix: write {name} as a "
                             f"{typ.__name__}") from None


class _Settings:
    """Values gathered for a Config, with where each came from (for the error messages)."""

    def __init__(self) -> None:
        self.top: dict[str, Any] = {}
        self.groups: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
        self.origin: dict[tuple[str, str], str] = {}  # (group or "", key) -> "FILE [table]" or "option --x"

    def set(self, group: str, key: str, value: Any, origin: str, *, once: bool = False) -> None:
        target = self.groups[group] if group else self.top
        if once and key in target:
            raise CleanloopError(f"{origin}: key '{key}' is set twice ({self.origin[group, key]} too); fix: keep one")
        typ = group_types(group)[key] if group else {"workdir": str, "seed": int}[key]
        target[key] = _coerce(key, value, typ, origin)
        self.origin[group, key] = origin

    def build(self) -> Config:
        waits = {f.name for f in dataclasses.fields(ReviewWait)}
        for name in WAITS:  # a wait the [review] table or a review option sets is the loops' too, unless set there
            for key in waits & self.groups["review"].keys():
                if key not in self.groups[name]:
                    self.groups[name][key] = self.groups["review"][key]
                    self.origin[name, key] = self.origin["review", key]
        try:
            return Config(**self.top, **{name: GROUPS[name](**values) for name, values in self.groups.items()})
        except ConfigError as exc:
            origin = self.origin.get((exc.table, exc.key)) or self.origin.get(("", exc.key))
            raise ConfigError(f"{origin}: {exc}" if origin else str(exc), exc.key, exc.table) from None


def _read_toml(path: Path, settings: _Settings) -> None:
    if not path.exists():
        raise CleanloopError(f"config file {path} not found; fix: pass an existing --config or omit it")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise CleanloopError(f"{path}: not valid TOML ({exc}); fix the line it names") from None
    except UnicodeDecodeError:
        from cleanloop.errors import not_utf8

        raise not_utf8(path) from None
    for key, val in raw.items():
        if isinstance(val, dict):
            for k, v in val.items():
                _place(settings, path, key.replace("-", "_"), k.replace("-", "_"), v)
        else:
            _place(settings, path, "", key.replace("-", "_"), val)


def _place(settings: _Settings, path: Path, table: str, key: str, value: Any) -> None:
    """Put one key of the file in its group: in its own table, or (flat keys) at the top or in another table."""
    origin = f"{path} [{table}]" if table else str(path)
    if table in GROUPS and key in {f.name for f in group_fields(table)}:
        return settings.set(table, key, value, origin, once=True)
    home = "" if key in ("workdir", "seed") else _FLAT.get(key)
    if home is None:
        tables = [name for name in GROUPS if key in {f.name for f in group_fields(name)}]
        if tables:
            where = " or ".join(f"[{name}]" for name in tables)
            raise CleanloopError(f"{path}: key '{key}' belongs in {where}; fix: put it in {where}")
        if table in GROUPS:
            names = [f.name for f in group_fields(table)]
            raise CleanloopError(f"{path}: unknown key [{table}] '{key}'{_did_you_mean(key, names)}; fix: use one of "
                                 f"{', '.join(names)}")
        where = f"[{table}] " if table else ""
        raise CleanloopError(f"{path}: unknown key {where}'{key}'{_did_you_mean(key)}; fix: use one of "
                             f"{', '.join(sorted(_FLAT))} (or a key of [loop] or [active])")
    if table:  # a file of before the groups: keys in any table; read, and say where the key goes now
        log.warning("%s: '%s' in [%s] belongs %s (read anyway; move it there to silence this warning)", path, key,
                    table, "at the top level" if not home else f"in [{home}]")
    settings.set(home, key, value, origin, once=True)


def load_config(path: str | Path | None = None, *, groups: dict[str, dict[str, Any]] | None = None,
                **overrides: Any) -> Config:
    """Build a Config from a TOML file (optional) and overrides, checking every value.

    ``path=None`` reads ``./cleanloop.toml`` when it exists. Each group's keys go in its table
    (``[training]``); those of the flat groups may also sit at the top level. ``overrides`` are flat
    keys (``epochs=2``), ``groups`` per-group values (``{"loop": {"rounds": 3}}``); both beat the file,
    and a value of ``None`` means "not given". A wait set in ``[review]`` (or by a review override)
    is also the ``[loop]`` and ``[active]`` wait unless those set their own. An unknown key or a
    value out of range is a CleanloopError naming the key, the file (or option) and the fix.
    """
    settings = _Settings()
    if path is None and Path("cleanloop.toml").exists():
        path = "cleanloop.toml"
    if path is not None:
        _read_toml(Path(path), settings)
    for key, value in overrides.items():
        if value is None:
            continue
        home = "" if key in ("workdir", "seed") else _FLAT.get(key)
        if home is None:
            raise CleanloopError(f"unknown setting '{key}'{_did_you_mean(key)}")
        settings.set(home, key, value, f"option --{key.replace('_', '-')}")
    for group, values in (groups or {}).items():
        if group not in GROUPS:
            raise CleanloopError(f"unknown group '{group}'; fix: use one of {', '.join(GROUPS)}")
        fields = {f.name: f for f in group_fields(group)}
        for key, value in values.items():
            if value is None:
                continue
            if key not in fields:
                raise CleanloopError(f"unknown setting '{key}' of [{group}]; fix: use one of {', '.join(fields)}")
            settings.set(group, key, value, f"option {option_name(fields[key])}")
    return settings.build()

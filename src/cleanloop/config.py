"""One configuration object for every cleanloop command.

A :class:`Config` is read from ``cleanloop.toml`` (flat keys, optionally grouped
in tables such as ``[data]`` or ``[training]`` for readability) and every field
can be overridden from the command line (``--learning-rate 1e-4``) or from Python
(``Config(learning_rate=1e-4)``).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints
from urllib.parse import urlparse

from cleanloop.errors import CleanloopError

DEFAULT_BASE_MODEL = "packaged:all-MiniLM-L6-v2"
DEFAULT_DATASET = "dair-ai/emotion"


# `cleanloop serve` micro-batching defaults. Small groups overlap: while the model runs one group,
# the next group's requests are read and the last group's answers written. On 2 CPU cores with 16
# one-tweet clients, groups of 8 served ~20% more than groups of 64 (bench/serve.py).
SERVE_MAX_WAIT_MS = 10.0
SERVE_MAX_BATCH = 8

# Numeric precisions (cleanloop.model.precision): 'auto' picks bf16 where the hardware runs it natively.
PRECISIONS = ("auto", "fp32", "bf16", "int8")


@dataclass
class Config:
    # --- data -------------------------------------------------------------
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
    # --- model ------------------------------------------------------------
    base_model: str = field(
        default=DEFAULT_BASE_MODEL,
        metadata={"help": "'packaged:all-MiniLM-L6-v2' (offline), a Hub name or a local model folder."},
    )
    max_length: int = field(default=64, metadata={"help": "Tokens per text; longer texts are truncated."})
    precision: str = field(
        default="auto",
        metadata={"help": "Numeric precision of training and inference: 'auto' (bf16 where the CPU has "
                          "avx512_bf16/amx or the GPU bf16, else fp32), 'fp32', 'bf16', or 'int8' (CPU inference "
                          "only, opt-in: faster, changes a few labels)."},
    )
    # --- training ---------------------------------------------------------
    method: str = field(default="finetune", metadata={"help": "'finetune' or 'features' (frozen encoder + logreg)."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs (full quality: 4)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    eval_batch_size: int = field(default=32, metadata={"help": "Batch size for evaluation and scoring."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.06, metadata={"help": "Share of steps with linear warm-up."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing factor of the loss."})
    class_weights: bool = field(default=False, metadata={"help": "Weight the loss by inverse class frequency."})
    pooling: str = field(default="mean", metadata={"help": "Feature pooling for --method features: 'mean' or 'cls'."})
    record_dynamics: bool = field(
        default=True, metadata={"help": "Record each train example's probabilities at every epoch end."}
    )
    dynamics_epochs: int = field(
        default=0,
        metadata={"help": "Record only the last N epoch ends (0: all). Each is one pass over the train split: "
                          "1 costs ~8% of training instead of ~25% for 3 epochs, at a little ranking quality."},
    )
    # --- flagging ----------------------------------------------------------
    flag_source: str = field(
        default="dynamics",
        metadata={"help": "'dynamics' (the training run's per-epoch record) or 'oof' (k-fold with --method)."},
    )
    folds: int = field(default=5, metadata={"help": "Folds for out-of-fold probabilities (--flag-source oof)."})
    filter_by: str = field(default="prune_by_noise_rate", metadata={"help": "cleanlab find_label_issues filter_by."})
    max_review: int = field(default=500, metadata={"help": "Most examples sent for review per round (0: all)."})
    seed: int = field(default=42, metadata={"help": "Random seed."})
    workdir: str = field(default="runs/emotion", metadata={"help": "Where models, scores and reports go."})
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
    review_wave: int = field(
        default=1,
        metadata={"help": "Review records pending in Argilla at a time; the next are pushed as annotators answer. "
                          "Argilla shows pending records in a per-annotator shuffle: 1 keeps the queue strictly "
                          "most suspicious first. 0: push the whole queue at once."},
    )
    # --- argilla ----------------------------------------------------------
    argilla_url: str = field(default="http://127.0.0.1:6900", metadata={"help": "Argilla server URL."})
    argilla_workspace: str = field(default="cleanloop", metadata={"help": "Argilla workspace."})
    argilla_dataset: str = field(default="emotion-review", metadata={"help": "Argilla dataset for the review queue."})
    argilla_annotators: list[str] = field(
        default_factory=lambda: ["annotator"], metadata={"help": "Annotator user names created by 'argilla up'."}
    )
    argilla_workers: int = field(
        default=2, metadata={"help": "Server processes of the embedded Argilla ('argilla up'): one per core."}
    )

    def __post_init__(self) -> None:
        if self.method not in ("finetune", "features"):
            raise CleanloopError(f"method must be 'finetune' or 'features', got {self.method!r}")
        if self.pooling not in ("mean", "cls"):
            raise CleanloopError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.flag_source not in ("dynamics", "oof"):
            raise CleanloopError(f"flag_source must be 'dynamics' or 'oof', got {self.flag_source!r}")
        if self.argilla_workers < 1:
            raise CleanloopError(f"argilla_workers must be at least 1, got {self.argilla_workers}")
        if self.dynamics_epochs < 0:
            raise CleanloopError(f"dynamics_epochs must be 0 (all) or more, got {self.dynamics_epochs}")
        if self.precision not in PRECISIONS:
            raise CleanloopError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.review_wave < 0:
            raise CleanloopError(f"review_wave must be 0 (all at once) or more, got {self.review_wave}")
        if self.near_duplicate_threshold < 0 or self.min_gain_over_baseline < 0:
            raise CleanloopError(
                f"near_duplicate_threshold and min_gain_over_baseline must be >= 0, got "
                f"{self.near_duplicate_threshold} and {self.min_gain_over_baseline}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise CleanloopError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Every number in its range and every name non-empty, so a bad value fails at load, not mid-run."""
        import math

        from cleanloop.loops.signals import FILTER_BY

        def bad(name: str, want: str, fix: str = "") -> CleanloopError:
            value = getattr(self, name)
            return CleanloopError(
                f"{name} must be {want}, got {value!r}; fix: set {name} (--{name.replace('_', '-')}) "
                f"{fix or 'to a value in that range'}"
            )

        for name in ("epochs", "learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise bad(name, "a number above 0")
        for name in ("batch_size", "eval_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise bad(name, "1 or more")
        for name in ("max_train_samples", "max_review"):
            if getattr(self, name) < 0:
                raise bad(name, "0 (all) or more")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "0 or more")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise bad("warmup_ratio", "in [0, 1)")
        if self.folds < 2:
            raise bad("folds", "2 or more")
        if not 0 <= self.seed < 2**32:
            raise bad("seed", f"from 0 to {2**32 - 1}")
        if self.filter_by not in FILTER_BY:
            raise bad("filter_by", "one of cleanlab's filters", f"to one of {', '.join(FILTER_BY)}")
        for name in ("dataset", "text_column", "label_column", "base_model", "workdir", "argilla_workspace",
                     "argilla_dataset"):
            if not str(getattr(self, name)).strip():
                raise bad(name, "a non-empty text", "to a name")
        if self.text_column == self.label_column:
            raise bad("label_column", f"another column than text_column ({self.text_column!r})", "to the label's column")
        if self.label_names and (len(set(self.label_names)) != len(self.label_names) or len(self.label_names) < 2):
            raise bad("label_names", "two or more different names", "to the names in index order, or leave it empty")
        try:
            url = urlparse(self.argilla_url)
            url_ok = url.scheme in ("http", "https") and bool(url.hostname) and (url.port is None or url.port > 0)
        except ValueError:  # a port that is not a number, or over 65535
            url_ok = False
        if not url_ok:
            raise bad("argilla_url", "an http:// or https:// URL with a host", "to e.g. http://127.0.0.1:6900")

    @property
    def workpath(self) -> Path:
        return Path(self.workdir)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_types() -> dict[str, Any]:
    """Map each Config field name to its Python type (``list[str]`` stays a generic alias)."""
    return get_type_hints(Config)


def _coerce(name: str, value: Any, typ: Any, where: str) -> Any:
    if get_origin(typ) is list:
        inner = get_args(typ)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise CleanloopError(f"{where}: '{name}' must be a list, got {value!r}; fix: write {name} = [\"a\", \"b\"]")
        return [inner(v) for v in value]
    if typ is bool and not isinstance(value, bool):
        raise CleanloopError(f"{where}: '{name}' must be true or false, got {value!r}")
    if typ in (int, float) and (isinstance(value, (bool, list, dict)) or (typ is int and isinstance(value, float)
                                                                          and not value.is_integer())):
        raise CleanloopError(f"{where}: '{name}' must be {'an integer' if typ is int else 'a number'}, got {value!r}")
    if typ is str and isinstance(value, (list, dict, bool)):
        raise CleanloopError(f"{where}: '{name}' must be a text, got {value!r}; fix: write {name} = \"...\"")
    try:
        return typ(value)
    except (TypeError, ValueError):
        raise CleanloopError(f"{where}: '{name}' must be {typ.__name__}, got {value!r}") from None


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Build a Config from a TOML file (optional) and keyword overrides.

    ``path=None`` reads ``./cleanloop.toml`` when it exists. Keys may sit at the
    top level or inside any table; an unknown key is an error naming the file.
    Overrides whose value is ``None`` are ignored (an option not given).
    """
    types = field_types()
    values: dict[str, Any] = {}
    if path is None and Path("cleanloop.toml").exists():
        path = "cleanloop.toml"
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise CleanloopError(f"config file {path} not found; fix: pass an existing --config or omit it")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise CleanloopError(f"{path}: not valid TOML ({exc}); fix the line it names") from None
        flat: dict[str, Any] = {}
        for key, val in raw.items():
            items = val.items() if isinstance(val, dict) else [(key, val)]
            for k, v in items:
                k = k.replace("-", "_")
                if k in flat:
                    raise CleanloopError(f"{path}: key '{k}' is set twice; fix: keep one")
                flat[k] = v
        for k, v in flat.items():
            if k not in types:
                raise CleanloopError(
                    f"{path}: unknown key '{k}'; fix: use one of {', '.join(sorted(types))}"
                )
            values[k] = _coerce(k, v, types[k], str(path))
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in types:
            raise CleanloopError(f"unknown setting '{k}'")
        values[k] = _coerce(k, v, types[k], "option")
    return Config(**values)

"""Tune the fine-tuning settings with Optuna: maximise validation macro F1 (``cleanloop tune``).

Every trial fine-tunes with :class:`~cleanloop.model.train.ClassifierTrainer` on the train split
and is judged on the validation split only (the test split is dropped before the search, so it
can never choose). A pruner stops trials whose per-epoch validation macro F1 falls below the
median of earlier trials at the same epoch. The study lives in ``WORKDIR/tune/study.db``
(SQLite): running the same command again resumes it. The first trial of a new study is the
configuration as given, so the search is measured against what ``cleanloop train`` would do.

Writes ``WORKDIR/tune/best.toml`` (the given configuration with the best settings, for
``cleanloop train --config``), ``report.md`` and two plots (optimisation history, parameter
importances).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cleanloop.atomic import write_text
from cleanloop.config import GROUPS, Config
from cleanloop.errors import CleanloopError
from cleanloop.model.train import ClassifierTrainer
from cleanloop.workdir import Workdir

log = logging.getLogger(__name__)

DEFAULT_STUDY = "cleanloop"
# what a trial sets; the rest of the configuration (data, base model, seed...) stays as given
TUNED = ("learning_rate", "epochs", "warmup_ratio", "weight_decay", "label_smoothing", "batch_size", "class_weights")


@dataclass
class SearchSpace:
    """Ranges of the tuned settings. ``learning_rate`` is searched on a log scale.

    >>> given = SearchSpace(epochs=(1, 2)).clip(Config(epochs=4, learning_rate=1.0).to_flat_dict())
    >>> given["epochs"], given["learning_rate"], given["batch_size"]
    (2, 0.0003, 32)
    """

    learning_rate: tuple[float, float] = (2e-5, 3e-4)
    epochs: tuple[int, int] = (2, 6)
    warmup_ratio: tuple[float, float] = (0.0, 0.2)
    weight_decay: tuple[float, float] = (0.0, 0.1)
    label_smoothing: tuple[float, float] = (0.0, 0.2)
    batch_size: tuple[int, ...] = (16, 32, 64)
    class_weights: tuple[bool, ...] = (False, True)

    def __post_init__(self) -> None:
        for name in ("learning_rate", "epochs", "warmup_ratio", "weight_decay", "label_smoothing"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise CleanloopError(f"search range of {name} is empty ({lo} > {hi}); fix: give low <= high")
        if self.epochs[0] < 1:
            raise CleanloopError(f"epochs must be searched from 1 up, got {self.epochs}")

    def suggest(self, trial) -> dict:
        """One trial's settings (Config field -> value)."""
        return {
            "learning_rate": trial.suggest_float("learning_rate", *self.learning_rate, log=True),
            "epochs": float(trial.suggest_int("epochs", *self.epochs)),
            "warmup_ratio": trial.suggest_float("warmup_ratio", *self.warmup_ratio),
            "weight_decay": trial.suggest_float("weight_decay", *self.weight_decay),
            "label_smoothing": trial.suggest_float("label_smoothing", *self.label_smoothing),
            "batch_size": trial.suggest_categorical("batch_size", list(self.batch_size)),
            "class_weights": trial.suggest_categorical("class_weights", list(self.class_weights)),
        }

    def clip(self, settings: dict) -> dict:
        """``settings`` (e.g. the configuration as given) moved into the space, as trial parameters."""
        def near(options, v):
            return min(options, key=lambda o: abs(float(o) - float(v)))

        out = {}
        for name in ("learning_rate", "warmup_ratio", "weight_decay", "label_smoothing"):
            lo, hi = getattr(self, name)
            out[name] = min(max(float(settings[name]), lo), hi)
        out["epochs"] = int(min(max(round(float(settings["epochs"])), self.epochs[0]), self.epochs[1]))
        out["batch_size"] = near(self.batch_size, settings["batch_size"])
        out["class_weights"] = near(self.class_weights, settings["class_weights"])
        return out


@dataclass
class TuneResult:
    """What a search found: the best validation macro F1, its settings, and where things were written."""

    study_name: str
    storage: Path
    best_value: float
    best_settings: dict
    best_trial: int
    baseline_value: float | None  # the configuration as given (the study's first trial), if it completed
    trials_complete: int
    trials_pruned: int
    trials_failed: int
    trials_this_run: int
    seconds: float  # this run's search time
    config_path: Path
    report_path: Path
    plots: list[Path] = field(default_factory=list)
    device: str = ""

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def study_path(cfg: Config) -> Path:
    """The SQLite file that holds the studies of ``cfg.workdir``."""
    return Workdir.of(cfg).study_db


def _import_optuna():
    try:
        import optuna
    except ModuleNotFoundError:
        raise CleanloopError("optuna is not installed; fix: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _setup(cfg: Config, space: SearchSpace) -> dict:
    """What must not change between the runs of one study (data, model, seed, space)."""
    keep = ("dataset", "text_column", "label_column", "id_column", "max_train_samples", "base_model",
            "max_length", "seed")
    return {**{k: getattr(cfg, k) for k in keep}, "space": {k: list(v) for k, v in asdict(space).items()}}


def median_pruner():
    """Stop a trial whose validation macro F1 at an epoch end is below the median of the completed
    trials at that epoch, once 2 trials have completed (from the first epoch end on)."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)


def pruning_callback(trial):
    """A TrainerCallback that reports each epoch's validation macro F1 to ``trial`` and stops a poor one."""
    import optuna
    from transformers import TrainerCallback

    class PruneOnEvaluate(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kw):
            if not metrics or "eval_macro_f1" not in metrics:
                return
            step = int(round(state.epoch or 0))
            value = float(metrics["eval_macro_f1"])
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation macro F1 {value:.4f} at epoch {step}")

    return PruneOnEvaluate()


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"


def tune(
    cfg: Config,
    dd,
    trials: int = 20,
    timeout: float | None = None,
    study_name: str = DEFAULT_STUDY,
    space: SearchSpace | None = None,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Search the training settings for the best validation macro F1 and write the best configuration.

    cfg: the configuration as given (data, base model, seed; its training settings are the first
    trial of a new study). dd: DatasetDict with train and validation (test, if present, is not used).
    trials: finished (complete or pruned) trials the study should hold; a resumed study runs only
    the missing ones. timeout: seconds for this run's search (a running trial is finished first).
    progress: called with one line per finished trial.
    Returns a :class:`TuneResult`; writes ``WORKDIR/tune/best.toml``, ``report.md`` and the plots.
    """
    optuna = _import_optuna()
    from datasets import DatasetDict

    if "validation" not in dd:
        raise CleanloopError(
            f"tuning needs a validation split and {cfg.dataset} has only {', '.join(dd)}; "
            "fix: add a validation file (validation.parquet/csv/jsonl) to the data folder"
        )
    if cfg.method != "finetune":
        raise CleanloopError("cleanloop tune tunes fine-tuning; fix: drop --method features")
    if trials < 1:
        raise CleanloopError(f"--trials must be at least 1, got {trials}")
    space = space or SearchSpace()
    search = DatasetDict({"train": dd["train"], "validation": dd["validation"]})  # test never chooses
    wd = Workdir.of(cfg)
    folder = wd.tune
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    storage = f"sqlite:///{wd.study_db.resolve()}"
    setup = _setup(cfg, space)
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
        pruner=median_pruner(),
    )
    if "setup" in study.user_attrs and study.user_attrs["setup"] != setup:
        diff = sorted(k for k in setup if study.user_attrs["setup"].get(k) != setup[k])
        raise CleanloopError(
            f"study '{study_name}' in {wd.study_db} was run with other {', '.join(diff)}; "
            "fix: pass --study-name NEW for a new search, or the same settings to resume it"
        )
    TS = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
        study.tell(t.number, state=TS.FAIL)  # left by a run that was killed: it will never finish
    if not study.trials:
        study.set_user_attr("setup", setup)
        study.enqueue_trial(space.clip({k: getattr(cfg, k) for k in TUNED}), user_attrs={"baseline": True})
    finished = len(study.get_trials(deepcopy=False, states=(TS.COMPLETE, TS.PRUNED)))
    todo = max(0, trials - finished)
    # seeded, but not with the same seed on a resume (a fresh RNG would re-draw the first run's points)
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials), n_startup_trials=5,
                                               multivariate=True)

    def objective(trial) -> float:
        settings = space.suggest(trial)
        run = wd.trial(trial.number)
        tcfg = cfg.replace(**settings, record_dynamics=False)
        try:
            res = ClassifierTrainer(tcfg, callbacks=[pruning_callback(trial)], workdir=run).train(search)
        finally:
            shutil.rmtree(run.root, ignore_errors=True)
        trial.set_user_attr("validation_accuracy", res.metrics["validation"]["accuracy"])
        trial.set_user_attr("train_seconds", round(res.train_seconds, 1))
        return res.metrics["validation"]["macro_f1"]

    def report_trial(study, trial) -> None:
        if progress is None:
            return
        done = len(study.get_trials(deepcopy=False, states=(TS.COMPLETE, TS.PRUNED)))
        secs = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0
        what = {TS.COMPLETE: f"validation macro F1 {trial.value:.4f}",
                TS.PRUNED: f"pruned at epoch {trial.last_step}", TS.FAIL: "failed"}.get(trial.state, trial.state.name)
        best = ""
        if any(t.state == TS.COMPLETE for t in study.trials):
            best = f"; best {study.best_value:.4f} (trial {study.best_trial.number})"
        progress(f"trial {trial.number} [{done}/{trials}]: {what} in {secs:.0f} s{best} | {_fmt(trial.params)}")

    started = [t for t in study.trials if t.state != TS.WAITING]
    start = time.perf_counter()
    if todo:
        study.optimize(objective, n_trials=todo, timeout=timeout, callbacks=[report_trial], catch=(),
                       gc_after_trial=True)
    seconds = time.perf_counter() - start
    complete = study.get_trials(deepcopy=False, states=(TS.COMPLETE,))
    if not complete:
        raise CleanloopError(
            f"no trial of study '{study_name}' completed (timeout {timeout} s); fix: raise --timeout or --trials"
        )
    best = study.best_trial
    best_settings = _settings(best.params)
    baseline = next((t.value for t in complete if t.user_attrs.get("baseline")), None)
    config_path = write_config(cfg.replace(**best_settings), folder / "best.toml",
                               f"best of study '{study_name}' (trial {best.number}, validation macro F1 {best.value:.4f})")
    plots = _plots(study, folder)
    result = TuneResult(
        study_name=study_name, storage=wd.study_db, best_value=float(best.value), best_settings=best_settings,
        best_trial=best.number, baseline_value=baseline, trials_complete=len(complete),
        trials_pruned=len(study.get_trials(deepcopy=False, states=(TS.PRUNED,))),
        trials_failed=len(study.get_trials(deepcopy=False, states=(TS.FAIL,))),
        trials_this_run=len([t for t in study.trials if t.state != TS.WAITING]) - len(started),
        seconds=round(seconds, 1), config_path=config_path, report_path=folder / "report.md", plots=plots,
        device=_device(),
    )
    _write_report(study, result, cfg, space)
    return result


def _settings(params: dict) -> dict:
    """Trial parameters -> Config values (epochs are a float in Config)."""
    out = dict(params)
    out["epochs"] = float(out["epochs"])
    return out


def _fmt(params: dict) -> str:
    parts = []
    for k, v in params.items():
        parts.append(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(parts)


def top_settings(cfg: Config, n: int, study_name: str = DEFAULT_STUDY) -> list[dict]:
    """The settings of the ``n`` best completed trials of a study in ``WORKDIR/tune``, best first."""
    optuna = _import_optuna()
    path = study_path(cfg)
    if not path.exists():
        raise CleanloopError(f"no study at {path}; fix: run 'cleanloop tune' first (same --workdir)")
    try:
        study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{path.resolve()}")
    except KeyError:
        raise CleanloopError(f"no study '{study_name}' in {path}; fix: pass the --study-name that tune used") from None
    done = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: -t.value)
    if len(done) < n:
        raise CleanloopError(
            f"study '{study_name}' has {len(done)} completed trials, {n} needed; "
            f"fix: tune with more --trials or pass --ensemble {len(done) or 1}"
        )
    return [_settings(t.params) for t in done[:n]]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string


def write_config(cfg: Config, path: Path, comment: str) -> Path:
    """Write ``cfg`` as TOML for ``cleanloop train --config``: the tuned settings and every other
    setting that differs from the defaults (data, base model...). Atomic (temp file + rename)."""
    default = Config()
    lines = [f"# {comment}", "# written by cleanloop tune; use: cleanloop train --config " + str(path), ""]
    lines += [f"{k} = {_toml_value(getattr(cfg, k))}" for k in ("workdir", "seed") if getattr(cfg, k) != getattr(default, k)]
    for name in GROUPS:  # one table per group, with what differs from the defaults
        group, given = getattr(cfg, name), getattr(default, name)
        rows = [f"{f.name} = {_toml_value(getattr(group, f.name))}" for f in fields(group)
                if (name == "training" and f.name in TUNED) or getattr(group, f.name) != getattr(given, f.name)]
        lines += [f"[{name}]", *rows, ""] if rows else []
    if cfg.max_train_samples:
        lines.append(f"# tuned on a {cfg.max_train_samples}-example sample of train; "
                     "set max_train_samples = 0 (or pass --max-train-samples 0) to train on all of it")
    return write_text(path, "\n".join(lines) + "\n")


def _plots(study, folder: Path) -> list[Path]:
    """Optimisation history and parameter importances as PNG (matplotlib); importances need 2+ completed trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out = []
    for name, draw in (("optimization_history", ovm.plot_optimization_history),
                       ("param_importances", ovm.plot_param_importances)):
        try:
            ax = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too few trials for importances
            log.info("no %s plot: %s", name, exc)
            continue
        fig = ax.figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


def _write_report(study, result: TuneResult, cfg: Config, space: SearchSpace) -> None:
    base = "n/a (not completed)" if result.baseline_value is None else f"{result.baseline_value:.4f}"
    lines = [
        f"# Tuning report: study '{result.study_name}'", "",
        f"Maximises validation macro F1 of `{cfg.dataset}` ({cfg.base_model}); the test split is not used.",
        f"Study: `{result.storage}` (run the same `cleanloop tune` again to resume it). Device: {result.device}.", "",
        f"- best validation macro F1: **{result.best_value:.4f}** (trial {result.best_trial})",
        f"- the configuration as given (trial 0): {base}",
        f"- trials: {result.trials_complete} complete, {result.trials_pruned} pruned, {result.trials_failed} failed; "
        f"{result.trials_this_run} in this run ({result.seconds:.0f} s)",
        f"- best settings, as a config: `{result.config_path}`; train with "
        f"`cleanloop train --config {result.config_path}` (add `--ensemble N --from-study` for the top N trials)",
        "", "## Best settings", "", "| setting | value |", "|---|---|",
    ]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in result.best_settings.items()]
    lines += ["", "## Search space", "", "| setting | range |", "|---|---|"]
    lines += [f"| {k} | {', '.join(str(x) for x in v)} |" for k, v in asdict(space).items()]
    lines += ["", "## Trials", "", "| trial | state | validation macro F1 | epochs done | seconds | " + " | ".join(TUNED) + " |",
              "|---" * (5 + len(TUNED)) + "|"]
    for t in sorted(study.trials, key=lambda t: (t.value is None, -(t.value or 0))):
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else math.nan
        val = f"{t.value:.4f}" if t.value is not None else ""
        row = [str(t.number), t.state.name.lower(), val, str(t.last_step or ""), f"{secs:.0f}"]
        row += [(f"{t.params[k]:.3g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, "")))
                for k in TUNED]
        lines.append("| " + " | ".join(row) + " |")
    lines += [""] + [f"![{p.stem}]({p.name})" for p in result.plots]
    write_text(result.report_path, "\n".join(lines) + "\n")

"""Core commands: data describe, train, score, config."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from cleanloop.cli.options import app, config_options, writes_workdir
from cleanloop.config import Config
from cleanloop.errors import CleanloopError

log = logging.getLogger("cleanloop")


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2))


# --- data ------------------------------------------------------------------------


@app.group()
def data() -> None:
    """Look at the data set."""


@data.command("describe")
@config_options
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the PNG plots (default: WORKDIR/data).")
@writes_workdir
def data_describe(cfg: Config, plots_dir: str | None) -> None:
    """Class distribution and words per example per class; writes the two plots as PNG."""
    from cleanloop.model.data import describe, load_data, plot_describe

    dd = load_data(cfg)
    table = describe(dd)
    for split, sub in table.groupby("split", sort=False):
        click.echo(f"\n{split}: {int(sub['examples'].sum()):,} examples")
        click.echo(f"  {'label':<14}{'examples':>9}{'share':>8}{'words mean':>12}{'median':>8}{'max':>6}")
        for r in sub.itertuples():
            click.echo(
                f"  {r.label:<14}{r.examples:>9,}{r.share:>8.1%}{r.words_mean:>12.1f}{r.words_median:>8.0f}{r.words_max:>6}"
            )
    from cleanloop.workdir import Workdir

    pngs = plot_describe(dd, Path(plots_dir) if plots_dir else Workdir.of(cfg).data_plots)
    click.echo("\nplots: " + ", ".join(str(p) for p in pngs))


# --- train -----------------------------------------------------------------------


@app.command()
@config_options
@click.option("--ensemble", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train N fine-tuned models (seeds SEED, SEED+1, ... or, with --from-study, the study's N best "
                   "settings) saved as one model folder that averages their probabilities.")
@click.option("--from-study", is_flag=True, default=False,
              help="Take the settings from the best trial(s) of the 'cleanloop tune' study in WORKDIR/tune.")
@click.option("--study-name", default="cleanloop", show_default=True, help="Study to read with --from-study.")
@writes_workdir
def train(cfg: Config, ensemble: int, from_study: bool, study_name: str) -> None:
    """Train the classifier (fine-tune, or --method features) and evaluate it on validation and test."""
    from cleanloop.identity import load_workdir_data
    from cleanloop.model.ensemble import seed_members, train_ensemble
    from cleanloop.model.precision import describe, summary
    from cleanloop.model.train import ClassifierTrainer
    from cleanloop.model.tune import top_settings

    members = seed_members(cfg, ensemble)
    if from_study:
        members = [cfg.replace(**s) for s in top_settings(cfg, ensemble, study_name)]
    dd = load_workdir_data(cfg)
    sizes = ", ".join(f"{s} {len(d):,}" for s, d in dd.items())
    log.info("data: %s (%s); method %s; base model %s", cfg.dataset, sizes, cfg.method, cfg.base_model)
    if len(members) > 1:
        result = train_ensemble(members, dd, progress=log.info)
    else:
        result = ClassifierTrainer(members[0]).train(dd)
    if not result.main_process:
        return  # another rank of `accelerate launch`: the main process reports
    click.echo(f"\nmodel saved to {result.output_dir} (trained in {result.train_seconds:.0f} s)")
    rows = [("dummy (most frequent)", m) for m in [result.metrics.get("dummy", {}).get("test")] if m]
    rows += [(f"{m['folder']} (seed {m['seed']}) test", m["test"]) for m in result.metrics.get("members", [])
             if "test" in m]
    what = f"ensemble of {len(members)}" if len(members) > 1 else cfg.method
    rows += [(f"{what} {s}", result.metrics[s]) for s in ("validation", "test") if s in result.metrics]
    for name, m in rows:
        wf1 = f"  weighted F1 {m['weighted_f1']:.3f}" if "weighted_f1" in m else ""
        click.echo(f"  {name:<28} accuracy {m['accuracy']:.2%}  macro F1 {m['macro_f1']:.3f}{wf1}")
    click.echo(f"  metrics: {result.output_dir / 'metrics.json'}; confusion matrix: {result.output_dir / 'confusion_test.png'}")
    p = result.metrics.get("precision")
    if p:
        if p.get("checks"):
            click.echo(f"  precision check on {p['checked_on']}: {summary(p['checks'])}")
        click.echo(f"  {describe(p['used'], p['why'], p.get('checks'))} (training: {p.get('training', 'fp32')})")


@app.command("tune")
@config_options
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Finished (complete or pruned) trials the study should hold; a resumed study runs the missing ones.")
@click.option("--timeout", type=click.FloatRange(min=1), default=None,
              help="Seconds for this run's search (the running trial finishes first). Default: no limit.")
@click.option("--study-name", default="cleanloop", show_default=True,
              help="Study in WORKDIR/tune/study.db; running again with the same name resumes it.")
@click.option("--min-epochs", type=click.IntRange(min=1), default=2, show_default=True, help="Fewest epochs tried.")
@click.option("--max-epochs", type=click.IntRange(min=1), default=6, show_default=True, help="Most epochs tried.")
@writes_workdir
def tune_cmd(cfg: Config, trials: int, timeout: float | None, study_name: str, min_epochs: int, max_epochs: int) -> None:
    """Search learning rate, epochs, warm-up, weight decay, label smoothing, batch size and class weights
    with Optuna for the best VALIDATION macro F1; writes WORKDIR/tune/best.toml and a report.

    The first trial of a new study is the configuration as given. --max-train-samples makes a quick search."""
    from cleanloop.identity import load_workdir_data
    from cleanloop.model.tune import SearchSpace, tune

    space = SearchSpace(epochs=(min_epochs, max_epochs))
    dd = load_workdir_data(cfg)
    log.info("tuning on %s: train %s, validation %s examples; %d trials%s", cfg.dataset, f"{len(dd['train']):,}",
             f"{len(dd['validation']):,}" if "validation" in dd else "no", trials,
             f", timeout {timeout:.0f} s" if timeout else "")
    result = tune(cfg, dd, trials=trials, timeout=timeout, study_name=study_name, space=space, progress=click.echo)
    click.echo(f"\nbest validation macro F1 {result.best_value:.4f} (trial {result.best_trial}); "
               + (f"configuration as given: {result.baseline_value:.4f}" if result.baseline_value is not None else ""))
    click.echo(f"trials: {result.trials_complete} complete, {result.trials_pruned} pruned, "
               f"{result.trials_failed} failed ({result.trials_this_run} this run, {result.seconds:.0f} s on {result.device})")
    for k, v in result.best_settings.items():
        click.echo(f"  {k:<16} {v:.4g}" if isinstance(v, float) else f"  {k:<16} {v}")
    click.echo(f"best config: {result.config_path} (cleanloop train --config {result.config_path})")
    click.echo(f"report: {result.report_path}; study: {result.storage}")


# --- score -----------------------------------------------------------------------


@app.command()
@config_options
@click.option("--model", "model_path", type=click.Path(), default=None,
              help="Model folder (default: WORKDIR/model, or WORKDIR/features with --method features).")
@click.option("--split", "splits", multiple=True, default=("train", "validation", "test"), show_default=True,
              help="Split(s) to score.")
@click.option("--output", "output_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for <split>.parquet (default: WORKDIR/scores).")
@writes_workdir
def score(cfg: Config, model_path: str | None, splits: tuple[str, ...], output_dir: str | None) -> None:
    """Score every example: probabilities, prediction, per-sample loss and embedding, as parquet keyed by id."""
    from tqdm.auto import tqdm

    from cleanloop.identity import load_workdir_data
    from cleanloop.model.precision import checks_of, describe
    from cleanloop.model.predict import Predictor
    from cleanloop.model.score import score_frame, write_parquet_atomic
    from cleanloop.model.train import model_dir
    from cleanloop.workdir import Workdir

    folder = Path(model_path) if model_path else model_dir(cfg)
    if not folder.exists():
        raise CleanloopError(f"no model at {folder}; fix: run 'cleanloop train' first or pass --model")
    predictor = Predictor.load(folder, max_length=cfg.max_length, precision=cfg.precision)
    click.echo(describe(predictor.precision, predictor.precision_reason, checks_of(folder)), err=True)
    dd = load_workdir_data(cfg)
    if predictor.label_names != dd["train"].features["label"].names:
        raise CleanloopError(
            f"model {folder} predicts {predictor.label_names} but the data has labels "
            f"{dd['train'].features['label'].names}; fix: score with the model trained on this data"
        )
    out = Path(output_dir) if output_dir else Workdir.of(cfg).scores
    for split in splits:
        if split not in dd:
            raise CleanloopError(f"no split '{split}' in {cfg.dataset} (has {', '.join(dd)}); fix: pick one of those")
        ds = dd[split]
        with tqdm(total=len(ds), desc=f"score {split}", unit="ex") as bar:
            df = score_frame(predictor, list(ds["id"]), list(ds["text"]), ds["label"], cfg.eval_batch_size, bar.update)
        path = write_parquet_atomic(df, out / f"{split}.parquet")
        acc = float((df["predicted_label"] == df["label"]).mean())
        click.echo(f"{split}: {len(df):,} examples scored, accuracy {acc:.2%}, mean loss {df['loss'].mean():.3f} -> {path}")


# --- config ----------------------------------------------------------------------


@app.command("config")
@config_options
def show_config(cfg: Config) -> None:
    """Print the configuration in effect (file + options), as JSON."""
    _echo_json(cfg.to_dict())



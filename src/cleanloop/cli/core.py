"""Core commands: data describe, train, score, config."""

from __future__ import annotations

import json

import click

from cleanloop.cli.options import app, config_options, writes_workdir
from cleanloop.config import Config


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2))


# --- data ------------------------------------------------------------------------


@app.group()
def data() -> None:
    """Look at the data set."""


@data.command("describe")
@config_options("data")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the PNG plots (default: WORKDIR/data).")
@writes_workdir
def data_describe(cfg: Config, plots_dir: str | None) -> None:
    """Class distribution and words per example per class; writes the two plots as PNG."""
    from cleanloop import api

    res = api.describe(cfg, plots_dir)
    for split, sub in res.table.groupby("split", sort=False):
        click.echo(f"\n{split}: {int(sub['examples'].sum()):,} examples")
        click.echo(f"  {'label':<14}{'examples':>9}{'share':>8}{'words mean':>12}{'median':>8}{'max':>6}")
        for r in sub.itertuples():
            click.echo(
                f"  {r.label:<14}{r.examples:>9,}{r.share:>8.1%}{r.words_mean:>12.1f}{r.words_median:>8.0f}{r.words_max:>6}"
            )
    click.echo("\nplots: " + ", ".join(str(p) for p in res.plots))


# --- train -----------------------------------------------------------------------


@app.command()
@config_options("data", "model", "training")
@click.option("--ensemble", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train N fine-tuned models (seeds SEED, SEED+1, ... or, with --from-study, the study's N best "
                   "settings) saved as one model folder that averages their probabilities.")
@click.option("--from-study", is_flag=True, default=False,
              help="Take the settings from the best trial(s) of the 'cleanloop tune' study in WORKDIR/tune.")
@click.option("--study-name", default="cleanloop", show_default=True, help="Study to read with --from-study.")
@writes_workdir
def train(cfg: Config, ensemble: int, from_study: bool, study_name: str) -> None:
    """Train the classifier (fine-tune, or --method features) and evaluate it on validation and test."""
    from cleanloop import api
    from cleanloop.model.precision import describe, summary

    result = api.train(cfg, ensemble=ensemble, from_study=from_study, study_name=study_name)
    if not result.main_process:
        return  # another rank of `accelerate launch`: the main process reports
    click.echo(f"\nmodel saved to {result.output_dir} (trained in {result.train_seconds:.0f} s)")
    rows = [("dummy (most frequent)", m) for m in [result.metrics.get("dummy", {}).get("test")] if m]
    rows += [(f"{m['folder']} (seed {m['seed']}) test", m["test"]) for m in result.metrics.get("members", [])
             if "test" in m]
    what = f"ensemble of {ensemble}" if ensemble > 1 else cfg.method
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
@config_options("data", "model", "training")
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
    from cleanloop import api

    result = api.tune(cfg, trials=trials, timeout=timeout, study_name=study_name, min_epochs=min_epochs,
                      max_epochs=max_epochs, progress=click.echo)
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
@config_options("data", "model")
@click.option("--model", "model_path", type=click.Path(), default=None,
              help="Model folder (default: WORKDIR/model, or WORKDIR/features with --method features).")
@click.option("--split", "splits", multiple=True, default=("train", "validation", "test"), show_default=True,
              help="Split(s) to score.")
@click.option("--output", "output_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for <split>.parquet (default: WORKDIR/scores).")
@writes_workdir
def score(cfg: Config, model_path: str | None, splits: tuple[str, ...], output_dir: str | None) -> None:
    """Score every example: probabilities, prediction, per-sample loss and embedding, as parquet keyed by id."""
    from cleanloop import api

    for r in api.score(cfg, model=model_path, splits=splits, output=output_dir).splits:
        click.echo(f"{r.split}: {r.examples:,} examples scored, accuracy {r.accuracy:.2%}, mean loss {r.mean_loss:.3f} "
                   f"-> {r.path}")


# --- config ----------------------------------------------------------------------


@app.command("config")
@config_options
def show_config(cfg: Config) -> None:
    """Print the configuration in effect (file + options), as JSON: one object per TOML table."""
    _echo_json(cfg.to_dict())



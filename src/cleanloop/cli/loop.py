"""The review round trip: ``cleanloop push``, ``pull``, ``export`` and ``retrain-loop``."""

from __future__ import annotations

import click

from cleanloop.api import ReviewProgress
from cleanloop.cli.argilla import home_option
from cleanloop.cli.options import app, config_options, writes_workdir
from cleanloop.config import Config





@app.command()
@config_options("data", "model", "argilla", "review")
@home_option
@click.option("--round", "rnd", type=int, default=None, help="Review round written on the records (default: next).")
@click.option("--queue", "queue_path", type=click.Path(dir_okay=False), default=None,
              help="Review queue parquet (default: WORKDIR/flags/review_queue.parquet from 'cleanloop flag').")
@click.option("--non-interactive", is_flag=True, help="No progress bar: one log line per change (CI).")
@writes_workdir
def push(cfg: Config, home: str | None, rnd: int | None, queue_path: str | None, non_interactive) -> None:
    """Send the review queue to Argilla (record id = example id; already reviewed examples are skipped).

    With --review-wave N (default 1) only N records are pending at a time, so that annotators see
    the queue most suspicious first: push stays and sends the next record as each is answered,
    until the queue is answered or --review-timeout passes (Ctrl-C stops; run push again to go on).
    --review-wave 0 sends the whole queue at once and returns.
    """
    from cleanloop import api

    def waiting(res) -> None:
        click.echo(f"{len(res.ids):,} records to review at {_where(cfg, res)}; {cfg.review_wave} pending at a time, "
                   "most suspicious first: keep this running while annotators work (Ctrl-C stops; push again goes on)")

    display = ReviewProgress(non_interactive)
    try:
        res = api.push(cfg, home=home, round=rnd, queue=queue_path, progress=not non_interactive, display=display,
                       on_pushed=waiting)
    finally:
        display.close()
    if res.answered is None:
        click.echo(f"pushed {len(res.ids):,} records to {_where(cfg, res)}")
    else:
        click.echo(f"pushed {res.pushed:,} of {len(res.ids):,} records, {res.answered:,} answered; next: cleanloop pull")


def _where(cfg: Config, res) -> str:
    return (f"{res.url} dataset {res.dataset} (round {res.round}; {res.skipped:,} already reviewed, skipped)")


@app.command()
@config_options("data", "argilla")
@home_option
@click.option("--round", "rnd", type=int, default=None, help="Round these answers belong to (default: next).")
@click.option("--non-interactive", is_flag=True, help="No progress bar (CI).")
@writes_workdir
def pull(cfg: Config, home: str | None, rnd: int | None, non_interactive: bool) -> None:
    """Take the annotators' answers into the corrections journal and write the cleaned data version."""
    from cleanloop import api

    result = api.pull(cfg, home=home, round=rnd, progress=not non_interactive)
    applied = api.apply(cfg, round=result.round)
    stats, rnd, path = applied.stats, applied.round, applied.version
    agreement = "" if stats["agreement"] is None else f", agreement {stats['agreement']:.2f}"
    click.echo(f"pulled {result.new_votes:,} new answers, {result.decisions:,} new decisions ({result.changed} "
               f"corrected, {result.removed} removed, {result.open} tied and open); round {rnd}: "
               f"{stats['reviewed']} reviewed, {stats['changed']} changed, {stats['removed']} removed{agreement}; "
               f"version: {path}")


@app.command()
@config_options(fields=("method", "base_model"))
@click.option("--to", "to_dir", type=click.Path(file_okay=False), default=None, help="Write the data set to this folder.")
@click.option("--hub", "repo_id", default=None, help="Push the data set to this Hub repo (owner/name); token: HF_TOKEN.")
@click.option("--private/--public", default=True, show_default=True, help="Visibility of a new Hub repo (private unless --public).")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier export of cleanloop's in --to / --model-to (never a folder cleanloop did not make).")
@click.option("--keep-removed", is_flag=True, help="Keep the examples annotators removed (label_source 'removed').")
@click.option("--version", "version_path", type=click.Path(file_okay=False), default=None,
              help="Data version folder (default: the latest, WORKDIR/versions/round-NNN).")
@click.option("--model-to", type=click.Path(file_okay=False), default=None, help="Also copy the model with its card here.")
@click.option("--model-hub", default=None, help="Also push the model to this Hub repo (owner/name).")
@writes_workdir
def export(cfg: Config, to_dir, repo_id, private, overwrite, keep_removed, version_path, model_to, model_hub) -> None:
    """Publish the cleaned data set (parquet per split + dataset card) and optionally the model."""
    from cleanloop import api

    res = api.export(cfg, to=to_dir, hub=repo_id, private=private, overwrite=overwrite, keep_removed=keep_removed,
                     version=version_path, model_to=model_to, model_hub=model_hub)
    if res.dataset:
        click.echo(f"data set: {res.dataset}")
    if res.dataset_hub:
        click.echo(f"data set pushed to https://huggingface.co/datasets/{res.dataset_hub}")
    if res.model:
        click.echo(f"model: {res.model}")
    if res.model_hub:
        click.echo(f"model pushed to https://huggingface.co/{res.model_hub}")


@app.command("retrain-loop")
@config_options("data", "model", "training", "flagging", "argilla", "review", "loop")
@home_option
@click.option("--non-interactive", is_flag=True, help="No progress bar: one log line per change (CI).")
@writes_workdir
def retrain_loop(cfg: Config, home, non_interactive) -> None:
    """Train -> flag -> push -> wait for reviews -> pull -> apply, per round; then retrain and evaluate.

    Resumable: run it again after a crash or Ctrl-C and it goes on where it stopped
    (state in WORKDIR/loop/state.json). --max-review caps each round's review queue.
    """
    from cleanloop import api

    display = ReviewProgress(non_interactive)

    def on_step(rnd, step, res):
        if step == "wait":
            display.close()
        msg = {"train": lambda: f"trained on {res.get('train_examples')} examples: test accuracy "
                                f"{res.get('test_accuracy', float('nan')):.2%}, macro F1 {res.get('test_macro_f1', float('nan')):.3f}",
               "flag": lambda: f"flagged {res.get('flagged')}, queued {res.get('queued')}",
               "push": lambda: f"{res.get('pushed')} records to review at {cfg.argilla_url}"
                               + (f", {cfg.review_wave} pending at a time, most suspicious first" if cfg.review_wave else ""),
               "wait": lambda: f"{res.get('answered')} answered",
               "pull": lambda: f"{res.get('reviewed')} reviewed, {res.get('changed')} changed, {res.get('removed')} removed",
               "apply": lambda: f"data version {res.get('version')}",
               "final": lambda: f"final model: test accuracy {res.get('test_accuracy', float('nan')):.2%}, "
                                f"macro F1 {res.get('test_macro_f1', float('nan')):.3f}"}[step]()
        click.echo(f"[round {rnd}] {step}: {msg}")

    res = api.retrain_loop(cfg, home=home, display=display, on_step=on_step)  # again: goes on where it stopped
    click.echo(f"done: {len(res.state.rounds)} round(s); history {res.history}; report {res.report}")

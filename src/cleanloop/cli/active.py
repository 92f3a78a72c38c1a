"""``cleanloop active``: the active-learning loop (train -> score the pool -> pick -> label in Argilla)."""

from __future__ import annotations

import click

from cleanloop.cli.argilla import home_option
from cleanloop.cli.loop import ReviewProgress
from cleanloop.cli.options import app, config_options, writes_workdir
from cleanloop.config import Config


@app.command()
@config_options("data", "model", "training", "argilla", "active")
@home_option
@click.option("--non-interactive", is_flag=True, help="No progress bar: one log line per change (CI).")
@writes_workdir
def active(cfg: Config, home, non_interactive) -> None:
    """Active learning: label what the model learns most from, in Argilla dataset <argilla-dataset>-label.

    Works from zero labels: give the label names (--label-names a,b,c or label_names in the config;
    optionally label_descriptions) and a pool with a text column. The first batch covers the pool's
    clusters, suggested zero-shot; then a light head on cached sentence embeddings is refitted as
    answers arrive and the next batch is queued before the current one is done, so the annotator
    never waits. From --finetune-after labels on, the encoder is fine-tuned in the background and the
    head moves onto it when it wins on held-out labels. Stop with Ctrl-C and run again to resume. Then: cleanloop export --workdir WORKDIR/active.
    """
    from cleanloop import api

    opts = cfg.active
    if not opts.full_retrain:
        return _session(cfg, home)

    display = ReviewProgress(non_interactive)

    def metrics(res):
        return (f"{res.get('model')} on {res.get('labelled')} labels: test accuracy "
                f"{res.get('test_accuracy', float('nan')):.2%}, macro F1 {res.get('test_macro_f1', float('nan')):.3f}")

    def on_step(rnd, step, res):
        if step == "wait":
            display.close()
        msg = {"train": lambda: metrics(res),
               "query": lambda: f"picked {res.get('queried')} with {opts.strategy} ({res.get('relabel', 0)} to re-label)",
               "push": lambda: f"pushed {res.get('pushed')} records to {cfg.argilla_url}",
               "wait": lambda: f"{res.get('answered')} answered",
               "pull": lambda: f"{res.get('reviewed')} labelled ({res.get('removed')} discarded)",
               "apply": lambda: f"data version {res.get('version')}",
               "final": lambda: "final " + metrics(res)}[step]()
        click.echo(f"[round {rnd}] {step}: {msg}")

    res = api.active(cfg, opts, home=home, display=display, on_step=on_step)  # again: goes on where it stopped
    click.echo(f"done: {len(res.state.rounds)} round(s); history {res.history}")


def _session(cfg: Config, home) -> None:
    from cleanloop import api

    def on_pool(data):
        seeds = int((data.labels >= 0).sum())
        click.echo(f"pool: {len(data.ids):,} texts, {seeds:,} labelled (seeds); labels: {', '.join(data.names)}")

    def on_batch(info, head):
        click.echo(f"[batch {info.batch}] queued {len(info.ids)} by {info.strategy} ({info.model} head on "
                   f"{info.model_labels} labels, {info.labels_at_push} answered) in {info.pick_seconds:.2f} s")

    def on_answers(labels, pending):
        click.echo(f"  {labels} labels, {pending} queued for the annotators")

    res = api.active(cfg, cfg.active, home=home, on_pool=on_pool, on_batch=on_batch, on_answers=on_answers)
    if res.stopped:
        click.echo("stopped; run the same command again to go on")
        return
    click.echo(f"done: {len(res.batches)} batch(es) queued in this run; export the labels with "
               f"cleanloop export --workdir {res.workdir}")

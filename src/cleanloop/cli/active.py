"""``cleanloop active``: the active-learning loop (train -> score the pool -> pick -> label in Argilla)."""

from __future__ import annotations

import click

from cleanloop.cli.loop import ReviewProgress, _home_option, review_wait_options
from cleanloop.cli.options import app, config_options, writes_workdir
from cleanloop.config import Config
from cleanloop.loops.active import ActiveOptions
from cleanloop.loops.strategies import STRATEGIES


@app.command()
@config_options
@_home_option
@click.option("--strategy", type=click.Choice(sorted(STRATEGIES)), default="margin", show_default=True,
              help="How to pick the next batch (activelab may also pick labelled examples for another label).")
@click.option("--batch", type=int, default=64, show_default=True, help="Examples to label per round.")
@click.option("--rounds", type=int, default=1, show_default=True, help="Rounds to run (a resumed run goes on to this).")
@click.option("--seed-per-class", type=int, default=8, show_default=True,
              help="Labels per class revealed from the pool to start with.")
@click.option("--switch-per-class", type=int, default=ActiveOptions.switch_per_class, show_default=True,
              help="From this many labels per class on, train the fine-tuned classifier instead of SetFit.")
@click.option("--pool", default=None,
              help="The unlabelled pool (same forms as --dataset; its train split, labels hidden). "
                   "Default: the --dataset train split.")
@click.option("--setfit-iterations", type=int, default=ActiveOptions.setfit_iterations, show_default=True,
              help="SetFit pairs per example.")
@click.option("--min-train-examples", type=int, default=ActiveOptions.min_train_examples, show_default=True,
              help="A fine-tune on few labels runs enough epochs to see at least this many examples.")
@review_wait_options
@click.option("--non-interactive", is_flag=True, help="No progress bar: one log line per change (CI).")
@writes_workdir
def active(cfg: Config, home, strategy, batch, rounds, seed_per_class, switch_per_class, pool, setfit_iterations,
           min_train_examples, min_reviewed, review_timeout, poll_seconds, non_interactive) -> None:
    """Active learning: label what the model learns most from, in Argilla dataset <argilla-dataset>-label.

    Each round trains on the labels so far (SetFit with few labels, the fine-tuned classifier from
    --switch-per-class on), picks --batch pool examples with --strategy, pushes them with the model's
    suggestion and waits for the annotators. Resumable (state in WORKDIR/active/loop/state.json).
    """
    from cleanloop.labeling.argilla_io import server_errors
    from cleanloop.loops.active import ActiveOptions, active_config, run_active
    from cleanloop.loops.retrain import loop_root

    opts = ActiveOptions(strategy=strategy, batch_size=batch, rounds=rounds, seed_per_class=seed_per_class,
                         switch_per_class=switch_per_class, pool=pool, setfit_iterations=setfit_iterations,
                         min_train_examples=min_train_examples,
                         min_reviewed=min_reviewed, review_timeout=review_timeout, poll_seconds=poll_seconds,
                         interactive=not non_interactive)
    display = ReviewProgress(non_interactive)

    def metrics(res):
        return (f"{res.get('model')} on {res.get('labelled')} labels: test accuracy "
                f"{res.get('test_accuracy', float('nan')):.2%}, macro F1 {res.get('test_macro_f1', float('nan')):.3f}")

    def on_step(rnd, step, res):
        if step == "wait":
            display.close()
        msg = {"train": lambda: metrics(res),
               "query": lambda: f"picked {res.get('queried')} with {strategy} ({res.get('relabel', 0)} to re-label)",
               "push": lambda: f"pushed {res.get('pushed')} records to {cfg.argilla_url}",
               "wait": lambda: f"{res.get('answered')} answered",
               "pull": lambda: f"{res.get('reviewed')} labelled ({res.get('removed')} discarded)",
               "apply": lambda: f"data version {res.get('version')}",
               "final": lambda: "final " + metrics(res)}[step]()
        click.echo(f"[round {rnd}] {step}: {msg}")

    with server_errors(cfg.argilla_url, "active"):  # resumable: running it again goes on where it stopped
        state = run_active(cfg, opts, home=home, display=display, on_step=on_step)
    click.echo(f"done: {len(state.rounds)} round(s); history {loop_root(active_config(cfg)) / 'history.json'}")

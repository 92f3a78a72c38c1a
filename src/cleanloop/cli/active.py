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
@click.option("--strategy", type=click.Choice(sorted(STRATEGIES)), default="diversity", show_default=True,
              help="How to pick the next batch (the first batch of a pool without labels: coverage; activelab, "
                   "which may pick labelled examples again, only with --full-retrain).")
@click.option("--batch", type=int, default=20, show_default=True, help="Examples to label per batch.")
@click.option("--max-labels", type=int, default=0, show_default=True,
              help="Stop once this many labels are in (0: when the pool is done or no answer came for --idle-timeout).")
@click.option("--prefetch", type=int, default=0, show_default=True,
              help="Queue the next batch once this many records are left unanswered (0: half a batch).")
@click.option("--idle-timeout", type=float, default=3600.0, show_default=True,
              help="Stop after this many seconds without a new answer.")
@click.option("--full-retrain", is_flag=True,
              help="The blocking round loop instead: retrain SetFit / the fine-tuned classifier after each batch "
                   "(the pool's labels are hidden except --seed-per-class; --rounds rounds).")
@click.option("--rounds", type=int, default=1, show_default=True, help="Rounds to run (a resumed run goes on to this).")
@click.option("--seed-per-class", type=int, default=8, show_default=True,
              help="Labels per class revealed from the pool to start with.")
@click.option("--switch-per-class", type=int, default=ActiveOptions.switch_per_class, show_default=True,
              help="From this many labels per class on, train the fine-tuned classifier instead of SetFit.")
@click.option("--pool", default=None,
              help="The pool to label: a csv/jsonl/parquet file, folder or Hub id with a text column (optional id "
                   "and label columns; given labels are seeds). Default: the --dataset train split.")
@click.option("--setfit-iterations", type=int, default=ActiveOptions.setfit_iterations, show_default=True,
              help="SetFit pairs per example.")
@click.option("--min-train-examples", type=int, default=ActiveOptions.min_train_examples, show_default=True,
              help="A fine-tune on few labels runs enough epochs to see at least this many examples.")
@review_wait_options
@click.option("--webhooks", is_flag=True,
              help="With --full-retrain: also be woken by Argilla webhooks (listener on 127.0.0.1; for a server on "
                   "this machine).")
@click.option("--non-interactive", is_flag=True, help="No progress bar: one log line per change (CI).")
@writes_workdir
def active(cfg: Config, home, strategy, batch, max_labels, prefetch, idle_timeout, full_retrain, rounds, seed_per_class,
           switch_per_class, pool, setfit_iterations, min_train_examples, min_reviewed, review_timeout, poll_seconds,
           webhooks, non_interactive) -> None:
    """Active learning: label what the model learns most from, in Argilla dataset <argilla-dataset>-label.

    Works from zero labels: give the label names (--label-names a,b,c or label_names in the config;
    optionally label_descriptions) and a pool with a text column. The first batch covers the pool's
    clusters, suggested zero-shot; then a light head on cached sentence embeddings is refitted as
    answers arrive and the next batch is queued before the current one is done, so the annotator
    never waits. Stop with Ctrl-C and run again to resume. Then: cleanloop export --workdir WORKDIR/active.
    """
    from cleanloop.labeling.argilla_io import server_errors
    from cleanloop.loops.active import ActiveOptions, run_active
    from cleanloop.workdir import Workdir

    if not full_retrain:
        return _session(cfg, home, strategy, batch, max_labels, prefetch, idle_timeout, pool,
                        poll_seconds if poll_seconds != 5.0 else 1.0)

    opts = ActiveOptions(strategy=strategy, batch_size=batch, rounds=rounds, seed_per_class=seed_per_class,
                         switch_per_class=switch_per_class, pool=pool, setfit_iterations=setfit_iterations,
                         min_train_examples=min_train_examples,
                         min_reviewed=min_reviewed, review_timeout=review_timeout, poll_seconds=poll_seconds,
                         interactive=not non_interactive, webhooks=webhooks)
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
    click.echo(f"done: {len(state.rounds)} round(s); history {Workdir.of(cfg).active().history}")


def _session(cfg: Config, home, strategy, batch, max_labels, prefetch, idle_timeout, pool, poll_seconds) -> None:
    from cleanloop.loops import online

    opts = online.SessionOptions(strategy=strategy, batch_size=batch, prefetch=prefetch, max_labels=max_labels,
                                 poll_seconds=poll_seconds, idle_timeout=idle_timeout, seed=cfg.seed)
    data = online.load_pool(cfg, pool)
    seeds = int((data.labels >= 0).sum())
    click.echo(f"pool: {len(data.ids):,} texts, {seeds:,} labelled (seeds); labels: {', '.join(data.names)}")
    emb = online.embed(cfg, data.ids, data.texts)
    anchors = online.label_anchors(cfg, data.names)

    def on_batch(info, head):
        click.echo(f"[batch {info.batch}] queued {len(info.ids)} by {info.strategy} ({info.model} head on "
                   f"{info.model_labels} labels, {info.labels_at_push} answered) in {info.pick_seconds:.2f} s")

    def on_answers(labels, pending):
        click.echo(f"  {labels} labels, {pending} queued for the annotators")

    from cleanloop.workdir import Workdir

    try:
        batches = online.run_session(cfg, opts, pool=data, embeddings=emb, anchors=anchors, home=home,
                                     on_batch=on_batch, on_answers=on_answers)
    except KeyboardInterrupt:
        click.echo("stopped; run the same command again to go on")
        return
    click.echo(f"done: {len(batches)} batch(es) queued in this run; export the labels with "
               f"cleanloop export --workdir {Workdir.of(cfg).active().root}")

"""The review round trip: ``cleanloop push``, ``pull``, ``export`` and ``retrain-loop``."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from cleanloop.cli.options import app, config_options, writes_workdir
from cleanloop.config import Config
from cleanloop.errors import CleanloopError

log = logging.getLogger("cleanloop")

_home_option = click.option(
    "--home", type=click.Path(file_okay=False), default=None,
    help="Embedded Argilla home, for its owner API key (default: WORKDIR/argilla); ARGILLA_API_KEY wins.",
)


def review_wait_options(func):
    """--min-reviewed, --review-timeout, --poll-seconds: how a loop waits for the annotators."""
    func = click.option("--poll-seconds", type=float, default=5.0, show_default=True,
                        help="How often to ask Argilla.")(func)
    func = click.option("--review-timeout", type=float, default=3600.0, show_default=True,
                        help="Seconds to wait for answers; then go on with those there are.")(func)
    return click.option("--min-reviewed", type=int, default=0, show_default=True,
                        help="Go on once this many pushed records are answered (0: all of them).")(func)


@app.command()
@config_options
@_home_option
@click.option("--round", "rnd", type=int, default=None, help="Review round written on the records (default: next).")
@click.option("--queue", "queue_path", type=click.Path(dir_okay=False), default=None,
              help="Review queue parquet (default: WORKDIR/flags/review_queue.parquet from 'cleanloop flag').")
@review_wait_options
@click.option("--non-interactive", is_flag=True, help="No progress bar: one log line per change (CI).")
@writes_workdir
def push(cfg: Config, home: str | None, rnd: int | None, queue_path: str | None, min_reviewed, review_timeout,
         poll_seconds, non_interactive) -> None:
    """Send the review queue to Argilla (record id = example id; already reviewed examples are skipped).

    With --review-wave N (default 1) only N records are pending at a time, so that annotators see
    the queue most suspicious first: push stays and sends the next record as each is answered,
    until the queue is answered or --review-timeout passes (Ctrl-C stops; run push again to go on).
    --review-wave 0 sends the whole queue at once and returns.
    """
    import pandas as pd

    from cleanloop.identity import load_workdir_data
    from cleanloop.labeling import argilla_io as aio
    from cleanloop.loops.retrain import embed_queue
    from cleanloop.loops.review import reviewed_ids, wait_for_reviews, wave_pusher
    from cleanloop.workdir import Workdir

    wd = Workdir.of(cfg)
    path = Path(queue_path) if queue_path else wd.review_queue
    if not path.exists():
        raise CleanloopError(f"no review queue at {path}; fix: run 'cleanloop flag' first or pass --queue")
    queue = pd.read_parquet(path)
    rnd = rnd if rnd is not None else wd.latest_version() + 1
    train = load_workdir_data(cfg)["train"]
    emb = embed_queue(cfg, train, queue)
    client = aio.connect(cfg, home)
    skip = reviewed_ids(wd)
    bar = _bar(non_interactive, len(queue) - len(skip & set(queue["id"])), "push")
    with aio.server_errors(cfg.argilla_url, "push"):
        pusher = wave_pusher(client, cfg, queue, emb, train.features["label"].names, rnd, skip, wave=cfg.review_wave,
                             progress=bar.update if bar is not None else None)
        ids = pusher.ids if pusher else []
        where = f"{cfg.argilla_url} dataset {cfg.argilla_workspace}/{cfg.argilla_dataset} (round {rnd}; " \
                f"{len(queue) - len(ids):,} already reviewed, skipped)"
        if pusher is not None and cfg.review_wave > 0:
            pusher.feed(0)
            if bar is not None:
                bar.close()
            click.echo(f"{len(ids):,} records to review at {where}; {cfg.review_wave} pending at a time, most "
                       "suspicious first: keep this running while annotators work (Ctrl-C stops; push again goes on)")
            display = ReviewProgress(non_interactive)
            try:
                answered = wait_for_reviews(client, cfg, ids, min_reviewed, review_timeout, poll_seconds, display,
                                            feed=pusher.feed)
            finally:
                display.close()
            click.echo(f"pushed {pusher.pushed:,} of {len(ids):,} records, {answered:,} answered; next: cleanloop pull")
            return
        if pusher is not None:
            pusher.feed(0)
    if bar is not None:
        bar.close()
    click.echo(f"pushed {len(ids):,} records to {where}")


def _bar(non_interactive: bool, total: int | None, desc: str):
    """A tqdm progress bar over records, or None when non-interactive."""
    if non_interactive:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="rec")


@app.command()
@config_options
@_home_option
@click.option("--round", "rnd", type=int, default=None, help="Round these answers belong to (default: next).")
@click.option("--non-interactive", is_flag=True, help="No progress bar (CI).")
@writes_workdir
def pull(cfg: Config, home: str | None, rnd: int | None, non_interactive: bool) -> None:
    """Take the annotators' answers into the corrections journal and write the cleaned data version."""
    from cleanloop.labeling import argilla_io as aio
    from cleanloop.labeling.journal import Journal
    from cleanloop.loops.review import pull_step, round_stats
    from cleanloop.loops.versions import write_version
    from cleanloop.identity import load_workdir_data
    from cleanloop.workdir import Workdir

    wd = Workdir.of(cfg)
    rnd = rnd if rnd is not None else wd.latest_version() + 1
    original = load_workdir_data(cfg)
    client = aio.connect(cfg, home)
    bar = _bar(non_interactive, None, "pull")
    with Journal(wd.journal) as journal:
        with aio.server_errors(cfg.argilla_url, "pull"):
            result = pull_step(client, cfg, journal, original["train"], rnd,
                               progress=bar.update if bar is not None else None)
        if bar is not None:
            bar.close()
        path = write_version(original, journal, wd.versions, rnd)
        stats = round_stats(journal, rnd)
    agreement = "" if stats["agreement"] is None else f", agreement {stats['agreement']:.2f}"
    click.echo(f"pulled {result.new_votes:,} new answers, {len(result.decisions):,} new decisions ({result.changed} "
               f"corrected, {result.removed} removed, {len(result.open_ids)} tied and open); round {rnd}: "
               f"{stats['reviewed']} reviewed, {stats['changed']} changed, {stats['removed']} removed{agreement}; "
               f"version: {path}")


@app.command()
@config_options
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
    from cleanloop.labeling.journal import Journal
    from cleanloop.loops import export as ex
    from cleanloop.loops.versions import load_version
    from cleanloop.model.train import model_dir
    from cleanloop.workdir import Workdir

    if not (to_dir or repo_id or model_to or model_hub):
        raise CleanloopError("nothing to export to; fix: pass --to FOLDER and/or --hub OWNER/NAME")
    for folder in (to_dir, model_to):
        if folder:
            ex.check_export_folder(folder, overwrite)  # both checked before anything is written
    wd = Workdir.of(cfg)
    path = Path(version_path) if version_path else wd.version(wd.latest_version())
    version, meta = load_version(path)
    summary = Journal(wd.journal).summary() if wd.journal.exists() else {}
    info = ex.CleaningInfo(rounds=meta["round"], model=f"{cfg.method} on {cfg.base_model}",
                           reviewed=sum(summary.get(k, 0) for k in ("corrected", "confirmed", "removed")),
                           agreement=summary.get("agreement"))
    from cleanloop.loops.online import labelled_only, session_summary

    active = session_summary(wd)
    if active:  # WORKDIR/active of `cleanloop active`: the labelled examples, and how they were chosen
        version = labelled_only(version)
        info = ex.CleaningInfo(rounds=meta["round"], method="cleanloop active learning: labelled in Argilla from "
                               "model-chosen batches", model=f"logistic regression on {cfg.base_model} embeddings",
                               reviewed=info.reviewed, agreement=info.agreement, extra=active)
    if to_dir:
        click.echo(f"data set: {ex.export_dataset(version, to_dir, info, keep_removed=keep_removed, overwrite=overwrite)}")
    if repo_id:
        click.echo(f"data set pushed to https://huggingface.co/datasets/"
                   f"{ex.push_dataset_to_hub(version, repo_id, info, private=private, keep_removed=keep_removed)}")
    if model_to or model_hub:
        final = wd.round("final").model(cfg.method)
        folder = final if final.exists() else model_dir(cfg)
        if model_to:
            click.echo(f"model: {ex.export_model(folder, model_to, info, overwrite=overwrite)}")
        if model_hub:
            click.echo(f"model pushed to https://huggingface.co/{ex.push_model_to_hub(folder, model_hub, private=private)}")


class ReviewProgress:
    """The wait step's display(done, target): a progress bar, or one line per change when non-interactive."""

    def __init__(self, non_interactive: bool):
        self.non_interactive = non_interactive
        self.bar = None
        self.last = -1

    def __call__(self, done: int, target: int) -> None:
        if self.non_interactive:
            if done != self.last:
                click.echo(f"reviews: {done}/{target} answered")
                self.last = done
            return
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=target, desc="waiting for reviews", unit="rec")
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.last = -1


@app.command("retrain-loop")
@config_options
@_home_option
@click.option("--rounds", type=int, default=1, show_default=True, help="Review rounds before the final retrain.")
@review_wait_options
@click.option("--webhooks", is_flag=True,
              help="Also be woken by Argilla webhooks (listener on 127.0.0.1; for a server on this machine).")
@click.option("--non-interactive", is_flag=True, help="No progress bar: one log line per change (CI).")
@writes_workdir
def retrain_loop(cfg: Config, home, rounds, min_reviewed, review_timeout, poll_seconds, webhooks, non_interactive) -> None:
    """Train -> flag -> push -> wait for reviews -> pull -> apply, per round; then retrain and evaluate.

    Resumable: run it again after a crash or Ctrl-C and it goes on where it stopped
    (state in WORKDIR/loop/state.json). --max-review caps each round's review queue.
    """
    from cleanloop.labeling.argilla_io import server_errors
    from cleanloop.loops.retrain import LoopOptions, run_loop
    from cleanloop.workdir import Workdir

    opts = LoopOptions(rounds=rounds, min_reviewed=min_reviewed, review_timeout=review_timeout,
                       poll_seconds=poll_seconds, interactive=not non_interactive, webhooks=webhooks)
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

    with server_errors(cfg.argilla_url, "retrain-loop"):  # resumable: running it again goes on where it stopped
        state = run_loop(cfg, opts, home=home, display=display, on_step=on_step)
    wd = Workdir.of(cfg)
    click.echo(f"done: {len(state.rounds)} round(s); history {wd.history}; report {wd.report}")

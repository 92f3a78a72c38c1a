"""``cleanloop flag``: rank every training example by how likely its label is wrong."""

from __future__ import annotations

import logging
from pathlib import Path

import click
import numpy as np

from cleanloop.cli.options import app, config_options, writes_workdir
from cleanloop.config import Config
from cleanloop.loops.judge import judging_probs

log = logging.getLogger("cleanloop")


def flag_summary(scores) -> str:
    """One line: how many examples each reason flags (``flagged_by``), and the conflicting copy groups."""
    from cleanloop.loops.flag import REASONS

    counts = {r: int(scores["flagged_by"].str.split(",").apply(lambda rs, r=r: r in rs).sum()) for r in REASONS}
    groups = scores.loc[scores["duplicate"] | scores["near_duplicate"], "duplicate_group"].nunique()
    return (f"{counts['duplicate']:,} exact and {counts['near_duplicate']:,} near duplicates with conflicting labels "
            f"({groups:,} groups, each reviewed as one record), {counts['outlier']:,} outliers")


@app.command()
@config_options
@click.option("--map/--no-map", "with_map", default=True, show_default=True,
              help="Add the 2-D UMAP of the embeddings to the report.")
@click.option("--output", "output_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for scores.parquet, review_queue.parquet and the report (default: WORKDIR/flags).")
@writes_workdir
def flag(cfg: Config, with_map: bool, output_dir: str | None) -> None:
    """Flag likely mislabelled training examples: scores.parquet, review_queue.parquet and a report."""
    from cleanloop.loops.flag import confident_examples, example_checks, review_queue, scores_table, signal_table
    from cleanloop.loops.report import write_report
    from cleanloop.loops.review import reviewed_ids
    from cleanloop.identity import load_workdir_data
    from cleanloop.model.score import write_parquet_atomic
    from cleanloop.workdir import Workdir

    dd = load_workdir_data(cfg)
    train = dd["train"]
    names = train.features["label"].names
    labels = np.asarray(train["label"])
    probs, embeddings, source = judging_probs(cfg, train)
    table = signal_table(labels, probs, cfg.filter_by)
    checks, features = example_checks(cfg, train, embeddings)
    embeddings = features if embeddings is None else embeddings
    scores = scores_table(train["id"], train["text"], labels, probs, names, table, checks)
    queue = review_queue(scores, cfg.max_review, reviewed_ids(Workdir.of(cfg)))  # already reviewed: not again
    out = Path(output_dir) if output_dir else Workdir.of(cfg).flags
    write_parquet_atomic(scores, out / "scores.parquet")
    write_parquet_atomic(queue, out / "review_queue.parquet")
    confident = confident_examples(scores)
    write_parquet_atomic(confident, out / "confident_examples.parquet")
    emb = None
    if with_map:
        if embeddings is None:
            from tqdm.auto import tqdm

            from cleanloop.model.predict import Predictor

            pred = Predictor.load(Workdir.of(cfg).model("finetune"), max_length=cfg.max_length, precision=cfg.precision)
            with tqdm(total=len(train), desc="embed for the map", unit="ex") as bar:
                embeddings = pred.predict_arrays(train["text"], cfg.eval_batch_size, bar.update)["embeddings"]
        order = {i: n for n, i in enumerate(train["id"])}
        emb = embeddings[[order[i] for i in scores["id"]]]
    report = write_report(scores, queue, confident, names, out, source, emb, cfg.seed)
    click.echo(f"signals from {source}")
    click.echo(f"flagged {int(scores['is_issue'].sum()):,} of {len(scores):,} ({scores['is_issue'].mean():.1%}); "
               f"review queue {len(queue):,} (max_review {cfg.max_review})")
    click.echo(f"checks: {flag_summary(scores)}")
    for r in scores.head(5).itertuples():
        click.echo(f"  #{r.rank} {r.id} given {r.given_label} -> suggested {r.suggested_label} "
                   f"({r.suggested_score:.2f}): {r.text[:80]}")
    click.echo(f"scores: {out / 'scores.parquet'}; queue: {out / 'review_queue.parquet'}; report: {report}")

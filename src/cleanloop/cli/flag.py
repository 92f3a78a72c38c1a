"""``cleanloop flag``: rank every training example by how likely its label is wrong."""

from __future__ import annotations

import click

from cleanloop.cli.options import app, config_options, writes_workdir
from cleanloop.config import Config


def flag_summary(scores) -> str:
    """One line: how many examples each reason flags (``flagged_by``), and the conflicting copy groups."""
    from cleanloop.loops.flag import REASONS

    counts = {r: int(scores["flagged_by"].str.split(",").apply(lambda rs, r=r: r in rs).sum()) for r in REASONS}
    groups = scores.loc[scores["duplicate"] | scores["near_duplicate"], "duplicate_group"].nunique()
    return (f"{counts['duplicate']:,} exact and {counts['near_duplicate']:,} near duplicates with conflicting labels "
            f"({groups:,} groups, each reviewed as one record), {counts['outlier']:,} outliers")


@app.command()
@config_options("data", "model", "training", "flagging")
@click.option("--map/--no-map", "with_map", default=True, show_default=True,
              help="Add the 2-D UMAP of the embeddings to the report.")
@click.option("--output", "output_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for scores.parquet, review_queue.parquet and the report (default: WORKDIR/flags).")
@writes_workdir
def flag(cfg: Config, with_map: bool, output_dir: str | None) -> None:
    """Flag likely mislabelled training examples: scores.parquet, review_queue.parquet and a report."""
    from cleanloop import api

    res = api.flag(cfg, with_map=with_map, output=output_dir)
    scores, queue, out = res.scores, res.queue, res.folder
    click.echo(f"signals from {res.source}")
    click.echo(f"flagged {int(scores['is_issue'].sum()):,} of {len(scores):,} ({scores['is_issue'].mean():.1%}); "
               f"review queue {len(queue):,} (max_review {cfg.max_review})")
    click.echo(f"checks: {flag_summary(scores)}")
    for r in scores.head(5).itertuples():
        click.echo(f"  #{r.rank} {r.id} given {r.given_label} -> suggested {r.suggested_label} "
                   f"({r.suggested_score:.2f}): {r.text[:80]}")
    click.echo(f"scores: {out / 'scores.parquet'}; queue: {out / 'review_queue.parquet'}; report: {res.report}")

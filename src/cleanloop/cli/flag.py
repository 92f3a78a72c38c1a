"""``cleanloop flag``: rank every training example by how likely its label is wrong."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import numpy as np

from cleanloop.atomic import save_npy
from cleanloop.cli.options import app, config_options, writes_workdir
from cleanloop.config import Config
from cleanloop.errors import CleanloopError, WeakModelError

log = logging.getLogger("cleanloop")


def judging_probs(cfg: Config, train_ds) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Probabilities that judge the train labels, the embeddings if they come for free, and a description."""
    from cleanloop.loops.oof import oof_finetune, oof_logreg
    from cleanloop.loops.signals import dynamics_probs
    from cleanloop.model.train import extract_features, model_dir

    labels = np.asarray(train_ds["label"])
    names = train_ds.features["label"].names
    if cfg.flag_source == "dynamics":
        path = model_dir(cfg.replace(method="finetune")) / "dynamics.npz"
        if not path.exists():
            raise CleanloopError(
                f"no training dynamics at {path}; fix: run 'cleanloop train' first (it records them), "
                "or use --flag-source oof"
            )
        dyn = np.load(path)
        if list(dyn["ids"]) != list(train_ds["id"]) or not np.array_equal(dyn["labels"], labels):
            raise CleanloopError(
                f"{path} was recorded on another version of the train split (ids or labels differ); "
                "fix: run 'cleanloop train' on this data first"
            )
        source = f"training dynamics of {path.parent} ({len(dyn['probs'])} epoch records)"
        metrics = json.loads((path.parent / "metrics.json").read_text()) if (path.parent / "metrics.json").exists() else {}
        split = next((s for s in ("validation", "test") if s in metrics), None)
        if split:
            check_model(cfg, np.asarray(metrics[split]["confusion_matrix"]), labels, f"{split} ({path.parent})")
        return dynamics_probs(dyn["probs"]), None, source
    cache = cfg.workpath / "cache" / f"oof-{cfg.method}-{cfg.folds}-{_version_key(cfg, train_ds)}.npy"
    probs = _load_cache(cache, (len(labels), len(names)))
    feats = extract_features(cfg, train_ds) if cfg.method == "features" else None
    if probs is None:
        if feats is not None:
            probs = oof_logreg(feats, labels, len(names), cfg.folds, cfg.seed)
        else:
            probs = oof_finetune(cfg, train_ds, cfg.folds, progress=log.info)
        save_npy(cache, probs)  # atomic: a kill never leaves half a cache
    from sklearn.metrics import confusion_matrix

    check_model(cfg, confusion_matrix(labels, probs.argmax(1), labels=range(len(names))), labels,
                f"held-out folds of train ({cfg.folds}-fold {cfg.method})")
    return probs, feats, f"{cfg.folds}-fold out-of-fold {cfg.method}"


def _load_cache(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached array, or None when there is none or it is unreadable or of another shape (then it is redone)."""
    if not path.exists():
        return None
    try:
        probs = np.load(path)
    except (ValueError, OSError, EOFError) as exc:
        log.warning("out-of-fold cache %s is unreadable (%s): computing it again", path, exc)
        return None
    return probs if probs.shape == shape else None


def check_model(cfg: Config, confusion: np.ndarray, train_labels: np.ndarray, where: str) -> None:
    """Stop when the model behind the flags is not clearly better than predicting the train majority class.

    confusion: (C, C) counts of the model on held-out data (rows = true class). A model that
    predicts one class for everything "doubts" every label of the other classes: its flags are noise.
    """
    from cleanloop.loops.flag import baseline_guard, majority_baseline

    if cfg.min_gain_over_baseline <= 0:
        return
    confusion = np.asarray(confusion)
    total = confusion.sum()
    metrics = {"accuracy": float(np.trace(confusion) / total),
               "macro_f1": float(np.mean([2 * confusion[c, c] / max(confusion[c].sum() + confusion[:, c].sum(), 1)
                                          for c in range(len(confusion))]))}
    why = baseline_guard(metrics, majority_baseline(confusion, int(np.bincount(train_labels).argmax())),
                         cfg.min_gain_over_baseline)
    if why:
        raise WeakModelError(
            f"the model behind the flags is not clearly better than always predicting the majority class on {where}: "
            f"{why}, so its flags would be noise; fix: train longer (--epochs 3 or more), label more data, "
            "or use --flag-source oof --method features (--min-gain-over-baseline 0 skips this check)"
        )


def flag_summary(scores) -> str:
    """One line: how many examples each reason flags (``flagged_by``), and the conflicting copy groups."""
    from cleanloop.loops.flag import REASONS

    counts = {r: int(scores["flagged_by"].str.split(",").apply(lambda rs, r=r: r in rs).sum()) for r in REASONS}
    groups = scores.loc[scores["duplicate"] | scores["near_duplicate"], "duplicate_group"].nunique()
    return (f"{counts['duplicate']:,} exact and {counts['near_duplicate']:,} near duplicates with conflicting labels "
            f"({groups:,} groups, each reviewed as one record), {counts['outlier']:,} outliers")


def _version_key(cfg: Config, ds) -> str:
    """A key for this dataset version and these training settings (cache of out-of-fold scores)."""
    import hashlib

    h = hashlib.sha1(json.dumps({k: v for k, v in cfg.to_dict().items() if k not in ("workdir", "max_review")},
                                sort_keys=True).encode())
    for i, label in zip(ds["id"], ds["label"]):
        h.update(f"{i}\0{label}\0".encode())
    return h.hexdigest()[:16]


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
    from cleanloop.loops.retrain import reviewed_ids
    from cleanloop.identity import load_workdir_data
    from cleanloop.model.score import write_parquet_atomic

    dd = load_workdir_data(cfg)
    train = dd["train"]
    names = train.features["label"].names
    labels = np.asarray(train["label"])
    probs, embeddings, source = judging_probs(cfg, train)
    table = signal_table(labels, probs, cfg.filter_by)
    checks, features = example_checks(cfg, train, embeddings)
    embeddings = features if embeddings is None else embeddings
    scores = scores_table(train["id"], train["text"], labels, probs, names, table, checks)
    queue = review_queue(scores, cfg.max_review, reviewed_ids(cfg))  # already reviewed: not again
    out = Path(output_dir) if output_dir else cfg.workpath / "flags"
    write_parquet_atomic(scores, out / "scores.parquet")
    write_parquet_atomic(queue, out / "review_queue.parquet")
    confident = confident_examples(scores)
    write_parquet_atomic(confident, out / "confident_examples.parquet")
    emb = None
    if with_map:
        if embeddings is None:
            from tqdm.auto import tqdm

            from cleanloop.model.predict import Predictor
            from cleanloop.model.train import model_dir

            pred = Predictor.load(model_dir(cfg.replace(method="finetune")), max_length=cfg.max_length, precision=cfg.precision)
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

"""Noise benchmark: inject label errors into the emotion train split and measure how well each
signal finds them.

Settings: uniform noise at 5%, 10%, 20% and class-conditional noise at 10% (joy<->love,
fear<->surprise, anger<->sadness). Paths:
  features  - frozen MiniLM features, 5-fold out-of-fold logistic regression (all settings)
  dynamics  - one ordinary fine-tuning run on the noisy labels, probabilities at each epoch end
              (settings in --dynamics-settings; ~15 min each on 2 CPU cores); also the ranking when
              only the last k epoch ends are recorded (``--dynamics-epochs k``, CPU ratio from the
              measured cost of one recording pass)
  finetune  - 5-fold out-of-fold fine-tunes (settings in --finetune-settings; 5 training runs each)

    python bench/noise.py                                   # features on all, dynamics on class-conditional-10
    python bench/noise.py --dynamics-settings none          # features only (~3 min)

Small data (``small-*`` settings): a stratified 3,000-example subset of emotion train with 10%
class-conditional, uniform or "model-confusion" noise (each flipped label drawn from the validation
confusion matrix of a model fine-tuned on the clean subset: the errors that look most like real
ones). Each runs one fine-tune per seed (``--seeds``) and scores the dynamics of the first 1, 2, ...
seeds averaged, next to neighbour-label signals on frozen and fine-tuned embeddings:

    python bench/noise.py --settings small-class-conditional-10 --seeds 42 --device cpu
    python bench/noise.py --settings small-class-conditional-10,small-uniform-10,small-model-confusion-10 \
        --seeds 42,1,2 --device cuda --duplicates          # the full small set (GPU)

Where the clean subset's own run exists (``small-clean``, trained for model-confusion), each small setting
also says how many of the k most suspicious examples without an injected error that model rejects too
(``top_k_false_positives``): hard or naturally mislabelled tweets the ground truth counts as clean.

``--duplicates``: the conflicting duplicated texts of the full train split, and how many the checks flag.

Writes bench/results/noise.json (``--results NAME``: NAME.json) and prints a summary table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import datasets
import numpy as np
from common import update_results

from cleanloop.config import Config
from cleanloop.loops import signals
from cleanloop.loops.flag import signal_table
from cleanloop.loops.judge import issue_filter, judged_records
from cleanloop.loops.oof import oof_finetune, oof_logreg
from cleanloop.model.data import load_data
from cleanloop.model.train import ClassifierTrainer, extract_features

SETTINGS = {"uniform-05": 0.05, "uniform-10": 0.10, "uniform-20": 0.20, "class-conditional-10": 0.10,
            "small-class-conditional-10": 0.10, "small-uniform-10": 0.10, "small-model-confusion-10": 0.10}
FULL_SETTINGS = ("uniform-05", "uniform-10", "uniform-20", "class-conditional-10")
# names -> partner, both directions: the classes people really confuse
PAIRS = {"joy": "love", "love": "joy", "fear": "surprise", "surprise": "fear", "anger": "sadness", "sadness": "anger"}


def inject_noise(labels: np.ndarray, names: list[str], setting: str, seed: int,
                 confusion: np.ndarray | None = None) -> np.ndarray:
    """Noisy copy of ``labels``: uniform (to any other class), class-conditional (to the partner class)
    or model-confusion (to a class drawn from row ``confusion[true]`` without its diagonal)."""
    rng = np.random.default_rng(seed)
    rate = SETTINGS[setting]
    setting = setting.removeprefix("small-")
    noisy = labels.copy()
    if setting.startswith("model-confusion"):
        off = np.asarray(confusion, dtype=np.float64) + 1e-9
        np.fill_diagonal(off, 0)
        for c in range(len(names)):
            idx = np.flatnonzero(labels == c)
            flip = rng.choice(idx, size=int(round(rate * len(idx))), replace=False)
            noisy[flip] = rng.choice(len(names), size=len(flip), p=off[c] / off[c].sum())
        return noisy
    if setting.startswith("uniform"):
        flip = rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False)
        shift = rng.integers(1, len(names), size=len(flip))
        noisy[flip] = (labels[flip] + shift) % len(names)
        return noisy
    for c, name in enumerate(names):
        idx = np.flatnonzero(labels == c)
        flip = rng.choice(idx, size=int(round(rate * len(idx))), replace=False)
        noisy[flip] = names.index(PAIRS[name])
    return noisy


def ranking_metrics(score: np.ndarray, is_error: np.ndarray) -> dict:
    """AP, AUROC and precision@k (k = number of errors) of a score where higher = more suspicious."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    k = int(is_error.sum())
    top = np.argsort(-score, kind="stable")[:k]
    return {
        "ap": round(float(average_precision_score(is_error, score)), 4),
        "auroc": round(float(roc_auc_score(is_error, score)), 4),
        "precision_at_k": round(float(is_error[top].mean()), 4),
    }


def top_false_positives(score: np.ndarray, is_error: np.ndarray, clean_rejects: np.ndarray, texts: list[str],
                        given: np.ndarray, suggested: np.ndarray, names: list[str], show: int = 8) -> dict:
    """The examples without an injected error among the k most suspicious (k = number of errors), and how
    many of them a model trained on the clean labels rejects too (``clean_rejects`` (N,) bool: its top
    label is not the original one): hard or naturally mislabelled examples, not errors of the judge."""
    k = int(is_error.sum())
    top = np.argsort(-score, kind="stable")[:k]
    fp = top[~is_error[top]]
    return {"k": k, "not_injected": len(fp), "rejected_by_the_clean_model": int(clean_rejects[fp].sum()),
            "examples": [{"text": texts[i], "given": names[given[i]], "judge": names[suggested[i]],
                          "clean_model_rejects": bool(clean_rejects[i])} for i in fp[:show]]}


def flag_scores(flagged: np.ndarray, is_error: np.ndarray) -> dict:
    """Precision and recall of a flagged set (N,) bool against the injected errors (N,) bool."""
    return {"flag_precision": round(float(is_error[flagged].mean()) if flagged.any() else 0.0, 4),
            "flag_recall": round(float(flagged[is_error].mean()), 4)}


@signals.signal("area_under_margin", needs=(signals.DYNAMICS,))
def area_under_margin(ev: signals.Evidence) -> np.ndarray:
    """Mean over epochs of (p given - max p other) (N,) in [-1, 1], lower = more likely mislabelled
    (Pleiss et al. 2020). Measured here beside the product's signals, not part of them: it ranks as
    normalized margin of the epoch-averaged probabilities does (bench/results/noise_aum.json)."""
    p = ev.epoch_probs
    idx = np.arange(p.shape[1])
    other = p.copy()
    other[:, idx, ev.labels] = -np.inf
    return (p[:, idx, ev.labels] - other.max(2)).mean(0)


def evaluate_path(noisy: np.ndarray, probs: np.ndarray, is_error: np.ndarray, seconds: float,
                  epoch_probs: np.ndarray | None = None, extra: dict | None = None,
                  embeddings: np.ndarray | None = None, source: str = "oof") -> dict:
    """Every signal of one path, plus the flagged set's precision and recall under the rule ``flag``
    picks for this ``source`` ('oof' or 'dynamics') and size (:func:`issue_filter`). With ``embeddings``
    (the judging model's own): the neighbour vote in them, and ``suspicion_and_neighbour_vote``, the vote
    mixed into ``suspicion`` at a third (measured, not the product's rule)."""
    filter_by = issue_filter(Config(flag_source=source), len(noisy))[0]
    t0 = time.perf_counter()
    table = signal_table(noisy, probs, filter_by, epoch_probs=epoch_probs, embeddings=embeddings)
    seconds += time.perf_counter() - t0
    flagged = table["is_issue"].to_numpy()
    flag = {
        **flag_scores(flagged, is_error),
        "flagged": int(flagged.sum()),
        "filter_by": filter_by,
        "seconds": round(seconds, 1),
        "noise_structure": round(table.attrs["noise_structure"], 3),
    }
    scores = {m: 1 - table[m].to_numpy() for m in signals.QUALITY_METHODS}
    scores["noise_aware"] = 1 - table["noise_aware"].to_numpy()
    scores["loss"] = table["loss"].to_numpy()
    scores["suspicion"] = table["suspicion"].to_numpy()
    if embeddings is not None:
        agree = table["model_neighbour_agreement"].to_numpy()
        scores["model_neighbour_agreement"] = 1 - agree
        scores["suspicion_and_neighbour_vote"] = (2 * scores["suspicion"] + 1 - agree) / 3
    if epoch_probs is not None:
        aum = table["area_under_margin"].to_numpy()
        scores["area_under_margin"] = -aum
        # suspicion with area under the margin mixed in at weight 1 (its [-1, 1] rescaled to a quality in [0, 1])
        scores["suspicion_and_area_under_margin"] = 1 - (2 * (1 - table["suspicion"].to_numpy()) + (aum + 1) / 2) / 3
        scores["last_epoch_self_confidence"] = 1 - epoch_probs[-1][np.arange(len(noisy)), noisy]
    for name, s in (extra or {}).items():
        scores[name] = s
    return {name: {**ranking_metrics(s, is_error), **flag} for name, s in scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--dynamics-settings", default="class-conditional-10")
    ap.add_argument("--finetune-settings", default="none")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.1,
                    help="of the small settings' runs (results keyed '-label-smoothing-X' unless 0.1, training's default)")
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "out" / "noise"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true",
                    help="re-score the dynamics of an earlier training run of a setting instead of training again")
    ap.add_argument("--seeds", default="42",
                    help="small settings: training seeds whose dynamics are averaged ('none': frozen features only)")
    ap.add_argument("--small-size", type=int, default=3000, help="small settings: stratified train subset size")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="cpu hides the GPU; auto uses one when there is one")
    ap.add_argument("--results", default="noise", help="name of the results file: bench/results/NAME.json")
    ap.add_argument("--flag-after", type=float, default=0,
                    help="small settings: also train a model of this many epochs (seed: the first of --seeds) and "
                         "judge its labels as 'flag' does (a judging run when it trained fewer than --judge-epochs), "
                         "timed against the model's training")
    ap.add_argument("--duplicates", action="store_true",
                    help="count the conflicting duplicated texts of the full train split the checks flag")
    args = ap.parse_args()
    if args.device == "cpu":
        import os

        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch sees no GPU")

    base = Config(workdir=args.workdir, epochs=args.epochs, learning_rate=args.learning_rate,
                  label_smoothing=args.label_smoothing)
    if args.duplicates:
        update_results(args.results, {"duplicates": duplicate_conflicts(base)})
    small = [s for s in args.settings.split(",") if s.startswith("small-")]
    if small:
        run_small(base, small, [int(x) for x in args.seeds.split(",") if x and x != "none"], args)
    full = [s for s in args.settings.split(",") if not s.startswith("small-") and s]
    if not full:
        return
    dd = load_data(base)
    names = dd["train"].features["label"].names
    clean = np.asarray(dd["train"]["label"])
    t0 = time.perf_counter()
    feats = extract_features(base, dd["train"])  # cached in WORKDIR/cache after the first run
    embed_seconds = time.perf_counter() - t0
    print(f"features of {len(feats):,} tweets in {embed_seconds:.1f} s")
    results: dict = {}
    for setting in full:
        noisy = inject_noise(clean, names, setting, args.seed)
        is_error = noisy != clean
        res: dict = {}
        t0 = time.perf_counter()
        feat_probs = oof_logreg(feats, noisy, len(names), args.folds, args.seed)
        res["features"] = evaluate_path(noisy, feat_probs, is_error, embed_seconds + time.perf_counter() - t0)
        if setting in args.dynamics_settings.split(","):
            noisy_dd = datasets.DatasetDict({**dd, "train": _with_labels(dd["train"], noisy)})
            cfg = base.replace(workdir=f"{args.workdir}/{setting}")
            out = Path(cfg.workdir) / "model"
            if args.reuse and (out / "dynamics.npz").exists():  # re-score an earlier run of the same setting
                metrics = json.loads((out / "metrics.json").read_text())
            else:
                metrics = json.loads((ClassifierTrainer(cfg).train(noisy_dd).output_dir / "metrics.json").read_text())
            run = metrics["run"]
            dyn = np.load(out / "dynamics.npz")
            epoch_probs = dyn["probs"].astype(np.float64)
            probs = signals.dynamics_probs(epoch_probs)
            # what flagging costs on top of a training run without the per-epoch record
            plain = run["train_seconds"] - run["dynamics_seconds"]
            last = signal_table(noisy, signals.dynamics_probs(epoch_probs[-1:]))["suspicion"].to_numpy()
            feature_quality = signals.label_quality(noisy, feat_probs, "normalized_margin")
            res["dynamics"] = evaluate_path(
                noisy, probs, is_error, run["dynamics_seconds"], epoch_probs,
                extra={"last_epoch_suspicion": last,
                       "suspicion_and_features": (2 * signal_table(noisy, probs)["suspicion"].to_numpy()
                                                  + 1 - feature_quality) / 3},
                embeddings=dyn["embeddings"] if "embeddings" in dyn.files else None, source="dynamics",
            )
            # --dynamics-epochs k records only the last k epoch ends: each record is one pass over train
            per_pass = run["dynamics_seconds"] / len(epoch_probs)
            tradeoff = {}
            for k in range(len(epoch_probs), 0, -1):
                table = signal_table(noisy, signals.dynamics_probs(epoch_probs[-k:]))
                flagged = table["is_issue"].to_numpy()
                tradeoff[str(k)] = {
                    **ranking_metrics(table["suspicion"].to_numpy(), is_error),
                    "self_confidence_ap": ranking_metrics(1 - table["self_confidence"].to_numpy(), is_error)["ap"],
                    **flag_scores(flagged, is_error),
                    "cpu_time_ratio_vs_plain_training": round((plain + k * per_pass) / plain, 3),
                }
            res["dynamics_epochs_tradeoff"] = tradeoff
            res["dynamics_run"] = {
                "train_seconds": run["train_seconds"], "dynamics_seconds": run["dynamics_seconds"],
                "cpu_time_ratio_vs_plain_training": round(run["train_seconds"] / plain, 3),
                "test_accuracy": metrics["test"]["accuracy"], "test_macro_f1": metrics["test"]["macro_f1"],
                "epochs": args.epochs,
            }
        if setting in args.finetune_settings.split(","):
            t0 = time.perf_counter()
            probs = oof_finetune(base.replace(workdir=f"{args.workdir}/{setting}-oof"),
                                 _with_labels(dd["train"], noisy), args.folds)
            res["finetune"] = evaluate_path(noisy, probs, is_error, time.perf_counter() - t0)
        results[setting] = res
        update_results(args.results, {"settings": {setting: res}, "injected": {setting: int(is_error.sum())},
                                 "features_embed_seconds": round(embed_seconds, 1)})
        for method, sig in ((m, v) for m, v in res.items() if "suspicion" in v):
            s = sig["suspicion"]
            print(f"{setting:<22}{method:<10} suspicion AP {s['ap']:.3f} P@k {s['precision_at_k']:.3f} "
                  f"flagged {s['flagged']} (precision {s['flag_precision']:.3f}, recall {s['flag_recall']:.3f}) "
                  f"{s['seconds']:.0f}s")


def duplicate_conflicts(base: Config) -> dict:
    """The full train split's duplicated texts with conflicting labels, and how many the checks flag."""
    from cleanloop.loops.flag import check_table
    from cleanloop.loops.neighbours import exact_duplicate_groups

    train = load_data(base)["train"]
    texts, labels = list(train["text"]), np.asarray(train["label"])
    t0 = time.perf_counter()
    feats = extract_features(base, train)
    checks = check_table(texts, labels, feats, base.near_duplicate_threshold)
    seconds = time.perf_counter() - t0
    exact = exact_duplicate_groups(texts)
    groups = {g: labels[exact == g] for g in np.unique(exact[exact >= 0])}
    conflicting = [g for g, ls in groups.items() if len(set(ls)) > 1]
    flagged = checks["duplicate"] | checks["near_duplicate"]
    near = checks.loc[checks["near_duplicate"], "duplicate_group"].nunique()
    out = {
        "duplicated_texts": len(groups), "conflicting_duplicated_texts": len(conflicting),
        "duplicate_conflicts_flagged": int(sum(flagged[exact == g].any() for g in conflicting)),
        "near_duplicate_conflict_groups": int(near), "near_duplicate_conflict_examples": int(checks["near_duplicate"].sum()),
        "outliers": int(checks["outlier"].sum()), "checks_seconds_with_embedding": round(seconds, 1),
        "near_duplicate_threshold": base.near_duplicate_threshold,
        "near_duplicate_examples": [
            sorted(zip(checks.index[checks["duplicate_group"] == g].map(lambda i: texts[i]),
                       [train.features["label"].names[x] for x in labels[checks["duplicate_group"] == g]]))
            for g in checks.loc[checks["near_duplicate"], "duplicate_group"].unique()[:5]
        ],
    }
    print(f"duplicates: {out['duplicate_conflicts_flagged']} of {out['conflicting_duplicated_texts']} conflicting "
          f"duplicated texts flagged; {near} near-duplicate conflict groups; {out['outliers']} outliers")
    return out


def run_small(base: Config, settings: list[str], seeds: list[int], args) -> None:
    """The small-data settings: dynamics of one run per seed, averaged over 1, 2, ... seeds, and neighbour signals."""
    from cleanloop.loops import neighbours as nb
    from cleanloop.model.predict import Predictor

    sub = base.replace(max_train_samples=args.small_size, seed=0)
    dd = load_data(sub)
    names = dd["train"].features["label"].names
    clean = np.asarray(dd["train"]["label"])
    if args.small_size >= 3000:  # the subset's rows of the full split's (cached) features
        full = load_data(base)["train"]
        row = {i: n for n, i in enumerate(full["id"])}
        feats = extract_features(base, full)[[row[i] for i in dd["train"]["id"]]]
    else:  # a quick check: embed the subset alone
        feats = extract_features(base, dd["train"])
    frozen = nb.nearest_neighbours(feats, 10)
    confusion, confusion_source = None, None
    if seeds and any("model-confusion" in s for s in settings):
        cfg = base.replace(workdir=f"{args.workdir}/small-clean", seed=seeds[0])
        out = Path(cfg.workdir) / "model"
        metrics = json.loads((out / "metrics.json").read_text()) if args.reuse and (out / "metrics.json").exists() \
            else ClassifierTrainer(cfg).train(dd).metrics
        confusion = np.asarray(metrics["validation"]["confusion_matrix"])
        confusion_source = "validation confusion of a model fine-tuned on the clean subset"
    elif any("model-confusion" in s for s in settings):  # no training: the frozen-feature model's held-out confusion
        from sklearn.metrics import confusion_matrix

        confusion = confusion_matrix(clean, oof_logreg(feats, clean, len(names), args.folds, args.seed).argmax(1))
        confusion_source = "out-of-fold confusion of frozen features + logistic regression on the clean subset"
    clean_run = Path(args.workdir) / "small-clean" / "model" / "dynamics.npz"
    clean_rejects = None  # the clean-subset model's epoch records, read as the judge reads its own
    if seeds and clean_run.exists():
        recorded = np.load(clean_run)["probs"].astype(np.float64)
        clean_rejects = signals.dynamics_probs(judged_records(base, recorded, args.epochs, len(clean))).argmax(1) != clean
    for setting in settings:
        noisy = inject_noise(clean, names, setting, args.seed, confusion)
        is_error = noisy != clean
        noisy_dd = datasets.DatasetDict({**dd, "train": _with_labels(dd["train"], noisy)})
        res: dict = {"examples": len(noisy), "injected": int(is_error.sum())}
        if "model-confusion" in setting:
            res["confusion_source"] = confusion_source
        t0 = time.perf_counter()
        frozen_agree = nb.neighbour_agreement(noisy, frozen)
        feat_probs = oof_logreg(feats, noisy, len(names), args.folds, args.seed)
        feat_susp = signal_table(noisy, feat_probs)["suspicion"].to_numpy()
        res["features"] = {k: v for k, v in evaluate_path(
            noisy, feat_probs, is_error, time.perf_counter() - t0,
            extra={"neighbours_frozen": 1 - frozen_agree,
                   "suspicion_and_neighbours_frozen": (2 * feat_susp + 1 - frozen_agree) / 3}).items()
            if k in ("suspicion", "self_confidence", "neighbours_frozen", "suspicion_and_neighbours_frozen")}
        f = res["features"]
        print(f"{setting:<28} features: suspicion AP {f['suspicion']['ap']:.3f} (flagged precision "
              f"{f['suspicion']['flag_precision']:.3f}, recall {f['suspicion']['flag_recall']:.3f}); neighbours "
              f"{f['neighbours_frozen']['ap']:.3f}; mixed {f['suspicion_and_neighbours_frozen']['ap']:.3f}")
        if not seeds:
            update_results(args.results, {"settings": {setting: res}, "injected": {setting: int(is_error.sum())}})
            continue
        if args.flag_after:
            key = f"{setting}-flag-after-{args.flag_after:g}-epochs"
            update_results(args.results, {"settings": {key: flag_after(base, setting, noisy_dd, is_error, seeds[0], args)}})
        runs, epoch_probs = [], []
        for seed in seeds:
            cfg = base.replace(workdir=f"{args.workdir}/{setting}-seed{seed}", seed=seed)
            out = Path(cfg.workdir) / "model"
            if not (args.reuse and (out / "dynamics.npz").exists()):
                ClassifierTrainer(cfg).train(noisy_dd)
            metrics = json.loads((out / "metrics.json").read_text())
            runs.append({"seed": seed, "train_seconds": metrics["run"]["train_seconds"],
                         "dynamics_seconds": metrics["run"]["dynamics_seconds"],
                         "val_accuracy": metrics["validation"]["accuracy"], "test_accuracy": metrics["test"]["accuracy"],
                         "test_macro_f1": metrics["test"]["macro_f1"]})
            recorded = np.load(out / "dynamics.npz")["probs"].astype(np.float64)
            # the records flag reads (judged_records: on small data, the first --judge-stop of a run this long)
            epoch_probs.append(judged_records(base, recorded, args.epochs, len(noisy)))
            if seed == seeds[0] and len(epoch_probs[0]) < len(recorded):  # what all of them would have flagged
                table = signal_table(noisy, signals.dynamics_probs(recorded), issue_filter(base, len(noisy))[0])
                flagged = table["is_issue"].to_numpy()
                res["all_epoch_records"] = {"records": len(recorded), **ranking_metrics(table["suspicion"].to_numpy(), is_error),
                                            **flag_scores(flagged, is_error)}
        res["runs"] = runs
        res["epoch_records_judging"] = len(epoch_probs[0])
        plain = runs[0]["train_seconds"] - runs[0]["dynamics_seconds"]
        first = np.load(Path(f"{args.workdir}/{setting}-seed{seeds[0]}") / "model" / "dynamics.npz")
        if "embeddings" in first.files:  # recorded by the run, as the product reads them
            tuned = first["embeddings"]
        else:  # a run of an older version (--reuse): embed with its saved model
            pred = Predictor.load(Path(f"{args.workdir}/{setting}-seed{seeds[0]}") / "model", max_length=base.max_length)
            tuned = pred.predict_arrays(list(dd["train"]["text"]), base.eval_batch_size)["embeddings"]
        for k in range(1, len(seeds) + 1):
            probs = signals.dynamics_probs(np.concatenate(epoch_probs[:k]))
            cost = sum(r["train_seconds"] for r in runs[:k]) / plain
            res[f"dynamics_{k}_seeds"] = evaluate_path(noisy, probs, is_error, sum(r["dynamics_seconds"] for r in runs[:k]),
                                                       np.concatenate(epoch_probs[:k]),
                                                       extra={"neighbours_frozen": 1 - frozen_agree}, embeddings=tuned,
                                                       source="dynamics")
            res[f"dynamics_{k}_seeds"]["cost_vs_one_plain_training"] = round(cost, 3)
            if k == 1 and clean_rejects is not None:
                res["top_k_false_positives"] = top_false_positives(
                    signal_table(noisy, probs)["suspicion"].to_numpy(), is_error, clean_rejects,
                    list(dd["train"]["text"]), noisy, probs.argmax(1), names)
                fp = res["top_k_false_positives"]
                print(f"{setting:<28} top {fp['k']}: {fp['not_injected']} not injected, of which the model trained "
                      f"on the clean labels rejects {fp['rejected_by_the_clean_model']}")
            r = res[f"dynamics_{k}_seeds"]
            print(f"{setting:<28} {k} seed(s): suspicion AP {r['suspicion']['ap']:.3f} (with the neighbour vote "
                  f"{r['suspicion_and_neighbour_vote']['ap']:.3f}), flagged precision {r['suspicion']['flag_precision']:.3f} "
                  f"recall {r['suspicion']['flag_recall']:.3f}; neighbours (fine-tuned) AP "
                  f"{r['model_neighbour_agreement']['ap']:.3f}; cost {cost:.2f}x")
        if len(seeds) > 1:  # the spread of one judging run: each seed's alone
            res["each_seed_alone"] = {}
            for seed, rec in zip(seeds, epoch_probs):
                table = signal_table(noisy, signals.dynamics_probs(rec), issue_filter(base, len(noisy))[0])
                res["each_seed_alone"][str(seed)] = {**ranking_metrics(table["suspicion"].to_numpy(), is_error),
                                                    **flag_scores(table["is_issue"].to_numpy(), is_error)}
        key = setting if args.epochs == 3 else f"{setting}-{args.epochs:g}-epochs"  # 3: the settings' recipe
        key += "" if args.label_smoothing == 0.1 else f"-label-smoothing-{args.label_smoothing:g}"
        res["epochs"] = args.epochs
        update_results(args.results, {"settings": {key: res}, "injected": {setting: int(is_error.sum())}})


def flag_after(base: Config, setting: str, noisy_dd, is_error: np.ndarray, seed: int, args) -> dict:
    """The product's path on one small setting: a model of ``args.flag_after`` epochs, then the judge that
    ``flag`` runs on it (:func:`judging_probs`: on small data a judging run stopped at --judge-stop of its
    --judge-epochs schedule when the model trained fewer), its flags, and its time against the model's."""
    from cleanloop.loops.judge import held_out_split, judging_probs
    from cleanloop.workdir import Workdir

    cfg = base.replace(workdir=f"{args.workdir}/{setting}-flag-after-{args.flag_after:g}", seed=seed,
                       epochs=args.flag_after, min_gain_over_baseline=0)
    out = Path(cfg.workdir) / "model"
    if not (args.reuse and (out / "dynamics.npz").exists()):
        ClassifierTrainer(cfg).train(noisy_dd)
    for cached in (Path(cfg.workdir) / "cache").glob("dynamics-seed*.npy"):
        cached.unlink()  # the judge is what is timed
    metrics = json.loads((out / "metrics.json").read_text())
    noisy = np.asarray(noisy_dd["train"]["label"])
    t0 = time.perf_counter()
    judged = judging_probs(cfg, noisy_dd["train"], Workdir.of(cfg), held_out_split(noisy_dd))  # as flag does
    seconds = time.perf_counter() - t0
    table = signal_table(noisy, judged.probs, judged.filter_by)
    flagged = table["is_issue"].to_numpy()
    plain = metrics["run"]["train_seconds"] - metrics["run"]["dynamics_seconds"]
    res = {"model_epochs": args.flag_after, "model_test_accuracy": metrics["test"]["accuracy"],
           "model_train_seconds": metrics["run"]["train_seconds"], "model_plain_train_seconds": round(plain, 1),
           "judge": judged.source, "judge_seconds": round(seconds, 1),
           "judge_cost_vs_model_plain_training": round(seconds / plain, 3),
           **ranking_metrics(table["suspicion"].to_numpy(), is_error),
           "flagged": int(flagged.sum()), **flag_scores(flagged, is_error)}
    print(f"{setting:<28} flag after a {args.flag_after:g}-epoch model ({res['model_test_accuracy']:.1%}): AP {res['ap']:.3f}, "
          f"flagged precision {res['flag_precision']:.3f} recall {res['flag_recall']:.3f}; judge {seconds:.0f} s = "
          f"{res['judge_cost_vs_model_plain_training']:.2f}x the model's plain training")
    return res


def _with_labels(ds, labels: np.ndarray):
    feats = ds.features
    return ds.remove_columns("label").add_column("label", labels.tolist()).cast(feats)


if __name__ == "__main__":
    main()

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

Writes bench/results/noise.json and prints a summary table.
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
from cleanloop.loops.oof import oof_finetune, oof_logreg
from cleanloop.model.data import load_data
from cleanloop.model.train import ClassifierTrainer, extract_features

SETTINGS = {"uniform-05": 0.05, "uniform-10": 0.10, "uniform-20": 0.20, "class-conditional-10": 0.10}
# names -> partner, both directions: the classes people really confuse
PAIRS = {"joy": "love", "love": "joy", "fear": "surprise", "surprise": "fear", "anger": "sadness", "sadness": "anger"}


def inject_noise(labels: np.ndarray, names: list[str], setting: str, seed: int) -> np.ndarray:
    """Noisy copy of ``labels``: uniform (to any other class) or class-conditional (to the partner class)."""
    rng = np.random.default_rng(seed)
    rate = SETTINGS[setting]
    noisy = labels.copy()
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


def evaluate_path(noisy: np.ndarray, probs: np.ndarray, is_error: np.ndarray, seconds: float,
                  epoch_probs: np.ndarray | None = None, extra: dict | None = None) -> dict:
    """Every signal of one path, plus the flagged set's precision and recall."""
    t0 = time.perf_counter()
    table = signal_table(noisy, probs)
    seconds += time.perf_counter() - t0
    flagged = table["is_issue"].to_numpy()
    flag = {
        "flag_precision": round(float(is_error[flagged].mean()) if flagged.any() else 0.0, 4),
        "flag_recall": round(float(flagged[is_error].mean()), 4),
        "flagged": int(flagged.sum()),
        "seconds": round(seconds, 1),
        "noise_structure": round(table.attrs["noise_structure"], 3),
    }
    scores = {m: 1 - table[m].to_numpy() for m in signals.QUALITY_METHODS}
    scores["noise_aware"] = 1 - table["noise_aware"].to_numpy()
    scores["loss"] = table["loss"].to_numpy()
    scores["suspicion"] = table["suspicion"].to_numpy()
    if epoch_probs is not None:
        scores["area_under_margin"] = -signals.area_under_margin(noisy, epoch_probs)
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
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "out" / "noise"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true",
                    help="re-score the dynamics of an earlier training run of a setting instead of training again")
    args = ap.parse_args()

    base = Config(workdir=args.workdir, epochs=args.epochs, learning_rate=args.learning_rate)
    dd = load_data(base)
    names = dd["train"].features["label"].names
    clean = np.asarray(dd["train"]["label"])
    t0 = time.perf_counter()
    feats = extract_features(base, dd["train"])  # cached in WORKDIR/cache after the first run
    embed_seconds = time.perf_counter() - t0
    print(f"features of {len(feats):,} tweets in {embed_seconds:.1f} s")
    results: dict = {}
    for setting in args.settings.split(","):
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
            epoch_probs = np.load(out / "dynamics.npz")["probs"].astype(np.float64)
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
                    "flag_precision": round(float(is_error[flagged].mean()), 4),
                    "flag_recall": round(float(flagged[is_error].mean()), 4),
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
        update_results("noise", {"settings": {setting: res}, "injected": {setting: int(is_error.sum())},
                                 "features_embed_seconds": round(embed_seconds, 1)})
        for method, sig in ((m, v) for m, v in res.items() if "suspicion" in v):
            s = sig["suspicion"]
            print(f"{setting:<22}{method:<10} suspicion AP {s['ap']:.3f} P@k {s['precision_at_k']:.3f} "
                  f"flagged {s['flagged']} (precision {s['flag_precision']:.3f}, recall {s['flag_recall']:.3f}) "
                  f"{s['seconds']:.0f}s")


def _with_labels(ds, labels: np.ndarray):
    feats = ds.features
    return ds.remove_columns("label").add_column("label", labels.tolist()).cast(feats)


if __name__ == "__main__":
    main()

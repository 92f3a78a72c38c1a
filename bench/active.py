"""Active-learning benchmark: labels each query strategy needs to reach 85% test accuracy on emotion.

A simulation, no Argilla: the gold labels are the annotator. Each strategy starts from 8 labels
per class (drawn with the seed), then adds batches of 64 picked by the strategy until 2,048
labels, retraining after each batch; test accuracy and macro F1 at every step, over 3 seeds.

Models (``--model``):
  setfit-finetune  what ``cleanloop active`` runs: SetFit on the packaged MiniLM below
                   --switch-per-class labels per class, the fine-tuned classifier from there on
                   (hours on 2 CPU cores for the full grid)
  logreg           the fast path: logistic regression on the packaged MiniLM's sentence embeddings,
                   computed once for the pool and the test split (minutes)

    python bench/active.py                       # the full grid -> bench/results/active.json + .png
    python bench/active.py --model logreg        # fast path
    python bench/active.py --strategies random,margin --seeds 0 --max-labels 128 --model logreg \\
        --pool-size 2000 --test-size 500 --output /tmp/active.json      # a smoke run

Writes ``{"target_accuracy", "labels_to_target": {strategy: n or null}, "curves": {...}}`` (labels to
target from the seed-mean curve; null when never reached) and the learning curves as a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from common import RESULTS, machine

from cleanloop.config import Config
from cleanloop.loops.active import (ActiveOptions, EmbeddingLogReg, FinetuneLearner, SetFitLearner, fit_and_score,
                                    learner_kind, seed_indices)
from cleanloop.loops.strategies import STRATEGIES, Pool, make_strategy
from cleanloop.model.data import load_data
from cleanloop.model.train import extract_features

TARGET = 0.85
# the measured plain fine-tune of the packaged MiniLM on random labels: labels -> test accuracy
REFERENCE_FINETUNE_RANDOM = {48: 0.51, 192: 0.64, 384: 0.74, 768: 0.80, 1536: 0.85}


def simulate(strategy_name: str, seed: int, data: dict, args, workdir: Path) -> list[dict]:
    """One learning curve: [{labels, model, test_accuracy, test_macro_f1, seconds}, ...]."""
    names, texts, gold = data["names"], data["pool_texts"], data["pool_labels"]
    rng = np.random.default_rng(seed)
    strategy = make_strategy(strategy_name)
    votes = np.zeros(len(gold), dtype=int)  # labels the simulated annotator gave each pool example
    votes[seed_indices(gold, args.seed_per_class, rng)] = 1
    opts = ActiveOptions(setfit_iterations=args.setfit_iterations, switch_per_class=args.switch_per_class)
    cfg = Config(workdir=str(workdir), seed=seed, max_length=64, epochs=args.epochs)
    curve = []
    while True:
        lab = np.flatnonzero(votes > 0)
        kind = "logreg" if args.model == "logreg" else learner_kind(gold[lab], len(names), args.switch_per_class)
        learner = {"logreg": lambda: EmbeddingLogReg(data["embed"], seed),
                   "setfit": lambda: SetFitLearner(opts, seed),
                   "finetune": lambda: FinetuneLearner(cfg, workdir / f"{strategy_name}-{seed}" / "model")}[kind]()
        t0 = time.perf_counter()
        probs, metrics = fit_and_score(learner, [texts[i] for i in lab], gold[lab], names, texts,
                                       data["test_texts"], data["test_labels"])
        spent = int(votes.sum())
        curve.append({"labels": spent, "model": kind, **metrics, "seconds": round(time.perf_counter() - t0, 2)})
        print(f"  {strategy_name:16s} seed {seed}  {spent:5d} labels  {kind:8s}  accuracy {metrics['test_accuracy']:.3f}"
              f"  macro F1 {metrics['test_macro_f1']:.3f}", flush=True)
        if spent >= args.max_labels:
            return curve
        annotations = None
        if strategy.relabels:  # every vote is the gold label; one column per vote
            annotations = np.full((len(gold), max(1, votes.max())), np.nan)
            for k in range(annotations.shape[1]):
                annotations[votes > k, k] = gold[votes > k]
        pool = Pool(probs, votes > 0, data["pool_embeddings"], annotations)
        idx = strategy.query(pool, min(args.batch, args.max_labels - spent), rng)
        votes[idx] += 1


def summarise(curves: dict, target: float) -> tuple[dict, dict]:
    """Seed-mean curves per strategy and the labels at which each mean curve first reaches ``target``."""
    out, to_target = {}, {}
    for name, runs in curves.items():
        steps = min(len(r) for r in runs.values())
        acc = np.array([[s["test_accuracy"] for s in r[:steps]] for r in runs.values()])
        f1 = np.array([[s["test_macro_f1"] for s in r[:steps]] for r in runs.values()])
        labels = [s["labels"] for s in next(iter(runs.values()))[:steps]]
        reached = [n for n, a in zip(labels, acc.mean(0)) if a >= target]
        to_target[name] = reached[0] if reached else None
        out[name] = {"labels": labels, "accuracy_mean": acc.mean(0).round(4).tolist(),
                     "accuracy_std": acc.std(0).round(4).tolist(), "macro_f1_mean": f1.mean(0).round(4).tolist(),
                     "macro_f1_std": f1.std(0).round(4).tolist(), "per_seed": runs}
    return out, to_target


def plot(curves: dict, target: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, ax in zip(("accuracy", "macro_f1"), axes):
        for name, c in curves.items():
            mean, std = np.array(c[f"{key}_mean"]), np.array(c[f"{key}_std"])
            ax.plot(c["labels"], mean, "o-" if name == "random" else ".-", ms=3, label=name,
                    lw=2.2 if name == "random" else 1.4)
            ax.fill_between(c["labels"], mean - std, mean + std, alpha=0.15)
        if key == "accuracy":
            ax.axhline(target, color="grey", ls="--", lw=1)
            ref = REFERENCE_FINETUNE_RANDOM
            ax.plot(list(ref), list(ref.values()), "kx:", label="fine-tune, random (issue)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labels")
        ax.set_ylabel(f"test {key.replace('_', ' ')}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load(args, workdir: Path) -> dict:
    """Pool (train, optionally a stratified sample), test (optionally a sample), embeddings computed once."""
    cfg = Config(workdir=str(workdir), seed=0, max_train_samples=args.pool_size)
    dd = load_data(cfg)
    test = dd["test"]
    if args.test_size and args.test_size < len(test):
        test = test.shuffle(seed=0).select(range(args.test_size))
    pool_emb = extract_features(cfg, dd["train"])
    need_test_emb = args.model == "logreg"
    lookup = {}
    if need_test_emb:
        lookup = dict(zip(test["text"], extract_features(cfg, test)))
    lookup.update(zip(dd["train"]["text"], pool_emb))
    return {"names": dd["train"].features["label"].names, "pool_texts": list(dd["train"]["text"]),
            "pool_labels": np.asarray(dd["train"]["label"]), "pool_embeddings": pool_emb,
            "test_texts": list(test["text"]), "test_labels": np.asarray(test["label"]),
            "embed": lambda ts: np.stack([lookup[t] for t in ts])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="Comma-separated (default: all).")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--model", choices=("setfit-finetune", "logreg"), default="setfit-finetune")
    ap.add_argument("--seed-per-class", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-labels", type=int, default=2048)
    ap.add_argument("--switch-per-class", type=int, default=64)
    ap.add_argument("--setfit-iterations", type=int, default=5)
    ap.add_argument("--epochs", type=float, default=4.0, help="Fine-tuning epochs after the switch.")
    ap.add_argument("--target", type=float, default=TARGET)
    ap.add_argument("--pool-size", type=int, default=0, help="Stratified sample of the train split as the pool (0: all).")
    ap.add_argument("--test-size", type=int, default=0, help="Random sample of the test split (0: all 2,000).")
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "out" / "active"))
    ap.add_argument("--output", default=str(RESULTS / "active.json"), help="JSON path; the PNG goes next to it.")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    workdir, output = Path(args.workdir), Path(args.output)
    names = [s for s in args.strategies.split(",") if s]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        raise SystemExit(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    data = load(args, workdir)
    print(f"pool {len(data['pool_texts']):,}, test {len(data['test_texts']):,}, embedded in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    raw = {name: {str(seed): simulate(name, seed, data, args, workdir) for seed in seeds} for name in names}
    curves, to_target = summarise(raw, args.target)
    result = {
        "target_accuracy": args.target,
        "labels_to_target": to_target,
        "curves": curves,
        "settings": {k: v for k, v in vars(args).items() if k not in ("workdir", "output")} |
                    {"pool": len(data["pool_texts"]), "test": len(data["test_texts"])},
        "reference_finetune_random": REFERENCE_FINETUNE_RANDOM,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, output)
    plot(curves, args.target, f"active learning on emotion ({args.model}; pool {len(data['pool_texts']):,}, "
                              f"test {len(data['test_texts']):,}, seeds {args.seeds})", output.with_suffix(".png"))
    random_n = to_target.get("random")
    print(f"\nlabels to {args.target:.0%} test accuracy (seed mean):")
    for name, n in to_target.items():
        vs = f"  ({n / random_n:.2f} x random)" if n and random_n else ""
        print(f"  {name:16s} {n if n is not None else 'not reached'}{vs}")
    last = {name: (c["labels"][-1], c["accuracy_mean"][-1]) for name, c in curves.items()}
    print("last step: " + ", ".join(f"{k} {a:.3f} at {n}" for k, (n, a) in last.items()))
    print(f"wrote {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()

"""The blocking round loop (``cleanloop active --full-retrain``): labels each query strategy needs to reach 85%
test accuracy on emotion (the responsive session from zero labels is ``bench/active.py``).

A simulation, no Argilla: the gold labels are the annotator. Each strategy starts from 8 labels
per class (drawn with the seed), then adds batches of 64 picked by the strategy until 2,048
labels, retraining after each batch; test accuracy and macro F1 at every step, over 3 seeds.

Models (``--model``):
  setfit-finetune  what ``cleanloop active`` runs: SetFit on the packaged MiniLM below
                   --switch-per-class labels per class, the fine-tuned classifier from there on
                   (hours on 2 CPU cores for the full grid)
  logreg           the fast path: logistic regression on the packaged MiniLM's sentence embeddings,
                   computed once for the pool and the test split (minutes)

    python bench/active_rounds.py                       # the full grid -> bench/results/active_rounds.json + .png
    python bench/active_rounds.py --strategies random,margin,diversity --seeds 0 --pool-size 6000 --growth 0.25 \
        --stop-at-target --random-from 600   # what fits in ~2 hours of 2 CPU cores (settings in the JSON)
    python bench/active_rounds.py --model logreg        # fast path
    python bench/active_rounds.py --strategies random,margin --seeds 0 --max-labels 128 --model logreg \\
        --pool-size 2000 --test-size 500 --output /tmp/active.json      # a smoke run

``--growth g`` makes each batch max(--batch, g x labels so far, rounded to 64): fewer retrainings for
the same label range (the CPU budget), coarser curves. ``--stop-at-target`` ends a curve at its first
step at or above the target. ``--random-from n`` trains random only from n labels on: it picks
without the model, so its labelled sets are the same as in a full run. ``--min-train-examples``
(``ActiveOptions.min_train_examples``, 10,000) raises the fine-tuning epochs on small labelled sets
so that every fine-tune sees at least that many examples (a few hundred labels x 4 epochs is too
few optimizer steps).

Writes ``{"target_accuracy", "labels_to_target": {strategy: n or null}, "curves": {...}}`` (labels to
target: a seed's first step at or above the target, averaged over seeds; null when a seed never
reached it) and the learning curves as a PNG next to it. The JSON is rewritten after every finished
strategy, so an interrupted run keeps what it measured. Strategies run in separate processes (one
per core) combine with ``--merge``::

    python bench/active_rounds.py --merge margin.json random.json     # -> --output (+ .png), nothing trained
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from common import RESULTS, machine, use_device

from cleanloop.config import Config
from cleanloop.loops.active import (ActiveOptions, EmbeddingLogReg, FinetuneLearner, SetFitLearner, fit_and_score,
                                    learner_kind, seed_indices)
from cleanloop.loops.strategies import STRATEGIES, Pool, make_strategy
from cleanloop.model.data import load_data
from cleanloop.model.train import extract_features
from cleanloop.workdir import Workdir

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
    opts = ActiveOptions(setfit_iterations=args.setfit_iterations, switch_per_class=args.switch_per_class,
                         min_train_examples=args.min_train_examples)
    curve = []
    while True:
        lab = np.flatnonzero(votes > 0)
        spent = int(votes.sum())
        if strategy_name == "random" and spent < args.random_from:  # its picks never look at the model
            probs = np.full((len(gold), len(names)), 1.0 / len(names))
        else:
            cfg = Config(workdir=str(workdir), seed=seed, max_length=64, epochs=args.epochs)
            kind = "logreg" if args.model == "logreg" else learner_kind(gold[lab], len(names), args.switch_per_class)
            learner = {"logreg": lambda: EmbeddingLogReg(data["embed"], seed),
                       "setfit": lambda: SetFitLearner(opts, seed),
                       "finetune": lambda: FinetuneLearner(cfg, Workdir(workdir / f"{strategy_name}-{seed}"),
                                                           opts.min_train_examples)}[kind]()
            t0 = time.perf_counter()
            probs, metrics = fit_and_score(learner, [texts[i] for i in lab], gold[lab], names, texts,
                                           data["test_texts"], data["test_labels"])
            curve.append({"labels": spent, "model": kind, **metrics, "seconds": round(time.perf_counter() - t0, 2)})
            print(f"  {strategy_name:16s} seed {seed}  {spent:5d} labels  {kind:8s}  accuracy "
                  f"{metrics['test_accuracy']:.3f}  macro F1 {metrics['test_macro_f1']:.3f}", flush=True)
            if spent >= args.max_labels or (args.stop_at_target and metrics["test_accuracy"] >= args.target):
                return curve
        annotations = None
        if strategy.relabels:  # every vote is the gold label; one column per vote
            annotations = np.full((len(gold), max(1, votes.max())), np.nan)
            for k in range(annotations.shape[1]):
                annotations[votes > k, k] = gold[votes > k]
        pool = Pool(probs, votes > 0, data["pool_embeddings"], annotations)
        idx = strategy.query(pool, min(next_batch(spent, args.batch, args.growth), args.max_labels - spent), rng)
        votes[idx] += 1


def next_batch(spent: int, batch: int, growth: float) -> int:
    """Labels to add after ``spent``: ``batch``, or ``growth`` x spent rounded to 64 when larger.

    >>> [next_batch(n, 64, 0.0) for n in (48, 1000)], [next_batch(n, 64, 0.25) for n in (48, 384, 1000)]
    ([64, 64], [64, 128, 256])
    """
    return max(batch, int(round(growth * spent / 64)) * 64)


def summarise(curves: dict, target: float) -> tuple[dict, dict]:
    """Seed-mean curves per strategy (over the steps every seed ran) and the labels to ``target``:
    each seed's first step at or above it, averaged over seeds; None when a seed never reached it."""
    out, to_target = {}, {}
    for name, runs in curves.items():
        steps = min(len(r) for r in runs.values())
        acc = np.array([[s["test_accuracy"] for s in r[:steps]] for r in runs.values()])
        f1 = np.array([[s["test_macro_f1"] for s in r[:steps]] for r in runs.values()])
        labels = [s["labels"] for s in next(iter(runs.values()))[:steps]]
        firsts = [next((s["labels"] for s in r if s["test_accuracy"] >= target), None) for r in runs.values()]
        to_target[name] = None if None in firsts else int(round(np.mean(firsts)))
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


def write_result(result: dict, curves: dict, output: Path, title: str) -> None:
    """The JSON (temp file + rename) and the learning-curve PNG next to it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, output)
    plot(curves, result["target_accuracy"], title, output.with_suffix(".png"))


def merge(paths: list[Path], output: Path) -> None:
    """One result from runs of different strategies with the same settings (their per-seed curves)."""
    runs = [json.loads(p.read_text()) for p in paths]
    keys = ("model", "seeds", "seed_per_class", "batch", "growth", "max_labels", "switch_per_class", "epochs",
            "min_train_examples", "pool", "test", "target")
    differ = [k for k in keys if len({json.dumps(r["settings"].get(k)) for r in runs}) > 1]
    if differ:
        raise SystemExit(f"cannot merge runs whose settings differ in {differ}")
    raw = {name: c["per_seed"] for r in runs for name, c in r["curves"].items()}
    curves, to_target = summarise(raw, runs[0]["target_accuracy"])
    settings = runs[0]["settings"] | {"strategies": ",".join(raw), "merged_from": [str(p) for p in paths]}
    result = {**runs[0], "labels_to_target": to_target, "curves": curves, "settings": settings,
              "seconds": round(sum(r["seconds"] for r in runs), 1)}
    write_result(result, curves, output, _title(settings))
    print(f"labels to target: {to_target} -> {output}")


def _title(settings: dict) -> str:
    return (f"active learning on emotion ({settings['model']}; pool {settings['pool']:,}, test {settings['test']:,}, "
            f"seeds {settings['seeds']})")


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
    ap.add_argument("--switch-per-class", type=int, default=ActiveOptions.switch_per_class)
    ap.add_argument("--setfit-iterations", type=int, default=ActiveOptions.setfit_iterations)
    ap.add_argument("--epochs", type=float, default=4.0, help="Fine-tuning epochs after the switch.")
    ap.add_argument("--min-train-examples", type=int, default=ActiveOptions.min_train_examples,
                    help="Raise the fine-tuning epochs so each fine-tune sees at least this many examples.")
    ap.add_argument("--growth", type=float, default=0.0, help="Batch = max(--batch, growth x labels so far).")
    ap.add_argument("--stop-at-target", action="store_true", help="End each curve once it reaches --target.")
    ap.add_argument("--random-from", type=int, default=0,
                    help="Train and evaluate random only from this many labels on (the CPU budget): its picks never "
                         "depend on the model, so they are the same; its curve starts there.")
    ap.add_argument("--target", type=float, default=TARGET)
    ap.add_argument("--pool-size", type=int, default=0, help="Stratified sample of the train split as the pool (0: all).")
    ap.add_argument("--test-size", type=int, default=0, help="Random sample of the test split (0: all 2,000).")
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "out" / "active"))
    ap.add_argument("--output", default=str(RESULTS / "active_rounds.json"), help="JSON path; the PNG goes next to it.")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="Combine the curves of earlier runs' JSON files.")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="Where the encoder runs (embedding, SetFit and fine-tuning): auto = a GPU when there is one.")
    args = ap.parse_args()
    use_device(args.device)
    if args.merge:
        return merge([Path(p) for p in args.merge], Path(args.output))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    workdir, output = Path(args.workdir), Path(args.output)
    names = [s for s in args.strategies.split(",") if s]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise SystemExit(f"no or unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    data = load(args, workdir)
    print(f"pool {len(data['pool_texts']):,}, test {len(data['test_texts']):,}, embedded in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    raw: dict = {}

    def write() -> tuple[dict, dict]:
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
        write_result(result, curves, output, _title(result["settings"]))
        return curves, to_target

    for name in names:
        raw[name] = {str(seed): simulate(name, seed, data, args, workdir) for seed in seeds}
        curves, to_target = write()  # after every strategy: an interrupted run keeps what it measured
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

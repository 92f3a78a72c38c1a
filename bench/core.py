"""Core benchmark: dummy, features + logistic regression and the fine-tuned default on the emotion
test split, and scoring throughput against a plain ``transformers.pipeline``.

    python bench/core.py                      # all parts (fine-tuning takes ~20 min on 2 CPU cores)
    python bench/core.py --parts scoring      # only the scoring ratio, with the model of an earlier run

Writes bench/results/core.json and prints one summary line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import update_results

from cleanloop.config import Config
from cleanloop.model.data import load_data
from cleanloop.model.train import ClassifierTrainer

KEYS = ("accuracy", "macro_f1", "weighted_f1")


def bench_features(cfg: Config, dd) -> dict:
    res = ClassifierTrainer(cfg.replace(method="features")).train(dd)
    return {
        "dummy": {k: res.metrics["dummy"]["test"][k] for k in KEYS},
        "features": {**{k: res.metrics["test"][k] for k in KEYS}, "fit_seconds": round(res.train_seconds, 1)},
    }


def bench_finetune(cfg: Config, dd) -> dict:
    res = ClassifierTrainer(cfg.replace(record_dynamics=False)).train(dd)
    return {
        "finetune": {
            **{k: res.metrics["test"][k] for k in KEYS},
            "validation_accuracy": res.metrics["validation"]["accuracy"],
            "validation_macro_f1": res.metrics["validation"]["macro_f1"],
            "epochs": cfg.epochs,
            "learning_rate": cfg.learning_rate,
            "batch_size": cfg.batch_size,
            "max_length": cfg.max_length,
            "label_smoothing": cfg.label_smoothing,
            "train_seconds": round(res.train_seconds, 1),
            "train_examples_per_s": round(len(dd["train"]) * cfg.epochs / res.train_seconds, 1),
            "torch_threads": torch.get_num_threads(),
        }
    }


def bench_scoring(model_dir: Path, texts: list[str], batch_size: int) -> dict:
    from transformers import pipeline

    from cleanloop.model.predict import Predictor

    pred = Predictor.load(model_dir, device="cpu")
    pred.predict_arrays(texts[:64])  # warm-up
    t0 = time.perf_counter()
    ours = pred.predict_arrays(texts, batch_size=batch_size)["probs"]
    ours_s = time.perf_counter() - t0

    pipe = pipeline("text-classification", model=str(model_dir), top_k=None, device="cpu")
    pipe(texts[:64])
    t0 = time.perf_counter()
    theirs = pipe(texts, truncation=True, max_length=pred.max_length)
    ref_s = time.perf_counter() - t0
    names = pred.label_names
    agree = sum(
        int(max(r, key=lambda d: d["score"])["label"] == names[int(o.argmax())]) for r, o in zip(theirs, ours)
    ) / len(texts)
    return {
        "scoring": {
            "examples": len(texts),
            "cleanloop_per_s": round(len(texts) / ours_s, 1),
            "pipeline_per_s": round(len(texts) / ref_s, 1),
            "speedup": round(ref_s / ours_s, 2),
            "top_label_agreement": agree,
            "batch_size": batch_size,
        }
    }


def _previous(key: str) -> list:
    import json

    from common import RESULTS

    path = RESULTS / "core.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    test = data.get("test", {})
    return test.get(key) or ([test["finetune"]] if key == "finetune_runs" and "finetune" in test else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="features,finetune,scoring")
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "out" / "core"))
    ap.add_argument("--epochs", type=float, default=5)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    args = ap.parse_args()
    parts = args.parts.split(",")
    cfg = Config(workdir=args.workdir, epochs=args.epochs, learning_rate=args.learning_rate)
    dd = load_data(cfg)
    result: dict = {}
    if "features" in parts:
        result.setdefault("test", {}).update(bench_features(cfg, dd))
        update_results("core", result)
    if "finetune" in parts:
        run = bench_finetune(cfg, dd)["finetune"]
        # every run is kept; "finetune" is the run with the best validation macro F1, the metric that
        # also picks the best epoch inside a run (chosen on validation only, never on test)
        runs = _previous("finetune_runs") + [run]
        best = max(runs, key=lambda r: r["validation_macro_f1"])
        result.setdefault("test", {}).update({"finetune": best, "finetune_runs": runs})
        update_results("core", result)
    if "scoring" in parts:
        result.update(bench_scoring(Path(args.workdir) / "model", list(dd["validation"]["text"]), cfg.eval_batch_size))
    path = update_results("core", result)
    import json

    data = json.loads(path.read_text())
    t, s = data.get("test", {}), data.get("scoring", {})
    line = []
    for name in ("dummy", "features", "finetune"):
        if name in t:
            line.append(f"{name} acc {t[name]['accuracy']:.3f} F1 {t[name]['macro_f1']:.3f}")
    if s:
        line.append(f"scoring {s['cleanloop_per_s']}/s vs pipeline {s['pipeline_per_s']}/s ({s['speedup']}x)")
    print("core: " + "; ".join(line) + f" -> {path}")


if __name__ == "__main__":
    main()

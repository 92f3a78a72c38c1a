"""Core benchmark: dummy, features + logistic regression and the fine-tuned default on the emotion
test split; scoring throughput against a plain ``transformers.pipeline`` (batch 1 and 64) in each
precision; training speed and accuracy, fp32 against bf16.

    python bench/core.py                      # features, finetune, scoring (fine-tuning ~20 min on 2 CPU cores)
    python bench/core.py --parts scoring      # the scoring table, with the model of an earlier run (or --model)
    python bench/core.py --parts train-speed  # examples/s, fp32 vs bf16, 2,000 training examples, one process
    python bench/core.py --parts train-compare --epochs 4 --learning-rate 1.5e-4 --device cuda
                                              # the full recipe in fp32 and in bf16: test accuracy of both

Writes bench/results/core.json and prints one summary line.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from common import cpu_model, update_results

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


def bench_scoring(model_dir: Path, texts: list[str], labels, batch_size: int, repeats: int, precisions: list[str],
                  device: str = "cpu") -> dict:
    """Texts per second on the same texts, medians of ``repeats`` runs that take every path in turn:
    ``transformers.pipeline`` at batch size 1 (its default) and ``batch_size``, and cleanloop's path
    (length-sorted, dynamically padded batches) in each precision; top-1 agreement with our fp32
    path and accuracy against the given labels."""
    import numpy as np
    from transformers import pipeline

    from cleanloop.model import precision as prec
    from cleanloop.model.predict import Predictor

    labels = np.asarray(labels)
    if device != "cpu":
        precisions = [p for p in precisions if p != "int8"]  # int8 is CPU-only
    ours = {p: Predictor.load(model_dir, device=device, precision=p) for p in precisions}
    names = ours[precisions[0]].label_names
    max_length = ours[precisions[0]].max_length
    pipe = pipeline("text-classification", model=str(model_dir), top_k=None, device=device)

    def run_pipe(bs):
        out = pipe(texts, batch_size=bs, truncation=True, max_length=max_length)
        return np.array([[{d["label"]: d["score"] for d in r}[n] for n in names] for r in out])

    paths = {f"pipeline_batch_{bs}": (lambda bs=bs: run_pipe(bs)) for bs in (1, batch_size)}
    paths |= {f"cleanloop_{p}": (lambda p=p: ours[p].predict_arrays(texts, batch_size=batch_size)["probs"]) for p in precisions}
    for p in precisions:  # warm-up
        ours[p].predict_arrays(texts[:64], batch_size=batch_size)
    pipe(texts[:64], batch_size=batch_size)
    seconds: dict[str, list[float]] = {k: [] for k in paths}
    probs: dict[str, np.ndarray] = {}
    for k in range(repeats):
        for name, run in paths.items():
            t0 = time.perf_counter()
            probs[name] = run()
            seconds[name].append(time.perf_counter() - t0)
        print(f"  scoring run {k + 1}: " + ", ".join(f"{n} {len(texts) / s[-1]:.0f}/s" for n, s in seconds.items()), flush=True)
    ref = probs["cleanloop_fp32"].argmax(1)
    table = {}
    for name, s in seconds.items():
        pred = probs[name].argmax(1)
        table[name] = {
            "per_s": round(len(texts) / float(np.median(s)), 1),
            "runs_per_s": [round(len(texts) / x, 1) for x in s],
            "top1_agreement_vs_fp32": float((pred == ref).mean()),
            "max_prob_diff_vs_fp32": round(float(np.abs(probs[name] - probs["cleanloop_fp32"]).max()), 4),
            "validation_accuracy": float((pred == labels).mean()),
        }
    anchor = table[f"pipeline_batch_{batch_size}"]["per_s"]
    for row in table.values():
        row["vs_pipeline_batch_%d" % batch_size] = round(row["per_s"] / anchor, 2)
    auto = Predictor.load(model_dir, device=device)
    return {
        "scoring": {
            "examples": len(texts),
            "texts": "emotion validation tweets",
            "batch_size": batch_size,
            "repeats": repeats,
            "figures": f"medians of {repeats} runs; each run takes every path in turn, in one process",
            "paths": table,
            "auto_picks": auto.precision,
            "auto_reason": auto.precision_reason,
            "hardware": prec.hardware(torch.device(device)),
            "device": _device_name() if device != "cpu" else f"cpu: {cpu_model()}",
        }
    }


def _previous(key: str) -> list:
    """The runs of ``key`` already in bench/results/core.json (a rerun adds to them)."""
    import json

    from common import RESULTS

    path = RESULTS / "core.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    test = data.get("test", {})
    return test.get(key) or ([test["finetune"]] if key == "finetune_runs" and "finetune" in test else [])


def bench_train(cfg: Config, dd, precisions: list[str], examples: int, eval_examples: int) -> dict:
    """Training examples per second (the Trainer's own loop, no evaluation inside) and test accuracy,
    one run per precision in this process, on the same ``examples`` training examples (0: all)."""
    from datasets import DatasetDict

    train = dd["train"] if not examples else dd["train"].shuffle(seed=cfg.seed).select(range(examples))
    parts = {"train": train}
    for split in ("validation", "test"):
        if split in dd:
            parts[split] = dd[split] if not eval_examples else dd[split].select(range(min(eval_examples, len(dd[split]))))
    small = DatasetDict(parts)
    runs = {}
    for p in precisions:
        res = ClassifierTrainer(cfg.replace(precision=p, record_dynamics=False, workdir=f"{cfg.workdir}-{p}")).train(small)
        runs[p] = {
            "train_examples_per_s": round(len(train) * cfg.epochs / res.train_seconds, 1),
            "train_seconds": round(res.train_seconds, 1),
            "trained_in": res.metrics["precision"]["training"],
            **{f"test_{k}": res.metrics["test"][k] for k in KEYS if "test" in res.metrics},
            "validation_accuracy": res.metrics.get("validation", {}).get("accuracy"),
        }
        print(f"  train {p}: {runs[p]}", flush=True)
    if "fp32" in runs:
        for p, r in runs.items():
            r["speedup_vs_fp32"] = round(r["train_examples_per_s"] / runs["fp32"]["train_examples_per_s"], 2)
            if "test_accuracy" in r:
                r["test_accuracy_change_pt"] = round(100 * (r["test_accuracy"] - runs["fp32"]["test_accuracy"]), 2)
    return {"train_examples": len(train), "epochs": cfg.epochs, "learning_rate": cfg.learning_rate,
            "batch_size": cfg.batch_size, "eval_examples": eval_examples or "all", "device": _device_name(), "runs": runs}


def _device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu: {cpu_model()}"


def _drop(key: str) -> None:
    """Remove ``key`` from core.json before a part rewrites it whole (no stale figures left behind)."""
    import json
    import os

    from common import RESULTS

    path = RESULTS / "core.json"
    if path.exists():
        data = json.loads(path.read_text())
        data.pop(key, None)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="features,finetune,scoring")
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "out" / "core"))
    ap.add_argument("--epochs", type=float, default=5)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--model", default=None, help="scoring: model folder (default: WORKDIR/model)")
    ap.add_argument("--repeats", type=int, default=3, help="scoring: runs per path; figures are medians")
    ap.add_argument("--examples", type=int, default=0, help="scoring: the first N validation texts (0: all 2,000)")
    ap.add_argument("--precisions", default="fp32,bf16,int8", help="scoring and training parts: precisions to measure")
    ap.add_argument("--batch-size", type=int, default=64, help="scoring: batch size of our path and the pipeline")
    ap.add_argument("--train-examples", type=int, default=2000, help="train-speed: training examples, 1 epoch (0: all)")
    ap.add_argument("--eval-examples", type=int, default=200, help="train-speed: validation/test examples (0: all)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="cpu hides any GPU; cuda requires one (scoring runs on cpu unless cuda)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch first touches CUDA
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible to torch")
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
    precisions = args.precisions.split(",")
    if "train-speed" in parts:  # a short run per precision: examples per second
        result["train_speed"] = bench_train(cfg.replace(workdir=f"{args.workdir}/train-speed", epochs=1), dd, precisions,
                                            args.train_examples, args.eval_examples)
        _drop("train_speed")
    if "train-compare" in parts:  # the full recipe per precision (for a GPU): test accuracy within 0.3 pt?
        result["train_compare"] = bench_train(cfg.replace(workdir=f"{args.workdir}/train-compare"), dd,
                                              [p for p in precisions if p != "int8"], 0, 0)
        _drop("train_compare")
    if "scoring" in parts:
        model = Path(args.model) if args.model else Path(args.workdir) / "model"
        val = dd["validation"] if not args.examples else dd["validation"].select(range(args.examples))
        result.update(bench_scoring(model, list(val["text"]), val["label"], args.batch_size,
                                    args.repeats, precisions, "cuda" if args.device == "cuda" else "cpu"))
        result["scoring"]["model"] = str(model.relative_to(Path.cwd()) if model.is_absolute() and model.is_relative_to(Path.cwd()) else model)
        _drop("scoring")
    path = update_results("core", result)
    import json

    data = json.loads(path.read_text())
    t, s = data.get("test", {}), data.get("scoring", {})
    line = []
    for name in ("dummy", "features", "finetune"):
        if name in t:
            line.append(f"{name} acc {t[name]['accuracy']:.3f} F1 {t[name]['macro_f1']:.3f}")
    if s:
        line.append("scoring " + ", ".join(f"{k} {v['per_s']}/s" for k, v in s["paths"].items()))
    for key in ("train_speed", "train_compare"):
        if key in data:
            line.append(key + " " + ", ".join(f"{p} {r['train_examples_per_s']} ex/s test acc {r.get('test_accuracy')}"
                                              for p, r in data[key]["runs"].items()))
    print("core: " + "; ".join(line) + f" -> {path}")


if __name__ == "__main__":
    main()

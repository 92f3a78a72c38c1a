"""Tune and ensemble: an Optuna search for the best validation macro F1, then the tuned model and an
ensemble of N seeds of it on the emotion test split, against today's recipe (4 epochs, lr 1.5e-4,
label smoothing 0.1: 93.1% test accuracy, macro F1 0.895 in bench/results/core.json).

The search's first trial IS today's recipe (validation macro F1 measured in the same run), and the
test split is only touched after the search, by the final trainings. The tuned single model is the
ensemble's first member (same settings, seed 42), so the final step costs N trainings; then, if the
budget allows, today's recipe is trained once more on the same device for its test figures.

    # on a GPU (about 7 minutes: search 3 min plus the trial that runs at the timeout, then up to
    # 3 trainings and the recipe; `--budget` lowers the ensemble size and skips the recipe when short)
    python bench/tune.py --device cuda --trials 40 --timeout 180 --ensemble 3 --budget 400
    # CPU smoke test: a few trials on a few hundred examples, 1 epoch (about 30 min on 2 busy cores)
    python bench/tune.py --device cpu --trials 3 --timeout 2400 --min-epochs 1 --max-epochs 1 \\
        --max-train-samples 200 --final-train-samples 200 --max-eval-samples 400 --ensemble 2 --skip-recipe \\
        --name tune_cpu_smoke
    # the ensemble's gain alone, on CPU: no search, 3 seeds of today's recipe (about 80 min on 2 cores)
    python bench/tune.py --device cpu --trials 0 --ensemble 3 --name tune_cpu_ensemble
    # the first-k-members table alone, for an ensemble folder an earlier run trained
    python bench/tune.py --device cpu --sizes-of bench/out/tune/cpu/ensemble --name tune_cpu_ensemble

Writes bench/results/<name>.json (default tune.json), also after the search alone and when the
timeout or budget cuts the search, and prints progress as it goes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--trials", type=int, default=40,
                    help="most trials in the search (today's recipe is the first); 0: no search, the ensemble of the recipe")
    ap.add_argument("--timeout", type=float, default=180, help="seconds for the search (the running trial ends first)")
    ap.add_argument("--budget", type=float, default=0,
                    help="seconds for search + final trainings; fewer ensemble members when short (0: no cap)")
    ap.add_argument("--ensemble", type=int, default=3, help="members of the final ensemble (seeds 42, 43, ...)")
    ap.add_argument("--max-train-samples", type=int, default=0, help="stratified train sample for the search (0: all)")
    ap.add_argument("--final-train-samples", type=int, default=0, help="the same for the final trainings (0: all)")
    ap.add_argument("--max-eval-samples", type=int, default=0,
                    help="first N of validation and of test (0: all; a smaller figure is only for smoke tests)")
    ap.add_argument("--min-epochs", type=int, default=2)
    ap.add_argument("--max-epochs", type=int, default=6)
    ap.add_argument("--eval-batch-size", type=int, default=0, help="0: 256 on a GPU, 64 on CPU")
    ap.add_argument("--skip-recipe", action="store_true", help="do not train today's recipe for its test figures")
    ap.add_argument("--sizes-of", default=None, metavar="FOLDER",
                    help="no training: add the ensemble-size table of the ensemble FOLDER of an earlier run to the results")
    ap.add_argument("--name", default="tune", help="results file bench/results/<name>.json")
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "out" / "tune"))
    return ap.parse_args()


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def search(args, cfg, dd, out: dict, trial_done) -> tuple[dict | None, float, bool]:
    """The Optuna search, recorded in ``out["search"]``: (best settings or None when it gave nothing,
    seconds one training of them takes, whether today's recipe won)."""
    from common import update_results

    from cleanloop.errors import CleanloopError
    from cleanloop.model.tune import SearchSpace, tune

    space = SearchSpace(epochs=(args.min_epochs, args.max_epochs))
    t0 = time.perf_counter()
    try:
        res = tune(cfg, dd, trials=args.trials, timeout=args.timeout, space=space, study_name="bench",
                   progress=trial_done)
    except CleanloopError as exc:
        out["search"] = {"error": str(exc), "seconds": round(time.perf_counter() - t0, 1)}
        update_results(args.name, out)
        say(f"search gave nothing: {exc}")
        return None, 0.0, False
    search_s = time.perf_counter() - t0
    import optuna

    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{res.storage.resolve()}")
    best_trial = study.best_trial
    out["search"] = {
        "best_validation_macro_f1": res.best_value,
        "recipe_validation_macro_f1": res.baseline_value,
        "recipe_trial_params": study.trials[0].params,  # trial 0: the recipe moved into the search space
        "gain_over_recipe": None if res.baseline_value is None else res.best_value - res.baseline_value,
        "best_trial": res.best_trial,
        "best_settings": res.best_settings,
        "trials_complete": res.trials_complete,
        "trials_pruned": res.trials_pruned,
        "trials_failed": res.trials_failed,
        "search_seconds": round(search_s, 1),
        "search_train_examples": len(dd["train"]),
        "space": {k: list(v) for k, v in vars(space).items()},
        "trials": [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
                    "epochs_reported": t.last_step} for t in study.trials],
    }
    path = update_results(args.name, out)
    say(f"search: best validation macro F1 {res.best_value:.4f} vs recipe {res.baseline_value} "
        f"({res.trials_complete} complete, {res.trials_pruned} pruned, {search_s:.0f} s) -> {path}")
    per_model = float(best_trial.user_attrs.get("train_seconds", 0)) * 1.15 + 15  # + loading, testing, saving
    return res.best_settings, per_model, res.best_trial == 0


def ensemble_sizes(folder: Path, dd) -> dict:
    """Accuracy and macro F1 on validation and test of the ensembles of the first k members of the
    ensemble ``folder`` (k = 1 .. N; fp32), from one pass of each member over each split."""
    import numpy as np

    from cleanloop.model.metrics import classification_metrics
    from cleanloop.model.predict import Predictor

    members = sorted(folder.glob("member-*"), key=lambda p: int(p.name.split("-")[1]))
    if not members:
        raise SystemExit(f"error: {folder} holds no member-N folders; fix: pass the ensemble folder of a bench/tune.py run")
    table: dict = {}
    for split in ("validation", "test"):
        texts, y = list(dd[split]["text"]), np.asarray(dd[split]["label"])
        names = dd[split].features["label"].names
        probs = [Predictor.load(m, precision="fp32").predict_arrays(texts, batch_size=64)["probs"] for m in members]
        for k in range(1, len(members) + 1):
            pred = np.mean(probs[:k], axis=0).argmax(1)
            m = classification_metrics(y, pred, names)
            table.setdefault(str(k), {})[split] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    return table


def main() -> int:
    args = parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch loads: the Trainer then picks the CPU
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t_start = time.perf_counter()
    import torch
    from common import fresh_dir, update_results

    from cleanloop.config import Config
    from cleanloop.model.data import bundled_emotion_dir, load_data
    from cleanloop.model.ensemble import seed_members, train_ensemble
    from cleanloop.model.predict import Predictor

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    gpu = torch.cuda.is_available()
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.cuda.get_device_name(0) if gpu else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    say(f"device {device}; torch {torch.__version__}; bf16 training: {gpu and torch.cuda.is_bf16_supported()}")

    work = Path(args.workdir) / ("cuda" if gpu else "cpu")
    if not args.sizes_of:
        fresh_dir(work)  # a fresh study every run
    recipe = dict(epochs=4.0, learning_rate=1.5e-4, label_smoothing=0.1, batch_size=32, weight_decay=0.01,
                  warmup_ratio=0.06, class_weights=False)
    cfg = Config(dataset=str(bundled_emotion_dir()), workdir=str(work), record_dynamics=False,
                 eval_batch_size=args.eval_batch_size or (256 if gpu else 64),
                 max_train_samples=args.max_train_samples, **recipe)
    def load(c: Config):
        d = load_data(c)
        for split in ("validation", "test"):
            if args.max_eval_samples and len(d[split]) > args.max_eval_samples:
                d[split] = d[split].select(range(args.max_eval_samples))
        return d

    dd = load(cfg)
    if args.sizes_of:
        sizes = ensemble_sizes(Path(args.sizes_of), dd)
        path = update_results(args.name, {"ensemble_sizes": sizes})
        say("first k members, test accuracy / macro F1: " + ", ".join(
            f"{k}: {v['test']['accuracy']:.2%} / {v['test']['macro_f1']:.3f}" for k, v in sizes.items()) + f" -> {path}")
        return 0
    say(f"search data: train {len(dd['train']):,}, validation {len(dd['validation']):,} (test not used)")
    out: dict = {
        "goal": {"test_accuracy": 0.94, "test_macro_f1": 0.90},
        "reference_recipe": {**recipe, "test_accuracy": 0.931, "test_macro_f1": 0.8947,
                             "source": "bench/results/core.json (CPU run)"},
        "settings": {k: v for k, v in vars(args).items() if k != "workdir"},
        "device": device,
    }
    # clear an earlier run's figures, then record each trial as it ends (a run cut short keeps its log)
    update_results(args.name, {**out, "search": None, "final": None, "serving": None, "goal_met": None,
                               "recipe_same_run": None, "total_seconds": None, "search_log": []})
    log: list[str] = []

    def trial_done(line: str) -> None:
        say(line)
        log.append(line)
        update_results(args.name, {"search_log": log})

    if args.trials:
        settings, per_model, recipe_won = search(args, cfg, dd, out, trial_done)
        if settings is None:
            return 1
    else:  # the ensemble's gain over one model of today's recipe, without a search's cost
        out["search"] = {"skipped": "--trials 0: the final trainings are today's recipe"}
        settings, per_model, recipe_won = {}, 0.0, True
        say("no search (--trials 0): an ensemble of today's recipe")

    # --- final trainings: the tuned model (seed 42) and N-1 more seeds, as one ensemble -------------
    final = cfg.replace(**settings, max_train_samples=args.final_train_samples)
    n = args.ensemble
    if args.final_train_samples != args.max_train_samples:
        per_model *= len(load(final)["train"]) / len(dd["train"])
    if args.budget and per_model:
        left = args.budget - (time.perf_counter() - t_start)
        n = max(1, min(n, int(left // per_model)))
        say(f"budget: {left:.0f} s left, ~{per_model:.0f} s per training -> ensemble of {n}")
    dd_final = load(final)
    t0 = time.perf_counter()
    ens = train_ensemble(seed_members(final, n), dd_final, Path(work) / "ensemble", progress=say)
    final_s = time.perf_counter() - t0
    single = ens.metrics["members"][0]
    out["final"] = {
        "train_examples": len(dd_final["train"]),
        "ensemble_members": n,
        "seconds": round(final_s, 1),
        "tuned_single": {"seed": single["seed"], "test_accuracy": single["test"]["accuracy"],
                         "test_macro_f1": single["test"]["macro_f1"],
                         "validation_macro_f1": single["validation"]["macro_f1"]},
        "ensemble": {"test_accuracy": ens.metrics["test"]["accuracy"], "test_macro_f1": ens.metrics["test"]["macro_f1"],
                     "validation_macro_f1": ens.metrics["validation"]["macro_f1"]},
        "members": ens.metrics["members"],
        "member_average": ens.metrics["member_average"],
    }
    out["ensemble_sizes"] = ensemble_sizes(ens.output_dir, dd_final)
    best_acc = max(single["test"]["accuracy"], ens.metrics["test"]["accuracy"])
    best_f1 = max(single["test"]["macro_f1"], ens.metrics["test"]["macro_f1"])
    out["goal_met"] = best_acc >= 0.94 and best_f1 >= 0.90

    # --- cost in the served path: one model vs the ensemble, same texts --------------------------------
    texts = list(dd_final["validation"]["text"])
    bs = cfg.eval_batch_size
    rates = {}
    for what, folder in (("single", ens.output_dir / "member-0"), ("ensemble", ens.output_dir)):
        pred = Predictor.load(folder)
        pred.predict_arrays(texts[:bs], batch_size=bs)  # warm-up
        t1 = time.perf_counter()
        pred.predict_arrays(texts, batch_size=bs)
        rates[what] = len(texts) / (time.perf_counter() - t1)
    out["serving"] = {"texts": len(texts), "batch_size": bs, "single_per_s": round(rates["single"], 1),
                      "ensemble_per_s": round(rates["ensemble"], 1),
                      "ensemble_cost": round(rates["single"] / rates["ensemble"], 2)}
    update_results(args.name, out)

    # --- today's recipe on the same device and data, tested, when time is left -----------------------
    left = args.budget - (time.perf_counter() - t_start) if args.budget else float("inf")
    if recipe_won:
        why = "won the search" if args.trials else "is what the final step trained"
        out["recipe_same_run"] = {"same_as": f"tuned_single (the recipe {why})", **out["final"]["tuned_single"]}
    elif args.skip_recipe:
        out["recipe_same_run"] = {"skipped": "--skip-recipe"}
    elif left > per_model * 1.2:
        from cleanloop.model.train import ClassifierTrainer

        say("today's recipe on the final data, for its test figures in this run")
        rec = ClassifierTrainer(cfg.replace(max_train_samples=args.final_train_samples)).train(dd_final, work / "recipe")
        out["recipe_same_run"] = {"test_accuracy": rec.metrics["test"]["accuracy"],
                                  "test_macro_f1": rec.metrics["test"]["macro_f1"],
                                  "validation_macro_f1": rec.metrics["validation"]["macro_f1"],
                                  "train_seconds": round(rec.train_seconds, 1)}
    else:
        out["recipe_same_run"] = {"skipped": f"budget: {left:.0f} s left"}
    out["total_seconds"] = round(time.perf_counter() - t_start, 1)
    path = update_results(args.name, out)
    say(f"tuned single: test accuracy {single['test']['accuracy']:.2%}, macro F1 {single['test']['macro_f1']:.3f}; "
        f"ensemble of {n}: {ens.metrics['test']['accuracy']:.2%}, {ens.metrics['test']['macro_f1']:.3f} "
        f"(goal 94.0% / 0.90: {'met' if out['goal_met'] else 'not met'}); serving cost x{out['serving']['ensemble_cost']}; "
        f"total {out['total_seconds']:.0f} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Review-loop benchmark: one full round on the emotion data with a simulated annotator.

The train split gets the noise benchmark's 10% class-conditional noise (joy<->love,
fear<->surprise, anger<->sadness; ``noise.inject_noise``). Then:

  noisy_no_smoothing  train on the noisy labels with label smoothing 0 (the baseline)
  before              round 1 of ``run_loop``: train on the noisy labels with label smoothing
  (round 1)           flag -> push up to --max-review records to a fresh embedded Argilla ->
                      the simulated annotator answers every pushed record with its true label
                      through the web UI's REST endpoints -> pull -> apply
  after               the loop's final retrain on the cleaned data

``label_accuracy`` is the share of training labels equal to the true ones; ``reviewed`` the
records answered, ``fixed`` the injected errors whose label the review put right.

    python bench/loop.py                                   # full: 3 fine-tunes, over an hour on 2 CPU cores
    python bench/loop.py --max-train-samples 300 --max-eval-samples 120 --method features \\
        --max-review 40 --workdir /tmp/loop-tiny --output /tmp/loop-tiny.json   # a quick check of the script

Writes bench/results/loop.json (or --output) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
from common import RESULTS, machine, update_results
from noise import inject_noise

# bench/ holds argilla.py: drop the folder from the path so `import argilla` is the SDK, not that script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from cleanloop.config import Config  # noqa: E402
from cleanloop.config import LoopOptions  # noqa: E402
from cleanloop.labeling.embedded import credentials, down, up  # noqa: E402
from cleanloop.loops.retrain import run_loop  # noqa: E402
from cleanloop.loops.versions import load_version  # noqa: E402
from cleanloop.workdir import Workdir  # noqa: E402
from cleanloop.model.data import load_data  # noqa: E402
from cleanloop.model.train import ClassifierTrainer  # noqa: E402

SETTING = "class-conditional-10"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_noisy_data(cfg: Config, folder: Path, seed: int, max_eval: int = 0) -> tuple[dict[str, str], list[str]]:
    """The (sampled) emotion data with noisy train labels as parquet files; returns {train id: true label}.

    max_eval: keep a stratified sample of this many validation and test examples (0: all; for quick checks).
    """
    from cleanloop.model.data import stratified_sample

    dd = load_data(cfg)
    names = dd["train"].features["label"].names
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, ds in dd.items():
        df = ds.to_pandas()
        if split != "train" and 0 < max_eval < len(df):
            df = stratified_sample(df, max_eval, seed)
        if split == "train":
            truth = {i: names[lbl] for i, lbl in zip(df["id"], df["label"])}
            df["label"] = inject_noise(df["label"].to_numpy(), names, SETTING, seed)
        df["label"] = [names[i] for i in df["label"]]
        df.to_parquet(folder / f"{split}.parquet")
    return truth, names


def annotator(url: str, api_key: str, cfg: Config, truth: dict[str, str], state_file: Path, answered: list,
              stop: threading.Event) -> None:
    """Waits for the round's push, then answers every pushed record with its true label, as the UI does."""
    import httpx

    while not stop.is_set():
        if state_file.exists() and "push" in json.loads(state_file.read_text()).get("done", []):
            break
        time.sleep(1)
    else:
        return
    with httpx.Client(base_url=url, headers={"X-Argilla-Api-Key": api_key}, timeout=120) as http:
        ds = next(d for d in http.get("/api/v1/me/datasets").json()["items"] if d["name"] == cfg.argilla_dataset)
        offset = 0
        while True:
            page = http.post(f"/api/v1/me/datasets/{ds['id']}/records/search", params={"limit": 500, "offset": offset},
                             json={}).json()["items"]
            for item in page:
                rec = item["record"]
                r = http.post(f"/api/v1/records/{rec['id']}/responses",
                              json={"values": {"label": {"value": truth[rec["external_id"]]}}, "status": "submitted"})
                if r.status_code == 201:
                    answered.append(rec["external_id"])
            if len(page) < 500:
                break
            offset += len(page)


def metrics(m: dict) -> dict:
    return {"test_accuracy": m.get("test_accuracy"), "test_macro_f1": m.get("test_macro_f1"),
            "val_accuracy": m.get("val_accuracy"), "val_macro_f1": m.get("val_macro_f1")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "out" / "loop"))
    ap.add_argument("--output", default=str(RESULTS / "loop.json"))
    ap.add_argument("--method", default="finetune", choices=["finetune", "features"])
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--max-train-samples", type=int, default=0)
    ap.add_argument("--max-review", type=int, default=2000)
    ap.add_argument("--max-eval-samples", type=int, default=0, help="Validation/test sample size (0: all; quick checks).")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    work = Path(args.workdir).absolute()
    if Workdir(work).loop.exists():
        sys.exit(f"{work} has a previous loop; remove it for a fresh measurement")
    base = Config(epochs=args.epochs, method=args.method, max_train_samples=args.max_train_samples, seed=args.seed)
    truth, names = write_noisy_data(base, work / "data", args.seed, args.max_eval_samples)
    cfg = base.replace(dataset=str(work / "data"), id_column="id", label_names=names, max_train_samples=0,
                       workdir=str(work), max_review=args.max_review, argilla_url=f"http://127.0.0.1:{_free_port()}",
                       argilla_dataset="loop-bench")
    noisy = load_data(cfg)
    label_acc_before = float(np.mean([names[lbl] == truth[i] for i, lbl in zip(noisy["train"]["id"], noisy["train"]["label"])]))

    t0 = time.perf_counter()
    ns = ClassifierTrainer(cfg.replace(label_smoothing=0.0)).train(noisy, work / "no-smoothing" / "model")
    no_smoothing_seconds = time.perf_counter() - t0

    home = work / "argilla"
    t0 = time.perf_counter()
    up(cfg, home, timeout=300)
    server_seconds = time.perf_counter() - t0
    stop, answered = threading.Event(), []
    try:
        ann_key = credentials(cfg, home)["annotator"].api_key
        os.environ["ARGILLA_API_KEY"] = credentials(cfg, home)["owner"].api_key
        th = threading.Thread(target=annotator, args=(cfg.argilla_url, ann_key, cfg, truth, Workdir(work).loop_state,
                                                       answered, stop), daemon=True)
        th.start()
        state = run_loop(cfg, LoopOptions(rounds=1, review_timeout=3 * 3600, poll_seconds=5),
                         home=home)
    finally:
        stop.set()
        down(cfg, home)

    version, _ = load_version(Workdir(work).version(1))
    train = version["train"]
    kept = [(i, names[lbl], src) for i, lbl, src in zip(train["id"], train["label"], train["label_source"]) if src != "removed"]
    label_acc_after = float(np.mean([lbl == truth[i] for i, lbl, _ in kept]))
    injected = {i for i, lbl in zip(noisy["train"]["id"], noisy["train"]["label"]) if names[lbl] != truth[i]}
    fixed = sum(1 for i, lbl, src in kept if src == "corrected" and i in injected and lbl == truth[i])
    r1 = state.rounds["1"]
    step_seconds = {"train_noisy_no_smoothing": round(no_smoothing_seconds, 1), "argilla_up": round(server_seconds, 1),
                    **{k: v for k, v in r1["step_seconds"].items()}, "retrain": state.final["step_seconds"]["train"]}
    result = {
        "setting": SETTING,
        "config": {"method": cfg.method, "epochs": cfg.epochs, "label_smoothing": cfg.label_smoothing,
                   "max_review": cfg.max_review, "seed": args.seed,
                   **{f"{s}_examples": len(ds) for s, ds in noisy.items()}},
        "noisy_no_smoothing": {"label_accuracy": label_acc_before, **metrics(
            {f"{'val' if s == 'validation' else s}_{k}": ns.metrics[s][k] for s in ("validation", "test")
             for k in ("accuracy", "macro_f1") if s in ns.metrics})},
        "before": {"label_accuracy": label_acc_before, **metrics(r1)},
        "after": {"label_accuracy": label_acc_after, **metrics(state.final)},
        "flagged": r1.get("flagged"), "pushed": r1.get("pushed"), "reviewed": r1.get("reviewed"),
        "answered_by_annotator": len(answered), "changed": r1.get("changed"), "removed": r1.get("removed"),
        "injected_errors": len(injected), "fixed": fixed,
        "step_seconds": step_seconds,
    }
    out = Path(args.output)
    if out.resolve() == (RESULTS / "loop.json").resolve():
        path = update_results("loop", result)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**result, "machine": machine()}, indent=2) + "\n")
        path = out
    b, a, n = result["before"], result["after"], result["noisy_no_smoothing"]
    print(f"label accuracy {b['label_accuracy']:.2%} -> {a['label_accuracy']:.2%}; reviewed {result['reviewed']}, "
          f"fixed {fixed} of {len(injected)} injected errors")
    for name, m in (("noisy, no smoothing", n), ("noisy, smoothing (before)", b), ("cleaned (after)", a)):
        print(f"  {name:<26} test accuracy {m['test_accuracy']:.2%}  macro F1 {m['test_macro_f1']:.3f}")
    print(f"steps (s): {step_seconds}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()

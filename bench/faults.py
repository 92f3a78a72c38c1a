"""Fault benchmark: a small retrain-loop SIGKILLed at many points, resumed each time, compared with an
uninterrupted run of the same seed.

Data: a sample of the bundled emotion tweets (``--train`` examples, 10% class-conditional noise as in
bench/noise.py), trained with ``--method features`` (frozen packaged encoder + logistic regression)
so that the many restarts stay cheap. One embedded Argilla server serves every run; a simulated
annotator answers every pushed record through the web UI's REST endpoints (the true label, or a
discard for a fixed sixth of the ids), the same way in every run.

1. The reference: the loop (one review round, then the final retrain) runs without a kill. Its
   process counts the *events* of every step (each atomic write, folder rename, push, progress poll,
   journal pull, version write, state checkpoint, training) -> how many events each step has.
2. ``--runs`` interrupted runs, each in a fresh workdir and its own Argilla dataset: the loop runs in a
   subprocess that SIGKILLs itself at a random event of one step (before or after it), is resumed,
   killed in the next step, and so on through every step (setup, train, flag, push, wait, pull, apply,
   final), then resumed to the end.
3. Each run's journal (votes and decisions), data version and exported folder (``cleanloop export``)
   are compared with the reference's.

    python bench/faults.py                 # ~4 runs x 8 kills; writes bench/results/faults.json
    python bench/faults.py --runs 1 --output /tmp/faults.json     # a quick check

The features cache (keyed by content) of the reference is copied into each run's workdir, so the
restarts do not embed the texts again.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

STEPS = ("setup", "train", "flag", "push", "wait", "pull", "apply", "final")


# --- the loop process (python bench/faults.py --drive ...) ------------------------------------------------


def drive(cfg_json: str, kill: str | None, events_out: str | None) -> None:
    """Run (or resume) the loop; with ``kill`` = STEP:K, SIGKILL this process at the K-th event of STEP."""
    import importlib

    from cleanloop.config import Config

    mods = {n: importlib.import_module(n) for n in (
        "cleanloop.atomic", "cleanloop.labeling.argilla_io", "cleanloop.labeling.journal", "cleanloop.loops.versions",
        "cleanloop.model.train", "cleanloop.loops.retrain", "cleanloop.loops.rounds", "cleanloop.model.score",
        "cleanloop.loops.report",
        "cleanloop.loops.judge", "cleanloop.identity", "cleanloop.lock", "cleanloop.loops.export")}
    rt, engine = mods["cleanloop.loops.retrain"], mods["cleanloop.loops.rounds"]
    step, counts, events = ["setup"], Counter(), []
    want_step, want_k = (kill.split(":")[0], int(kill.split(":")[1])) if kill else (None, 0)

    def event(name: str) -> None:
        counts[step[0]] += 1
        events.append(f"{step[0]}:{name}")
        if step[0] == want_step and counts[step[0]] == want_k:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(f, name):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            if name == "write_file" and "cache" in Path(args[0]).parts:  # cache writes (content-keyed) happen once per data
                return f(*args, **kwargs)
            event(f"{name}:before")
            out = f(*args, **kwargs)
            event(f"{name}:after")
            return out

        return wrapper

    targets = [(mods["cleanloop.atomic"], "write_file"), (mods["cleanloop.atomic"], "replace_folder"),
               (mods["cleanloop.labeling.argilla_io"], "log_records"), (mods["cleanloop.labeling.argilla_io"], "progress"),
               (mods["cleanloop.loops.versions"], "write_version"), (mods["cleanloop.model.train"].ClassifierTrainer, "train"),
               (mods["cleanloop.labeling.journal"].Journal, "record_pull"), (engine.LoopState, "save")]
    for owner, name in targets:
        orig = getattr(owner, name)
        new = wrap(orig, name)
        for mod in [m for n, m in sys.modules.items() if n.startswith("cleanloop") and m is not None]:
            for attr, val in list(vars(mod).items()):
                if val is orig:
                    setattr(mod, attr, new)
        setattr(owner, name, new)

    real_step, real_final = engine.RoundLoop.run_step, engine.RoundLoop.run_final

    def run_step(self, s, rnd):
        step[0] = s.name
        return real_step(self, s, rnd)

    def run_final(self):
        step[0] = "final"
        return real_final(self)

    engine.RoundLoop.run_step, engine.RoundLoop.run_final = run_step, run_final
    cfg = Config(**json.loads(cfg_json))
    rt.run_loop(cfg, rt.LoopOptions(rounds=1, review_timeout=600, poll_seconds=0.5))
    if events_out:
        Path(events_out).write_text(json.dumps(events))


# --- the simulated annotator --------------------------------------------------------------------------------


def discards(example_id: str) -> bool:
    return int(hashlib.sha256(example_id.encode()).hexdigest(), 16) % 6 == 0


class Annotator(threading.Thread):
    """Answers every record of the current dataset through the UI's endpoints, as the UI does."""

    def __init__(self, url: str, key: str, truth: dict[str, str]):
        super().__init__(daemon=True)
        self.url, self.key, self.truth = url, key, truth
        self.dataset: str | None = None
        self.stop = threading.Event()
        self.answered: set[tuple[str, str]] = set()

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, headers={"X-Argilla-Api-Key": self.key}, timeout=120) as http:
            while not self.stop.is_set():
                name = self.dataset
                try:
                    found = [d for d in http.get("/api/v1/me/datasets").json()["items"] if d["name"] == name]
                    for ds in found:
                        page = http.post(f"/api/v1/me/datasets/{ds['id']}/records/search", params={"limit": 1000},
                                         json={}).json()["items"]
                        for item in page:
                            rec = item["record"]
                            if (name, rec["external_id"]) in self.answered:
                                continue
                            ex = rec["external_id"]
                            body = ({"status": "discarded"} if discards(ex) else
                                    {"values": {"label": {"value": self.truth[ex]}}, "status": "submitted"})
                            r = http.post(f"/api/v1/records/{rec['id']}/responses", json=body)
                            if r.status_code in (201, 409, 422):  # 409/422: answered before
                                self.answered.add((name, ex))
                except httpx.HTTPError:
                    pass
                self.stop.wait(0.5)


# --- comparing runs -------------------------------------------------------------------------------------------


def snapshot(cfg, work: Path) -> dict:
    """What must be identical: the journal, the data version, the exported folder, the final metrics."""
    import pandas as pd

    from cleanloop.labeling.journal import Journal
    from cleanloop.loops.versions import load_version
    from cleanloop.workdir import Workdir

    with Journal(Workdir(work).journal) as j:
        votes = sorted([v.example_id, v.annotator, v.label or "", v.status] for v in j.votes())
        decisions = [[d.example_id, d.old_label, d.new_label or "", d.action, list(d.annotators), round(d.agreement, 6)]
                     for d in j.history()]
    version = load_version(Workdir(work).version(1))[0]
    rows = {s: sorted(zip(ds["id"], ds["label"], ds["original_label"], ds["label_source"])) for s, ds in version.items()}
    out = work / "export"
    proc = subprocess.run([sys.executable, "-m", "cleanloop", "export", "--workdir", str(work), "--to", str(out),
                           "--overwrite"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"export failed: {proc.stderr[-2000:]}")
    exported = {p.name: pd.read_parquet(p).to_dict("list") for p in sorted((out / "data").glob("*.parquet"))}
    state = json.loads((work / "loop" / "state.json").read_text())
    return {"votes": votes, "decisions": decisions, "version": {s: [list(r) for r in v] for s, v in rows.items()},
            "export": exported, "card": (out / "README.md").read_text(),
            "final": {k: state["final"].get(k) for k in ("test_accuracy", "test_macro_f1", "train_examples")}}


def compare(ref: dict, run: dict) -> dict:
    def current(decisions):
        return {d[0]: (d[2], d[3]) for d in decisions}

    ref_now, run_now = current(ref["decisions"]), current(run["decisions"])
    lost = sum(1 for i, o in ref_now.items() if run_now.get(i) != o)
    ref_n, run_n = Counter(d[0] for d in ref["decisions"]), Counter(d[0] for d in run["decisions"])
    twice = sum(max(0, run_n[i] - ref_n[i]) for i in run_n)
    vote_twice = sum(max(0, c - 1) for c in Counter(tuple(v) for v in run["votes"]).values())
    return {"identical": run == ref, "decisions_lost": lost, "decisions_applied_twice": twice + vote_twice,
            "differs_in": [k for k in ref if ref[k] != run.get(k)]}


# --- the benchmark --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drive", help=argparse.SUPPRESS)
    ap.add_argument("--kill", help=argparse.SUPPRESS)
    ap.add_argument("--events-out", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "out" / "faults"))
    ap.add_argument("--output", default=None, help="Default: bench/results/faults.json.")
    ap.add_argument("--runs", type=int, default=4, help="Interrupted runs, each killed once in every step.")
    ap.add_argument("--train", type=int, default=300, help="Train examples (emotion sample).")
    ap.add_argument("--eval", type=int, default=60, help="Validation and test examples each.")
    ap.add_argument("--max-review", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.drive:  # bench/ holds argilla.py: off the path, so that `import argilla` is the SDK
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
        return drive(args.drive, args.kill, args.events_out)

    import numpy as np
    from common import fresh_dir, machine, update_results
    from loop import _free_port, write_noisy_data  # (takes bench/ off the path)

    from cleanloop.config import Config
    from cleanloop.labeling.embedded import credentials, down, up

    root = fresh_dir(Path(args.workdir).absolute())  # the benchmark's own scratch folder
    base = Config(method="features", max_train_samples=args.train, seed=args.seed)
    truth, names = write_noisy_data(base, root / "data", args.seed, args.eval)
    home = root / "argilla"
    cfg0 = base.replace(dataset=str(root / "data"), id_column="id", label_names=names, max_train_samples=0, folds=3,
                        max_review=args.max_review, argilla_url=f"http://127.0.0.1:{_free_port()}")
    t_start = time.perf_counter()
    up(cfg0, home, timeout=300)
    env = {**os.environ, "ARGILLA_API_KEY": credentials(cfg0, home)["owner"].api_key, "TOKENIZERS_PARALLELISM": "false"}
    annotator = Annotator(cfg0.argilla_url, credentials(cfg0, home)["annotator"].api_key, truth)
    annotator.start()
    rng = np.random.default_rng(args.seed)
    tracebacks = [0]

    def loop_process(cfg, kill=None, events_out=None) -> int:
        cmd = [sys.executable, __file__, "--drive", json.dumps(cfg.to_dict())]
        cmd += ["--kill", kill] if kill else []
        cmd += ["--events-out", events_out] if events_out else []
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        tracebacks[0] += "Traceback" in proc.stderr
        if proc.returncode not in (0, -signal.SIGKILL):
            raise SystemExit(f"loop process failed ({proc.returncode}): {proc.stderr[-3000:]}")
        return proc.returncode

    try:
        # 1. the reference
        ref_cfg = cfg0.replace(workdir=str(root / "ref"), argilla_dataset="faults-ref")
        annotator.dataset = ref_cfg.argilla_dataset
        t0 = time.perf_counter()
        loop_process(ref_cfg, events_out=str(root / "ref-events.json"))
        ref_seconds = time.perf_counter() - t0
        events = json.loads((root / "ref-events.json").read_text())
        per_step = Counter(e.split(":")[0] for e in events)
        ref = snapshot(ref_cfg, root / "ref")
        print(f"reference: {ref_seconds:.0f} s, events per step {dict(per_step)}", flush=True)

        # 2. interrupted runs
        runs, kills_by_step = [], Counter()
        for r in range(args.runs):
            cfg = cfg0.replace(workdir=str(root / f"run-{r}"), argilla_dataset=f"faults-run-{r}")
            shutil.copytree(root / "ref" / "cache", root / f"run-{r}" / "cache")
            annotator.dataset = cfg.argilla_dataset
            t0, kills, points, processes = time.perf_counter(), 0, [], 0
            for step in STEPS:
                n = per_step.get(step, 0)
                if not n:
                    continue
                k = int(rng.integers(1, min(n, 2) + 1)) if step == "wait" else int(rng.integers(1, n + 1))
                processes += 1
                if loop_process(cfg, kill=f"{step}:{k}") == -signal.SIGKILL:
                    kills += 1
                    kills_by_step[step] += 1
                    points.append(f"{step}:{events[[e.split(':')[0] for e in events].index(step) + k - 1].split(':', 1)[1]}")
            processes += 1
            while loop_process(cfg) != 0:
                processes += 1
            result = compare(ref, snapshot(cfg, Path(cfg.workdir)))
            runs.append({"run": r, "kills": kills, "kill_points": points, "processes": processes, "seconds": round(time.perf_counter() - t0, 1),
                         **result})
            print(f"run {r}: {kills} kills, identical {result['identical']}, lost {result['decisions_lost']}, "
                  f"twice {result['decisions_applied_twice']} ({runs[-1]['seconds']} s)", flush=True)
    finally:
        annotator.stop.set()
        down(cfg0, home)

    result = {
        "kills": sum(r["kills"] for r in runs),
        "identical_runs": sum(r["identical"] for r in runs),
        "runs": len(runs),
        "decisions_lost": sum(r["decisions_lost"] for r in runs),
        "decisions_applied_twice": sum(r["decisions_applied_twice"] for r in runs),
        "tracebacks": tracebacks[0],
        "kills_by_step": dict(kills_by_step),
        "reference": {"seconds": round(ref_seconds, 1), "events_per_step": dict(per_step),
                      "decisions": len(ref["decisions"]), "votes": len(ref["votes"])},
        "config": {"method": "features", "train_examples": args.train, "eval_examples": args.eval,
                   "max_review": args.max_review, "folds": 3, "seed": args.seed},
        "per_run": runs,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if args.output:
        Path(args.output).write_text(json.dumps({**result, "machine": machine()}, indent=2) + "\n")
        path = args.output
    else:
        path = update_results("faults", result)
    print(f"{result['kills']} kills over {len(runs)} runs: {result['identical_runs']} identical, "
          f"{result['decisions_lost']} decisions lost, {result['decisions_applied_twice']} applied twice -> {path}")


if __name__ == "__main__":
    main()

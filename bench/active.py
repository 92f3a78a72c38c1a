"""Active-learning benchmark: a responsive session (``cleanloop active``) from zero labels, with a simulated annotator.

The emotion train split (16,000 tweets) is written out with its text and ids only: that is the pool,
loaded by the same code as a user's file (:func:`online.load_pool` with the config's label names).
The gold labels are used only by the simulated annotator, a thread that works like a person in the
Argilla UI: it fetches the pending records through the UI's REST endpoints (oldest batch first),
answers one every ``--answer-seconds`` (``POST /api/v1/records/{id}/responses``) and, when nothing
is pending, waits and looks again. The session (:func:`online.run_session`) runs unchanged against
the real embedded Argilla server: cold start (coverage + zero-shot suggestions), then the light head
refitted as answers arrive and the next batch queued once half a batch is left.

Measured, per strategy and seed (batches of ``--batch``, up to ``--max-labels`` labels):

* the learning curve: test accuracy (the full 2,000-tweet test split) of the head that picked each
  batch, against the labels it had seen, and of the head on all labels at the end;
* ``seconds_to_next_batch``: from the annotator's last answer of a batch to its first record of the
  next batch in hand (what the annotator waits, including the REST round trip), p50 / p95 over all batches;
* staleness: labels the annotator had given when it started a batch minus the labels the head that
  picked that batch had seen, in batches (goal: at most one);
* labels to reach each ``--targets`` test accuracy (median over seeds, min-max), against random;
* zero-shot accuracy of the cold-start suggestions (label names; the config's label descriptions),
  and the same head trained on all 16,000 gold labels (the ceiling of the light head);
* the background fine-tune (``--finetune-after`` labels, again each ``--finetune-growth``; 0: off):
  per strategy and seed, each fine-tune (labels, seconds, held-out accuracy of both heads, swapped or
  not) and when one first swapped in. The fine-tune also embeds the test split, so the curve scores
  the head that picked each batch in its own space (``finetuned-logreg@N`` after a swap).

    python bench/active.py --finetune-after 0                # the light head alone, 4 strategies x 3 seeds, ~25 min on 2 CPU cores
    python bench/active.py --strategies random,margin --seeds 0 --max-labels 60 --output /tmp/active.json  # smoke

With the background fine-tune on (the default), a run wants a GPU: on 2 CPU cores one fine-tune of
1,000 examples plus embedding 4,000 texts takes about 3 minutes, so the committed figures are a reduced run
(bench/results/active_background.json; its settings are in the file):

    python bench/active.py --strategies random,margin --seeds 0 --pool-size 2000 --max-labels 300 \
        --answer-seconds 3.0 --min-train-examples 1000 --output bench/results/active_background.json   # ~32 min, 2 CPUs

The full run (16,000-tweet pool, 4 strategies x 3 seeds, fine-tunes of 10,000 examples, up to 1,500 labels;
about 80 minutes on one GPU: the simulated annotator's pace sets it, each fine-tune takes well under a minute):

    python bench/active.py --device cuda --max-labels 1500 --output bench/results/active_background.json

Writes bench/results/active.json (or --output) and its .png. The pool and test embeddings are computed
once and cached under --workdir (not committed).
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
from common import RESULTS, fresh_dir, machine, use_device

# bench/ holds argilla.py: drop the folder from the path so `import argilla` is the SDK, not that script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from cleanloop.atomic import write_text  # noqa: E402
from cleanloop.config import ActiveOptions, Config, load_config  # noqa: E402
from cleanloop.labeling.embedded import credentials, down, up  # noqa: E402
from cleanloop.loops import online  # noqa: E402
from cleanloop.model.data import load_data, stratified_sample  # noqa: E402
from cleanloop.workdir import Workdir  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "emotion.toml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Annotator(threading.Thread):
    """Answers pending records with their gold label at a fixed rate, through the UI's REST endpoints.

    ``log``: (time, example id, batch) per answer; ``got``: batch -> time its first record was in hand.
    """

    def __init__(self, url: str, key: str, dataset: str, truth: dict[str, str], answer_seconds: float, clock):
        super().__init__(daemon=True)
        self.url, self.key, self.dataset, self.truth, self.answer_seconds, self.clock = url, key, dataset, truth, \
            answer_seconds, clock
        self.stop = threading.Event()
        self.log: list[tuple[float, str, int]] = []
        self.got: dict[int, float] = {}
        self.errors: list[str] = []

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, headers={"X-Argilla-Api-Key": self.key}, timeout=60) as http:
            ds_id = None
            while not self.stop.is_set():
                if ds_id is None:
                    items = http.get("/api/v1/me/datasets").json()["items"]
                    ds_id = next((d["id"] for d in items if d["name"] == self.dataset), None)
                    if ds_id is None:
                        time.sleep(0.05)
                        continue
                found = http.post(f"/api/v1/me/datasets/{ds_id}/records/search", params={"limit": 1000},
                                  json={}).json()["items"]
                done = {ex for _, ex, _ in self.log}
                todo = sorted(((item["record"]["metadata"] or {}).get("round", 0), item["record"]["external_id"],
                               item["record"]["id"]) for item in found if item["record"]["external_id"] not in done)
                if not todo:
                    time.sleep(0.05)
                    continue
                now = self.clock()
                for batch, _, _ in todo:
                    self.got.setdefault(batch, now)
                for batch, ex_id, rec_id in todo:
                    if self.stop.is_set():
                        return
                    time.sleep(self.answer_seconds)
                    r = http.post(f"/api/v1/records/{rec_id}/responses",
                                  json={"values": {"label": {"value": self.truth[ex_id]}}, "status": "submitted"})
                    if r.status_code != 201:
                        self.errors.append(f"{r.status_code}: {r.text[:200]}")
                        continue
                    self.log.append((self.clock(), ex_id, batch))


def run_one(strategy: str, seed: int, data: dict, args, cfg: Config, home: Path, keys: dict) -> dict:
    """One session from zero labels to --max-labels; the per-batch record and the curve."""
    folder = fresh_dir(Path(args.workdir) / "runs" / f"{strategy}-{seed}")  # a fresh session each time
    run_cfg = cfg.replace(workdir=str(folder), seed=seed,
                          argilla_dataset=f"bench-{strategy}-{seed}-{int(time.time())}")
    opts = ActiveOptions(strategy=strategy, batch_size=args.batch, max_labels=args.max_labels,
                         poll_seconds=args.poll_seconds, idle_timeout=120, finetune_after=args.finetune_after,
                         finetune_growth=args.finetune_growth, finetune_holdout=args.finetune_holdout,
                         min_train_examples=args.min_train_examples)
    clock = time.monotonic
    annotator = Annotator(cfg.argilla_url, keys["annotator"], run_cfg.argilla_dataset + "-label", data["truth"],
                          args.answer_seconds, clock)
    curve = []

    def on_batch(info, head):
        acc = float((head.predict_proba(test_embeddings(head.encoder, data)).argmax(1) == data["test_labels"]).mean())
        curve.append({"labels": info.model_labels, "test_accuracy": round(acc, 4), "model": info.model})

    start = clock()
    annotator.start()
    try:
        batches = online.run_session(run_cfg, opts, pool=data["pool"], embeddings=data["pool_emb"],
                                     anchors=data["anchors"], home=home, on_batch=on_batch, clock=clock,
                                     eval_texts=data["test_texts"] if args.finetune_after else ())
    finally:
        annotator.stop.set()
        annotator.join(timeout=30)
    if annotator.errors:
        raise SystemExit(f"annotator errors: {annotator.errors[:3]}")
    gold = {i: lbl for i, lbl in zip(data["pool"].ids, data["gold"])}
    labelled = [ex for _, ex, _ in annotator.log]
    idx = [data["row"][ex] for ex in labelled]
    awd = Workdir(folder).active()
    accepted = awd.finetune("accepted")  # the head ends on the last fine-tune swapped in, if any
    enc = online.Encoder.load(accepted) if accepted.finetune_info.exists() else \
        online.Encoder(data["pool_emb"], data["anchors"])
    head = online.LightHead(enc.anchors, seed=seed).fit(enc.embeddings[idx], np.array([gold[ex] for ex in labelled]))
    final_acc = float((head.predict_proba(test_embeddings(enc, data)).argmax(1) == data["test_labels"]).mean())
    final_model = "logreg" if enc.name == "frozen" else f"finetuned-logreg@{len(enc.trained_on)}"
    curve.append({"labels": len(labelled), "test_accuracy": round(final_acc, 4), "model": final_model})
    finetunes = json.loads(awd.session.read_text()).get("finetunes", [])
    # annotator-side timing and staleness, per batch
    last_answer, first_answer, answered_before = {}, {}, {}
    for n, (t, _, b) in enumerate(annotator.log):
        last_answer[b] = t
        if b not in first_answer:
            first_answer[b], answered_before[b] = t, n
    rows = []
    for info in batches:
        b = info.batch
        prev_done = last_answer.get(b - 1)
        wait = None if prev_done is None or b not in annotator.got else round(max(0.0, annotator.got[b] - prev_done), 3)
        behind = (answered_before.get(b, info.labels_at_push) - info.model_labels) / args.batch
        rows.append({"batch": b, "strategy": info.strategy, "model": info.model, "model_labels": info.model_labels,
                     "labels_at_push": info.labels_at_push, "labels_at_start": answered_before.get(b),
                     "batches_behind": round(behind, 2), "pick_seconds": info.pick_seconds,
                     "seconds_to_next_batch": wait, "session_seconds_to_next_batch": info.seconds_to_next_batch})
    waits = [r["seconds_to_next_batch"] for r in rows if r["seconds_to_next_batch"] is not None]
    swaps = [f"{f['train']} labels ({f['status']}, {f.get('seconds', 0):.0f} s)" for f in finetunes]
    print(f"  {strategy:10s} seed {seed}: {len(labelled)} labels in {clock() - start:.0f} s, accuracy "
          f"{curve[0]['test_accuracy']:.3f} -> {final_acc:.3f}; wait p95 {np.percentile(waits, 95) if waits else 0:.2f} s, "
          f"max {max(r['batches_behind'] for r in rows):.2f} batches behind; fine-tunes: {', '.join(swaps) or 'none'}",
          flush=True)
    return {"curve": curve, "batches": rows, "finetunes": finetunes}


def test_embeddings(encoder, data: dict) -> np.ndarray:
    """The test split in the space of the encoder a head sits on (the fine-tune embedded it alongside the pool)."""
    return data["test_emb"] if encoder is None or encoder.eval_embeddings is None else encoder.eval_embeddings


def first_swap(run: dict) -> dict | None:
    """When a fine-tune first swapped in: labels it trained on, labels answered when its first batch was queued."""
    f = next((f for f in run.get("finetunes", []) if f.get("status") == "swapped"), None)
    if f is None:
        return None
    first = next((b for b in run["batches"] if b["model"].startswith("finetuned")), None)
    return {"finetune": f["number"], "trained_on": f["train"], "labels_when_started": f["labels"],
            "finished_at_seconds": f["finished_at"], "labels_at_first_batch": first and first["labels_at_push"]}


def timing(rows: list[dict]) -> dict:
    waits = [r["seconds_to_next_batch"] for r in rows if r["seconds_to_next_batch"] is not None]
    return {"seconds_to_next_batch": {"p50": float(np.percentile(waits, 50)) if waits else None,
                                      "p95": float(np.percentile(waits, 95)) if waits else None,
                                      "max": max(waits) if waits else None, "batches": len(waits)},
            "max_batches_behind": max(r["batches_behind"] for r in rows) if rows else None}


def labels_to(curve: list[dict], target: float) -> int | None:
    return next((p["labels"] for p in curve if p["test_accuracy"] >= target), None)


def summarise(runs: dict, targets: list[float]) -> dict:
    out = {}
    for name, seeds in runs.items():
        per = {}
        for t in targets:
            firsts = [labels_to(r["curve"], t) for r in seeds.values()]
            got = [f for f in firsts if f is not None]
            per[f"{t:.2f}"] = {"median": float(np.median(got)) if len(got) == len(firsts) else None,
                               "min": min(got) if got else None, "max": max(got) if got else None,
                               "per_seed": firsts}
        finals = [r["curve"][-1]["test_accuracy"] for r in seeds.values()]
        out[name] = {"labels_to_target": per, "final_labels": seeds[next(iter(seeds))]["curve"][-1]["labels"],
                     "final_accuracy_median": float(np.median(finals)), "final_accuracy_min": min(finals),
                     "final_accuracy_max": max(finals),
                     "finetunes": {s: [{k: f.get(k) for k in ("train", "held_out", "status", "started_at", "seconds",
                                                              "light_accuracy", "finetuned_accuracy", "classifier_accuracy")}
                                       for f in r.get("finetunes", [])] for s, r in seeds.items()},
                     "first_swap": {s: first_swap(r) for s, r in seeds.items()},
                     **timing([b for r in seeds.values() for b in r["batches"]])}
    return out


def plot(runs: dict, extra: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, seeds in runs.items():
        grid = sorted({p["labels"] for r in seeds.values() for p in r["curve"]})
        acc = np.array([np.interp(grid, [p["labels"] for p in r["curve"]], [p["test_accuracy"] for p in r["curve"]])
                        for r in seeds.values()])
        ax.plot(grid, np.median(acc, 0), "o-" if name == "random" else ".-", ms=3, lw=2 if name == "random" else 1.4,
                label=name)
        ax.fill_between(grid, acc.min(0), acc.max(0), alpha=0.15)
    for key, style in (("zero_shot_names", ":"), ("zero_shot_descriptions", "-."), ("logreg_all_labels", "--")):
        if extra.get(key) is not None:
            ax.axhline(extra[key], color="grey", ls=style, lw=1, label=f"{key.replace('_', ' ')} {extra[key]:.1%}")
    ax.set_xlabel("labels (seen by the model)")
    ax.set_ylabel("test accuracy (2,000)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load(args, cfg: Config) -> dict:
    """The pool as a text-only file loaded like a user's, gold labels aside, and the embeddings (cached)."""
    dd = load_data(cfg.replace(label_names=[]))
    names = dd["train"].features["label"].names
    train = dd["train"].to_pandas()
    if args.pool_size and args.pool_size < len(train):
        train = stratified_sample(train, args.pool_size, 0)
    pool_file = Path(args.workdir) / "pool.parquet"
    pool_file.parent.mkdir(parents=True, exist_ok=True)
    train[["id", "text"]].to_parquet(pool_file)
    pool = online.load_pool(cfg.replace(id_column="id"), str(pool_file))
    assert (pool.labels == -1).all() and pool.names == names
    gold = train["label"].to_numpy()
    test = dd["test"]
    return {"pool": pool, "gold": gold, "truth": {i: names[g] for i, g in zip(pool.ids, gold)}, "test_texts": test["text"],
            "row": {i: n for n, i in enumerate(pool.ids)},
            "pool_emb": online.embed(cfg, pool.ids, pool.texts), "test_emb": online.embed(cfg, test["id"], test["text"]),
            "test_labels": np.asarray(test["label"]), "anchors": online.label_anchors(cfg, names),
            "anchors_names": online.label_anchors(cfg.replace(label_descriptions=[]), names)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", default="random,margin,diversity,badge")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--pool-size", type=int, default=0, help="A stratified sample of the train split as the pool (0: all).")
    ap.add_argument("--max-labels", type=int, default=400)
    ap.add_argument("--answer-seconds", type=float, default=0.2, help="The simulated annotator's time per answer.")
    ap.add_argument("--poll-seconds", type=float, default=0.5, help="How often the session asks Argilla for answers.")
    ap.add_argument("--targets", default="0.5,0.55,0.6,0.85", help="Test accuracies to report the labels needed for.")
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "out" / "active"))
    ap.add_argument("--output", default=str(RESULTS / "active.json"))
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="Where the encoder runs (embedding, the background fine-tunes): auto = a GPU when there is one.")
    ap.add_argument("--finetune-after", type=int, default=100,
                    help="Labels before the first background fine-tune (0: none, the light head alone).")
    ap.add_argument("--finetune-growth", type=float, default=0.5, help="Fine-tune again once the labels grew by this share.")
    ap.add_argument("--finetune-holdout", type=float, default=0.2, help="Share of a fine-tune's labels held out for the check.")
    ap.add_argument("--min-train-examples", type=int, default=10000,
                    help="A fine-tune runs enough epochs to see this many examples (the session's default).")
    ap.add_argument("--epochs", type=float, default=1.0, help="Fine-tune epochs at least (more on few labels: above).")
    args = ap.parse_args()
    use_device(args.device)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(args.workdir).absolute()
    args.workdir = str(work)
    cfg = load_config(CONFIG, workdir=str(work), argilla_url=f"http://127.0.0.1:{_free_port()}", argilla_workers=1,
                      epochs=args.epochs)
    t0 = time.perf_counter()
    data = load(args, cfg)
    print(f"pool {len(data['pool'].ids):,}, test {len(data['test_labels']):,}; embedded in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    y = data["test_labels"]
    extra = {"pool": len(data["pool"].ids),"zero_shot_names": float((online.zero_shot_probs(data["test_emb"], data["anchors_names"]).argmax(1) == y).mean()),
             "zero_shot_descriptions": float((online.zero_shot_probs(data["test_emb"], data["anchors"]).argmax(1) == y).mean())}
    t1 = time.perf_counter()
    full = online.LightHead(data["anchors"]).fit(data["pool_emb"], data["gold"])
    extra["logreg_all_labels_fit_seconds"] = round(time.perf_counter() - t1, 2)
    extra["logreg_all_labels"] = float((full.predict_proba(data["test_emb"]).argmax(1) == y).mean())
    print(f"zero-shot accuracy: names {extra['zero_shot_names']:.3f}, descriptions {extra['zero_shot_descriptions']:.3f}; "
          f"light head on all {len(data['gold']):,} labels {extra['logreg_all_labels']:.3f}", flush=True)

    home = work / "argilla"
    up(cfg, home, timeout=300)
    runs: dict = {}
    targets = [float(t) for t in args.targets.split(",")]
    try:
        creds = credentials(cfg, home)
        os.environ["ARGILLA_API_KEY"] = creds["owner"].api_key
        keys = {"annotator": creds["annotator"].api_key}
        for name in args.strategies.split(","):
            runs[name] = {str(s): run_one(name, s, data, args, cfg, home, keys) for s in map(int, args.seeds.split(","))}
            write(args, runs, targets, extra, t0)
    finally:
        down(cfg, home)


def write(args, runs: dict, targets: list[float], extra: dict, t0: float) -> None:
    summary = summarise(runs, targets)
    batches = [r for seeds in runs.values() for run in seeds.values() for r in run["batches"]]
    random_n = {t: summary.get("random", {}).get("labels_to_target", {}).get(f"{t:.2f}", {}).get("median") for t in targets}
    ratio = {name: {f"{t:.2f}": (round(s["labels_to_target"][f"{t:.2f}"]["median"] / random_n[t], 3)
                                 if random_n[t] and s["labels_to_target"][f"{t:.2f}"]["median"] else None)
                    for t in targets} for name, s in summary.items()}
    result = {
        "zero_shot_accuracy": {"label_names": round(extra["zero_shot_names"], 4),
                               "label_descriptions": round(extra["zero_shot_descriptions"], 4)},
        "light_head_all_labels_accuracy": round(extra["logreg_all_labels"], 4),
        "light_head_all_labels_fit_seconds": extra["logreg_all_labels_fit_seconds"],
        "summary": summary, "labels_vs_random": ratio,
        **timing(batches),
        "pick_seconds_p95": float(np.percentile([r["pick_seconds"] for r in batches], 95)) if batches else None,
        "settings": {k: v for k, v in vars(args).items() if k not in ("workdir", "output")} |
                    {"pool": extra["pool"], "test": 2000,
                     "learner": "LightHead (logistic regression on MiniLM embeddings)" + (
                         "; the encoder fine-tuned in the background and swapped in when better on held-out labels"
                         if args.finetune_after else "")},
        "runs": runs, "seconds": round(time.perf_counter() - t0, 1), "machine": machine(),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(result, indent=2) + "\n")
    plot(runs, extra, out.with_suffix(".png"),
         f"active learning from zero labels on emotion (pool {extra['pool']:,}, batches of {args.batch}, seeds {args.seeds})")
    print(f"-> {out}: seconds_to_next_batch {result['seconds_to_next_batch']}, max {result['max_batches_behind']} "
          f"batches behind; labels vs random {ratio}", flush=True)


if __name__ == "__main__":
    main()

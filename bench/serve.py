"""Serving benchmark: texts per second through the Python batch path, through ``cleanloop serve``
under concurrent clients each sending one tweet per request (its groups packed without padding
where the model allows, as ``/health`` says), and through a naive FastAPI server
that makes one ``transformers.pipeline`` call per request, all in the same run.

    python bench/serve.py                          # model of bench/core.py, 16 clients, 3 x 20 s per phase
    python bench/serve.py --model runs/emotion/model --clients 32 --seconds 10
    python bench/serve.py --model M --ensemble E   # also an ensemble folder served (its cost, same run)

Everything runs on 127.0.0.1; the servers are child processes on free ports. The three phases
(four with --ensemble) alternate --repeats times and the figures are medians (shared 2-core machines are noisy).
Writes bench/results/serve.json and prints one summary line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from cleanloop.config import SERVE_MAX_BATCH, SERVE_MAX_GAP_MS, SERVE_MAX_WAIT_MS

ROOT = Path(__file__).resolve().parent.parent
VALIDATION = ROOT / "model" / "datasets" / "emotion" / "validation.parquet"
# bench/core.py run from the repo root writes bench/out/core/model; run from bench/, bench/bench/out/core/model
MODEL_CANDIDATES = [ROOT / "bench" / "out" / "core" / "model", ROOT / "bench" / "bench" / "out" / "core" / "model"]


# --- the naive server: one pipeline call per request --------------------------------


def naive_app(model_dir: str, max_length: int):
    from fastapi import FastAPI
    from transformers import pipeline

    pipe = pipeline("text-classification", model=model_dir, top_k=None, device="cpu")
    app = FastAPI()

    @app.post("/predict")
    def predict(body: dict):  # the usual tutorial shape: a sync endpoint, FastAPI's thread pool
        out = pipe(body["texts"], truncation=True, max_length=max_length)
        return {"results": [max(r, key=lambda d: d["score"]) | {"probabilities": {d["label"]: d["score"] for d in r}}
                            for r in out]}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


# --- load generation ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], port: int, log_path: Path, timeout: float = 180) -> subprocess.Popen:
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {' '.join(cmd)}; see {log_path}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"server did not start in {timeout} s: {' '.join(cmd)}; see {log_path}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(port: int, texts: list[str], clients: int, seconds: float, warmup: float) -> dict:
    """``clients`` threads, each on its own keep-alive connection, each sending one text per request
    and waiting for the answer before the next. Counts answers and latencies after ``warmup`` seconds."""
    start = time.monotonic()
    t_measure, t_end = start + warmup, start + warmup + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = k * 997
        while True:
            body = json.dumps({"texts": [texts[i % len(texts)]]})
            i += 1
            t0 = time.monotonic()
            if t0 >= t_end:
                break
            try:
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            t1 = time.monotonic()
            if t0 >= t_measure and t1 <= t_end:
                if ok:
                    latencies[k].append(t1 - t0)
                else:
                    errors[k] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = np.array([x for per in latencies for x in per]) * 1000
    return {
        "per_s": round(len(lat) / seconds, 1),
        "requests": int(len(lat)),
        "errors": int(sum(errors)),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
    }


def bench_batch(predictor, texts: list[str], batch_size: int, seconds: float) -> float:
    """Texts per second through ``Predictor.predict_arrays``: whole passes over ``texts`` for ``seconds``."""
    predictor.predict_arrays(texts[:64], batch_size=batch_size)  # warm-up
    done, t0 = 0, time.perf_counter()
    while True:  # at least one pass
        predictor.predict_arrays(texts, batch_size=batch_size)
        done += len(texts)
        if time.perf_counter() - t0 >= seconds:
            break
    return round(done / (time.perf_counter() - t0), 1)


def quick_model(folder: Path) -> str:
    """No trained model yet: the packaged MiniLM with an untrained 6-label head (same compute)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cleanloop.model.infer import packaged_model_dir

    names = ["sadness", "joy", "love", "anger", "fear", "surprise"]
    model = AutoModelForSequenceClassification.from_pretrained(
        packaged_model_dir(), num_labels=6, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(packaged_model_dir()).save_pretrained(folder)
    return str(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: bench/core.py's, else an untrained head)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each served phase")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the three phases; the figures are medians")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=SERVE_MAX_WAIT_MS)
    ap.add_argument("--max-batch", type=int, default=SERVE_MAX_BATCH)
    ap.add_argument("--precision", default="auto", help="precision of the batch path and cleanloop serve "
                    "(the naive server stays fp32): auto, fp32, bf16 or int8")
    ap.add_argument("--ensemble", default=None, help="also serve this ensemble folder (cleanloop train --ensemble) "
                    "in each run: its texts/s against the single model's, same clients")
    ap.add_argument("--out", default="bench/out/serve", help="server logs and the fallback model")
    ap.add_argument("--naive-server", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.naive_server is not None:  # child process: run the naive server and nothing else
        import uvicorn

        uvicorn.run(naive_app(args.model, args.max_length), host="127.0.0.1", port=args.naive_server,
                    log_level="warning")
        return

    import pandas as pd

    from common import update_results

    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or next((str(p) for p in MODEL_CANDIDATES if (p / "config.json").exists()), None)
    model_kind = "given" if args.model else "bench/core.py fine-tuned" if model else "untrained head (fallback)"
    if model is None:
        model = quick_model(out / "quick_model")
    texts = pd.read_parquet(VALIDATION)["text"].tolist()
    load_at_start = os.getloadavg()

    from cleanloop.model.predict import Predictor

    predictor = Predictor.load(model, device="cpu", max_length=args.max_length, precision=args.precision)
    exe = str(Path(sys.executable).with_name("cleanloop"))
    served_port, naive_port, ensemble_port = free_port(), free_port(), free_port()

    def serve_cmd(folder: str, port: int) -> list[str]:
        return [exe, "serve", "--model", folder, "--port", str(port), "--max-wait-ms", str(args.max_wait_ms),
                "--max-batch", str(args.max_batch), "--eval-batch-size", str(args.batch_size), "--max-length",
                str(args.max_length), "--precision", args.precision]

    procs = [start_server(serve_cmd(model, served_port), served_port, out / "served.log")]
    try:  # the servers wait idle while the other phases run; phases alternate so drift hits them all alike
        procs.append(start_server([sys.executable, __file__, "--model", model, "--naive-server", str(naive_port),
                                   "--max-length", str(args.max_length)], naive_port, out / "naive.log"))
        if args.ensemble:
            procs.append(start_server(serve_cmd(args.ensemble, ensemble_port), ensemble_port, out / "ensemble.log"))
        runs = []
        for k in range(args.repeats):
            batch = bench_batch(predictor, texts, args.batch_size, args.seconds)
            served = load(served_port, texts, args.clients, args.seconds, args.warmup)
            naive = load(naive_port, texts, args.clients, args.seconds, args.warmup)
            runs.append({"batch_per_s": batch, "served": served, "naive": naive,
                         "served_vs_batch": round(served["per_s"] / batch, 2),
                         "served_vs_naive": round(served["per_s"] / naive["per_s"], 2) if naive["per_s"] else None})
            if args.ensemble:
                ens = load(ensemble_port, texts, args.clients, args.seconds, args.warmup)
                runs[-1].update(ensemble=ens, single_vs_ensemble=round(served["per_s"] / ens["per_s"], 2)
                                if ens["per_s"] else None)
            print(f"  run {k + 1}: batch {batch}/s, served {served['per_s']}/s (p95 {served['p95_ms']} ms), "
                  f"naive {naive['per_s']}/s" + (f", ensemble {ens['per_s']}/s" if args.ensemble else ""), flush=True)
        conn = http.client.HTTPConnection("127.0.0.1", served_port, timeout=10)
        conn.request("GET", "/health")
        health = json.loads(conn.getresponse().read())
    finally:
        for proc in procs:
            stop_server(proc)

    def median(get):
        values = [get(r) for r in runs]
        return None if None in values else round(float(np.median(values)), 2)

    result = {
        "batch_per_s": median(lambda r: r["batch_per_s"]),
        "batch_size": args.batch_size,
        "served_per_s": median(lambda r: r["served"]["per_s"]),
        "naive_served_per_s": median(lambda r: r["naive"]["per_s"]),
        "p50_ms": median(lambda r: r["served"]["p50_ms"]),
        "p95_ms": median(lambda r: r["served"]["p95_ms"]),
        "p99_ms": median(lambda r: r["served"]["p99_ms"]),
        "naive_p50_ms": median(lambda r: r["naive"]["p50_ms"]),
        "naive_p95_ms": median(lambda r: r["naive"]["p95_ms"]),
        "served_vs_naive": median(lambda r: r["served_vs_naive"]),
        "served_vs_batch": median(lambda r: r["served_vs_batch"]),
        "figures": f"medians of {args.repeats} runs; each run measures batch, served and naive in turn",
        "runs": runs,
        "clients": args.clients,
        "texts_per_request": 1,
        "seconds_per_phase": args.seconds,
        "errors": {"served": sum(r["served"]["errors"] for r in runs), "naive": sum(r["naive"]["errors"] for r in runs)},
        "texts_per_model_call": round(health["texts_predicted"] / max(health["model_calls"], 1), 1),
        "max_wait_ms": args.max_wait_ms,
        "max_batch": args.max_batch,
        "max_gap_ms": SERVE_MAX_GAP_MS,
        "max_length": args.max_length,
        "served_groups": "packed into unpadded sequences" if health.get("packed") else "padded batches",
        "precision": {"asked": args.precision, "batch_path": predictor.precision, "served": health.get("precision"),
                      "why": predictor.precision_reason, "naive": "fp32"},
        "model": model_kind,
        "texts": "emotion validation tweets",
        "load_generator": "one thread per client, http.client keep-alive connections",
        "load_average_at_start": [round(x, 2) for x in load_at_start],  # other work sharing the cores
    }
    # the ensemble's figures belong to this run or to none (a run without --ensemble clears older ones)
    result["ensemble"] = {
        "model": args.ensemble,
        "served_per_s": median(lambda r: r["ensemble"]["per_s"]),
        "p50_ms": median(lambda r: r["ensemble"]["p50_ms"]),
        "p95_ms": median(lambda r: r["ensemble"]["p95_ms"]),
        "single_vs_ensemble": median(lambda r: r["single_vs_ensemble"]),
        "ensemble_vs_naive": round(median(lambda r: r["ensemble"]["per_s"]) / result["naive_served_per_s"], 2)
        if result["naive_served_per_s"] else None,
    } if args.ensemble else None
    path = update_results("serve", result)
    print(
        f"serve (median of {args.repeats}): batch {result['batch_per_s']}/s; served {result['served_per_s']}/s "
        f"(p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, {args.clients} clients) = "
        f"{result['served_vs_batch']}x batch, {result['served_vs_naive']}x naive ({result['naive_served_per_s']}/s), "
        f"precision {predictor.precision}"
        + (f"; ensemble served {result['ensemble']['served_per_s']}/s "
           f"(single {result['ensemble']['single_vs_ensemble']}x it)" if args.ensemble else "")
        + f" -> {path}"
    )


if __name__ == "__main__":
    main()

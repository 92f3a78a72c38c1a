"""Embedded Argilla benchmark: start-up, logging throughput and filtered search latency.

    python bench/argilla.py                  # 3 + 3 x 16,000 records, 200 searches (about 3 min on 2 cores)
    python bench/argilla.py --records 2000   # a quick check

Starts a fresh embedded server (``cleanloop.labeling.embedded.up``, --workers server processes)
in a temporary home and logs records of the issue's shape (text, a label suggestion with its
score, 4 metadata properties, a random 384-d vector) two ways, alternating, --repeats times each,
each run into a new dataset:

* ``log_records_per_s``: cleanloop's logging path, ``cleanloop.labeling.argilla_io.log_records``
  (what ``cleanloop push`` sends), from --concurrency threads;
* ``sdk_log_records_per_s``: the bare SDK, ``dataset.records.log`` from --concurrency threads,
  with a default ``argilla.Argilla`` client.

Rates are medians of the runs. Then the annotator submits responses to some records of the
first dataset and the benchmark times the annotator's search as the web UI sends it: metadata
range + response status filter, sorted by a metadata property, 50 per page, through the API.
Writes bench/results/argilla.json and prints one summary line.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import update_results

# This file is bench/argilla.py: drop its folder from the path so `import argilla` is the SDK, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from cleanloop.config import Config
from cleanloop.labeling.argilla_io import log_records
from cleanloop.labeling.embedded import credentials, down, up

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
WORDS = "i feel so really quite very not happy sad angry calm afraid surprised loved today again".split()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _records(n: int, rng: np.random.Generator):
    import argilla as rg

    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(5, 20)))
        yield rg.Record(
            id=f"b{i}",
            fields={"text": " ".join(words)},
            metadata={
                "split": ["train", "validation", "test"][i % 3],
                "length": int(len(words)),
                "loss": float(rng.random() * 5),
                "source": ["web", "mail", "chat"][i % 3],
            },
            suggestions=[rg.Suggestion("label", LABELS[int(rng.integers(6))], score=float(rng.random()), agent="bench")],
            vectors={"embedding": vectors[i].tolist()},
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=16_000)
    ap.add_argument("--searches", type=int, default=200)
    ap.add_argument("--responses", type=int, default=300, help="Records the annotator answers before searching.")
    ap.add_argument("--batch-size", type=int, default=500, help="Batch size of the bare SDK run (cleanloop sends 500).")
    ap.add_argument("--concurrency", type=int, default=2,
                    help="SDK threads logging batches at the same time (one per server process).")
    ap.add_argument("--workers", type=int, default=Config.argilla_workers, help="Server processes (--argilla-workers).")
    ap.add_argument("--repeats", type=int, default=3, help="Logging runs (new datasets); the rate is their median.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    import argilla as rg
    import httpx

    with tempfile.TemporaryDirectory(prefix="cleanloop-bench-argilla-") as tmp:
        cfg = Config(workdir=tmp, argilla_url=f"http://127.0.0.1:{_free_port()}", argilla_annotators=["annotator"],
                     argilla_workers=args.workers)
        home = Path(tmp) / "argilla"
        t0 = time.perf_counter()
        st = up(cfg, home, timeout=300)
        up_seconds = time.perf_counter() - t0
        try:
            creds = credentials(cfg, home)
            client = rg.Argilla(api_url=st.url, api_key=creds["owner"].api_key, timeout=300)
            settings = rg.Settings(
                fields=[rg.TextField("text")],
                questions=[rg.LabelQuestion("label", labels=LABELS)],
                metadata=[
                    rg.TermsMetadataProperty("split"),
                    rg.IntegerMetadataProperty("length"),
                    rg.FloatMetadataProperty("loss"),
                    rg.TermsMetadataProperty("source"),
                ],
                vectors=[rg.VectorField("embedding", dimensions=384)],
            )

            def log_all(name: str, how: str) -> tuple[object, float]:
                """A new dataset with ``args.records`` records logged into it ``how``; (dataset, seconds)."""
                ds = rg.Dataset(name, workspace=cfg.argilla_workspace, settings=settings, client=client).create()
                records = list(_records(args.records, rng))
                t0 = time.perf_counter()
                if how == "cleanloop":
                    assert log_records(client, ds, records, threads=args.concurrency) == len(records)
                else:
                    chunks = [records[i:i + args.batch_size] for i in range(0, len(records), args.batch_size)]
                    with ThreadPoolExecutor(max(1, args.concurrency)) as pool:
                        list(pool.map(lambda c: ds.records.log(c, batch_size=args.batch_size), chunks))
                return ds, time.perf_counter() - t0

            runs: dict[str, list[float]] = {"cleanloop": [], "sdk": []}
            datasets = []
            for k in range(args.repeats):
                for how in runs:
                    ds, seconds = log_all(f"bench-{how}-{k + 1}", how)
                    runs[how].append(seconds)
                    datasets.append(ds)
                    print(f"{how}: logged {args.records:,} records in {seconds:.1f} s", file=sys.stderr)
            dataset = datasets[0]

            ds_id = str(dataset.id)
            with httpx.Client(base_url=st.url, headers={"X-Argilla-Api-Key": creds["annotator"].api_key}, timeout=60) as http:
                page = http.post(f"/api/v1/me/datasets/{ds_id}/records/search", json={}, params={"limit": args.responses})
                for item in page.json()["items"]:
                    resp = http.post(f"/api/v1/records/{item['record']['id']}/responses",
                                     json={"values": {"label": {"value": "joy"}}, "status": "submitted"})
                    resp.raise_for_status()
                body = {
                    "filters": {"and": [
                        {"type": "range", "scope": {"entity": "metadata", "metadata_property": "loss"}, "ge": 1.0, "le": 4.0},
                        {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
                    ]},
                    "sort": [{"scope": {"entity": "metadata", "metadata_property": "length"}, "order": "desc"}],
                }
                params = {"limit": 50, "include": "responses,suggestions"}
                first = http.post(f"/api/v1/me/datasets/{ds_id}/records/search", json=body, params=params)
                first.raise_for_status()
                matched = first.json()["total"]
                times = []
                for i in range(args.searches):
                    t0 = time.perf_counter()
                    resp = http.post(f"/api/v1/me/datasets/{ds_id}/records/search", json=body,
                                     params={**params, "offset": 50 * (i % 10)})
                    times.append((time.perf_counter() - t0) * 1000)
                    resp.raise_for_status()
        finally:
            down(cfg, home)

    load = os.getloadavg()[0]
    result = {
        "up_seconds": round(up_seconds, 2),
        "records": args.records,
        "log_seconds": round(float(np.median(runs["cleanloop"])), 1),
        "log_records_per_s": round(args.records / float(np.median(runs["cleanloop"]))),
        "log_records_per_s_runs": [round(args.records / t) for t in runs["cleanloop"]],
        "sdk_log_records_per_s": round(args.records / float(np.median(runs["sdk"]))),
        "sdk_log_records_per_s_runs": [round(args.records / t) for t in runs["sdk"]],
        "server_workers": args.workers,
        "log_threads": args.concurrency,
        "search_matched": matched,
        "search_p50_ms": round(float(np.percentile(times, 50)), 1),
        "search_p95_ms": round(float(np.percentile(times, 95)), 1),
        "searches": args.searches,
        "load_average_1m_after": round(load, 2),
    }
    path = update_results("argilla", result)
    print(
        f"argilla: up {result['up_seconds']} s; logged {args.records:,} records at {result['log_records_per_s']:,}/s "
        f"(bare SDK {result['sdk_log_records_per_s']:,}/s); "
        f"filtered+sorted search p50 {result['search_p50_ms']} ms, p95 {result['search_p95_ms']} ms "
        f"({matched:,} matches; load {load:.1f}) -> {path}"
    )


if __name__ == "__main__":
    main()

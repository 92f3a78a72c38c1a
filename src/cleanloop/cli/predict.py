"""Prediction commands: predict (texts, a file or stdin) and serve (HTTP)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from cleanloop.cli.options import app, config_options
from cleanloop.config import SERVE_MAX_BATCH, SERVE_MAX_WAIT_MS, Config
from cleanloop.errors import CleanloopError
from cleanloop.model.readers import read_texts

log = logging.getLogger("cleanloop")


def predictions_frame(texts: list[str], probs, label_names: list[str]):
    """A table with ``text``, ``label``, ``score`` and one ``prob_<label>`` column per label."""
    import numpy as np
    import pandas as pd

    probs = np.asarray(probs, dtype=np.float32)
    top = probs.argmax(1) if len(probs) else np.zeros(0, dtype=int)
    df = pd.DataFrame({"text": texts, "label": [label_names[i] for i in top]})
    df["score"] = probs[np.arange(len(top)), top]
    for j, name in enumerate(label_names):
        df[f"prob_{name}"] = probs[:, j]
    return df


def _load_predictor(cfg: Config, model_path: str | None):
    from cleanloop.model.precision import checks_of, describe
    from cleanloop.model.predict import Predictor
    from cleanloop.model.train import model_dir

    folder = Path(model_path) if model_path else model_dir(cfg)
    if not folder.exists():
        raise CleanloopError(f"no model at {folder}; fix: run 'cleanloop train' first or pass --model DIR")
    predictor = Predictor.load(folder, max_length=cfg.max_length, precision=cfg.precision)
    click.echo(describe(predictor.precision, predictor.precision_reason, checks_of(folder)), err=True)
    return folder, predictor


def _table(texts: list[str], preds, top_k: int | None) -> None:
    width = max(40, min(100, (os.get_terminal_size(1).columns if sys.stdout.isatty() else 100) - 30))
    if top_k:
        click.echo(f"{'top labels':<40}  text")
        for text, p in zip(texts, preds):
            tops = ", ".join(f"{name} {s:.2f}" for name, s in p.top(top_k))
            click.echo(f"{tops:<40}  {_clip(text, width)}")
        return
    click.echo(f"{'label':<12}{'score':>6}  text")
    for text, p in zip(texts, preds):
        click.echo(f"{p.label:<12}{p.score:>6.2f}  {_clip(text, width)}")


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command()
@config_options
@click.argument("texts", nargs=-1)
@click.option("--model", "model_path", type=click.Path(), default=None,
              help="Model folder (default: WORKDIR/model, or WORKDIR/features with --method features).")
@click.option("--file", "file_path", type=click.Path(dir_okay=False), default=None,
              help="Read texts from a .txt file (one per line) or the --text-column of a .csv/.jsonl/.parquet file.")
@click.option("--json/--table", "as_json", default=None,
              help="Output JSON lines, or a table (default: a table on a terminal, JSON lines when piped).")
@click.option("--output", "output_path", type=click.Path(dir_okay=False), default=None,
              help="Write the predictions to a .parquet or .csv file instead (text, label, score, prob_<label>).")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Also show the k most likely labels.")
def predict(
    cfg: Config,
    texts: tuple[str, ...],
    model_path: str | None,
    file_path: str | None,
    as_json: bool | None,
    output_path: str | None,
    top_k: int | None,
) -> None:
    """Predict the label of new texts: given as arguments, from --file, or one per line on standard input.

    \b
      cleanloop predict "i feel great" "this is so unfair"
      cleanloop predict --file tweets.csv --text-column tweet --output predictions.parquet
      cat tweets.txt | cleanloop predict --json
    """
    from cleanloop.model.serve import prediction_record, predictions_from_probs

    if texts and file_path:
        raise CleanloopError("got both texts and --file; fix: pass one or the other")
    out = Path(output_path) if output_path else None
    if out is not None and out.suffix.lower() not in (".parquet", ".csv"):
        raise CleanloopError(f"--output must end in .parquet or .csv, got {out.name!r}; fix: rename it")
    if file_path:
        items = read_texts(Path(file_path), cfg.text_column)
        source = file_path
    elif texts:
        items, source = list(texts), None
    elif not sys.stdin.isatty():
        items = [line for line in sys.stdin.read().splitlines() if line.strip()]
        source = "standard input"
    else:
        raise CleanloopError("no texts; fix: pass texts as arguments, --file FILE, or pipe them one per line")
    if not items:
        raise CleanloopError(f"no texts in {source}; fix: give at least one non-empty line or row")

    folder, predictor = _load_predictor(cfg, model_path)
    if top_k is not None and top_k > len(predictor.label_names):
        raise CleanloopError(f"--top-k {top_k} but the model has {len(predictor.label_names)} labels; fix: lower it")
    if file_path:
        from tqdm.auto import tqdm

        with tqdm(total=len(items), desc="predict", unit="text", file=sys.stderr) as bar:
            probs = predictor.predict_arrays(items, cfg.eval_batch_size, bar.update)["probs"]
    else:
        probs = predictor.predict_arrays(items, cfg.eval_batch_size)["probs"]

    if out is not None:
        from cleanloop.atomic import write_file
        from cleanloop.model.score import write_parquet_atomic

        df = predictions_frame(items, probs, predictor.label_names)
        if out.suffix.lower() == ".parquet":
            path = write_parquet_atomic(df, out)
        else:
            path = write_file(out, lambda tmp: df.to_csv(tmp, index=False))
        counts = df["label"].value_counts()
        click.echo(f"{len(df):,} predictions -> {path} ({', '.join(f'{k} {v:,}' for k, v in counts.items())})")
        return
    preds = predictions_from_probs(probs, predictor.label_names)
    if as_json is None:
        as_json = not sys.stdout.isatty()
    if as_json:
        for text, p in zip(items, preds):
            click.echo(json.dumps({"text": text, **prediction_record(p, top_k)}, ensure_ascii=False))
    else:
        _table(items, preds, top_k)


@app.command()
@config_options
@click.option("--model", "model_path", type=click.Path(), default=None,
              help="Model folder (default: WORKDIR/model, or WORKDIR/features with --method features).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 makes the service reachable from other machines).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--max-texts", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most texts per request (413 beyond).")
@click.option("--max-chars", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Most characters per text (413 beyond, unless --truncate).")
@click.option("--truncate", is_flag=True, help="Cut texts over --max-chars instead of refusing them (said in the response).")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=SERVE_MAX_WAIT_MS, show_default=True,
              help="How long a request may wait for others to share its batch.")
@click.option("--max-batch", type=click.IntRange(min=1), default=SERVE_MAX_BATCH, show_default=True,
              help="Texts gathered into one model call before it starts.")
def serve(
    cfg: Config,
    model_path: str | None,
    host: str,
    port: int,
    max_texts: int,
    max_chars: int,
    truncate: bool,
    max_wait_ms: float,
    max_batch: int,
) -> None:
    """Serve the model over HTTP: POST /predict {"texts": [...]}, GET /health, GET /labels, docs at /docs."""
    # The HTTP event loop and the model share the cores: OpenMP workers that spin between
    # parallel regions starve it (measured on 2 cores under load: 4 -> 76 texts/s). Only
    # effective before torch is first imported, which is the case when run from the shell.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import uvicorn

    from cleanloop.model.serve import create_app, listen_socket

    sock = listen_socket(host, port)  # a taken port is said now, not after the model has loaded
    port = sock.getsockname()[1]
    folder, predictor = _load_predictor(cfg, model_path)
    api = create_app(
        predictor,
        max_texts=max_texts,
        max_chars=max_chars,
        truncate=truncate,
        max_wait_ms=max_wait_ms,
        max_batch=max_batch,
        batch_size=cfg.eval_batch_size,
        model_name=str(folder),
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the service is reachable from other machines, without authentication", host)
    click.echo(
        f"serving {folder} ({', '.join(predictor.label_names)}) on http://{host}:{port} "
        f"(POST /predict, GET /health, GET /labels; docs at /docs); Ctrl+C to stop",
        err=True,
    )
    uvicorn.Server(uvicorn.Config(api, host=host, port=port, log_level="info", access_log=True)).run(sockets=[sock])

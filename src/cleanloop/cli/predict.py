"""Prediction commands: predict (texts, a file or stdin) and serve (HTTP)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from cleanloop.cli.options import app, config_options
from cleanloop.config import SERVE_MAX_BATCH, SERVE_MAX_GAP_MS, SERVE_MAX_WAIT_MS, Config
from cleanloop.errors import CleanloopError
from cleanloop.model.readers import read_texts


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
@config_options("model", fields=("text_column",))
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
    from cleanloop import api
    from cleanloop.model.serve import prediction_record

    if texts and file_path:
        raise CleanloopError("got both texts and --file; fix: pass one or the other")
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

    res = api.predict(cfg, items, model=model_path, top_k=top_k, output=output_path, progress=bool(file_path))
    if res.output is not None:
        counts = res.frame()["label"].value_counts()
        click.echo(f"{len(res.texts):,} predictions -> {res.output} ({', '.join(f'{k} {v:,}' for k, v in counts.items())})")
        return
    if as_json is None:
        as_json = not sys.stdout.isatty()
    if as_json:
        for text, p in zip(items, res.predictions):
            click.echo(json.dumps({"text": text, **prediction_record(p, top_k)}, ensure_ascii=False))
    else:
        _table(items, res.predictions, top_k)


@app.command()
@config_options("model")
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
              help="How long a request may wait for others to share its batch (gathering also stops "
                   f"once no request has come for {SERVE_MAX_GAP_MS:g} ms).")
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
    # parallel regions starve it (bench/serve.py shows it). Only
    # effective before torch is first imported, which is the case when run from the shell.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from cleanloop import api

    def ready(url: str, folder, label_names) -> None:
        click.echo(f"serving {folder} ({', '.join(label_names)}) on {url} "
                   "(POST /predict, GET /health, GET /labels; docs at /docs); Ctrl+C to stop", err=True)

    api.serve(cfg, model=model_path, host=host, port=port, max_texts=max_texts, max_chars=max_chars, truncate=truncate,
              max_wait_ms=max_wait_ms, max_batch=max_batch, on_ready=ready)

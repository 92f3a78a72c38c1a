"""Serve a :class:`~cleanloop.model.predict.Predictor` over HTTP, with micro-batching.

``create_app(predictor)`` returns a FastAPI app with ``POST /predict``, ``GET /health``
and ``GET /labels``. Concurrent requests are queued and one worker thread groups them
into a single :meth:`Predictor.predict_group` call (the group's texts packed into one
sequence without padding, where the model allows it, else length-sorted padded batches),
waiting at most ``max_wait_ms`` for company, and no longer than ``max_gap_ms`` after the last
request came, so throughput under many small requests stays close to the batch path.

Bad input always gets a 4xx with a one-line ``detail`` saying what was expected and
the fix; request bodies are never logged nor echoed back.

>>> app = create_app(Predictor.load("runs/emotion/model"))   # doctest: +SKIP
>>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

# No ``from __future__ import annotations`` here: FastAPI must see the request model
# built inside create_app as a real class, not as a string to resolve in module globals.

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Annotated

import numpy as np

from cleanloop.config import SERVE_MAX_BATCH, SERVE_MAX_GAP_MS, SERVE_MAX_WAIT_MS
from cleanloop.model.predict import Prediction, Predictor

log = logging.getLogger("cleanloop.serve")


# --- results ------------------------------------------------------------------------


def predictions_from_probs(probs: np.ndarray, label_names: Sequence[str]) -> list[Prediction]:
    """One :class:`Prediction` per row of ``probs`` (N, C), columns in ``label_names`` order.

    >>> predictions_from_probs(np.array([[0.25, 0.75]]), ["neg", "pos"])[0]
    Prediction(label='pos', score=0.75, probabilities={'neg': 0.25, 'pos': 0.75})
    """
    out = []
    for row in np.asarray(probs, dtype=np.float64):
        top = int(row.argmax())
        out.append(Prediction(label_names[top], float(row[top]), dict(zip(label_names, map(float, row)))))
    return out


def prediction_record(pred: Prediction, top_k: int | None = None) -> dict:
    """A prediction as plain JSON-ready data: label, score, probabilities (and top_k when asked).

    >>> prediction_record(Prediction("pos", 0.75, {"neg": 0.25, "pos": 0.75}), top_k=1)
    {'label': 'pos', 'score': 0.75, 'probabilities': {'neg': 0.25, 'pos': 0.75}, 'top_k': [{'label': 'pos', 'score': 0.75}]}
    """
    rec = asdict(pred)
    if top_k is not None:
        rec["top_k"] = [{"label": name, "score": p} for name, p in pred.top(top_k)]
    return rec


# --- micro-batching -----------------------------------------------------------------


@dataclass
class _Job:
    texts: list[str]
    future: concurrent.futures.Future
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Group concurrent prediction requests into one ``predict_group`` call.

    One daemon thread takes the oldest waiting request, then gathers more until the
    group holds ``max_batch`` texts, ``max_wait_ms`` has passed since that oldest
    request arrived (so requests that already waited behind a busy model are not
    held any longer), or no request has come for ``max_gap_ms`` (the clients that
    were answered have come back: a group of every waiting client is not held for
    company that will not come). A request is never split; a group may overshoot
    ``max_batch`` by at most one request.

    ``submit(texts)`` returns a :class:`concurrent.futures.Future` of the (n, C)
    probability array for those texts, rows in order.
    """

    def __init__(
        self,
        predictor: Predictor,
        max_wait_ms: float = SERVE_MAX_WAIT_MS,
        max_batch: int = SERVE_MAX_BATCH,
        batch_size: int = 32,
        max_pending: int = 8192,
        max_gap_ms: float = SERVE_MAX_GAP_MS,
    ):
        if max_wait_ms < 0 or max_gap_ms < 0 or max_batch < 1 or batch_size < 1:
            raise ValueError(
                f"expected max_wait_ms >= 0, max_gap_ms >= 0, max_batch >= 1, batch_size >= 1, "
                f"got {max_wait_ms!r}, {max_gap_ms!r}, {max_batch!r}, {batch_size!r}"
            )
        self.predictor = predictor
        self.max_wait = max_wait_ms / 1000.0
        self.max_gap = max_gap_ms / 1000.0
        self.max_batch = max_batch
        self.batch_size = batch_size
        self.max_pending = max_pending
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0  # texts queued or being predicted
        self._lock = threading.Lock()
        self.groups = 0  # predict_group calls made, for /health, tests and the benchmark
        self.texts_done = 0
        self.busy_seconds = 0.0  # time spent inside predict_group
        self._thread: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        """Start the worker thread (again, after :meth:`close`); a no-op while it runs."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="cleanloop-batcher", daemon=True)
            self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, texts: list[str]) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._pending + len(texts) > self.max_pending and self._pending:
                raise Overloaded(self._pending)
            self._pending += len(texts)
        self._queue.put(_Job(list(texts), fut))
        return fut

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker once the requests already queued are answered."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            job = self._queue.get()
            if job is None:
                break
            jobs, n = [job], len(job.texts)
            deadline = job.enqueued + self.max_wait
            while n < self.max_batch:
                wait = min(deadline - time.monotonic(), self.max_gap)
                try:
                    nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                n += len(nxt.texts)
            self._process(jobs)
        # Fail whatever is still queued rather than leave callers waiting forever.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    def _process(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # drop cancelled requests
        try:
            if not live:
                return
            texts = [t for j in live for t in j.texts]
            t0 = time.perf_counter()
            try:
                probs = self.predictor.predict_group(texts, batch_size=self.batch_size)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                log.exception("prediction failed for a group of %d texts", len(texts))
                for j in live:
                    j.future.set_exception(exc)
                return
            self.groups += 1
            self.texts_done += len(texts)
            self.busy_seconds += time.perf_counter() - t0
            start = 0
            for j in live:
                j.future.set_result(probs[start : start + len(j.texts)])
                start += len(j.texts)
        finally:
            with self._lock:
                self._pending -= sum(len(j.texts) for j in jobs)


class Overloaded(Exception):
    """Too many texts already waiting; the client should retry later (HTTP 503)."""


# --- errors -------------------------------------------------------------------------

TRUNCATE_FACTOR = 10  # with --truncate, a text of up to 10 x --max-chars is cut; a longer one is refused (413)

EXAMPLE = '{"texts": ["i feel great"]}'


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _explain(err: dict, max_texts: int, max_chars: int, num_labels: int, truncate: bool = False) -> tuple[int, str]:
    """One pydantic/FastAPI validation error -> (status, one-line message). Never quotes a text."""
    typ, loc, ctx = err.get("type", ""), tuple(err.get("loc", ())), err.get("ctx") or {}
    where = loc[1:] if loc[:1] == ("body",) else loc
    value = err.get("input")
    if typ == "json_invalid":
        pos = where[0] if where else "?"
        return 400, f"malformed JSON at character {pos} ({ctx.get('error', 'decode error')}); fix: send {EXAMPLE}"
    if not where:
        if typ == "missing":
            return 422, f"the request has no body; fix: send {EXAMPLE} with Content-Type: application/json"
        got = "raw bytes (is Content-Type application/json?)" if isinstance(value, bytes) else _kind(value)
        return 422, f"expected a JSON object like {EXAMPLE}, got {got}"
    name = where[0]
    if name == "texts":
        if len(where) == 1:
            if typ == "missing":
                return 422, f"'texts' is missing; fix: send {EXAMPLE}"
            if typ == "too_short":
                return 422, "'texts' is empty; fix: send at least one text"
            if typ == "too_long":
                n = ctx.get("actual_length")
                got = f"{n} texts" if n is not None else "more texts"
                return 413, (
                    f"'texts' has {got}, over the limit of {max_texts} per request; "
                    f"fix: split it into requests of at most {max_texts}"
                )
            return 422, f"'texts' must be a list of strings, got {_kind(value)}"
        idx = where[1]
        if typ == "string_too_long":
            return 413, (
                f"texts[{idx}] has {len(value) if isinstance(value, str) else '?'} characters, over the limit "
                f"of {max_chars}; fix: shorten it"
                + (f" (--truncate cuts texts of up to {max_chars} characters)" if truncate
                   else ", or start the server with --truncate")
            )
        if typ == "value_error":
            return 422, f"texts[{idx}] {ctx.get('error', 'is not valid text')}"
        if typ == "string_unicode":
            return 422, f"texts[{idx}] is not valid Unicode (an unpaired surrogate?); fix: send UTF-8 text"
        return 422, f"texts[{idx}] must be a string, got {_kind(value)}"
    if name == "top_k":
        shown = f" {value!r}" if isinstance(value, (int, float, bool)) else ""
        return 422, f"'top_k' must be an integer from 1 to {num_labels}, got {_kind(value)}{shown}"
    if typ == "extra_forbidden":
        return 422, f"unknown field {str(name)[:60]!r}; fix: send only 'texts' and optionally 'top_k'"
    return 422, f"{'.'.join(map(str, where))[:80]}: {err.get('msg', 'invalid')}"


# --- the app ------------------------------------------------------------------------


class _BodyLimit:
    """Pure ASGI middleware: 413 for a body over ``limit`` bytes, counted as they arrive.

    A Content-Length over the limit is refused before anything is read; a chunked body (no
    Content-Length) is read up to the limit and refused as soon as it goes over, so at most
    ``limit`` bytes of a request are ever held. The body read here is handed on to the app.
    """

    def __init__(self, app, limit: int, fix: str):
        self.app, self.limit, self.fix = app, limit, fix

    async def _refuse(self, scope, receive, send, size: str) -> None:
        from fastapi.responses import JSONResponse

        detail = f"the request body is {size} bytes, over the limit of {self.limit:,}; fix: {self.fix}"
        await JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = dict(scope["headers"]).get(b"content-length", b"")
        if size.isdigit() and int(size) > self.limit:
            return await self._refuse(scope, receive, send, f"{int(size):,}")
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                return await self._refuse(scope, receive, send, f"over {self.limit:,}")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for a disconnect, as the server would

        await self.app(scope, replay, send)


def listen_socket(host: str, port: int):
    """A socket bound to ``host:port`` and listening, or a one-line CleanloopError (port taken, bad host).

    Bound before the model loads, so a taken port is said at once; the server then serves on it.
    """
    import socket

    from cleanloop.errors import CleanloopError

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise CleanloopError(f"cannot listen on host {host!r} ({exc}); fix: pass --host 127.0.0.1 or a local address")
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        why = "is in use by another program" if exc.errno == 98 else f"cannot be used ({exc.strerror})"
        raise CleanloopError(
            f"port {port} on {host} {why}; fix: stop that program, or pass --port with a free port (0: any free one)"
        ) from None
    sock.set_inheritable(True)
    return sock


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains an unpaired surrogate (\\ud800-\\udfff); fix: send valid Unicode") from None
    return text


def _schemas(labels: list[str], max_texts: int, max_chars: int, text_limit: int, truncate: bool):
    """The request, response and error models of /predict, with this service's limits in them."""
    from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

    num_labels = len(labels)
    Text = Annotated[str, StringConstraints(strict=True, max_length=text_limit), AfterValidator(_valid_unicode)]

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["i feel great"]}]})
        texts: list[Text] = Field(
            min_length=1,
            max_length=max_texts,
            description=f"1 to {max_texts} texts"
            + (f", each cut to {max_chars} characters" if truncate else f" of at most {max_chars} characters"),
        )
        top_k: Annotated[int, Field(strict=True, ge=1, le=num_labels)] | None = Field(
            None, description="Also return the k most likely labels."
        )

    class TopLabel(BaseModel):
        label: str
        score: float

    class Result(BaseModel):
        label: str = Field(description="The most likely label.")
        score: float = Field(description="Its probability.")
        probabilities: dict[str, float] = Field(description="Every label's probability.")
        truncated: bool = Field(description=f"The text was cut to {max_chars} characters.")
        top_k: list[TopLabel] | None = None

    class PredictResponse(BaseModel):
        results: list[Result]

    class ErrorResponse(BaseModel):
        detail: str

    return PredictRequest, PredictResponse, ErrorResponse


def _add_error_handlers(app, max_texts: int, text_limit: int, num_labels: int, truncate: bool) -> None:
    """One-line JSON errors: 400 for malformed JSON, 413 for too much, 422 for any other bad input."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        explained = [_explain(e, max_texts, text_limit, num_labels, truncate) for e in errors[:20]]
        status = 400 if any(s == 400 for s, _ in explained) else max(s for s, _ in explained) if explained else 422
        body = {"detail": explained[0][1] if explained else "invalid request"}
        if len(explained) > 1:
            body["errors"] = [m for _, m in explained] + ([f"... and {len(errors) - 20} more"] if len(errors) > 20 else [])
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            # FastAPI's answer when the body is not decodable (bad UTF-8, nesting too deep...)
            detail = f"malformed JSON: the body could not be decoded or parsed; fix: send UTF-8 JSON like {EXAMPLE}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(
    predictor: Predictor,
    max_texts: int = 256,
    max_chars: int = 2000,
    truncate: bool = False,
    max_wait_ms: float = SERVE_MAX_WAIT_MS,
    max_batch: int = SERVE_MAX_BATCH,
    batch_size: int = 32,
    model_name: str | None = None,
):
    """A FastAPI app serving ``predictor``.

    POST /predict ``{"texts": [...], "top_k": k}`` -> ``{"results": [...]}``, one result per
    text in order: ``label``, ``score``, ``probabilities`` (by label name), ``truncated``
    and, with ``top_k``, the k most likely labels. Limits: 1 to ``max_texts`` texts of at
    most ``max_chars`` characters each (413 beyond; with ``truncate=True`` longer texts are
    cut to ``max_chars`` and marked ``truncated``, up to ``TRUNCATE_FACTOR * max_chars``; the
body is limited to what such texts need, counted as it is read, chunked or not). Malformed JSON -> 400, any other bad
    input -> 422, a full queue -> 503.
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    if max_texts < 1 or max_chars < 1:
        raise ValueError(f"expected max_texts >= 1 and max_chars >= 1, got {max_texts!r} and {max_chars!r}")
    labels = list(predictor.label_names)
    num_labels = len(labels)
    # --truncate cuts a text to max_chars, but never accepts one over TRUNCATE_FACTOR times that
    text_limit = max_chars * TRUNCATE_FACTOR if truncate else max_chars
    PredictRequest, PredictResponse, ErrorResponse = _schemas(labels, max_texts, max_chars, text_limit, truncate)

    packed = predictor.packs()  # checked once here, before any request, not in the event loop nor the batcher
    batcher = MicroBatcher(predictor, max_wait_ms=max_wait_ms, max_batch=max_batch, batch_size=batch_size)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.close()

    app = FastAPI(
        title="cleanloop classifier",
        description=f"Predict {', '.join(labels)} for texts" + (f" with {model_name}" if model_name else "") + ".",
        version="1",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    # JSON may spell one character in up to 12 bytes (a surrogate pair as two \\uXXXX escapes).
    body_limit = max_texts * (text_limit * 12 + 16) + 4096

    app.add_middleware(_BodyLimit, limit=body_limit, fix=f"send at most {max_texts} texts of at most {max_chars} characters")

    _add_error_handlers(app, max_texts, text_limit, num_labels, truncate)

    bad = {400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses={**bad, 503: {"model": ErrorResponse}},
    )
    async def predict(body: PredictRequest):
        """One result per text, in the order sent."""
        texts = body.texts
        cut = [len(t) > max_chars for t in texts]
        if truncate and any(cut):
            texts = [t[:max_chars] for t in texts]
        try:
            fut = batcher.submit(texts)
        except Overloaded as exc:
            return JSONResponse(
                {"detail": f"{exc.args[0]} texts are already waiting; retry in a moment"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
        probs = await asyncio.wrap_future(fut)
        results = []
        for pred, was_cut in zip(predictions_from_probs(probs, labels), cut):
            rec = prediction_record(pred, body.top_k)
            rec["truncated"] = was_cut
            results.append(rec)
        # A ready Response skips FastAPI's re-validation of the output (the schema above still
        # documents it): on 2 cores every millisecond of request handling is taken from the model.
        return JSONResponse({"results": results})

    @app.get("/health")
    async def health():
        """Liveness and queue depth."""
        return {
            "status": "ok",
            "model": model_name,
            "labels": num_labels,
            "precision": predictor.precision,
            "packed": packed,
            "pending": batcher.pending,
            "model_calls": batcher.groups,
            "texts_predicted": batcher.texts_done,
            "model_busy_seconds": round(batcher.busy_seconds, 3),
        }

    @app.get("/labels")
    async def get_labels():
        """The label names, in the model's index order."""
        return {"labels": labels}

    return app

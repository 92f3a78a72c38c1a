"""The one module that talks to the Argilla SDK: cleanloop's review records in, annotators' answers out.

cleanloop's side is plain dataclasses: :class:`ReviewRecord` (what an annotator sees: a review
queue's :class:`~cleanloop.labeling.records.ReviewItem` with the model's :class:`Suggestion`,
signals as metadata, an embedding) and :class:`Response` (one annotator's answer, the journal's
vote); :mod:`cleanloop.labeling.records` defines them. :func:`to_argilla_record` / :func:`responses_from_record`
convert them to and from Argilla records; :func:`dataset_settings` is the review dataset's layout.
The mapping is pure (unit-tested without a server); :func:`connect`, :func:`ensure_dataset`,
:func:`push` and :func:`pull` do the I/O.

The record id is the example id, so pushing the same example again updates its record.
Discarding a record means "no label fits"; the journal turns that into a removal.

>>> rec = ReviewRecord("train-00042", "i feel sad", "joy", Suggestion("sadness", 0.91, "cleanloop"),
...                    label_quality=0.05, loss=3.2, round=1, flagged_by=("cleanlab",))
>>> r = to_argilla_record(rec)
>>> r.id, r.fields["text"], r.metadata["given_label"], r.suggestions["label"].value
('train-00042', 'i feel sad', 'joy', 'sadness')
>>> r.fields["given"]
'**Label in the data: joy**'
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleanloop.config import Config
from cleanloop.errors import CleanloopError
from cleanloop.identity import example_fingerprint
from cleanloop.labeling.records import Response, ReviewItem, Suggestion, queue_items

__all__ = [
    "GUIDELINES",
    "QUESTION",
    "Response",
    "ReviewRecord",
    "Suggestion",
    "connect",
    "dataset_settings",
    "ensure_dataset",
    "log_records",
    "pull",
    "push",
    "records_from_queue",
    "responses_from_record",
    "suggestion_probs",
    "to_argilla_record",
]

log = logging.getLogger("cleanloop.argilla")

QUESTION = "label"
VECTOR = "embedding"
FINGERPRINT = "fingerprint"
GIVEN = "given"  # the markdown field next to the text: the label in the data, and the text's other copies
GUIDELINES = """\
# Check the label of each text

Each record is a text from the training data whose label a model doubts.
The **label in the data** is shown under the text; the model's **suggestion** is pre-selected
with its confidence. Records come most doubtful first.

* Pick the label that describes the emotion the author expresses, then **Submit**, whether it is
  the given label, the suggestion or another one.
* **Discard** means *no emotion of the list fits* (or the text is not understandable): the example
  is removed from the training data. Do not discard to skip a record: leave it for later instead.
* Judge the text alone, not the suggestion; `label_quality` and `loss` only say why it was flagged
  (low quality / high loss = the model disagrees more with the given label).
* When the record lists **other copies** of the text with other labels, your answer is applied to
  every copy: pick the one label that fits them all.
* Use *Find similar* (the `embedding` vector) to compare with similar texts.
"""


@dataclass(frozen=True)
class ReviewRecord:
    """One example to review, as cleanloop sees it."""

    id: str
    text: str
    given_label: str | None  # None: an unlabelled example (active learning)
    suggestion: Suggestion | None = None
    label_quality: float | None = None
    loss: float | None = None
    round: int = 0
    flagged_by: tuple[str, ...] = ()
    vector: tuple[float, ...] | None = None
    fingerprint: str | None = None  # the example's content fingerprint (cleanloop.identity), stored as metadata
    copies: tuple[tuple[str, str, str], ...] = ()  # other copies of the text: (id, given label, text)
    queue_rank: int | None = None  # 1 = reviewed first

    @classmethod
    def from_item(cls, item: ReviewItem, round: int, agent: str, vector=None,
                  flagged_by: Sequence[str] = ("cleanlab",)) -> "ReviewRecord":
        """The record of a review-queue item; ``flagged_by`` when the item names no reason of its own."""
        return cls(
            id=item.id, text=item.text, given_label=item.given_label,
            suggestion=Suggestion(item.suggested_label, item.suggested_score, agent),
            label_quality=item.label_quality, loss=item.loss, round=int(round),
            flagged_by=item.flagged_by or tuple(flagged_by),
            vector=tuple(np.asarray(vector, dtype=float)) if vector is not None else None,
            fingerprint=example_fingerprint("train", item.text),
            copies=tuple(zip(item.copy_ids, item.copy_labels, item.copy_texts)), queue_rank=item.queue_rank,
        )


# --- the mapping (pure) ---------------------------------------------------------------------------


def dataset_settings(label_names: Sequence[str], vector_dim: int | None = None, *, client, guidelines: str = GUIDELINES):
    """The review dataset's settings: field ``text``, question ``label``, metadata, vector, guidelines.

    client: the ``argilla.Argilla`` the settings belong to (the SDK's settings objects need one;
    passing it keeps the SDK from picking up a global default client). Makes no request.
    """
    import argilla as rg

    c = {"client": client}
    names = list(label_names)
    if len(names) < 2:
        raise CleanloopError(f"a review dataset needs at least two label names, got {names!r}")
    return rg.Settings(
        guidelines=guidelines,
        fields=[rg.TextField("text", title="Text", use_markdown=False, **c),
                rg.TextField(GIVEN, title="In the data", use_markdown=True, required=False, **c)],
        questions=[rg.LabelQuestion(QUESTION, labels=names, title="Which label fits this text?", required=True, **c)],
        metadata=[
            rg.TermsMetadataProperty("given_label", options=names, title="Given label", **c),
            rg.TermsMetadataProperty("suggested_label", options=names, title="Suggested label", **c),
            rg.FloatMetadataProperty("label_quality", title="Label quality (low = doubtful)", **c),
            rg.FloatMetadataProperty("loss", title="Loss (high = doubtful)", **c),
            rg.IntegerMetadataProperty("round", title="Review round", **c),
            rg.TermsMetadataProperty("flagged_by", title="Flagged by", **c),
            _fingerprint_property(client),
            rg.IntegerMetadataProperty("queue_rank", title="Place in the review queue (1 = first)", **c),
            rg.TermsMetadataProperty("copies", title="Other copies (ids)", **c),
        ],
        vectors=[rg.VectorField(VECTOR, dimensions=int(vector_dim), title="Embedding", _client=client)]
        if vector_dim else [],
        allow_extra_metadata=False,
    )


def _fingerprint_property(client):
    import argilla as rg

    return rg.TermsMetadataProperty(FINGERPRINT, title="Example fingerprint", visible_for_annotators=False,
                                    client=client)


def _md(text: str) -> str:
    """``text`` with markdown's special characters escaped, on one line."""
    return "".join("\\" + ch if ch in "\\`*_{}[]<>()#+-.!|~" else ch for ch in " ".join(str(text).split()))


def given_markdown(rec: ReviewRecord) -> str | None:
    """The record's ``given`` field: the label in the data and the text's other copies with theirs."""
    if rec.given_label is None and not rec.copies:
        return None
    lines = [f"**Label in the data: {_md(rec.given_label)}**"] if rec.given_label is not None else []
    if rec.copies:
        lines += ["", f"**{len(rec.copies)} other {'copy' if len(rec.copies) == 1 else 'copies'}** of this text in the "
                      "data; your answer applies to all of them:", ""]
        lines += [f"- *{_md(label)}*: {_md(text)} ({_md(cid)})" for cid, label, text in rec.copies]
    return "\n".join(lines)


def to_argilla_record(rec: ReviewRecord):
    """An ``argilla.Record`` for a :class:`ReviewRecord` (id = example id)."""
    import argilla as rg

    metadata = {"round": int(rec.round)}
    if rec.queue_rank is not None:
        metadata["queue_rank"] = int(rec.queue_rank)
    if rec.copies:
        metadata["copies"] = [cid for cid, _, _ in rec.copies]
    if rec.given_label is not None:
        metadata["given_label"] = rec.given_label
    if rec.suggestion is not None:
        metadata["suggested_label"] = rec.suggestion.label
    for key in ("label_quality", "loss"):
        value = getattr(rec, key)
        if value is not None and np.isfinite(value):
            metadata[key] = float(value)
    if rec.flagged_by:
        metadata["flagged_by"] = list(rec.flagged_by)
    if rec.fingerprint:
        metadata[FINGERPRINT] = rec.fingerprint
    suggestions = []
    if rec.suggestion is not None:
        suggestions.append(rg.Suggestion(QUESTION, rec.suggestion.label, score=float(rec.suggestion.score),
                                         agent=rec.suggestion.agent))
    vectors = {VECTOR: [float(x) for x in rec.vector]} if rec.vector is not None else {}
    fields = {"text": rec.text}
    given = given_markdown(rec)
    if given is not None:
        fields[GIVEN] = given
    return rg.Record(id=rec.id, fields=fields, metadata=metadata, suggestions=suggestions, vectors=vectors)


def responses_from_record(model, usernames: Mapping[str, str]) -> list[Response]:
    """The submitted and discarded answers on one record, as the server sends it (a ``RecordModel``).

    usernames: user id (str) -> user name. Drafts are left out. Works on the SDK's record
    *models*: the SDK's ``Record`` cannot be built from a record with a discard that carries no
    value (argilla 2.8 fails on ``values=None``), which is what the UI's Discard sends.
    """
    meta = model.metadata or {}
    meta = meta if isinstance(meta, dict) else {m.name: m.value for m in meta}
    sugg = None
    for s in model.suggestions or ():
        if s.question_name in (QUESTION, None):  # the review dataset has one question
            score = s.score if isinstance(s.score, (int, float)) else float("nan")
            sugg = Suggestion(str(s.value), float(score), s.agent or "")
    out = []
    for r in model.responses or []:
        status = getattr(r.status, "value", r.status)
        if status not in ("submitted", "discarded"):
            continue
        value = ((r.values or {}).get(QUESTION) or {}).get("value")
        label = None if status == "discarded" else value
        if status == "submitted" and label is None:
            continue  # submitted without an answer to our question: nothing to learn
        out.append(Response(str(model.external_id), usernames.get(str(r.user_id), str(r.user_id)), label, status,
                            meta.get("given_label"), sugg, meta.get("round"), meta.get(FINGERPRINT),
                            tuple(meta.get("copies") or ())))
    return out


def records_from_queue(queue, round: int, agent: str, embeddings: np.ndarray | None = None,
                       flagged_by: Sequence[str] = ("cleanlab",)) -> list[ReviewRecord]:
    """:class:`ReviewRecord` s from a review-queue table (:func:`~cleanloop.labeling.records.queue_items`).

    embeddings: (N, D) rows in the queue's order, or None. An item that names no reasons of its
    own (``flagged_by``) gets ``flagged_by``.
    """
    if embeddings is not None and len(embeddings) != len(queue):
        raise CleanloopError(f"{len(embeddings)} embeddings for a queue of {len(queue)} rows")
    return [ReviewRecord.from_item(item, round, agent, embeddings[n] if embeddings is not None else None, flagged_by)
            for n, item in enumerate(queue_items(queue))]


def suggestion_probs(suggestion: Suggestion, label_names: Sequence[str]) -> np.ndarray:
    """(C,) probabilities implied by a suggestion: its score on its label, the rest shared evenly.

    A stand-in for the model's full probabilities, which a record does not carry; enough for
    cleanlab's multi-annotator consensus quality.
    """
    k = len(label_names)
    score = float(np.clip(suggestion.score if np.isfinite(suggestion.score) else 1 / k, 1e-6, 1 - 1e-6))
    probs = np.full(k, (1 - score) / (k - 1))
    probs[list(label_names).index(suggestion.label)] = score
    return probs


# --- talking to a server -----------------------------------------------------------------------------


def api_key(cfg: Config, home: str | Path | None = None) -> str:
    """ARGILLA_API_KEY, else the owner's key of the embedded server's credentials file."""
    key = os.environ.get("ARGILLA_API_KEY")
    if key:
        return key
    from cleanloop.labeling.embedded.accounts import OWNER, credentials

    creds = credentials(cfg, home)
    if OWNER in creds:
        return creds[OWNER].api_key
    raise CleanloopError(
        f"no Argilla API key for {cfg.argilla_url}: ARGILLA_API_KEY is not set and the embedded server's "
        "credentials file has none; fix: export ARGILLA_API_KEY=<owner key>, or run 'cleanloop argilla up'"
    )


def connect(cfg: Config, home: str | Path | None = None, key: str | None = None):
    """An ``argilla.Argilla`` client for ``cfg.argilla_url`` (any URL), checked with one request."""
    import argilla as rg

    try:
        client = rg.Argilla(api_url=cfg.argilla_url, api_key=key or api_key(cfg, home), timeout=60)
        client.me  # noqa: B018  (one request: fails now, not in the middle of a push)
    except CleanloopError:
        raise
    except Exception as exc:
        raise CleanloopError(
            f"cannot reach Argilla at {cfg.argilla_url} ({type(exc).__name__}: {str(exc)[:160]}); "
            "fix: start it with 'cleanloop argilla up' or check --argilla-url and ARGILLA_API_KEY"
        ) from None
    return client


@contextmanager
def server_errors(url: str, doing: str):
    """Turn an SDK or HTTP failure while ``doing`` something with Argilla into a one-line CleanloopError.

    What was written locally before the failure is complete (the journal is written before a
    version is built from it), so the fix is to make the server answer and run the step again.
    """
    import httpx
    from argilla._exceptions import ArgillaError

    try:
        yield
    except (httpx.HTTPError, ArgillaError, ConnectionError) as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CleanloopError(
            f"Argilla at {url} failed during {doing} ({type(exc).__name__}: {detail}); "
            f"fix: check it runs ('cleanloop argilla status'), then run {doing} again"
        ) from None


def get_dataset(client, cfg: Config):
    """The review dataset, or None when it does not exist yet."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the SDK warns "not found" before returning None
        return client.datasets(cfg.argilla_dataset, workspace=cfg.argilla_workspace)


def ensure_dataset(client, cfg: Config, label_names: Sequence[str], vector_dim: int | None = None, *,
                   guidelines: str = GUIDELINES):
    """The review dataset ``cfg.argilla_dataset`` in ``cfg.argilla_workspace``, created when missing.

    An existing dataset must ask for the same labels (and vector size). A draft (created, never
    published: a crash in between) holds no records: it is deleted and created again.
    """
    import argilla as rg

    dataset = get_dataset(client, cfg)
    if dataset is not None and client.api.datasets.get(dataset.id).status == "draft":
        log.info("Argilla dataset %r is an unpublished draft (left by an interrupted push): creating it again",
                 cfg.argilla_dataset)
        dataset.delete()
        dataset = None
    if dataset is None:
        if client.workspaces(cfg.argilla_workspace) is None:
            raise CleanloopError(
                f"Argilla workspace {cfg.argilla_workspace!r} does not exist at {cfg.argilla_url}; "
                "fix: create it (the embedded server's 'argilla up' does) or pass --argilla-workspace"
            )
        settings = dataset_settings(label_names, vector_dim, client=client, guidelines=guidelines)
        return rg.Dataset(cfg.argilla_dataset, workspace=cfg.argilla_workspace, settings=settings,
                          client=client).create()
    if dataset.settings.fields[GIVEN] is None:
        raise CleanloopError(
            f"Argilla dataset {cfg.argilla_dataset!r} was made by an older cleanloop (no '{GIVEN}' field to show the "
            "label in the data); fix: pass another --argilla-dataset"
        )
    have = list(dataset.settings.questions[QUESTION].labels)
    if have != list(label_names):
        raise CleanloopError(
            f"Argilla dataset {cfg.argilla_dataset!r} asks for labels {have}, but the data has {list(label_names)}; "
            "fix: pass another --argilla-dataset"
        )
    vec = dataset.settings.vectors[VECTOR] if vector_dim else None
    if vector_dim and (vec is None or vec.dimensions != vector_dim):
        raise CleanloopError(
            f"Argilla dataset {cfg.argilla_dataset!r} has no {vector_dim}-d vector '{VECTOR}'; "
            "fix: pass another --argilla-dataset"
        )
    if FINGERPRINT not in [m.name for m in dataset.settings.metadata]:  # made before fingerprints: add the property
        prop = _fingerprint_property(client)
        prop.dataset = dataset
        dataset.settings.metadata.add(prop.create())
    return dataset


def push(client, dataset, records: Iterable[ReviewRecord], skip_ids: Iterable[str] = (), threads: int = 2,
         progress: Callable[[int], None] | None = None) -> list[str]:
    """Upsert records (update by example id); those in ``skip_ids`` (already reviewed) are left out.

    Answers already given on a record are kept. Returns the ids pushed. See :func:`log_records`.
    """
    skip = set(skip_ids)
    todo = [r for r in records if r.id not in skip]
    log_records(client, dataset, [to_argilla_record(r) for r in todo], threads=threads, progress=progress)
    return [r.id for r in todo]


def log_records(client, dataset, records: Sequence, threads: int = 2,
                progress: Callable[[int], None] | None = None) -> int:
    """Upsert ``argilla.Record`` objects into ``dataset`` through its bulk endpoint; returns how many.

    What ``dataset.records.log`` does (the SDK checks and converts each record; a known id
    updates its record), sent differently:

    * up to ``threads`` bulk requests of 500 records are in flight at once (the embedded server
      runs ``argilla_workers`` processes);
    * bodies are written and replies read with orjson; the SDK's standard-library JSON (a
      384-float vector per record, both ways: the server echoes each record back) was most of
      the client's time;
    * the echoed records come back uncompressed (the server would Brotli-compress megabytes of
      vectors at quality 7) and are counted, not turned back into SDK records:
      ``dataset.records.log`` also fails in argilla 2.8 when the server echoes a record with a
      discard that has no values.

    A refused request, or a connection lost on the way, raises :class:`CleanloopError` with the
    reason; logging again is safe (records update by id). progress(n) is called as each bulk
    request of n records is answered.
    """
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import orjson

    if not records:
        return 0
    models = dataset.records._ingest_records(list(records), user_id=client.me.id)
    step = client.api.records.MAX_RECORDS_PER_UPSERT_BULK
    chunks = [models[start:start + step] for start in range(0, len(models), step)]
    url = f"/api/v1/datasets/{dataset.id}/records/bulk"

    def send(chunk) -> int:
        body = orjson.dumps({"items": [model.model_dump() for model in chunk]})
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        try:
            reply = client.http_client.put(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise CleanloopError(
                f"lost Argilla at {client.api_url} while sending {len(chunk)} records ({type(exc).__name__}: "
                f"{str(exc)[:160]}); fix: check the server ('cleanloop argilla status') and log them again"
            ) from None
        if reply.is_error:
            raise CleanloopError(
                f"Argilla refused {len(chunk)} records ({chunk[0].external_id} ...) for dataset {dataset.name!r}: "
                f"HTTP {reply.status_code} {reply.text[:300]}; fix: make the records match the dataset's settings"
            )
        sent = len(orjson.loads(reply.content)["items"])
        if progress:
            progress(sent)
        return sent

    with ThreadPoolExecutor(max(1, min(threads, len(chunks)))) as pool:
        return sum(pool.map(send, chunks))


def _record_models(client, dataset, batch: int = 500, with_suggestions: bool = True):
    """Every record of the dataset as the server's ``RecordModel`` (see :func:`responses_from_record`)."""
    offset = 0
    while True:
        page = client.api.records.list(dataset_id=dataset.id, offset=offset, limit=batch,
                                       with_responses=True, with_suggestions=with_suggestions)
        yield from page
        if len(page) < batch:
            return
        offset += len(page)


def pull(client, dataset, progress: Callable[[int], None] | None = None) -> list[Response]:
    """Every submitted and discarded answer in the dataset, as :class:`Response` s.

    progress(1) is called per record read.
    """
    usernames = {str(u.id): u.username for u in client.users}
    out: list[Response] = []
    for model in _record_models(client, dataset):
        out.extend(responses_from_record(model, usernames))
        if progress:
            progress(1)
    return out


def progress(client, dataset, ids: Iterable[str] | None = None) -> tuple[int, int]:
    """(records with a submitted or discarded answer, records) among ``ids`` (default: all)."""
    wanted = set(ids) if ids is not None else None
    done = total = 0
    for model in _record_models(client, dataset, with_suggestions=False):
        if wanted is not None and str(model.external_id) not in wanted:
            continue
        total += 1
        statuses = {getattr(r.status, "value", r.status) for r in model.responses or []}
        done += bool(statuses & {"submitted", "discarded"})
    return done, total


class ReviewWaker:
    """Be woken by Argilla's webhooks when annotators answer, instead of only polling.

    Registers a webhook on ``response.created``/``response.updated``/``record.completed`` with the
    SDK's ``webhook_listener`` and serves it on ``127.0.0.1:port`` (uvicorn in a thread); the
    server's rq worker delivers the events, each sets :attr:`event`. :meth:`stop` removes the
    webhook and stops the listener. The webhook URL must be reachable from the Argilla server:
    this is for a server on the same machine (the embedded one).

    The SDK creates the webhook with its *default* client, so ``client`` is made the default.
    """

    EVENTS = ["response.created", "response.updated", "record.completed"]
    DESCRIPTION = "cleanloop: wake the review loop"  # 'argilla up' removes such webhooks whose listener is gone

    def __init__(self, client, port: int | None = None):
        import socket
        import threading

        self.client = client
        if port is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.event = threading.Event()
        self._server = None
        self._thread = None

    def start(self) -> "ReviewWaker":
        import threading

        import argilla as rg
        import uvicorn
        from argilla.webhooks import webhook_listener
        from fastapi import FastAPI

        app = FastAPI()
        rg.Argilla._set_default(self.client)
        event = self.event
        before = os.environ.get("WEBHOOK_SERVER_URL")
        os.environ["WEBHOOK_SERVER_URL"] = self.url  # the SDK builds the webhook URL from it
        try:
            async def cleanloop_review_event(evt):  # noqa: ANN001  (the SDK's raw WebhookEvent)
                event.set()

            webhook_listener(self.EVENTS, description=self.DESCRIPTION, client=self.client,
                             server=app, raw_event=True)(cleanloop_review_event)
        finally:
            if before is None:
                os.environ.pop("WEBHOOK_SERVER_URL", None)
            else:
                os.environ["WEBHOOK_SERVER_URL"] = before
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="cleanloop-webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        for hook in self.client.webhooks:
            if hook.url.startswith(self.url + "/"):
                hook.delete()

    def __enter__(self) -> "ReviewWaker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

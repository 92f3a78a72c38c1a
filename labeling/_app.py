"""The ASGI app that ``cleanloop argilla up`` serves: Argilla's app, with the SQLite search engine registered.

The engine must be registered before ``argilla_server`` builds its app, hence the import order.

Speed-ups for bulk logging, each keeping the server's behaviour (found by profiling
``bench/argilla.py``; together they were over half of the server's time per record; the
database's JSON columns are in :mod:`cleanloop.labeling._sqlite_driver`):

* ``Question.parsed_settings`` and ``MetadataProperty.parsed_settings`` build a new pydantic
  ``TypeAdapter`` (a schema compilation) for every record they validate; one adapter per type
  is built once and reused. Adapters are stateless, so validation is the same.
* Each logged record builds its webhook event (a dataset query with five eager loads and a
  schema dump) before the server finds that no webhook is enabled and drops it. The event is
  now built only when an enabled webhook exists, so ``cleanloop retrain-loop --webhooks`` gets
  every event it subscribes to. Whether one exists is asked once per database session (one
  request), not once per record (500 queries for a bulk of 500).
* Request bodies (500 records with 384-float vectors) are parsed with orjson, falling back to
  the standard library for what only it reads (NaN). JSON responses (a bulk upsert echoes its
  records back) are written with orjson too: the same values in compact UTF-8
  (``_sqlite_driver.response_json``).
* ``upsert_many`` (suggestions, vectors and responses of a bulk) built one multi-row
  ``INSERT ... VALUES (...), (...) ON CONFLICT DO UPDATE`` per call: a new statement shape for
  every batch, compiled afresh (about a sixth of the server's time per record). The same upsert
  now runs with the rows as parameters, so SQLAlchemy compiles it once and sends the rows in
  batches ("insertmanyvalues"): same SQL per row, same rows returned.
* ``parsed_settings`` of a question or metadata property validated its settings into a pydantic
  object on each call (once per record and question); the result is kept on the object and
  rebuilt when the settings differ from the ones it was built from.
* To validate a new record, Argilla builds a throwaway ORM ``Record(dataset=dataset)`` (an
  instrumented object, and a backref that appends it to ``dataset.records``, which every flush
  of the request then walks). The checks it is built for read only ``record.fields`` and
  ``record.dataset`` (its questions), so a plain object with those two attributes stands in.
* Python's cyclic garbage collector: a bulk request allocates hundreds of thousands of objects,
  which sets off full collections, and each one walked the ~300,000 objects that importing
  Argilla, SQLAlchemy and pydantic leaves behind (about a quarter of the server's CPU per logged
  record). ``gc.freeze()`` once the app is built moves those to the permanent generation, which
  collections skip; everything allocated afterwards is collected as before.
* An annotator's search checks workspace membership once per record and metadata property
  (``User.is_member``, one query each: 200 queries for a page of 50 records with 4 properties).
  The answer is kept on the user object for 2 seconds. The server loads that object afresh for
  each request, so a membership change still shows at the next request.

Around the app, :class:`BulkReplies` changes how replies to bulk requests travel (uncompressed,
closing their connection), not what they say.
"""

import gc

from cleanloop.labeling import _sqlite_driver

_sqlite_driver.setup()  # the in-loop SQLite driver and pragmas, before argilla_server creates its engines

from cleanloop.labeling import search_engine  # noqa: E402,F401  (registers the "sqlite" engine)

from argilla_server import app as argilla_app  # noqa: E402


def _speed_ups() -> None:
    import copy
    import time
    from datetime import datetime
    from types import SimpleNamespace

    from argilla_server.bulk import records_bulk
    from argilla_server.contexts import webhooks
    from argilla_server.models import database, mixins
    from argilla_server.validators import records as record_validators
    from pydantic import TypeAdapter
    from starlette import requests, responses

    from cleanloop.labeling._sqlite_driver import json_loads, response_json

    adapters: dict[int, tuple[object, TypeAdapter]] = {}

    def cached_type_adapter(tp):
        hit = adapters.get(id(tp))
        if hit is None or hit[0] is not tp:
            hit = adapters[id(tp)] = (tp, TypeAdapter(tp))
        return hit[1]

    database.TypeAdapter = cached_type_adapter  # the name parsed_settings looks up

    notify = records_bulk.notify_record_event_v1

    async def notify_if_subscribed(db, record_event, record):
        enabled = db.info.get("cleanloop_webhooks_enabled")  # asked once per session (one request)
        if enabled is None:
            enabled = db.info["cleanloop_webhooks_enabled"] = bool(await webhooks.list_enabled_webhooks(db))
        if not enabled:
            return []
        return await notify(db, record_event, record)

    records_bulk.notify_record_event_v1 = notify_if_subscribed

    async def upsert_many(cls, db, objects, constraints, autocommit=True):
        if len(objects) == 0:
            raise ValueError("Cannot upsert empty list of objects")
        rows = [obj if isinstance(obj, dict) else obj.model_dump() for obj in objects]
        insert = mixins._INSERT_FUNC[db.bind.dialect.name](cls)
        on_conflict = {column: insert.excluded[column] for column in cls.__upsertable_columns__}
        if hasattr(cls, "updated_at"):
            on_conflict["updated_at"] = datetime.utcnow()
        upsert = (
            insert.on_conflict_do_update(index_elements=constraints, set_=on_conflict)
            .returning(cls)
            .execution_options(populate_existing=True)
        )
        result = await db.execute(upsert, rows)  # rows as parameters: one cached compilation
        if autocommit:
            await db.commit()
        return result.scalars().all()

    mixins.CRUDMixin.upsert_many = classmethod(upsert_many)

    def remember_parsed_settings(model) -> None:
        parse = model.parsed_settings.fget

        def parsed_settings(self):
            memo = vars(self).get("_cleanloop_parsed_settings")
            if memo is None or memo[0] != self.settings:
                memo = (copy.deepcopy(self.settings), parse(self))
                vars(self)["_cleanloop_parsed_settings"] = memo
            return memo[1]

        model.parsed_settings = property(parsed_settings)

    remember_parsed_settings(database.Question)
    remember_parsed_settings(database.MetadataProperty)

    async def validate_new_record(cls, record_create, dataset):
        record = SimpleNamespace(fields=record_create.fields, dataset=dataset)  # what the checks read
        cls._validate_fields(record_create.fields, dataset)
        cls._validate_metadata(record_create.metadata, dataset)
        cls._validate_suggestions(record_create.suggestions, dataset, record=record)
        cls._validate_vectors(record_create.vectors, dataset)
        await cls._validate_responses(record_create.responses, dataset, record=record)

    record_validators.RecordCreateValidator.validate = classmethod(validate_new_record)
    requests.json = SimpleNamespace(loads=json_loads)  # the name Request.json() looks up
    responses.JSONResponse.render = lambda self, content: response_json(content)

    is_member = database.User.is_member

    async def is_member_remembered(self, workspace_id):
        memo = vars(self).setdefault("_cleanloop_member_of", {})
        hit = memo.get(workspace_id)
        if hit is None or time.monotonic() - hit[1] > 2.0:
            hit = memo[workspace_id] = (await is_member(self, workspace_id), time.monotonic())
        return hit[0]

    database.User.is_member = is_member_remembered


_speed_ups()


class BulkReplies:
    """ASGI wrapper for replies to bulk requests (``.../records/bulk``): uncompressed, and they close their connection.

    * With several server processes (``argilla_workers``), each keep-alive connection stays with
      the process that accepted it, and two connections opened at once are often accepted by the
      same one: the SDK's threads then queue on one process while the other idles. A bulk
      request (up to 500 records, most of a second of work) that ends its connection makes the
      client's next one connect afresh, and only a process that is free accepts it.
    * A bulk reply echoes every record, vectors included (megabytes for 500 records); Argilla
      Brotli-compresses it at quality 7 for a client that accepts it, as the SDK does. The
      embedded server listens on 127.0.0.1 only, where that costs CPU and saves nothing, so
      the request's ``Accept-Encoding`` is dropped before Argilla's app sees it.

    Other requests and replies pass unchanged.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/records/bulk"):
            return await self.app(scope, receive, send)
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]}

        async def send_closing(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        return await self.app(scope, receive, send_closing)


app = BulkReplies(argilla_app)

gc.freeze()  # last: what importing and patching left behind is never garbage (see the module docstring)

__all__ = ["app"]

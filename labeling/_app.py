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
  now built only when an enabled webhook exists, checked per call, so ``cleanloop
  retrain-loop --webhooks`` gets every event it subscribes to.
* Request bodies (500 records with 384-float vectors) are parsed with orjson, falling back to
  the standard library for what only it reads (NaN). JSON responses (a bulk upsert echoes its
  records back) are written with orjson too: the same values in compact UTF-8
  (``_sqlite_driver.response_json``).
* An annotator's search checks workspace membership once per record and metadata property
  (``User.is_member``, one query each: 200 queries for a page of 50 records with 4 properties).
  The answer is kept on the user object for 2 seconds. The server loads that object afresh for
  each request, so a membership change still shows at the next request.
"""

from cleanloop.labeling import _sqlite_driver

_sqlite_driver.setup()  # the in-loop SQLite driver and pragmas, before argilla_server creates its engines

from cleanloop.labeling import search_engine  # noqa: E402,F401  (registers the "sqlite" engine)

from argilla_server import app  # noqa: E402


def _speed_ups() -> None:
    import time
    from types import SimpleNamespace

    from argilla_server.bulk import records_bulk
    from argilla_server.contexts import webhooks
    from argilla_server.models import database
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
        if not await webhooks.list_enabled_webhooks(db):
            return []
        return await notify(db, record_event, record)

    records_bulk.notify_record_event_v1 = notify_if_subscribed
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

__all__ = ["app"]

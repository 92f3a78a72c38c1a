"""Every change cleanloop makes to argilla-server's code, each checked against the code it was written for.

Each patch is registered with the exact targets it expects: a module, an attribute in it and a
fingerprint (the first 16 hex digits of the SHA-256 of the target's source). When the server
starts, a patch whose targets all match is applied; one whose target was renamed or changed
(an argilla-server, FastAPI or Starlette upgrade) is skipped with a one-line warning naming it,
so it cannot turn into a silent no-op or drop a validation. ``tests/test_argilla_patches.py``
fails as soon as any target changes. ``CLEANLOOP_ARGILLA_PATCHES=off`` starts the server with
none of them. What the server did is in ``<home>/run/patches.json`` and its log.

The patches are speed-ups for bulk logging, each keeping the server's behaviour (found by
profiling ``bench/argilla.py``, figures in ``bench/results/argilla.json``;
the database's JSON columns are in :mod:`cleanloop.labeling.embedded._sqlite_driver`):

* ``type-adapter-per-type``: ``Question.parsed_settings`` and ``MetadataProperty.parsed_settings``
  build a new pydantic ``TypeAdapter`` (a schema compilation) for every record they validate; one
  adapter per type is built once and reused. Adapters are stateless, so validation is the same.
* ``webhook-events-when-subscribed``: each logged record builds its webhook event (a dataset
  query with five eager loads and a schema dump) before the server finds that no webhook is
  enabled and drops it. The event is now built only when an enabled webhook exists, so
  ``cleanloop retrain-loop --webhooks`` gets every event it subscribes to. Whether one exists is
  asked once per database session (one request), not once per record.
* ``upsert-rows-as-parameters``: ``upsert_many`` (suggestions, vectors and responses of a bulk)
  built one multi-row ``INSERT ... VALUES (...), (...) ON CONFLICT DO UPDATE`` per call: a new
  statement shape for every batch, compiled afresh (about a sixth of the server's time per
  record). The same upsert runs with the rows as parameters, so SQLAlchemy compiles it once and
  sends the rows in batches ("insertmanyvalues"): same SQL per row, same rows returned.
* ``parsed-settings-memo``: ``parsed_settings`` of a question or metadata property validated its
  settings into a pydantic object on each call (once per record and question); the result is
  kept on the object and rebuilt when the settings differ from the ones it was built from.
* ``record-validation-without-orm-record``: to validate a new record, Argilla builds a throwaway
  ORM ``Record(dataset=dataset)`` (an instrumented object, and a backref that appends it to
  ``dataset.records``, which every flush of the request then walks). The checks read only
  ``record.fields`` and ``record.dataset``, so a plain object with those two attributes stands in.
* ``membership-memo``: an annotator's search checks workspace membership once per record and
  metadata property (``User.is_member``, one query each: 200 queries for a page of 50 records
  with 4 properties). The answer is kept on the user object for 2 seconds; the server loads that
  object afresh for each request, so a membership change still shows at the next request.
* ``orjson-request-bodies`` and ``orjson-json-responses`` (Starlette): request bodies (500
  records with 384-float vectors) are parsed with orjson, falling back to the standard library
  for what only it reads (NaN); JSON responses (a bulk upsert echoes its records back) are
  written with orjson (``_sqlite_driver.response_json``). Both are scoped to the routes of this
  app: its API routes get a ``Request`` and a ``JSONResponse`` subclass, the way FastAPI
  documents custom request and route classes; Starlette's classes are left alone.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cleanloop.errors import CleanloopError

__all__ = ["PATCHES", "SWITCH", "Patch", "Target", "apply", "check", "enabled", "fingerprint"]

log = logging.getLogger("cleanloop.argilla.patches")

SWITCH = "CLEANLOOP_ARGILLA_PATCHES"


@dataclass(frozen=True)
class Target:
    """``module``'s ``attribute`` (dotted inside the module), whose source hashes to ``sha``."""

    module: str
    attribute: str
    sha: str

    def __str__(self) -> str:
        return f"{self.module}.{self.attribute}"


@dataclass(frozen=True)
class Patch:
    """One change: its ``name``, the ``targets`` it was written for, and ``install(app)`` that makes it.

    None is required: the integration tests pass with every patch off (``CLEANLOOP_ARGILLA_PATCHES=off``).
    """

    name: str
    targets: tuple[Target, ...]
    install: Callable[[object], None]


PATCHES: list[Patch] = []
_originals: dict[str, object] = {}  # target -> what it was before a patch replaced it (for check() afterwards)


def _patch(name: str, *targets: Target):
    def register(install: Callable[[object], None]) -> Callable[[object], None]:
        PATCHES.append(Patch(name, targets, install))
        return install

    return register


def enabled() -> bool:
    """Whether ``$CLEANLOOP_ARGILLA_PATCHES`` lets the patches on (``on``, the default, or ``off``)."""
    value = os.environ.get(SWITCH, "on").strip().lower()
    if value not in ("on", "off"):
        raise CleanloopError(f"{SWITCH} is {value!r}; fix: set it to 'on' (the default) or 'off'")
    return value == "on"


# --- targets and fingerprints --------------------------------------------------------------------


def _resolve(target: Target):
    """The target as its class holds it (a property or classmethod, not what attribute access makes of it)."""
    if str(target) in _originals:
        return _originals[str(target)]
    obj = importlib.import_module(target.module)
    for part in target.attribute.split("."):
        obj = inspect.getattr_static(obj, part)
    return obj


def fingerprint(obj) -> str:
    """The first 16 hex digits of the SHA-256 of ``obj``'s source (a property's getter, a classmethod's function)."""
    code = obj.fget if isinstance(obj, property) else getattr(obj, "__func__", obj)
    return hashlib.sha256(inspect.getsource(code).encode()).hexdigest()[:16]


def _differences(patch: Patch) -> list[str]:
    out = []
    for target in patch.targets:
        try:
            got = fingerprint(_resolve(target))
        except (ImportError, AttributeError, OSError, TypeError) as exc:
            out.append(f"{target} is gone ({type(exc).__name__}: {exc})")
            continue
        if got != target.sha:
            out.append(f"{target} changed (source hash {got}, written for {target.sha})")
    return out


def check() -> dict[str, list[str]]:
    """Each registered patch's targets that differ from what it was written for (empty lists: all as expected)."""
    return {patch.name: _differences(patch) for patch in PATCHES}


def _replace(module: str, attribute: str, value) -> None:
    """Set ``module``'s ``attribute`` (dotted) to ``value``, keeping the original for :func:`check`."""
    *path, name = attribute.split(".")
    owner = importlib.import_module(module)
    for part in path:
        owner = getattr(owner, part)
    _originals.setdefault(f"{module}.{attribute}", inspect.getattr_static(owner, name))
    setattr(owner, name, value)


def apply(app, report: Path | None = None, registry: list[Patch] | None = None) -> dict[str, str]:
    """Install every patch of ``registry`` (default :data:`PATCHES`) whose targets match on ``app``.

    ``app`` is argilla-server's FastAPI app. A mismatch skips the patch with a one-line warning;
    with ``$CLEANLOOP_ARGILLA_PATCHES=off`` none is installed. Returns, and writes to ``report`` (a JSON file) when given,
    ``{patch name: "applied" | "off" | "skipped: <why>"}``.
    """
    on = enabled()
    outcome = {}
    for patch in PATCHES if registry is None else registry:
        if not on:
            outcome[patch.name] = "off"
            continue
        differences = _differences(patch)
        if differences:
            log.warning("argilla-server patch %r skipped: %s", patch.name, "; ".join(differences))
            outcome[patch.name] = "skipped: " + "; ".join(differences)
            continue
        patch.install(app)
        outcome[patch.name] = "applied"
    if not on:
        log.warning("argilla-server patches off (%s=off): %s", SWITCH, ", ".join(outcome))
    if report is not None:
        from cleanloop.atomic import write_text

        write_text(report, json.dumps(outcome, indent=2) + "\n")
    return outcome


# --- the patches of argilla-server ---------------------------------------------------------------

_DB = "argilla_server.models.database"


@_patch(
    "type-adapter-per-type",
    Target(_DB, "TypeAdapter", "f452b829fdf1d68f"),
    Target(_DB, "Question.parsed_settings", "5d2f427fe4651063"),
    Target(_DB, "MetadataProperty.parsed_settings", "263c9f47b2de7832"),
)
def _type_adapter_per_type(app) -> None:
    from pydantic import TypeAdapter

    adapters: dict[int, tuple[object, TypeAdapter]] = {}

    def cached_type_adapter(tp):
        hit = adapters.get(id(tp))
        if hit is None or hit[0] is not tp:
            hit = adapters[id(tp)] = (tp, TypeAdapter(tp))
        return hit[1]

    _replace(_DB, "TypeAdapter", cached_type_adapter)  # the name parsed_settings looks up


@_patch(
    "webhook-events-when-subscribed",
    Target("argilla_server.bulk.records_bulk", "notify_record_event_v1", "92209f75197bb9fd"),
    Target("argilla_server.contexts.webhooks", "list_enabled_webhooks", "900f5cd185b1359b"),
)
def _webhook_events_when_subscribed(app) -> None:
    from argilla_server.bulk import records_bulk
    from argilla_server.contexts import webhooks

    notify = records_bulk.notify_record_event_v1

    async def notify_if_subscribed(db, record_event, record):
        enabled_ = db.info.get("cleanloop_webhooks_enabled")  # asked once per session (one request)
        if enabled_ is None:
            enabled_ = db.info["cleanloop_webhooks_enabled"] = bool(await webhooks.list_enabled_webhooks(db))
        if not enabled_:
            return []
        return await notify(db, record_event, record)

    _replace("argilla_server.bulk.records_bulk", "notify_record_event_v1", notify_if_subscribed)


@_patch(
    "upsert-rows-as-parameters",
    Target("argilla_server.models.mixins", "CRUDMixin.upsert_many", "9f1dbdfe0814a481"),
)
def _upsert_rows_as_parameters(app) -> None:
    from datetime import datetime

    from argilla_server.models import mixins

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

    _replace("argilla_server.models.mixins", "CRUDMixin.upsert_many", classmethod(upsert_many))


@_patch(
    "parsed-settings-memo",
    Target(_DB, "Question.parsed_settings", "5d2f427fe4651063"),
    Target(_DB, "MetadataProperty.parsed_settings", "263c9f47b2de7832"),
)
def _parsed_settings_memo(app) -> None:
    import copy

    from argilla_server.models import database

    for model in (database.Question, database.MetadataProperty):
        parse = model.parsed_settings.fget

        def parsed_settings(self, parse=parse):
            memo = vars(self).get("_cleanloop_parsed_settings")
            if memo is None or memo[0] != self.settings:
                memo = (copy.deepcopy(self.settings), parse(self))
                vars(self)["_cleanloop_parsed_settings"] = memo
            return memo[1]

        _replace(_DB, f"{model.__name__}.parsed_settings", property(parsed_settings))


_VALIDATORS = "argilla_server.validators.records"


@_patch(
    "record-validation-without-orm-record",
    Target(_VALIDATORS, "RecordCreateValidator.validate", "9cd5d9a0856d50d3"),
    Target(_VALIDATORS, "RecordValidatorBase._validate_suggestions", "e1be5cac788fc4c9"),
    Target(_VALIDATORS, "RecordValidatorBase._validate_responses", "53ffe049bf14ac28"),
)
def _record_validation_without_orm_record(app) -> None:
    from types import SimpleNamespace

    async def validate_new_record(cls, record_create, dataset):
        record = SimpleNamespace(fields=record_create.fields, dataset=dataset)  # what the checks read
        cls._validate_fields(record_create.fields, dataset)
        cls._validate_metadata(record_create.metadata, dataset)
        cls._validate_suggestions(record_create.suggestions, dataset, record=record)
        cls._validate_vectors(record_create.vectors, dataset)
        await cls._validate_responses(record_create.responses, dataset, record=record)

    _replace(_VALIDATORS, "RecordCreateValidator.validate", classmethod(validate_new_record))


@_patch("membership-memo", Target(_DB, "User.is_member", "ffa28a00107bc6cc"))
def _membership_memo(app) -> None:
    import time

    from argilla_server.models import database

    is_member = database.User.is_member

    async def is_member_remembered(self, workspace_id):
        memo = vars(self).setdefault("_cleanloop_member_of", {})
        hit = memo.get(workspace_id)
        if hit is None or time.monotonic() - hit[1] > 2.0:
            hit = memo[workspace_id] = (await is_member(self, workspace_id), time.monotonic())
        return hit[0]

    _replace(_DB, "User.is_member", is_member_remembered)


# --- the Starlette changes, on this app's routes only ----------------------------------------------

# FastAPI builds a route's ASGI app once, in APIRoute.__init__ (`self.app = request_response(self.get_route_handler())`),
# from its response class; _rebuild does the same again after a patch set a route's request or response class.
_ROUTE = Target("fastapi.routing", "APIRoute.__init__", "9f3e46871a0feddd")
_HANDLER = Target("fastapi.routing", "APIRoute.get_route_handler", "f0870f89e639bbee")


def _api_routes(app):
    from fastapi.routing import APIRoute

    for route in getattr(app, "routes", ()):
        if isinstance(route, APIRoute):
            yield route
        else:  # a Mount (Argilla's API is a FastAPI app mounted at /api/v1)
            yield from _api_routes(route)


def _rebuild(route) -> None:
    from fastapi.routing import request_response

    handler = route.get_route_handler()
    request_class = getattr(route, "cleanloop_request_class", None)
    if request_class is not None:
        plain = handler

        async def handler(request):  # FastAPI's documented custom-Request route handler
            return await plain(request_class(request.scope, request.receive))

    route.app = request_response(handler)


@_patch("orjson-request-bodies", Target("starlette.requests", "Request.json", "c22edc8854b36ff6"), _ROUTE, _HANDLER)
def _orjson_request_bodies(app) -> None:
    from starlette.requests import Request

    from cleanloop.labeling.embedded._sqlite_driver import json_loads

    class OrjsonRequest(Request):
        """Starlette's ``Request`` whose ``json()`` parses with orjson (the standard library for NaN)."""

        async def json(self):
            if not hasattr(self, "_json"):
                self._json = json_loads(await self.body())
            return self._json

    for route in _api_routes(app):
        route.cleanloop_request_class = OrjsonRequest
        _rebuild(route)


@_patch("orjson-json-responses", Target("starlette.responses", "JSONResponse.render", "02587cda3017e161"), _ROUTE,
        _HANDLER)
def _orjson_json_responses(app) -> None:
    from fastapi.datastructures import Default, DefaultPlaceholder
    from starlette.responses import JSONResponse

    from cleanloop.labeling.embedded._sqlite_driver import response_json

    class OrjsonResponse(JSONResponse):
        """Starlette's ``JSONResponse`` rendered with orjson: the same compact UTF-8 JSON."""

        def render(self, content) -> bytes:
            return response_json(content)

    for route in _api_routes(app):
        chosen = route.response_class
        if isinstance(chosen, DefaultPlaceholder) and chosen.value is JSONResponse:
            route.response_class = Default(OrjsonResponse)
            _rebuild(route)

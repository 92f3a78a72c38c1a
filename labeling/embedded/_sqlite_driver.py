"""Database settings of the embedded Argilla server: a faster SQLite driver and SQLite pragmas.

Two things, both through documented SQLAlchemy extension points (nothing in ``argilla_server``
is patched):

* :func:`register` adds the SQLAlchemy dialect ``sqlite+aiosqlite_inloop`` (via
  ``sqlalchemy.dialects.registry``), chosen with ``ARGILLA_DATABASE_URL``. It is the standard
  ``pysqlite`` dialect marked async: statements run on the event loop's thread, inside
  SQLAlchemy's greenlet, instead of being handed to aiosqlite's thread and back (4 thread
  round trips per statement: about 4x the cost of a query, which is most of the time of
  Argilla's many small queries, e.g. 7 per logged record). A statement that finds the
  database locked by another connection does not block the loop: it fails at once
  (busy timeout 0) and is retried in a thread with the configured timeout, as aiosqlite
  would have run it. The URL keeps the ``sqlite+aiosqlite`` prefix because Argilla's settings
  rewrite any other ``sqlite`` URL to ``sqlite+aiosqlite``.
* JSON columns (fields, metadata, 384-float vectors) go through ``orjson`` (the dialect's
  ``json_serializer``/``json_deserializer``, a SQLAlchemy option): the standard library's float
  formatting and parsing were a third of the server's time per logged record. Values orjson
  would write differently (NaN, which it writes as null, non-string keys, huge integers) fall
  back to the standard library, so what is stored reads back the same.
* :func:`tune` sets pragmas on every SQLite connection Argilla's engines open (a ``connect``
  event on ``Engine``, as ``argilla_server.database`` does for ``foreign_keys``): WAL (readers
  and the writer do not block each other), ``synchronous=NORMAL`` (no fsync per commit; still
  durable across process crashes), a 64 MiB page cache, temp tables in memory.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import deque
from typing import Optional

import orjson
from sqlalchemy import event, pool
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import Engine
from sqlalchemy.util.concurrency import await_only

DRIVER = "aiosqlite_inloop"
PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA cache_size = -65536",
    "PRAGMA temp_store = MEMORY",
)


def _locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "database is locked" in text or "database table is locked" in text


class _Cursor(sqlite3.Cursor):
    """A cursor that reads its whole result at once (as SQLAlchemy's aiosqlite adapter does, so no
    statement stays open) and whose statements retry off the event loop when the database is locked."""

    _rows: Optional[deque] = None

    def execute(self, sql, parameters=()):  # noqa: D102
        try:
            super().execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            self.connection._wait(super().execute, sql, parameters)
        self._rows = deque(super().fetchall()) if self.description else None
        return self

    def executemany(self, sql, seq_of_parameters):  # noqa: D102
        seq_of_parameters = list(seq_of_parameters)
        self._rows = None
        try:
            return super().executemany(sql, seq_of_parameters)
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
        return self.connection._wait(super().executemany, sql, seq_of_parameters)

    def fetchone(self):  # noqa: D102
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size=None):  # noqa: D102
        size = self.arraysize if size is None else size
        rows = self._rows or deque()
        return [rows.popleft() for _ in range(min(size, len(rows)))]

    def fetchall(self):  # noqa: D102
        rows, self._rows = list(self._rows or ()), deque()
        return rows

    def __iter__(self):
        return iter(self.fetchall())

    async def _async_soft_close(self) -> None:
        """SQLAlchemy's asyncio results call this; the rows are already read."""


class _Connection(sqlite3.Connection):
    """sqlite3 connection with busy timeout 0 on the loop; a locked statement waits in a thread."""

    wait_ms = 15_000

    def cursor(self, factory=_Cursor):  # noqa: D102
        return super().cursor(factory)

    def commit(self):  # noqa: D102
        try:
            return super().commit()
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
        return self._wait(super().commit)

    def _wait(self, fn, *args):
        def run():
            super(_Connection, self).execute(f"PRAGMA busy_timeout = {int(self.wait_ms)}")
            try:
                return fn(*args)
            finally:
                super(_Connection, self).execute("PRAGMA busy_timeout = 0")

        return await_only(asyncio.get_running_loop().run_in_executor(None, run))


def json_dumps(obj) -> str:
    """``json.dumps`` output (as read back), faster: orjson unless the value holds a null (NaN
    and None both come out as null there) or something orjson refuses."""
    try:
        out = orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj)
    return json.dumps(obj) if b"null" in out else out.decode()


def response_json(content) -> bytes:
    """The body Starlette's ``JSONResponse`` renders (compact UTF-8 JSON, the same values; an
    exponent may be spelled 1e-7 for 1e-07), faster: orjson unless it refuses the value (an int
    over 64 bits, a key that is not a string). One difference: a NaN, which the standard encoder
    refuses (a 500), comes out as null."""
    try:
        return orjson.dumps(content)
    except TypeError:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def json_loads(text):
    """``json.loads``, faster: orjson unless the text has what only the standard library reads (NaN)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


class SQLiteInLoopDialect(SQLiteDialect_pysqlite):
    """``sqlite+aiosqlite_inloop://``: pysqlite run on the event loop, usable by ``create_async_engine``."""

    driver = DRIVER
    is_async = True
    supports_statement_cache = True

    def __init__(self, json_serializer=None, json_deserializer=None, **kwargs):
        super().__init__(json_serializer=json_serializer or json_dumps,
                         json_deserializer=json_deserializer or json_loads, **kwargs)

    @classmethod
    def get_pool_class(cls, url):
        return pool.AsyncAdaptedQueuePool if cls._is_url_file_db(url) else pool.StaticPool

    def connect(self, *cargs, **cparams):
        wait = float(cparams.pop("timeout", 15.0))
        cparams.update(timeout=0.0, check_same_thread=False, factory=_Connection)
        conn = super().connect(*cargs, **cparams)
        conn.wait_ms = wait * 1000
        return conn


def register() -> None:
    """Make ``sqlite+aiosqlite_inloop://`` URLs resolve to :class:`SQLiteInLoopDialect`."""
    registry.register(f"sqlite.{DRIVER}", __name__, "SQLiteInLoopDialect")


_tuned = False


def tune() -> None:
    """Set :data:`PRAGMAS` on every SQLite connection that SQLAlchemy engines of this process open."""
    global _tuned
    if _tuned:
        return
    _tuned = True

    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_connection, connection_record):
        if not (isinstance(dbapi_connection, sqlite3.Connection) or "sqlite" in type(dbapi_connection).__module__):
            return
        cursor = dbapi_connection.cursor()
        try:
            for pragma in PRAGMAS:
                cursor.execute(pragma)
        finally:
            cursor.close()


def setup() -> None:
    register()
    tune()

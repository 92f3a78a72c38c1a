"""An Argilla search engine kept in one SQLite file: no Elasticsearch needed.

Importing this module registers :class:`SQLiteSearchEngine` under the name ``sqlite``;
a server started with ``ARGILLA_SEARCH_ENGINE=sqlite`` then uses it. It gives the
answers of Argilla's Elasticsearch engine (``argilla_server/search_engine/commons.py``):

* text queries (``simple_query_string`` syntax: words are ANDed, ``"a phrase"``,
  ``prefix*``, ``-not``, ``a | b``) on all fields or one, through an FTS5 index;
* terms and range filters, combined with AND, on record properties, metadata,
  suggestions (value, score, agent, type) and responses (values, status; per user,
  with ES's "pending" meaning *no response from that user*);
* sorting on the same scopes (ascending takes the lowest of several values,
  descending the highest, missing values last), per-user pseudo-random order when
  there is no sort and no text query, offset/limit and total;
* dataset and per-user progress, metadata metrics, similarity search (cosine,
  most or least similar, with filters, a text query and a score threshold).

Layout: one row per record in ``records`` (its integer ``rid`` keys everything
else), side tables for metadata, suggestions, responses and vectors (one row per
value, so lists behave like ES multi-valued fields), an FTS5 table whose rowid is
``rid * 256 + k`` (k = 0 for all fields together, k >= 1 per field), so deleting a
record's text is a rowid range. Every write commits before returning, so a
search right after an update sees it, like ES's ``refresh=True``.

The file is ``$CLEANLOOP_SEARCH_INDEX`` or ``<ARGILLA_HOME_PATH>/search.sqlite``.
The server creates an engine per request: the connection is opened once per
process and shared, so :meth:`SQLiteSearchEngine.new_instance` and ``close`` cost
nothing. Vectors are compared by brute force in numpy (a few ms for 16k x 384);
the matrix is cached per process and reloaded when a write bumps its generation.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional, Union
from uuid import UUID

import numpy as np
from argilla_server.enums import MetadataPropertyType, SimilarityOrder, SortOrder
from argilla_server.models import Dataset, MetadataProperty, Record, Response, Suggestion, User, VectorSettings
from argilla_server.search_engine import (
    AndFilter,
    Filter,
    FloatMetadataMetrics,
    IntegerMetadataMetrics,
    MetadataFilterScope,
    MetadataMetrics,
    Order,
    RangeFilter,
    RecordFilterScope,
    ResponseFilterScope,
    SearchEngine,
    SearchResponseItem,
    SearchResponses,
    SuggestionFilterScope,
    TermsFilter,
    TermsMetrics,
    TextQuery,
)

__all__ = ["SQLiteSearchEngine", "index_path", "to_fts_query"]

log = logging.getLogger(__name__)

ENGINE_NAME = "sqlite"
_FTS_SLOTS = 256  # FTS rowid = rid * 256 + k; k = 0: all fields, k = 1..255: one field
_MAX_TERMS = 2**14  # ES terms aggregation bucket cap used by Argilla
_DATE_PROPERTIES = ("inserted_at", "updated_at")
_SUGGESTION_PROPERTIES = ("value", "score", "agent", "type")

_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS datasets (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS records (
    rid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    dataset_id TEXT NOT NULL,
    external_id TEXT,
    status TEXT,
    inserted_at REAL,
    updated_at REAL
);
CREATE INDEX IF NOT EXISTS records_dataset ON records (dataset_id, rid);
CREATE TABLE IF NOT EXISTS metadata (rid INTEGER NOT NULL, name TEXT NOT NULL, txt TEXT, num REAL);
CREATE INDEX IF NOT EXISTS metadata_rid ON metadata (rid, name, num, txt);
CREATE INDEX IF NOT EXISTS metadata_name_num ON metadata (name, num, rid);
CREATE INDEX IF NOT EXISTS metadata_name_txt ON metadata (name, txt, rid);
CREATE TABLE IF NOT EXISTS suggestions (
    rid INTEGER NOT NULL, question TEXT NOT NULL, prop TEXT NOT NULL, txt TEXT, num REAL
);
CREATE INDEX IF NOT EXISTS suggestions_rid ON suggestions (rid, question, prop, num, txt);
CREATE INDEX IF NOT EXISTS suggestions_num ON suggestions (question, prop, num, rid);
CREATE INDEX IF NOT EXISTS suggestions_txt ON suggestions (question, prop, txt, rid);
CREATE TABLE IF NOT EXISTS responses (
    rid INTEGER NOT NULL, response_id TEXT NOT NULL, user_id TEXT NOT NULL, status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_rid ON responses (rid, user_id, status);
CREATE INDEX IF NOT EXISTS responses_user ON responses (user_id, status, rid);
CREATE INDEX IF NOT EXISTS responses_id ON responses (response_id);
CREATE TABLE IF NOT EXISTS response_values (
    rid INTEGER NOT NULL, response_id TEXT NOT NULL, user_id TEXT NOT NULL, question TEXT NOT NULL, txt TEXT, num REAL
);
CREATE INDEX IF NOT EXISTS response_values_rid ON response_values (rid, question, user_id);
CREATE INDEX IF NOT EXISTS response_values_id ON response_values (response_id);
CREATE TABLE IF NOT EXISTS vectors (vs TEXT NOT NULL, rid INTEGER NOT NULL, v BLOB NOT NULL, PRIMARY KEY (vs, rid));
CREATE INDEX IF NOT EXISTS vectors_rid ON vectors (rid);
CREATE TABLE IF NOT EXISTS vector_generation (vs TEXT PRIMARY KEY, gen INTEGER NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5 (
    field UNINDEXED, body, tokenize = 'unicode61 remove_diacritics 2'
);
"""

_CHILD_TABLES = ("metadata", "suggestions", "responses", "response_values")


def index_path() -> Path:
    """Where the index lives: ``$CLEANLOOP_SEARCH_INDEX``, else ``<ARGILLA_HOME_PATH>/search.sqlite``."""
    explicit = os.environ.get("CLEANLOOP_SEARCH_INDEX")
    if explicit:
        return Path(explicit)
    from argilla_server.settings import settings

    return Path(settings.home_path) / "search.sqlite"


# --- one shared connection per process --------------------------------------------------


class _Shared:
    """The process's connection and vector cache; re-opened after a fork (rq work-horses)."""

    lock = threading.Lock()
    pid: int | None = None
    conn: sqlite3.Connection | None = None
    path: Path | None = None
    vectors: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}


def _connection() -> sqlite3.Connection:
    path = index_path()
    with _Shared.lock:
        if _Shared.conn is None or _Shared.pid != os.getpid() or _Shared.path != path:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
            _Shared.conn, _Shared.pid, _Shared.path, _Shared.vectors = conn, os.getpid(), path, {}
        return _Shared.conn


class _Tx:
    """``with _Tx(conn):`` one write transaction (BEGIN IMMEDIATE .. COMMIT, ROLLBACK on error)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        _Shared.lock.acquire()
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, *_):
        try:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            _Shared.lock.release()


# --- value helpers ------------------------------------------------------------------------


def _epoch(value: Any) -> Optional[float]:
    """A datetime (naive = UTC, as Argilla stores them), ISO string or ES epoch millis -> epoch seconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, (int, float)):
        return float(value) / 1000.0
    text = str(value).strip()
    try:
        return float(text) / 1000.0
    except ValueError:
        pass
    return _epoch(datetime.fromisoformat(text.replace("Z", "+00:00")))


def _scalars(value: Any) -> list[tuple[Optional[str], Optional[float]]]:
    """One (txt, num) row per indexable value; lists are multi-valued, objects are not indexed (as in ES)."""
    items = value if isinstance(value, list) else [value]
    rows = []
    for item in items:
        if item is None or isinstance(item, (dict, list)):
            continue
        if isinstance(item, bool):
            rows.append((str(item).lower(), float(item)))
        elif isinstance(item, (int, float)):
            rows.append((str(item), float(item)))
        else:
            rows.append((str(item), None))
    return rows


def _field_text(field, value: Any) -> Optional[str]:
    if value is None or field.is_image:
        return None
    if field.is_chat and isinstance(value, list):
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value)
    return value if isinstance(value, str) else str(value)


def _text_fields(dataset: Dataset) -> list:
    return [f for f in dataset.fields if not f.is_image]


_TOKEN = re.compile(r'(-?)"([^"]*)"(\*?)|(\S+)')


def to_fts_query(query: str) -> tuple[Optional[str], Optional[str]]:
    """Translate an Elasticsearch ``simple_query_string`` (default operator AND) to FTS5.

    Returns ``(positive, negative)``: records must match ``positive`` (None: any record)
    and must not match ``negative`` (None: no exclusion). Both None and an empty
    query means nothing matches.

    >>> to_fts_query('happy "so sad" -angry lov*')
    ('"happy" AND "so sad" AND "lov"*', '"angry"')
    >>> to_fts_query("joy | love")
    ('"joy" OR "love"', None)
    """
    groups: list[list[str]] = [[]]  # OR-groups of AND-ed terms
    negatives: list[str] = []
    or_next = False
    for m in _TOKEN.finditer(query):
        if m.group(4) is not None:
            raw = m.group(4)
            if raw == "|":
                or_next = True
                continue
            neg, prefix = raw.startswith("-"), raw.endswith("*")
            word = raw.lstrip("+-").rstrip("*").strip("()")
        else:
            neg, word, prefix = m.group(1) == "-", m.group(2), m.group(3) == "*"
        if not re.search(r"\w", word):
            continue
        term = '"' + word.replace('"', '""') + '"' + ("*" if prefix else "")
        if neg:
            negatives.append(term)
            continue
        if or_next and groups[-1]:
            groups.append([])
        or_next = False
        groups[-1].append(term)
    ands = [" AND ".join(g) for g in groups if g]
    positive = " OR ".join(f"({a})" if len(ands) > 1 and " AND " in a else a for a in ands) or None
    negative = " OR ".join(negatives) or None
    return positive, negative


# --- SQL building -------------------------------------------------------------------------


@dataclass
class _Sql:
    """A WHERE clause on ``records r`` with its parameters."""

    where: list[str]
    params: list[Any]

    def add(self, clause: str, *params: Any) -> None:
        self.where.append(clause)
        self.params.extend(params)

    @property
    def clause(self) -> str:
        return " AND ".join(self.where) or "1"


def _in(values: Iterable[Any]) -> tuple[str, list[Any]]:
    values = list(values)
    return ",".join("?" * len(values)), values


def _range(column: str, ge: Any, le: Any, convert=float) -> tuple[str, list[Any]]:
    parts, params = [], []
    if ge is not None:
        parts.append(f"{column} >= ?")
        params.append(convert(ge))
    if le is not None:
        parts.append(f"{column} <= ?")
        params.append(convert(le))
    return (" AND ".join(parts) or f"{column} IS NOT NULL"), params


def _filter_sql(flt: Filter, sql: _Sql) -> None:
    if isinstance(flt, AndFilter):
        for sub in flt.filters:
            _filter_sql(sub, sql)
        return
    scope = flt.scope
    if isinstance(scope, RecordFilterScope):
        prop = str(scope.property)
        if prop not in ("id", "external_id", "status", *_DATE_PROPERTIES):
            raise ValueError(f"cannot filter on record property {prop!r}")
        if isinstance(flt, TermsFilter):
            marks, vals = _in(flt.values)
            sql.add(f"r.{prop} IN ({marks})", *vals)
        else:
            cond, vals = _range(f"r.{prop}", flt.ge, flt.le, _epoch if prop in _DATE_PROPERTIES else float)
            sql.add(cond, *vals)
    # EXISTS, probed per record of the dataset, rather than ``rid IN (SELECT ...)``: SQLite drives an IN
    # from the child table's (name, value) index, over every dataset's rows, which is slower for a broad
    # metadata range over several datasets
    elif isinstance(scope, MetadataFilterScope):
        cond, vals = _value_condition(flt)
        sql.add(f"EXISTS (SELECT 1 FROM metadata WHERE rid = r.rid AND name = ? AND {cond})",
                scope.metadata_property, *vals)
    elif isinstance(scope, SuggestionFilterScope):
        cond, vals = _value_condition(flt)
        sql.add(
            f"EXISTS (SELECT 1 FROM suggestions WHERE rid = r.rid AND question = ? AND prop = ? AND {cond})",
            scope.question, str(scope.property or "value"), *vals,
        )
    elif isinstance(scope, ResponseFilterScope):
        _response_filter_sql(flt, scope, sql)
    else:
        raise ValueError(f"cannot process filter scope {scope!r}")


def _value_condition(flt: Filter) -> tuple[str, list[Any]]:
    if isinstance(flt, TermsFilter):
        marks, vals = _in(str(v) for v in flt.values)
        return f"txt IN ({marks})", vals
    if isinstance(flt, RangeFilter):
        return _range("num", flt.ge, flt.le)
    raise ValueError(f"cannot process filter {flt!r}")


def _response_filter_sql(flt: Filter, scope: ResponseFilterScope, sql: _Sql) -> None:
    user = str(scope.user.id) if scope.user else None
    if scope.question:
        cond, vals = _value_condition(flt)
        user_cond = " AND user_id = ?" if user else ""
        sql.add(
            f"EXISTS (SELECT 1 FROM response_values WHERE rid = r.rid AND question = ? AND {cond}{user_cond})",
            scope.question, *vals, *([user] if user else []),
        )
        return
    if scope.property != "status" or not isinstance(flt, TermsFilter):
        raise ValueError(f"cannot process response filter {flt!r}")
    statuses = [str(v) for v in flt.values]
    parts, params = [], []
    if "pending" in statuses:  # pending = no response (from this user, when one is given)
        if user:
            parts.append("r.rid NOT IN (SELECT rid FROM responses WHERE user_id = ?)")
            params.append(user)
        else:
            parts.append("r.rid NOT IN (SELECT rid FROM responses)")
        statuses = [s for s in statuses if s != "pending"]
    if statuses or not parts:
        marks, vals = _in(statuses)
        conds = [f"status IN ({marks})"] if statuses else []
        if user:
            conds.append("user_id = ?")
            vals.append(user)
        parts.append(f"r.rid IN (SELECT rid FROM responses WHERE {' AND '.join(conds) or '1'})")
        params.extend(vals)
    sql.add("(" + " OR ".join(parts) + ")", *params)


def _sort_sql(order: Order) -> tuple[str, list[Any], bool]:
    """One sort key expression, its params and whether it is descending.

    Missing values sort last; ascending takes the lowest of several values, descending the highest (as ES).
    """
    scope, desc = order.scope, str(order.order) == SortOrder.desc.value
    agg = "MAX" if desc else "MIN"
    if isinstance(scope, RecordFilterScope):
        prop = str(scope.property)
        if prop not in ("id", "external_id", "status", *_DATE_PROPERTIES):
            raise ValueError(f"cannot sort on record property {prop!r}")
        expr, params = f"r.{prop}", []
    elif isinstance(scope, MetadataFilterScope):
        expr = f"(SELECT {agg}(COALESCE(num, txt)) FROM metadata WHERE rid = r.rid AND name = ?)"
        params = [scope.metadata_property]
    elif isinstance(scope, SuggestionFilterScope):
        expr = f"(SELECT {agg}(COALESCE(num, txt)) FROM suggestions WHERE rid = r.rid AND question = ? AND prop = ?)"
        params = [scope.question, str(scope.property or "value")]
    elif isinstance(scope, ResponseFilterScope):
        user_cond = " AND user_id = ?" if scope.user else ""
        user_params = [str(scope.user.id)] if scope.user else []
        if scope.question:  # ES: mode avg over the (user's) responses
            expr = f"(SELECT AVG(num) FROM response_values WHERE rid = r.rid AND question = ?{user_cond})"
            params = [scope.question, *user_params]
        else:
            expr = f"(SELECT {agg}(status) FROM responses WHERE rid = r.rid{user_cond})"
            params = user_params
    else:
        raise ValueError(f"cannot sort on scope {scope!r}")
    return expr, params, desc


def _user_seed(user_id: Any) -> int:
    return UUID(str(user_id)).int % 1_000_003


# --- the engine ---------------------------------------------------------------------------


@SearchEngine.register(engine_name=ENGINE_NAME)
class SQLiteSearchEngine(SearchEngine):
    """Argilla's search engine interface over one SQLite file (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    @classmethod
    async def new_instance(cls) -> "SQLiteSearchEngine":
        return cls(_connection())

    async def close(self) -> None:
        """Nothing to do: the connection is shared by the process and every write has committed."""

    async def ping(self) -> bool:
        try:
            self.conn.execute("SELECT 1 FROM records LIMIT 1").fetchall()
            return True
        except sqlite3.Error as exc:
            log.error("search index %s is not usable: %s", _Shared.path, exc)
            return False

    async def info(self) -> dict:
        return {"name": ENGINE_NAME, "version": sqlite3.sqlite_version, "path": str(_Shared.path)}

    # --- indices --------------------------------------------------------------------------

    async def create_index(self, dataset: Dataset) -> None:
        with _Tx(self.conn) as c:
            c.execute("INSERT OR IGNORE INTO datasets (id) VALUES (?)", (str(dataset.id),))

    async def delete_index(self, dataset: Dataset) -> None:
        with _Tx(self.conn) as c:
            rids = [row[0] for row in c.execute("SELECT rid FROM records WHERE dataset_id = ?", (str(dataset.id),))]
            self._delete_rids(c, rids)
            c.execute("DELETE FROM datasets WHERE id = ?", (str(dataset.id),))

    async def configure_metadata_property(self, dataset: Dataset, metadata_property: MetadataProperty) -> None:
        """Schema-less: values of a property are indexed from the next write of each record, as with ES."""

    async def configure_index_vectors(self, vector_settings: VectorSettings) -> None:
        """Schema-less: vectors are stored per vector settings id."""

    # --- records --------------------------------------------------------------------------

    async def index_records(self, dataset: Dataset, records: Iterable[Record]) -> None:
        records = list(records)
        if not records:
            return
        fields = _text_fields(dataset)
        per_field = len(fields) > 1  # with one field, the all-fields row serves both queries
        props = {p.name for p in dataset.metadata_properties}
        ds_id = str(dataset.id)
        with _Tx(self.conn) as c:
            ids = [str(r.id) for r in records]
            existing = {}
            for start in range(0, len(ids), 500):
                marks, vals = _in(ids[start : start + 500])
                existing.update(c.execute(f"SELECT id, rid FROM records WHERE id IN ({marks})", vals).fetchall())
            self._delete_rids(c, list(existing.values()), keep_records=True)
            meta, sugg, fts, vecs, touched_vs = [], [], [], [], set()
            resp, resp_vals = [], []
            for record in records:
                rid = existing.get(str(record.id))
                row = (str(record.id), ds_id, record.external_id, str(record.status),
                       _epoch(record.inserted_at), _epoch(record.updated_at))
                if rid is None:
                    rid = c.execute(
                        "INSERT INTO records (id, dataset_id, external_id, status, inserted_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)", row,
                    ).lastrowid
                else:
                    c.execute(
                        "UPDATE records SET id = ?, dataset_id = ?, external_id = ?, status = ?, inserted_at = ?,"
                        " updated_at = ? WHERE rid = ?", (*row, rid),
                    )
                texts = [(k + 1, f.name, _field_text(f, (record.fields or {}).get(f.name))) for k, f in enumerate(fields)]
                texts = [(k, name, t) for k, name, t in texts if t]
                if texts:
                    fts.append((rid * _FTS_SLOTS, "*", "\n".join(t for _, _, t in texts)))
                    if per_field:
                        fts.extend((rid * _FTS_SLOTS + k, name, t) for k, name, t in texts)
                for name, value in (record.metadata_ or {}).items():
                    if name in props:
                        meta.extend((rid, name, txt, num) for txt, num in _scalars(value))
                for s in record.suggestions or []:
                    sugg.extend(self._suggestion_rows(rid, s))
                for r in record.responses or []:
                    a, b = self._response_rows(rid, r)
                    resp.extend(a)
                    resp_vals.extend(b)
                for v in record.vectors or []:
                    if v.value:
                        vecs.append((str(v.vector_settings_id), rid, np.asarray(v.value, dtype=np.float32).tobytes()))
                        touched_vs.add(str(v.vector_settings_id))
            c.executemany("INSERT INTO fts (rowid, field, body) VALUES (?, ?, ?)", fts)
            c.executemany("INSERT INTO metadata VALUES (?, ?, ?, ?)", meta)
            c.executemany("INSERT INTO suggestions VALUES (?, ?, ?, ?, ?)", sugg)
            c.executemany("INSERT INTO responses VALUES (?, ?, ?, ?)", resp)
            c.executemany("INSERT INTO response_values VALUES (?, ?, ?, ?, ?, ?)", resp_vals)
            c.executemany("INSERT OR REPLACE INTO vectors (vs, rid, v) VALUES (?, ?, ?)", vecs)
            self._bump_vectors(c, touched_vs)

    async def partial_record_update(self, record: Record, **update) -> None:
        columns = {k: v for k, v in update.items() if k in ("status", "external_id", *_DATE_PROPERTIES)}
        if set(update) - set(columns):
            log.debug("partial update of %s ignores %s", record.id, sorted(set(update) - set(columns)))
        if not columns:
            return
        values = [_epoch(v) if k in _DATE_PROPERTIES else (None if v is None else str(v)) for k, v in columns.items()]
        sets = ", ".join(f"{k} = ?" for k in columns)
        with _Tx(self.conn) as c:
            c.execute(f"UPDATE records SET {sets} WHERE id = ?", (*values, str(record.id)))

    async def delete_records(self, dataset: Dataset, records: Iterable[Record]) -> None:
        ids = [str(r.id) for r in records]
        with _Tx(self.conn) as c:
            rids = []
            for start in range(0, len(ids), 500):
                marks, vals = _in(ids[start : start + 500])
                rids += [row[0] for row in c.execute(f"SELECT rid FROM records WHERE id IN ({marks})", vals)]
            self._delete_rids(c, rids)

    # --- responses and suggestions ----------------------------------------------------------

    async def update_record_response(self, response: Response) -> None:
        with _Tx(self.conn) as c:
            rid = self._rid(c, response.record_id)
            if rid is None:
                log.warning("response %s: record %s is not indexed", response.id, response.record_id)
                return
            self._delete_response(c, response)
            rows, values = self._response_rows(rid, response)
            c.executemany("INSERT INTO responses VALUES (?, ?, ?, ?)", rows)
            c.executemany("INSERT INTO response_values VALUES (?, ?, ?, ?, ?, ?)", values)

    async def delete_record_response(self, response: Response) -> None:
        with _Tx(self.conn) as c:
            self._delete_response(c, response)

    async def update_record_suggestion(self, suggestion: Suggestion) -> None:
        with _Tx(self.conn) as c:
            rid = self._rid(c, suggestion.record_id)
            if rid is None:
                log.warning("suggestion %s: record %s is not indexed", suggestion.id, suggestion.record_id)
                return
            c.execute("DELETE FROM suggestions WHERE rid = ? AND question = ?", (rid, suggestion.question.name))
            c.executemany("INSERT INTO suggestions VALUES (?, ?, ?, ?, ?)", self._suggestion_rows(rid, suggestion))

    async def delete_record_suggestion(self, suggestion: Suggestion) -> None:
        with _Tx(self.conn) as c:
            rid = self._rid(c, suggestion.record_id)
            if rid is not None:
                c.execute("DELETE FROM suggestions WHERE rid = ? AND question = ?", (rid, suggestion.question.name))

    # --- progress and metrics ----------------------------------------------------------------

    async def get_dataset_progress(self, dataset: Dataset) -> dict:
        if dataset.is_draft:
            return {}
        rows = self.conn.execute(
            "SELECT status, COUNT(*) FROM records WHERE dataset_id = ? AND status IS NOT NULL GROUP BY status",
            (str(dataset.id),),
        ).fetchall()
        return {"total": sum(n for _, n in rows), **dict(rows)}

    async def get_dataset_user_progress(self, dataset: Dataset, user: User) -> dict:
        if dataset.is_draft:
            return {}
        rows = self.conn.execute(
            "SELECT x.status, COUNT(*) FROM responses x JOIN records r ON r.rid = x.rid"
            " WHERE r.dataset_id = ? AND x.user_id = ? GROUP BY x.status",
            (str(dataset.id), str(user.id)),
        ).fetchall()
        return {"total": sum(n for _, n in rows), **dict(rows)}

    async def compute_metrics_for(self, metadata_property: MetadataProperty) -> MetadataMetrics:
        base = "FROM metadata m JOIN records r ON r.rid = m.rid WHERE r.dataset_id = ? AND m.name = ?"
        params = (str(metadata_property.dataset_id), metadata_property.name)
        if metadata_property.type == MetadataPropertyType.terms:
            total = self.conn.execute(f"SELECT COUNT(*) {base}", params).fetchone()[0]
            if not total:
                return TermsMetrics(total=0)
            rows = self.conn.execute(
                f"SELECT m.txt, COUNT(DISTINCT m.rid) AS n {base} GROUP BY m.txt ORDER BY n DESC, m.txt LIMIT ?",
                (*params, min(total, _MAX_TERMS)),
            ).fetchall()
            return TermsMetrics(total=total, values=[TermsMetrics.TermCount(term=t, count=n) for t, n in rows])
        lo, hi = self.conn.execute(f"SELECT MIN(m.num), MAX(m.num) {base}", params).fetchone()
        if metadata_property.type == MetadataPropertyType.integer:
            return IntegerMetadataMetrics(min=None if lo is None else int(lo), max=None if hi is None else int(hi))
        return FloatMetadataMetrics(min=lo, max=hi)

    # --- search ------------------------------------------------------------------------------

    async def search(
        self,
        dataset: Dataset,
        query: Optional[Union[TextQuery, str]] = None,
        filter: Optional[Filter] = None,
        sort: Optional[list[Order]] = None,
        offset: int = 0,
        limit: int = 100,
        user_id: Optional[str] = None,
    ) -> SearchResponses:
        sql = _Sql(["r.dataset_id = ?"], [str(dataset.id)])
        if filter is not None:
            _filter_sql(filter, sql)
        text_from, text_params, scored = self._text_join(dataset, query, sql)
        if text_from is None:
            return SearchResponses(items=[], total=0)
        base = f"FROM records r {text_from} WHERE {sql.clause}"
        params = [*text_params, *sql.params]

        keys, order_terms, key_params = [], [], []
        for n, order in enumerate(sort or []):
            expr, p, desc = _sort_sql(order)
            keys.append(f", {expr} AS k{n}")
            # one reference to each key, so SQLite computes it once per row (``k IS NULL, k DESC`` computed it twice)
            order_terms.append(f"k{n} {'DESC' if desc else 'ASC'} NULLS LAST")
            key_params += p
        if sort:
            score = "NULL"  # ES returns no _score when sorting
        elif scored:
            score = "t.score"
            order_terms.append("t.score DESC")
        elif user_id is not None:  # ES: random_score seeded by the user: a stable per-user shuffle
            score = f"((r.rid * 2654435761 + {_user_seed(user_id)}) % 1000003) / 1000003.0"
            order_terms.append(f"{score} DESC")
        else:
            score = "1.0"
        order_terms.append("r.rid")
        # the page and the total in one pass over the matches (the window counts them before LIMIT applies)
        rows = self.conn.execute(
            f"SELECT r.id, {score}, COUNT(*) OVER (){''.join(keys)} {base}"
            f" ORDER BY {', '.join(order_terms)} LIMIT ? OFFSET ?",
            [*key_params, *params, limit, offset],
        ).fetchall()
        if rows:
            total = rows[0][2]
        else:  # no row to carry the total: nothing matched, or the offset is past the end
            total = self.conn.execute(f"SELECT COUNT(*) {base}", params).fetchone()[0]
        items = [SearchResponseItem(record_id=UUID(row[0]), score=row[1]) for row in rows]
        return SearchResponses(items=items, total=total)

    async def similarity_search(
        self,
        dataset: Dataset,
        vector_settings: VectorSettings,
        value: Optional[list[float]] = None,
        record: Optional[Record] = None,
        query: Optional[Union[TextQuery, str]] = None,
        filter: Optional[Filter] = None,
        max_results: int = 100,
        order: SimilarityOrder = SimilarityOrder.most_similar,
        threshold: Optional[float] = None,
    ) -> SearchResponses:
        if bool(value) == bool(record):
            raise ValueError("Must provide either vector value or record to compute the similarity search")
        exclude = None
        if not value:
            exclude = self._rid(self.conn, record.id)
            value = record.vector_value_by_vector_settings(vector_settings)
        if not value:
            raise ValueError("Cannot find a vector value to apply with provided info")

        rids, matrix = self._vector_matrix(str(vector_settings.id))
        if len(rids) == 0:
            return SearchResponses(items=[], total=0)
        keep = np.ones(len(rids), dtype=bool)
        if exclude is not None:
            keep &= rids != exclude
        sql = _Sql(["r.dataset_id = ?"], [str(dataset.id)])
        if filter is not None:
            _filter_sql(filter, sql)
        text_from, text_params, _ = self._text_join(dataset, query, sql)
        if text_from is None:
            return SearchResponses(items=[], total=0)
        if filter is not None or query:
            allowed = np.fromiter(
                (row[0] for row in self.conn.execute(
                    f"SELECT r.rid FROM records r {text_from} WHERE {sql.clause}", [*text_params, *sql.params]
                )),
                dtype=np.int64,
            )
            keep &= np.isin(rids, allowed)
        q = np.asarray(value, dtype=np.float32)
        q = q / (np.linalg.norm(q) or 1.0)
        if order == SimilarityOrder.least_similar:
            q = -q  # as ES: the nearest neighbours of the inverted vector
        scores = (1.0 + matrix @ q) / 2.0  # ES cosine similarity score
        scores = np.where(keep, scores, -np.inf)
        k = min(max_results, int(keep.sum()))
        if k <= 0:
            return SearchResponses(items=[], total=0)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        if threshold is not None:
            top = top[scores[top] >= threshold]
        id_of = self._ids_for([int(x) for x in rids[top]])
        items = [SearchResponseItem(record_id=UUID(id_of[int(rids[i])]), score=float(scores[i])) for i in top]
        return SearchResponses(items=items, total=len(items))

    # --- internals ---------------------------------------------------------------------------

    def _text_join(self, dataset: Dataset, query, sql: _Sql) -> tuple[Optional[str], list[Any], bool]:
        """Restrict ``sql`` to records matching the text query.

        Returns (FROM-clause fragment joining the scores as ``t``, its params, scored);
        a None fragment means no record can match.
        """
        if query is None:
            return "", [], False
        if isinstance(query, str):
            query = TextQuery(q=query)
        field = "*"
        if query.field:
            if dataset.field_by_name(query.field) is None:
                raise Exception(f"Field {query.field} not found in dataset {dataset.id}")
            if len(_text_fields(dataset)) > 1:
                field = query.field
        positive, negative = to_fts_query(query.q)
        if positive is None and negative is None:
            return None, [], False
        if negative is not None:
            sql.add(
                f"r.rid NOT IN (SELECT rowid / {_FTS_SLOTS} FROM fts WHERE fts MATCH ? AND field = ?)",
                f"body : ({negative})", field,
            )
        if positive is None:
            return "JOIN (SELECT 1.0 AS score) t", [], True
        fragment = (
            f"JOIN (SELECT rowid / {_FTS_SLOTS} AS rid, -bm25(fts) AS score FROM fts"
            " WHERE fts MATCH ? AND field = ?) t ON t.rid = r.rid"
        )
        return fragment, [f"body : ({positive})", field], True

    @staticmethod
    def _rid(c: sqlite3.Connection, record_id: Any) -> Optional[int]:
        row = c.execute("SELECT rid FROM records WHERE id = ?", (str(record_id),)).fetchone()
        return row[0] if row else None

    def _ids_for(self, rids: list[int]) -> dict[int, str]:
        if not rids:
            return {}
        marks, vals = _in(rids)
        return dict(self.conn.execute(f"SELECT rid, id FROM records WHERE rid IN ({marks})", vals).fetchall())

    @staticmethod
    def _delete_rids(c: sqlite3.Connection, rids: list[int], keep_records: bool = False) -> None:
        if not rids:
            return
        touched = set()
        for start in range(0, len(rids), 500):
            chunk = rids[start : start + 500]
            marks, vals = _in(chunk)
            for table in _CHILD_TABLES:
                c.execute(f"DELETE FROM {table} WHERE rid IN ({marks})", vals)
            touched.update(row[0] for row in c.execute(f"SELECT DISTINCT vs FROM vectors WHERE rid IN ({marks})", vals))
            c.execute(f"DELETE FROM vectors WHERE rid IN ({marks})", vals)
            if not keep_records:
                c.execute(f"DELETE FROM records WHERE rid IN ({marks})", vals)
        c.executemany(
            "DELETE FROM fts WHERE rowid >= ? AND rowid < ?",
            [(rid * _FTS_SLOTS, (rid + 1) * _FTS_SLOTS) for rid in rids],
        )
        SQLiteSearchEngine._bump_vectors(c, touched)

    @staticmethod
    def _bump_vectors(c: sqlite3.Connection, vector_settings_ids: Iterable[str]) -> None:
        c.executemany(
            "INSERT INTO vector_generation (vs, gen) VALUES (?, 1) ON CONFLICT (vs) DO UPDATE SET gen = gen + 1",
            [(vs,) for vs in vector_settings_ids],
        )

    def _vector_matrix(self, vs: str) -> tuple[np.ndarray, np.ndarray]:
        """(rids, L2-normalised float32 matrix) of one vector settings, cached until its generation changes."""
        row = self.conn.execute("SELECT gen FROM vector_generation WHERE vs = ?", (vs,)).fetchone()
        gen = row[0] if row else 0
        cached = _Shared.vectors.get(vs)
        if cached and cached[0] == gen:
            return cached[1], cached[2]
        rows = self.conn.execute("SELECT rid, v FROM vectors WHERE vs = ?", (vs,)).fetchall()
        rids = np.fromiter((r for r, _ in rows), dtype=np.int64, count=len(rows))
        if rows:
            matrix = np.frombuffer(b"".join(v for _, v in rows), dtype=np.float32).reshape(len(rows), -1).copy()
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            matrix /= np.where(norms == 0, 1.0, norms)
        else:
            matrix = np.zeros((0, 0), dtype=np.float32)
        _Shared.vectors[vs] = (gen, rids, matrix)
        return rids, matrix

    @staticmethod
    def _suggestion_rows(rid: int, suggestion: Suggestion) -> list[tuple]:
        question = suggestion.question.name
        rows = []
        for prop in _SUGGESTION_PROPERTIES:
            value = getattr(suggestion, prop)
            if prop == "type" and value is not None:
                value = str(value)
            rows.extend((rid, question, prop, txt, num) for txt, num in _scalars(value))
        return rows

    @staticmethod
    def _response_rows(rid: int, response: Response) -> tuple[list[tuple], list[tuple]]:
        rid_, user = str(response.id), str(response.user_id)
        rows = [(rid, rid_, user, str(response.status))]
        values = [
            (rid, rid_, user, question, txt, num)
            for question, value in (response.values or {}).items()
            for txt, num in _scalars(value.get("value") if isinstance(value, dict) else value)
        ]
        return rows, values

    @staticmethod
    def _delete_response(c: sqlite3.Connection, response: Response) -> None:
        c.execute("DELETE FROM responses WHERE response_id = ?", (str(response.id),))
        c.execute("DELETE FROM response_values WHERE response_id = ?", (str(response.id),))

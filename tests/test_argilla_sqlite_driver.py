"""The in-loop SQLite driver of the embedded Argilla server (``labeling/embedded/_sqlite_driver.py``)."""

from __future__ import annotations

import asyncio
import json
import time

from sqlalchemy import Column, Integer, String, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import declarative_base

from cleanloop.labeling.embedded import _sqlite_driver

Base = declarative_base()


class Item(Base):
    __tablename__ = "item"
    id = Column(Integer, primary_key=True)
    name = Column(String)


async def _database(path):
    """An engine on a new database with the test tables, and its session factory."""
    _sqlite_driver.setup()
    engine = create_async_engine(f"sqlite+{_sqlite_driver.DRIVER}:///{path}", connect_args={"timeout": 15})
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    return engine, async_sessionmaker(engine, expire_on_commit=False)


def test_queries_pragmas_and_rollback(tmp_path):
    async def main():
        engine, sessions = await _database(tmp_path / "db.sqlite")
        async with sessions() as db:
            assert (await db.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await db.execute(text("PRAGMA synchronous"))).scalar_one() == 1  # NORMAL
            db.add_all([Item(name=f"n{i}") for i in range(5)])
            await db.commit()
            db.add(Item(name="gone"))
            await db.flush()
            await db.rollback()
            names = (await db.execute(select(Item.name).order_by(Item.id))).scalars().all()
            assert names == [f"n{i}" for i in range(5)]
            first = (await db.execute(select(Item).filter_by(name="n0"))).scalar_one()
            assert first.id == 1
        await engine.dispose()

    asyncio.run(main())


def test_a_locked_database_waits_off_the_event_loop(tmp_path):
    """A writer that finds the database locked waits in a thread: the loop keeps running the lock holder."""

    async def main():
        engine, sessions = await _database(tmp_path / "db.sqlite")
        async with sessions() as a, sessions() as b:
            a.add(Item(name="a"))
            await a.flush()  # a holds the write lock

            async def commit_a_later():
                await asyncio.sleep(0.3)
                await a.commit()

            task = asyncio.create_task(commit_a_later())
            t0 = time.perf_counter()
            b.add(Item(name="b"))
            await b.commit()  # would dead-lock the loop if it waited on the loop's thread
            waited = time.perf_counter() - t0
            await task
        async with sessions() as db:
            assert sorted((await db.execute(select(Item.name))).scalars().all()) == ["a", "b"]
        await engine.dispose()
        return waited

    waited = asyncio.run(main())
    assert 0.2 < waited < 10


def test_json_columns_read_back_as_with_the_standard_library(tmp_path):
    import json
    import math

    from sqlalchemy import JSON

    class Doc(Base):
        __tablename__ = "doc"
        id = Column(Integer, primary_key=True)
        value = Column(JSON)

    values = [
        {"text": "café 😀", "vector": [0.1, -2.5e-07, 3.0], "n": 2**40},
        {"loss": float("nan"), "none": None},  # orjson would write NaN as null
        {1: "int key"},  # orjson refuses non-string keys
        [2**70],  # beyond orjson's 64-bit integers
    ]

    async def main():
        engine, sessions = await _database(tmp_path / "db.sqlite")
        async with sessions() as db:
            db.add_all([Doc(id=i, value=v) for i, v in enumerate(values)])
            await db.commit()
        async with sessions() as db:
            rows = (await db.execute(select(Doc).order_by(Doc.id))).scalars().all()
            out = [r.value for r in rows]
        await engine.dispose()
        return out

    out = asyncio.run(main())
    expected = [json.loads(json.dumps(v)) for v in values]
    assert out[0] == expected[0] and out[2] == expected[2] == {"1": "int key"} and out[3] == expected[3]
    assert math.isnan(out[1]["loss"]) and out[1]["none"] is None
    assert _sqlite_driver.json_loads("[NaN]")[0] != _sqlite_driver.json_loads("[NaN]")[0]  # NaN, not an error


def test_responses_render_as_starlette_does():
    from starlette.responses import JSONResponse

    values = [{"text": "héllo \u2764 \"quoted\"", "score": 0.1 + 0.2, "n": -3, "none": None, "ok": True,
               "nested": [[1.5e-7, 1e22], {"k": []}]}, [], "plain", 2**70, {"big": 2**64}]
    for value in values:  # 2**64 and over: orjson refuses, the standard encoder answers
        ours, theirs = _sqlite_driver.response_json(value), JSONResponse(value).body
        assert json.loads(ours) == json.loads(theirs) == value  # the same JSON ...
        assert len(ours) <= len(theirs)  # ... as compact (exponents may be spelled 1e-7, not 1e-07)
    assert "héllo ❤".encode() in _sqlite_driver.response_json(values[0])  # UTF-8, not \u escapes
    assert _sqlite_driver.response_json({"x": float("nan")}) == b'{"x":null}'

"""The in-loop SQLite driver of the embedded Argilla server (``labeling/_sqlite_driver.py``)."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import Column, Integer, String, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import declarative_base

from cleanloop.labeling import _sqlite_driver

Base = declarative_base()


class Item(Base):
    __tablename__ = "item"
    id = Column(Integer, primary_key=True)
    name = Column(String)


def _engine(path):
    _sqlite_driver.setup()
    return create_async_engine(f"sqlite+{_sqlite_driver.DRIVER}:///{path}", connect_args={"timeout": 15})


def test_queries_pragmas_and_rollback(tmp_path):
    async def main():
        engine = _engine(tmp_path / "db.sqlite")
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
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
        engine = _engine(tmp_path / "db.sqlite")
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
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

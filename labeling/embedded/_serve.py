"""The Argilla server process that ``cleanloop argilla up`` starts (``python -m cleanloop.labeling.embedded._serve``).

It prepares the database and then serves, in one process so ``argilla_server`` is
imported once: migrate to the newest schema (alembic, from Python: the server's own
typer CLI does not run with this click), make the users match ``--users`` (see
:func:`sync_users`) and remove the webhooks of dead cleanloop listeners, bring the search
index in line with the database (re-index a dataset whose counts differ, e.g. after the index
file was lost), then run uvicorn on 127.0.0.1. ``--sync-only`` does the user and webhook part
on the database of a server that runs already, and exits. What changed is written to
``<home>/run/users.json``. The ``ARGILLA_*`` environment is set by :func:`cleanloop.labeling.embedded.server.up`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

from cleanloop.atomic import write_json
from cleanloop.labeling.embedded.boot import boot

log = logging.getLogger("cleanloop.argilla.serve")
DISABLED = "disabled-"  # the API key of a disabled annotator starts with it


def migrate() -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from argilla_server.database import ALEMBIC_CONFIG_FILE

    command.upgrade(AlembicConfig(ALEMBIC_CONFIG_FILE), "head")


async def sync_users(workspace: str, users: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Make Argilla's users match ``users`` ((username, role) pairs, the owner first).

    A missing user is created (through the server's own user-creation code) and added to the
    workspace; an existing one gets the password and API key of the environment or
    ``credentials.json`` when they differ. An annotator of the server that is not in ``users``
    is disabled: taken out of every workspace, with a random password and API key that nobody
    knows. Deleting the user would delete their answers too; disabling keeps them. Owners and
    admins are never touched.
    """
    import secrets

    from argilla_server.api.schemas.v1.users import UserCreate
    from argilla_server.contexts import accounts
    from argilla_server.database import AsyncSessionLocal
    from argilla_server.enums import UserRole
    from argilla_server.models import User, Workspace, WorkspaceUser
    from sqlalchemy import select

    from cleanloop.labeling.embedded.accounts import user_secrets

    home = Path(os.environ["ARGILLA_HOME_PATH"])
    changes: dict[str, list[str]] = {"created": [], "updated": [], "disabled": []}
    wanted = dict(users)
    async with AsyncSessionLocal() as db:
        ws = await Workspace.get_by(db, name=workspace)
        if ws is None:
            ws = await accounts.create_workspace(db, {"name": workspace})
            log.info("created workspace %r", workspace)
        for username, role in users:
            password, api_key = user_secrets(home, username)
            user = await accounts.get_user_by_username(db, username)
            if user is None:
                attrs = UserCreate(first_name=username, username=username, role=role, password=password)
                user = await accounts.create_user(db, attrs.model_dump(), workspaces=[workspace])
                await user.update(db, api_key=api_key)
                changes["created"].append(username)
                log.info("created %s %r", role, username)
                continue
            update = {}
            if not accounts.verify_password(password, user.password_hash):
                update["password"] = password
            if user.api_key != api_key:
                update["api_key"] = api_key
            if update:
                await accounts.update_user(db, user, update)
                changes["updated"].append(username)
                log.info("updated the %s of %r", " and ".join(k.replace("_", " ") for k in update), username)
            if await WorkspaceUser.get_by(db, workspace_id=ws.id, user_id=user.id) is None:
                await accounts.create_workspace_user(db, {"workspace_id": ws.id, "user_id": user.id})
        annotators = (await db.execute(select(User).filter_by(role=UserRole.annotator))).scalars().all()
        for user in annotators:
            if user.username in wanted:
                continue
            for member in (await db.execute(select(WorkspaceUser).filter_by(user_id=user.id))).scalars().all():
                await accounts.delete_workspace_user(db, member)
            if not user.api_key.startswith(DISABLED):
                unknown = {"password": secrets.token_urlsafe(24), "api_key": DISABLED + secrets.token_urlsafe(32)}
                await accounts.update_user(db, user, unknown)
                changes["disabled"].append(user.username)
                log.info("disabled annotator %r: not in argilla_annotators any more (their answers are kept)",
                         user.username)
    return changes


def _listening(url: str) -> bool:
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 80), timeout=1.0):
            return True
    except OSError:
        return False


async def remove_dead_webhooks() -> list[str]:
    """Delete the webhooks cleanloop's review listener registered whose listener no longer answers.

    Only webhooks with that listener's description and a URL on this machine are looked at: a
    webhook someone else made is never touched.
    """
    from urllib.parse import urlparse

    from argilla_server.contexts import webhooks
    from argilla_server.database import AsyncSessionLocal

    from cleanloop.labeling.argilla_io import ReviewWaker

    removed = []
    async with AsyncSessionLocal() as db:
        for hook in await webhooks.list_webhooks(db):
            if hook.description != ReviewWaker.DESCRIPTION:
                continue
            if urlparse(hook.url).hostname not in ("127.0.0.1", "localhost") or _listening(hook.url):
                continue
            await webhooks.delete_webhook(db, hook)
            removed.append(hook.url)
            log.info("removed webhook %s: its listener no longer runs", hook.url)
    return removed


async def sync_index() -> list[str]:
    """Re-index every dataset whose records or responses differ in count between database and index."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import selectinload

    from argilla_server.cli.search_engine.reindex import Reindexer
    from argilla_server.database import AsyncSessionLocal
    from argilla_server.enums import DatasetStatus
    from argilla_server.models import Dataset, Record, Response
    from argilla_server.search_engine import SearchEngine

    reindexed = []
    async with AsyncSessionLocal() as db, SearchEngine.get_by_name("sqlite") as engine:
        conn = engine.conn
        rows = (await db.execute(select(Dataset.id, Dataset.status))).all()
        known = {str(ds_id) for ds_id, _ in rows}
        for (stale,) in conn.execute("SELECT id FROM datasets").fetchall():
            if stale not in known:
                await engine.delete_index(Dataset(id=stale))
        for ds_id, ds_status in rows:
            if ds_status != DatasetStatus.ready:
                continue
            n_records = (await db.execute(select(func.count(Record.id)).filter_by(dataset_id=ds_id))).scalar_one()
            n_responses = (
                await db.execute(select(func.count(Response.id)).join(Record).filter(Record.dataset_id == ds_id))
            ).scalar_one()
            idx_records, idx_responses = conn.execute(
                "SELECT (SELECT COUNT(*) FROM records WHERE dataset_id = ?),"
                " (SELECT COUNT(*) FROM responses x JOIN records r ON r.rid = x.rid WHERE r.dataset_id = ?)",
                (str(ds_id),) * 2,
            ).fetchone()
            has_index = conn.execute("SELECT 1 FROM datasets WHERE id = ?", (str(ds_id),)).fetchone()
            if has_index and (n_records, n_responses) == (idx_records, idx_responses):
                continue
            await Reindexer.reindex_dataset(db, engine, ds_id)  # delete and re-create the index
            dataset = (
                await db.execute(
                    select(Dataset).filter_by(id=ds_id).options(
                        selectinload(Dataset.fields), selectinload(Dataset.questions),
                        selectinload(Dataset.metadata_properties), selectinload(Dataset.vectors_settings),
                    )
                )
            ).scalar_one()
            async for _ in Reindexer.reindex_dataset_records(db, engine, dataset):
                pass
            reindexed.append(dataset.name)
            log.warning("re-indexed dataset %r: the search index was out of date", dataset.name)
    return reindexed


async def _prepare(workspace: str, users: list[tuple[str, str]], index: bool) -> None:
    from argilla_server.database import async_engine

    try:
        changes = await sync_users(workspace, users)
        changes["webhooks_removed"] = await remove_dead_webhooks()
        write_json(Path(os.environ["ARGILLA_HOME_PATH"]) / "run" / "users.json", changes)
        if index:
            await sync_index()
    finally:
        await async_engine.dispose()  # its connections belong to this event loop, not uvicorn's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int)
    parser.add_argument("--sync-only", action="store_true", help="sync users and webhooks, then exit")
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--users", required=True, help="username:role,...")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args()
    users = [tuple(item.split(":", 1)) for item in args.users.split(",") if item]

    boot()
    if not args.sync_only:
        migrate()
    # alembic's fileConfig replaced the logging set-up: configure ours after it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    for name in list(logging.root.manager.loggerDict):  # fileConfig disabled the loggers that existed
        if name.startswith("cleanloop"):
            logging.getLogger(name).disabled = False
    asyncio.run(_prepare(args.workspace, users, index=not args.sync_only))
    if args.sync_only:
        return

    import uvicorn

    uvicorn.run("cleanloop.labeling.embedded._app:app", host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, lifespan="on", workers=args.workers)


if __name__ == "__main__":
    main()

"""One writer per workdir: every command that writes into a workdir holds its lock while it runs.

The lock is an OS file lock (``filelock``) on ``WORKDIR/.cleanloop.lock``, so it is released when
the holder exits, however it exits (SIGKILL included): there is never a stale lock to remove.
Beside it, ``WORKDIR/.cleanloop.lock.owner`` says who holds it (pid, command, since when), which a
second writer shows in its one-line error. Readers (``predict``, ``serve``, reports) take no lock.
The lock is re-entrant within a process: a command that holds it can call library functions that
take it again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cleanloop.atomic import write_json
from cleanloop.errors import CleanloopError

__all__ = ["LOCK_FILE", "OWNER_FILE", "workdir_lock"]

LOCK_FILE = ".cleanloop.lock"
OWNER_FILE = ".cleanloop.lock.owner"

_held: dict[Path, int] = {}  # workdirs this process holds, with the nesting depth


def _holder(folder: Path) -> str:
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["since"]))
        return f"pid {owner['pid']} ('{owner['command']}', since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it did not say which)"


@contextmanager
def workdir_lock(workdir: str | Path, command: str) -> Iterator[Path]:
    """Hold the write lock of ``workdir`` (created 0700 if missing) for the ``with`` block.

    command: what holds it, shown to a second writer (e.g. ``"cleanloop retrain-loop"``).
    Raises CleanloopError at once, naming the holder, when another process holds it.
    """
    from filelock import FileLock, Timeout

    folder = Path(workdir).absolute()
    if folder in _held:
        _held[folder] += 1
        try:
            yield folder
        finally:
            _held[folder] -= 1
        return
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = FileLock(str(folder / LOCK_FILE), timeout=0, mode=0o600)
    try:
        lock.acquire()
    except Timeout:
        raise CleanloopError(
            f"workdir {folder} is in use by {_holder(folder)}; one command at a time writes a workdir; "
            "fix: wait until it finishes (or stop it), or use another --workdir"
        ) from None
    try:
        write_json(folder / OWNER_FILE, {"pid": os.getpid(), "command": command, "since": time.time()})
        _held[folder] = 1
        yield folder
    finally:
        _held.pop(folder, None)
        (folder / OWNER_FILE).unlink(missing_ok=True)
        if made and [p.name for p in folder.iterdir()] == [LOCK_FILE]:  # a command that wrote nothing: leave no trace
            (folder / LOCK_FILE).unlink()
            lock.release()
            folder.rmdir()
        else:
            lock.release()

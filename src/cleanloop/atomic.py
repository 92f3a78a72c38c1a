"""Atomic writes: after a crash or a SIGKILL a path holds the old content or the new, never half of one.

A file is written to a temp file in the same folder (created 0600), flushed and fsynced, renamed
over the target, then the folder is fsynced so the rename itself survives a power cut. A folder
is built in a temp sibling folder (0700) and renamed into place; a folder it replaces is moved
aside first and removed after, and a run killed in between is repaired by the next write.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["folder_tmp", "fsync_dir", "replace_folder", "save_npy", "write_file", "write_folder", "write_json",
           "write_text"]


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder, so that a rename or a new entry in it is on disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temp path beside ``path`` (same suffix, 0600), then rename it into place.

    ``write`` gets a path string, so any writer works (``df.to_parquet``, ``np.save``, ``fig.savefig``).
    The temp file is removed when ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent))


def save_npy(path: str | Path, array) -> Path:
    """``np.save`` to ``path`` (which should end in .npy) atomically."""
    import numpy as np

    return write_file(path, lambda tmp: np.save(tmp, array))


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync_file(Path(root) / name)
        fsync_dir(root)


def folder_tmp(path: str | Path) -> Path:
    """A new empty temp folder (0700) beside ``path``, to build it in; :func:`replace_folder` moves it in.

    Temp folders of earlier runs that were killed are removed first (only this module makes them).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    old = _aside(path)
    if old.exists():
        if path.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, path)  # killed between the two renames of replace_folder: the old one comes back
    return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))


def replace_folder(tmp: str | Path, path: str | Path) -> Path:
    """Move the finished folder ``tmp`` (from :func:`folder_tmp`) to ``path``, replacing it as a whole.

    The caller decides whether ``path`` may be replaced; only what is replaced is removed.
    """
    tmp, path = Path(tmp), Path(path)
    _fsync_tree(tmp)
    if path.exists():
        old = _aside(path)
        os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def write_folder(path: str | Path, build: Callable[[Path], None]) -> Path:
    """Call ``build(tmp)`` on a new empty temp folder beside ``path``, then put it in place of ``path``."""
    tmp = folder_tmp(path)
    try:
        build(tmp)
        return replace_folder(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)

"""Example identity: a content fingerprint per example, and the fingerprint of a workdir's source data.

An example's id says *which row*; its fingerprint (a hash of its split and text) says *what it is*.
Push stores the fingerprint on the Argilla record; pull refuses an answer whose fingerprint is not
the local example's, so a correction never lands on another text (a row inserted into the CSV
between push and pull, two workdirs sharing one Argilla dataset, a Hub copy that differs).

A workdir records what its data was (:attr:`Workdir.source <cleanloop.workdir.Workdir.source>`:
per split, each id's fingerprint and label, hashed); loading other data into it is an error that
says what changed. Rows that only moved (the same texts with the same labels, in another order)
keep the ids they had: each is found again by its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging

from cleanloop.config import Config
from cleanloop.errors import CleanloopError
from cleanloop.workdir import Workdir

__all__ = ["check_source", "example_fingerprint", "fingerprints", "load_workdir_data"]

log = logging.getLogger("cleanloop")


def example_fingerprint(split: str, text: str) -> str:
    """16 hex digits of SHA-256 over the split and the text: equal texts in one split, equal prints.

    >>> example_fingerprint("train", "i feel fine")
    '134be16e77d47fea'
    """
    return hashlib.sha256(f"{split}\0{text}".encode()).hexdigest()[:16]


def fingerprints(ds, split: str) -> dict[str, str]:
    """id -> fingerprint for every example of one split (a ``Dataset`` with id and text)."""
    return {i: example_fingerprint(split, t) for i, t in zip(ds["id"], ds["text"])}


def _describe(dd) -> dict:
    """What a workdir records of its data: per split, the examples and a hash of (id, fingerprint, label)."""
    out = {}
    for split, ds in dd.items():
        h = hashlib.sha256()
        for (i, fp), label in zip(fingerprints(ds, split).items(), ds["label"]):
            h.update(f"{i}\0{fp}\0{label}\n".encode())
        out[split] = {"examples": len(ds), "hash": h.hexdigest()[:20],
                      "examples_by_id": {i: fp for i, fp in fingerprints(ds, split).items()},
                      "labels": list(ds["label"])}
    return out


def _changes(old: dict, new: dict) -> list[str]:
    """What differs, in words: per split, ids added, removed, with another text, relabelled."""
    out = []
    for split in sorted(set(old) | set(new)):
        if split not in new or split not in old:
            out.append(f"split {split} {'removed' if split not in new else 'added'}")
            continue
        a, b = old[split]["examples_by_id"], new[split]["examples_by_id"]
        text = sorted(i for i in a.keys() & b.keys() if a[i] != b[i])
        added, removed = sorted(b.keys() - a.keys()), sorted(a.keys() - b.keys())
        la = dict(zip(a, old[split]["labels"]))
        lb = dict(zip(b, new[split]["labels"]))
        relabelled = sorted(i for i in a.keys() & b.keys() if a[i] == b[i] and la[i] != lb[i])
        for what, ids in (("another text", text), ("added", added), ("removed", removed), ("another label", relabelled)):
            if ids:
                out.append(f"{split}: {len(ids)} {'with ' + what if what.startswith('another') else what} "
                           f"(e.g. {', '.join(ids[:3])})")
    return out


def _rekeyed(dd, old: dict):
    """``dd`` with every example under the id its text had in ``old``, when each split holds the same
    (text, label) pairs as before in another order (copies matched in order); else None."""
    import datasets

    out = {}
    for split, ds in dd.items():
        if split not in old or len(ds) != old[split]["examples"]:
            return None
        before: dict[tuple[str, int], list[str]] = {}
        for (i, fp), label in zip(old[split]["examples_by_id"].items(), old[split]["labels"]):
            before.setdefault((fp, label), []).append(i)
        ids = []
        for text, label in zip(ds["text"], ds["label"]):
            same = before.get((example_fingerprint(split, text), label))
            if not same:
                return None
            ids.append(same.pop(0))
        out[split] = ds.remove_columns("id").add_column("id", ids).select_columns(ds.column_names)
    return datasets.DatasetDict(out)


def check_source(cfg: Config, dd, workdir: Workdir | None = None):
    """Record the data's fingerprint in a new workdir (default ``Workdir.of(cfg)``); in a used one,
    raise if the data changed. Returns the data to use: ``dd``, or ``dd`` under its earlier ids
    when its rows only moved.

    With positional ids (no ``id_column``) any other change is an error: ids no longer name the
    same texts. With an ``id_column`` only an id whose text changed is.
    """
    wd = workdir or Workdir.of(cfg)
    path = wd.source
    new = _describe(dd)
    if not path.exists():
        wd.write_json(path, {"dataset": cfg.dataset, "id_column": cfg.id_column, "splits": new}, indent=None)
        return dd
    try:
        old = json.loads(path.read_text())["splits"]
    except (OSError, ValueError, KeyError) as exc:
        raise CleanloopError(f"{path} is not a cleanloop source record ({exc}); fix: use a new --workdir") from None
    if all(old.get(s, {}).get("hash") == new[s]["hash"] for s in new) and set(old) == set(new):
        return dd
    changes = _changes(old, new)
    if cfg.id_column and not any("another text" in c for c in changes):
        wd.write_json(path, {"dataset": cfg.dataset, "id_column": cfg.id_column, "splits": new}, indent=None)
        return dd
    moved = None if cfg.id_column or set(old) != set(new) else _rekeyed(dd, old)
    if moved is not None:
        log.info("the rows of %s moved: each example keeps the id its text had in %s", cfg.dataset, wd.root)
        return moved
    raise CleanloopError(
        f"the data {cfg.dataset} is not the data workdir {wd.root} was made on ({'; '.join(changes[:3])}); "
        "its journal and reviews name examples by id, so they would land on other texts; fix: use a new --workdir "
        "for the changed data, or give the rows stable ids with --id-column (then only a changed text is refused)"
    )


def load_workdir_data(cfg: Config, workdir: Workdir | None = None):
    """:func:`~cleanloop.model.data.load_data`, checked against the source of ``workdir`` (default
    ``Workdir.of(cfg)``; see :func:`check_source`)."""
    from cleanloop.model.data import load_data

    return check_source(cfg, load_data(cfg), workdir)

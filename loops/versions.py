"""Dataset versions: the original data with the journal's decisions applied, one folder per round.

A version is a function of two things only: the original ``DatasetDict`` (columns id, text,
label) and the journal's decisions up to some point. :func:`apply_decisions` adds two columns:
``original_label`` (the label the data came with) and ``label_source``: ``original`` (no
decision, or confirmed, or open), ``corrected`` (the label is the annotators') or ``removed``
(annotators said no label fits; the row is kept with its original label so the version says
what happened, and :func:`training_view` leaves it out).

>>> import datasets
>>> from cleanloop.labeling.journal import Decision
>>> feats = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
...                            "label": datasets.ClassLabel(names=["neg", "pos"])})
>>> dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
...     {"id": ["a", "b", "c"], "text": ["x", "y", "z"], "label": [0, 0, 1]}, features=feats)})
>>> v = apply_decisions(dd, {"b": Decision("b", "neg", "pos", "corrected", ("ann",), 1.0),
...                          "c": Decision("c", "pos", None, "removed", ("ann",), 1.0)})
>>> list(v["train"]["label"]), list(v["train"]["label_source"])
([0, 1, 1], ['original', 'corrected', 'removed'])
>>> len(training_view(v)["train"])
2
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from cleanloop.atomic import write_folder
from cleanloop.errors import CleanloopError
from cleanloop.labeling.journal import Decision, Journal
from cleanloop.workdir import round_dir

__all__ = ["SOURCES", "apply_decisions", "load_version", "training_view", "write_version"]

SOURCES = ("original", "corrected", "removed")
VERSION_META = "cleanloop_version.json"


def apply_decisions(dd, decisions: Mapping[str, Decision]):
    """The original ``DatasetDict`` with ``decisions`` applied (see the module doc); every split.

    Raises CleanloopError when a decision names a label the data does not have, or when the
    decision's old label is not the example's original label (a journal from other data).
    """
    import datasets

    names = dd[next(iter(dd))].features["label"].names
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for split, ds in dd.items():
        if "label_source" in ds.column_names:
            raise CleanloopError(f"split {split} already has label_source: apply decisions to the original data")
        labels, sources = [], []
        for ex_id, label in zip(ds["id"], ds["label"]):
            d = decisions.get(ex_id)
            source = "original"
            if d is not None and d.action in ("corrected", "removed"):
                if d.old_label != (names[label] if label >= 0 else ""):  # -1: unlabelled (active learning)
                    raise CleanloopError(
                        f"journal says example {ex_id!r} had label {d.old_label!r}, but the original data has "
                        f"{names[label] if label >= 0 else 'none'!r}; fix: apply the journal to the data it was made on"
                    )
                if d.action == "corrected":
                    if d.new_label not in index:
                        raise CleanloopError(
                            f"journal corrects {ex_id!r} to {d.new_label!r}, not one of the labels {names}"
                        )
                    label, source = index[d.new_label], "corrected"
                else:
                    source = "removed"
            labels.append(label)
            sources.append(source)
        feats = ds.features.copy()
        new = ds.add_column("original_label", list(ds["label"]), feature=feats["label"])
        new = new.remove_columns("label").add_column("label", labels, feature=feats["label"])
        new = new.add_column("label_source", sources)
        out[split] = new.select_columns(["id", "text", "label", "original_label", "label_source"])
    return datasets.DatasetDict(out)


def training_view(version):
    """A version as training data: removed rows dropped, columns id, text, label only."""
    import datasets

    out = {}
    for split, ds in version.items():
        if "label_source" in ds.column_names:
            keep = [i for i, s in enumerate(ds["label_source"]) if s != "removed"]
            ds = ds.select(keep).select_columns(["id", "text", "label"])
        out[split] = ds
    return datasets.DatasetDict(out)


def write_version(dd, journal: Journal, root: str | Path, round: int, upto_seq: int | None = None) -> Path:
    """Apply the journal (up to decision ``upto_seq``) to the original ``dd`` and save the version in the
    versions folder ``root`` (a workdir's :attr:`~cleanloop.workdir.Workdir.versions`).

    Written with ``save_to_disk`` to a temporary folder that is renamed into place (:func:`write_folder`), so a crash
    never leaves half a version; writing the same round again replaces it with the same content.
    Returns the folder (``root/round-NNN``), which also holds ``cleanloop_version.json``.
    """
    seq = journal.last_seq() if upto_seq is None else upto_seq
    version = apply_decisions(dd, journal.current(seq))
    counts = {split: {s: int(sum(x == s for x in ds["label_source"])) for s in SOURCES} for split, ds in version.items()}

    def build(tmp: Path) -> None:
        version.save_to_disk(str(tmp))
        (tmp / VERSION_META).write_text(json.dumps({"round": round, "journal_seq": seq, "journal": str(journal.path),
                                                    "label_sources": counts}, indent=2))

    return write_folder(round_dir(root, round), build)


def load_version(path: str | Path):
    """A saved version (``DatasetDict`` with label_source) and its metadata."""
    import datasets

    path = Path(path)
    if not (path / VERSION_META).exists():
        raise CleanloopError(f"{path} is not a cleanloop dataset version (no {VERSION_META}); fix: run the loop first")
    return datasets.load_from_disk(str(path)), json.loads((path / VERSION_META).read_text())

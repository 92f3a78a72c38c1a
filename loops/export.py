"""Publish the cleaned data set (and the model trained on it): a local folder or the Hugging Face Hub.

The local folder is what the Hub shows: ``data/<split>.parquet`` and a dataset card ``README.md``
whose YAML header the Hub (and ``datasets.load_dataset(folder)``) reads: the parquet files per
split, the features with the label names, split sizes. Its text has a *Cleaning* section:
rounds, examples corrected and removed per class, method and model.

The Hub calls take their pusher as a parameter (``push=``, ``api=``), so the exact call can be
checked without the network; the defaults are ``DatasetDict.push_to_hub`` and ``huggingface_hub.HfApi``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cleanloop.atomic import write_folder
from cleanloop.errors import CleanloopError

EXPORT_MARKER = ".cleanloop-export.json"  # in every folder export writes: what it wrote there

__all__ = ["CleaningInfo", "check_export_folder", "cleaning_counts", "dataset_card", "export_dataset", "export_model",
           "hub_token", "push_dataset_to_hub", "push_model_to_hub"]


@dataclass
class CleaningInfo:
    """What the card says about how the data was cleaned."""

    rounds: int = 0
    method: str = "cleanloop: confident learning flags, human review in Argilla, majority vote"
    model: str = ""
    reviewed: int = 0
    agreement: float | None = None
    extra: dict = field(default_factory=dict)


def cleaning_counts(version, split: str = "train") -> dict[str, dict[str, int]]:
    """Per original class: examples ``corrected`` (to another class) and ``removed``."""
    ds = version[split]
    names = ds.features["label"].names
    out = {n: {"corrected": 0, "removed": 0} for n in names}
    for orig, src in zip(ds["original_label"], ds["label_source"]):
        if src in ("corrected", "removed"):
            out[names[orig]][src] += 1
    return out


def _published(version, keep_removed: bool):
    """What is exported: removed examples left out unless ``keep_removed``; a ``fingerprint`` column added."""
    import datasets

    from cleanloop.identity import example_fingerprint

    out = {}
    for s, ds in version.items():
        if not keep_removed:
            ds = ds.filter(lambda src: src != "removed", input_columns="label_source")
        out[s] = ds.add_column("fingerprint", [example_fingerprint(s, t) for t in ds["text"]])
    return datasets.DatasetDict(out)


def _features_yaml(features) -> list[dict]:
    import datasets

    out = []
    for name, feat in features.items():
        if isinstance(feat, datasets.ClassLabel):
            out.append({"name": name, "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(feat.names)}}}})
        else:
            out.append({"name": name, "dtype": feat.dtype})
    return out


def dataset_card(version, info: CleaningInfo, pretty_name: str = "cleaned dataset", exported=None) -> str:
    """The dataset card: a YAML header the Hub reads, then the cleaning section (markdown).

    version: the full version (with removed rows, for the counts); exported: what is published
    (default: the version itself), for the split sizes.
    """
    import yaml

    full, version = version, exported if exported is not None else version
    first = version[next(iter(version))]
    names = first.features["label"].names
    header = {
        "pretty_name": pretty_name,
        "task_categories": ["text-classification"],
        "tags": ["cleanloop", "label-noise", "argilla"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}.parquet"} for s in version]}],
        "dataset_info": {"features": _features_yaml(first.features),
                         "splits": [{"name": s, "num_bytes": int(ds.data.nbytes), "num_examples": len(ds)}
                                    for s, ds in version.items()]},
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "", f"# {pretty_name}", ""]
    lines += [f"Labels: {', '.join(names)}. Splits: " + ", ".join(f"{s} {len(ds):,}" for s, ds in version.items()) + ".", ""]
    lines += ["Columns: `id` (stable example id), `text`, `label` (after cleaning), `original_label` (as the data "
              "came), `label_source` (`original`, `corrected` or `removed`), `fingerprint` (hash of split and text, "
              "the example's identity in the review).", ""]
    lines += ["## Cleaning", "", f"- Rounds: {info.rounds}", f"- Method: {info.method}"]
    if info.model:
        lines.append(f"- Model: {info.model}")
    lines.append(f"- Examples reviewed: {info.reviewed:,}")
    if info.agreement is not None:
        lines.append(f"- Mean annotator agreement: {info.agreement:.2f}")
    for k, v in info.extra.items():
        lines.append(f"- {k}: {v}")
    for split in full:
        sources = Counter(full[split]["label_source"])
        if sources.get("corrected") or sources.get("removed"):
            counts = cleaning_counts(full, split)
            lines += ["", f"### {split}: changes per class (by original label)", "",
                      "| class | corrected | removed |", "|---|---:|---:|"]
            lines += [f"| {n} | {c['corrected']} | {c['removed']} |" for n, c in counts.items()]
            lines += [f"| **total** | {sources.get('corrected', 0)} | {sources.get('removed', 0)} |"]
    lines.append("")
    return "\n".join(lines)


def check_export_folder(folder: str | Path, overwrite: bool = False) -> None:
    """Raise unless cleanloop may write ``folder``: new, empty, or an earlier export of cleanloop's.

    An earlier export (it has the marker file) is replaced only with ``overwrite``, and only when
    every file in it is one cleanloop wrote: nothing of the user's is ever deleted.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise CleanloopError(f"{folder} is a file, not a folder; fix: export to a new or empty folder")
    if not any(folder.iterdir()):
        return
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())
    try:
        ours = set(json.loads((folder / EXPORT_MARKER).read_text())["files"]) | {EXPORT_MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        raise CleanloopError(
            f"{folder} is not empty ({len(files)} files, e.g. {', '.join(files[:3]) or 'folders'}) and was not made by "
            "cleanloop export; fix: export to a new or empty folder (cleanloop never writes over files it did not make)"
        ) from None
    if not overwrite:
        raise CleanloopError(f"{folder} holds an earlier cleanloop export; fix: add --overwrite to replace it, "
                             "or export to a new folder")
    foreign = [f for f in files if f not in ours]
    if foreign:
        raise CleanloopError(f"{folder} holds an earlier cleanloop export, but also {len(foreign)} file(s) cleanloop "
                             f"did not write ({', '.join(foreign[:3])}); fix: move them out, then export again")


def _write_export(folder: Path, kind: str, build: Callable[[Path], None], overwrite: bool) -> Path:
    """Check the folder, build it in a temp folder, add the marker listing the files, rename it into place."""
    check_export_folder(folder, overwrite)

    def with_marker(tmp: Path) -> None:
        build(tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir())
        (tmp / EXPORT_MARKER).write_text(json.dumps({"kind": kind, "files": files}, indent=2))

    return write_folder(folder, with_marker)


def export_dataset(version, folder: str | Path, info: CleaningInfo, *, keep_removed: bool = False,
                   pretty_name: str = "cleaned dataset", overwrite: bool = False) -> Path:
    """Write ``folder/data/<split>.parquet`` and ``folder/README.md`` (temp folder, then renamed).

    ``folder`` must be new, empty, or an earlier export (replaced with ``overwrite``; see
    :func:`check_export_folder`). Removed examples are left out unless ``keep_removed``.
    ``datasets.load_dataset(folder)`` gives back the same rows, features and label names.
    """
    data = _published(version, keep_removed)

    def build(tmp: Path) -> None:
        (tmp / "data").mkdir()
        for split, ds in data.items():
            ds.to_parquet(str(tmp / "data" / f"{split}.parquet"))
        (tmp / "README.md").write_text(dataset_card(version, info, pretty_name, exported=data))

    return _write_export(Path(folder), "dataset", build, overwrite)


def hub_token(token: str | None = None) -> str:
    """The Hub token: the argument, else HF_TOKEN."""
    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise CleanloopError("no Hugging Face token: HF_TOKEN is not set; fix: export HF_TOKEN=hf_... (a write token)")
    return token


def _default_push(dd, **kwargs):
    return dd.push_to_hub(**kwargs)


def push_dataset_to_hub(version, repo_id: str, info: CleaningInfo, *, private: bool = True, token: str | None = None,
                        keep_removed: bool = False, push: Callable | None = None, api=None) -> str:
    """Push the cleaned ``DatasetDict`` to the Hub as ``repo_id``, then its card as README.md.

    push: ``push(dd, repo_id=, private=, token=)`` (default ``DatasetDict.push_to_hub``);
    api: an ``HfApi``-like object with ``upload_file`` (default ``HfApi(token=token)``).
    Returns the repo id.
    """
    if "/" not in repo_id:
        raise CleanloopError(f"repo id must be 'owner/name', got {repo_id!r}")
    token = hub_token(token)
    data = _published(version, keep_removed)
    (push or _default_push)(data, repo_id=repo_id, private=private, token=token)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.upload_file(path_or_fileobj=dataset_card(version, info, repo_id, exported=data).encode(), path_in_repo="README.md",
                    repo_id=repo_id, repo_type="dataset", commit_message="cleanloop dataset card")
    return repo_id


def export_model(model_folder: str | Path, dest: str | Path, info: CleaningInfo | None = None, *,
                 overwrite: bool = False) -> Path:
    """Copy a trained model folder (``save_pretrained`` output or a features model) with its card.

    The training dynamics are left out; the card gets a line on the data it was trained on.
    ``dest`` must be new, empty, or an earlier export (see :func:`check_export_folder`).
    """
    src = Path(model_folder)
    if not (src / "README.md").exists():
        raise CleanloopError(f"{src} is not a model folder written by cleanloop (no README.md); fix: train first")

    def build(tmp: Path) -> None:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("dynamics.npz", "*.tmp"), dirs_exist_ok=True)
        if info is not None:
            with open(tmp / "README.md", "a") as fh:
                fh.write(f"\n## Training data\n\nTrained on data cleaned by cleanloop ({info.rounds} review round(s), "
                         f"{info.reviewed:,} examples reviewed).\n")

    return _write_export(Path(dest), "model", build, overwrite)


def push_model_to_hub(model_folder: str | Path, repo_id: str, *, private: bool = True, token: str | None = None,
                      api=None) -> str:
    """Create the model repo and upload the folder (model, tokenizer, card) with ``HfApi``."""
    if "/" not in repo_id:
        raise CleanloopError(f"repo id must be 'owner/name', got {repo_id!r}")
    token = hub_token(token)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(model_folder), repo_id=repo_id, repo_type="model",
                      ignore_patterns=["dynamics.npz"], commit_message="cleanloop model")
    return repo_id

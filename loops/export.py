"""Publish the cleaned data set (and the model trained on it): a local folder or the Hugging Face Hub.

The local folder is what the Hub shows: ``data/<split>.parquet`` and a dataset card ``README.md``
whose YAML header the Hub (and ``datasets.load_dataset(folder)``) reads: the parquet files per
split, the features with the label names, split sizes. Its text has a *Cleaning* section:
rounds, examples corrected and removed per class, method and model.

The Hub calls take their pusher as a parameter (``push=``, ``api=``), so the exact call can be
checked without the network; the defaults are ``DatasetDict.push_to_hub`` and ``huggingface_hub.HfApi``.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cleanloop.errors import CleanloopError

__all__ = ["CleaningInfo", "cleaning_counts", "dataset_card", "export_dataset", "export_model",
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


def _drop_removed(version, keep_removed: bool):
    import datasets

    if keep_removed:
        return version
    return datasets.DatasetDict({s: ds.filter(lambda src: src != "removed", input_columns="label_source")
                                 for s, ds in version.items()})


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
              "came), `label_source` (`original`, `corrected` or `removed`).", ""]
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


def export_dataset(version, folder: str | Path, info: CleaningInfo, *, keep_removed: bool = False,
                   pretty_name: str = "cleaned dataset") -> Path:
    """Write ``folder/data/<split>.parquet`` and ``folder/README.md`` (temp folder, then renamed).

    Removed examples are left out unless ``keep_removed``. ``datasets.load_dataset(folder)``
    gives back the same rows, features and label names.
    """
    folder = Path(folder)
    data = _drop_removed(version, keep_removed)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    for split, ds in data.items():
        ds.to_parquet(str(tmp / "data" / f"{split}.parquet"))
    (tmp / "README.md").write_text(dataset_card(version, info, pretty_name, exported=data))
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    return folder


def hub_token(token: str | None = None) -> str:
    """The Hub token: the argument, else HF_TOKEN."""
    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise CleanloopError("no Hugging Face token: HF_TOKEN is not set; fix: export HF_TOKEN=hf_... (a write token)")
    return token


def _default_push(dd, **kwargs):
    return dd.push_to_hub(**kwargs)


def push_dataset_to_hub(version, repo_id: str, info: CleaningInfo, *, private: bool = False, token: str | None = None,
                        keep_removed: bool = False, push: Callable | None = None, api=None) -> str:
    """Push the cleaned ``DatasetDict`` to the Hub as ``repo_id``, then its card as README.md.

    push: ``push(dd, repo_id=, private=, token=)`` (default ``DatasetDict.push_to_hub``);
    api: an ``HfApi``-like object with ``upload_file`` (default ``HfApi(token=token)``).
    Returns the repo id.
    """
    if "/" not in repo_id:
        raise CleanloopError(f"repo id must be 'owner/name', got {repo_id!r}")
    token = hub_token(token)
    data = _drop_removed(version, keep_removed)
    (push or _default_push)(data, repo_id=repo_id, private=private, token=token)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.upload_file(path_or_fileobj=dataset_card(version, info, repo_id, exported=data).encode(), path_in_repo="README.md",
                    repo_id=repo_id, repo_type="dataset", commit_message="cleanloop dataset card")
    return repo_id


def export_model(model_folder: str | Path, dest: str | Path, info: CleaningInfo | None = None) -> Path:
    """Copy a trained model folder (``save_pretrained`` output or a features model) with its card.

    The training dynamics are left out; the card gets a line on the data it was trained on.
    """
    src, dest = Path(model_folder), Path(dest)
    if not (src / "README.md").exists():
        raise CleanloopError(f"{src} is not a model folder written by cleanloop (no README.md); fix: train first")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("dynamics.npz", "*.tmp"))
    if info is not None:
        with open(tmp / "README.md", "a") as fh:
            fh.write(f"\n## Training data\n\nTrained on data cleaned by cleanloop ({info.rounds} review round(s), "
                     f"{info.reviewed:,} examples reviewed).\n")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


def push_model_to_hub(model_folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
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

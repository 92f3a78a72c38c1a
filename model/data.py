"""Load a labelled text data set into a validated ``DatasetDict`` with stable ids.

Every split comes out with exactly three columns: ``id`` (a string that every
later step keeps), ``text`` and ``label`` (a ``ClassLabel``). Sources: a Hub id,
a data file (any format of :mod:`cleanloop.model.readers`), a folder of ``<split>.<ext>`` files, or a
``save_to_disk`` folder. The emotion data ships inside the package as the
offline default for ``dair-ai/emotion``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cleanloop.atomic import write_file
from cleanloop.config import Config
from cleanloop.errors import CleanloopError
from cleanloop.model.readers import READERS, extensions, is_missing, read_table, texts_of

log = logging.getLogger(__name__)

EMOTION_HUB_ID = "dair-ai/emotion"
SPLIT_ORDER = ("train", "validation", "test")


def bundled_emotion_dir() -> Path:
    """Folder of the emotion parquet files shipped inside the package."""
    return Path(str(resources.files("cleanloop.model") / "datasets" / "emotion"))


@functools.cache
def hub_reachable(timeout: float = 2.0) -> bool:
    """True when the Hugging Face Hub answers; False offline or with HF_HUB_OFFLINE=1."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@dataclass
class RawSplit:
    """One split as read from its source, before validation."""

    frame: pd.DataFrame
    where: str  # file name or hub id, for error messages
    label_names: list[str] | None  # from a ClassLabel feature, when the source has one


def _parquet_label_names(path: Path, column: str) -> list[str] | None:
    """ClassLabel names stored in a parquet file's Hugging Face metadata, if any."""
    if path.suffix.lower() != ".parquet":
        return None
    import datasets
    import pyarrow.parquet as pq

    try:
        features = datasets.Features.from_arrow_schema(pq.read_schema(path))
    except Exception:
        return None
    feat = features.get(column)
    return list(feat.names) if isinstance(feat, datasets.ClassLabel) else None


def _from_files(files: dict[str, Path], cfg: Config) -> dict[str, RawSplit]:
    return {
        split: RawSplit(read_table(p), str(p), _parquet_label_names(p, cfg.label_column))
        for split, p in files.items()
    }


def _from_hf(dd: Any, where: str, cfg: Config) -> dict[str, RawSplit]:
    import datasets

    if isinstance(dd, datasets.Dataset):
        dd = datasets.DatasetDict({"train": dd})
    out = {}
    for split, ds in dd.items():
        feat = ds.features.get(cfg.label_column)
        names = list(feat.names) if isinstance(feat, datasets.ClassLabel) else None
        out[split] = RawSplit(ds.to_pandas(), f"{where} (split {split})", names)
    return out


def _split_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in READERS and p.stem in SPLIT_ORDER + ("valid", "val", "dev"):
            split = {"valid": "validation", "val": "validation", "dev": "validation"}.get(p.stem, p.stem)
            files[split] = p
    return files


def read_source(cfg: Config) -> dict[str, RawSplit]:
    """Read every split of ``cfg.dataset`` as it is, without validation."""
    import datasets

    src = cfg.dataset
    path = Path(src).expanduser()
    if path.is_file():
        return _from_files({"train": path}, cfg)
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return _from_hf(datasets.load_from_disk(str(path)), str(path), cfg)
        files = _split_files(path)
        if not files:
            raise CleanloopError(
                f"{path}: no train/validation/test files ({extensions()}) and not a save_to_disk folder; "
                "fix: name the files train.parquet, validation.parquet, test.parquet"
            )
        return _from_files(files, cfg)
    if src.startswith((".", "/", "~")) or src.lower().endswith(tuple(READERS)):
        raise CleanloopError(f"data source {src} does not exist; fix: check the path in --dataset")
    if src == EMOTION_HUB_ID and not hub_reachable():
        log.info("Hub not reachable: using the copy of %s bundled with cleanloop", src)
        return _from_files(_split_files(bundled_emotion_dir()), cfg)
    try:
        return _from_hf(datasets.load_dataset(src), f"hub:{src}", cfg)
    except Exception as exc:
        raise CleanloopError(
            f"cannot load '{src}' from the Hugging Face Hub ({type(exc).__name__}: {str(exc)[:200]}); "
            "fix: check the name and your network, or point --dataset at local files"
        ) from None


def resolve_label_names(raw: dict[str, RawSplit], cfg: Config) -> list[str]:
    """Label names in index order: config first, then a ClassLabel of the source, then the data."""
    if cfg.label_names:
        return list(cfg.label_names)
    for rs in raw.values():
        if rs.label_names:
            return rs.label_names
    values = set()
    for rs in raw.values():
        if cfg.label_column in rs.frame:
            values.update(v for v in rs.frame[cfg.label_column].tolist() if not is_missing(v))
    if all(isinstance(v, (int, np.integer)) for v in values):
        return [str(i) for i in range(int(max(values)) + 1)] if values else []
    names = {str(v) for v in values}
    if all(re.fullmatch(r"-?[0-9]+", n) for n in names):  # integers read as text (CSV): "2" before "10"
        return sorted(names, key=int)
    return sorted(names)


def _label_index(value: Any, names: list[str], index: dict[str, int]) -> int | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer()):
        i = int(value)
        return i if 0 <= i < len(names) else None
    if isinstance(value, str):
        if value in index:
            return index[value]
        if value.strip().lstrip("-").isdigit():
            i = int(value)
            return i if 0 <= i < len(names) else None
    return None


def require_columns(rs: RawSplit, cfg: Config, require_labels: bool = True) -> None:
    """CleanloopError naming the source and the option to fix when a needed column is missing."""
    need = [cfg.text_column] + ([cfg.label_column] if require_labels else [])
    if cfg.id_column:
        need.append(cfg.id_column)
    option = {cfg.label_column: "--label-column", cfg.id_column: "--id-column", cfg.text_column: "--text-column"}
    for col in need:
        if col not in rs.frame.columns:
            raise CleanloopError(
                f"{rs.where}: column '{col}' is missing (columns: {', '.join(map(str, rs.frame.columns))}); "
                f"fix: name the right column with {option[col]}"
            )


def validate_split(
    rs: RawSplit, split: str, cfg: Config, names: list[str], require_labels: bool = True
) -> pd.DataFrame:
    """Check one split and return it as a frame with columns ``id``, ``text``, ``label``.

    Raises CleanloopError naming the source, the row and the fix for: a missing
    column, an empty or non-string text, a label outside ``names``, duplicate ids.
    """
    df, where = rs.frame, rs.where
    require_columns(rs, cfg, require_labels)
    out = pd.DataFrame({"text": texts_of(df, cfg.text_column, where)})
    if require_labels:
        index = {n: i for i, n in enumerate(names)}
        labels = []
        for row, v in enumerate(df[cfg.label_column].tolist()):
            i = None if is_missing(v) else _label_index(v, names, index)
            if i is None:
                raise CleanloopError(
                    f"{where}: row {row}, column '{cfg.label_column}': label {v!r} is not one of the "
                    f"{len(names)} labels ({', '.join(names)}); fix: correct the row or add the name to label_names"
                )
            labels.append(i)
        out["label"] = labels
    if cfg.id_column:
        ids = [str(v) for v in df[cfg.id_column].tolist()]
    else:
        width = max(5, len(str(len(df))))
        ids = [f"{split}-{i:0{width}d}" for i in range(len(df))]
    out.insert(0, "id", ids)
    dup = out["id"].duplicated(keep=False)
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())[:2].tolist()
        raise CleanloopError(
            f"{where}: rows {rows[0]} and {rows[1]}, column '{cfg.id_column}': duplicate id {out['id'][rows[0]]!r}; "
            "fix: make the ids unique or leave id_column empty to number the rows"
        )
    return out


def to_dataset_dict(frames: dict[str, pd.DataFrame], names: list[str]):
    """Turn validated frames into a ``DatasetDict`` with a ``ClassLabel`` label."""
    import datasets

    feats = datasets.Features(
        {"id": datasets.Value("string"), "text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    ordered = sorted(frames, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER))
    return datasets.DatasetDict(
        {s: datasets.Dataset.from_pandas(frames[s], features=feats, preserve_index=False) for s in ordered}
    )


def load_data(cfg: Config):
    """Load, validate and return ``cfg.dataset`` as a ``DatasetDict`` (columns id, text, label).

    Ids are unique across splits too. ``max_train_samples`` keeps a stratified,
    seeded sample of train (ids unchanged).
    """
    raw = read_source(cfg)
    if "train" not in raw:
        raise CleanloopError(f"{cfg.dataset}: no 'train' split (found {', '.join(raw)}); fix: name a split train")
    for rs in raw.values():  # before the label names are read from the label column
        require_columns(rs, cfg)
    if raw["train"].frame.empty:
        raise CleanloopError(f"{raw['train'].where}: the train split has no rows; fix: add labelled examples")
    names = resolve_label_names(raw, cfg)
    if len(names) < 2:
        raise CleanloopError(f"{cfg.dataset}: found {len(names)} label(s); fix: a classifier needs at least two")
    frames = {split: validate_split(rs, split, cfg, names) for split, rs in raw.items()}
    seen: dict[str, str] = {}
    for split, df in frames.items():
        for i in df["id"]:
            if i in seen:
                raise CleanloopError(
                    f"{cfg.dataset}: id {i!r} is in both split {seen[i]} and split {split}; fix: make ids unique"
                )
            seen[i] = split
    if cfg.max_train_samples and cfg.max_train_samples < len(frames["train"]):
        frames["train"] = stratified_sample(frames["train"], cfg.max_train_samples, cfg.seed)
    return to_dataset_dict(frames, names)


def stratified_sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``n`` rows keeping the class shares; original row order kept."""
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(df)), train_size=n, stratify=df["label"], random_state=seed)
    return df.iloc[np.sort(keep)].reset_index(drop=True)


# --- describe -----------------------------------------------------------------


def describe(dd) -> pd.DataFrame:
    """Per split and class: examples, share, and words per example (mean, median, max)."""
    names = dd["train"].features["label"].names
    rows = []
    for split, ds in dd.items():
        df = ds.to_pandas()
        df["words"] = df["text"].str.split().str.len()
        total = len(df)
        for i, name in enumerate(names):
            sub = df[df["label"] == i]
            rows.append(
                {
                    "split": split,
                    "label": name,
                    "examples": len(sub),
                    "share": len(sub) / total if total else 0.0,
                    "words_mean": float(sub["words"].mean()) if len(sub) else 0.0,
                    "words_median": float(sub["words"].median()) if len(sub) else 0.0,
                    "words_max": int(sub["words"].max()) if len(sub) else 0,
                }
            )
    return pd.DataFrame(rows)


def plot_describe(dd, outdir: Path) -> list[Path]:
    """The chapter's two plots for train: class frequencies and words per example by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    names = dd["train"].features["label"].names
    df = dd["train"].to_pandas()
    df["label_name"] = [names[i] for i in df["label"]]
    df["words"] = df["text"].str.split().str.len()
    counts = df["label_name"].value_counts(ascending=True)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.barh(counts.index, counts.values, color="#4c72b0")
    ax.set_title("Frequency of classes (train)")
    ax.set_xlabel("examples")
    fig.tight_layout()
    freq = outdir / "class_frequencies.png"
    write_file(freq, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)

    order = list(counts.index[::-1])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.boxplot([df.loc[df["label_name"] == n, "words"] for n in order], showfliers=False)
    ax.set_xticks(range(1, len(order) + 1), order)
    ax.set_title("Words per example by class (train)")
    ax.set_ylabel("words")
    fig.tight_layout()
    words = outdir / "words_per_example.png"
    write_file(words, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return [freq, words]

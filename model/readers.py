"""Readers of data files by extension: the one place that turns a file into a table.

Used by ``load`` (:mod:`cleanloop.model.data`: train/validation/test files) and by ``predict``
(texts from ``--file``). Each :class:`Reader` maps its extensions to a function
``read(path) -> DataFrame``; a new format is one decorated function here::

    @reader("tsv", ".tsv")
    def _tsv(path: Path) -> pd.DataFrame:
        return pd.read_csv(path, sep="\\t", dtype=object, keep_default_na=False)

One missing-value rule for every format (:func:`missing_to_none`): a cell is missing when it is
empty (``""``), a JSON ``null``, a parquet null or NaN; it comes out as None. Texts such as
``NA`` or ``null`` in a CSV are text, not missing.

>>> sorted(READERS)
['.csv', '.json', '.jsonl', '.ndjson', '.parquet', '.text', '.txt']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cleanloop.errors import CleanloopError, not_utf8


@dataclass(frozen=True)
class Reader:
    """One file format: ``read(path) -> DataFrame`` for the files ending in ``extensions``.

    columns: False for a format without columns (plain text, one text per line): its one
    column is the text, whatever the text column is called.
    """

    name: str
    extensions: tuple[str, ...]
    read: Callable[[Path], pd.DataFrame]
    columns: bool = True


READERS: dict[str, Reader] = {}  # extension (".csv") -> its reader


def reader(name: str, *extensions: str, columns: bool = True) -> Callable:
    """Register the decorated ``read(path) -> DataFrame`` for ``extensions`` (with the dot, lower case)."""
    def register(read: Callable[[Path], pd.DataFrame]) -> Callable[[Path], pd.DataFrame]:
        for ext in extensions:
            READERS[ext] = Reader(name, tuple(extensions), read, columns)
        return read

    return register


@reader("parquet", ".parquet")
def _parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


@reader("csv", ".csv")
def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=object, keep_default_na=False)  # every cell as written; "" is missing below


@reader("jsonl", ".jsonl", ".ndjson")
def _jsonl(path: Path) -> pd.DataFrame:
    return pd.read_json(path, lines=True, dtype=False)


@reader("json", ".json")
def _json(path: Path) -> pd.DataFrame:
    """JSON lines, or one JSON array of objects."""
    try:
        return pd.read_json(path, lines=True, dtype=False)
    except ValueError:
        return pd.read_json(path, dtype=False)


@reader("text", ".txt", ".text", columns=False)
def _text(path: Path) -> pd.DataFrame:
    """One text per line; blank lines are not rows."""
    return pd.DataFrame({"text": [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]})


def extensions() -> str:
    """The readable extensions, for messages: ``.csv, .json, ...``."""
    return ", ".join(sorted(READERS))


def reader_for(path: Path) -> Reader:
    """The reader of ``path``'s extension; CleanloopError naming the file and the formats there are."""
    found = READERS.get(Path(path).suffix.lower())
    if found is None:
        raise CleanloopError(f"cannot read {path}: expected a {extensions()} file, got "
                             f"{Path(path).suffix or 'no suffix'!r}; fix: rename it or convert it")
    return found


def is_missing(value: Any) -> bool:
    """The missing-value rule: None, NaN or an empty string."""
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and value == "")


def missing_to_none(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every missing cell (:func:`is_missing`) of its text/object columns as None."""
    for col in frame.columns:
        if frame[col].dtype == object or frame[col].dtype.kind in "OSU" or str(frame[col].dtype).startswith("str"):
            values = frame[col].tolist()
            if any(is_missing(v) for v in values):
                frame[col] = pd.Series([None if is_missing(v) else v for v in values], index=frame.index, dtype=object)
    return frame


def read_table(path: str | Path) -> pd.DataFrame:
    """The table in ``path`` by its extension (:data:`READERS`), missing cells as None.

    Raises CleanloopError naming the file and the fix when it does not exist, has an unknown
    extension, is not UTF-8 or cannot be parsed.
    """
    path = Path(path)
    found = reader_for(path)
    if not path.is_file():
        raise CleanloopError(f"no file {path}; fix: check the path")
    try:
        frame = found.read(path)
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except Exception as exc:  # parser errors name the line themselves
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise CleanloopError(f"{path}: cannot be read as {found.name} ({detail}); fix: check the file format") from None
    return missing_to_none(frame)


def texts_of(frame: pd.DataFrame, column: str, where: str, option: str = "--text-column") -> list[str]:
    """The non-empty texts of ``column``; CleanloopError naming ``where``, the row, the column and the fix
    for a missing column or a row whose text is missing, blank or not a string."""
    if column not in frame.columns:
        raise CleanloopError(f"{where}: column '{column}' is missing (columns: {', '.join(map(str, frame.columns))}); "
                             f"fix: name the right column with {option}")
    texts = frame[column].tolist()
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        first = texts[bad[0]]
        what = "empty" if isinstance(first, str) or is_missing(first) else f"not a string ({type(first).__name__})"
        more = f" ({len(bad)} such rows)" if len(bad) > 1 else ""
        raise CleanloopError(f"{where}: row {bad[0]}, column '{column}': text is {what}{more}; "
                             "fix: remove the row or fill in its text")
    return texts


def read_texts(path: str | Path, text_column: str = "text") -> list[str]:
    """Texts from a file: a plain-text file one per line (blank lines skipped), or the
    ``text_column`` of a table (every row must hold a non-empty string)."""
    path = Path(path)
    if not path.is_file():
        raise CleanloopError(f"no file {path}; fix: pass an existing --file")
    frame = read_table(path)
    return texts_of(frame, text_column if reader_for(path).columns else frame.columns[0], str(path))

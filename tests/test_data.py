import json

import datasets
import pandas as pd
import pytest

from cleanloop.config import Config
from cleanloop.errors import CleanloopError
from cleanloop.model.data import bundled_emotion_dir, describe, load_data, plot_describe

ROWS = [
    ("i feel happy today", "joy"),
    ("this is so sad", "sadness"),
    ("what a lovely day", "joy"),
    ("i am crying again", "sadness"),
]


def write_split_files(folder, fmt="csv", rows=ROWS, extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows, columns=["text", "label"])
    if extra:
        for k, v in extra.items():
            df[k] = v
    for split in ("train", "validation"):
        path = folder / f"{split}.{fmt}"
        if fmt == "csv":
            df.to_csv(path, index=False)
        elif fmt == "jsonl":
            df.to_json(path, orient="records", lines=True)
        else:
            df.to_parquet(path)
    return folder


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_folder_of_split_files_loads_with_ids_and_classlabel(tmp_path, fmt):
    dd = load_data(Config(dataset=str(write_split_files(tmp_path / "d", fmt))))
    assert list(dd) == ["train", "validation"]
    assert dd["train"].column_names == ["id", "text", "label"]
    assert isinstance(dd["train"].features["label"], datasets.ClassLabel)
    assert dd["train"].features["label"].names == ["joy", "sadness"]
    assert dd["train"]["id"] == ["train-00000", "train-00001", "train-00002", "train-00003"]
    assert dd["validation"]["label"] == [0, 1, 0, 1]


def test_single_file_is_the_train_split_and_id_column_is_kept(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text("\n".join(json.dumps({"uid": f"u{i}", "text": t, "label": l}) for i, (t, l) in enumerate(ROWS)))
    dd = load_data(Config(dataset=str(path), id_column="uid"))
    assert list(dd) == ["train"]
    assert dd["train"]["id"] == ["u0", "u1", "u2", "u3"]


def test_save_to_disk_folder_and_integer_labels_with_names(tmp_path):
    ds = datasets.Dataset.from_dict({"sentence": [t for t, _ in ROWS], "y": [0, 1, 0, 1]})
    datasets.DatasetDict({"train": ds}).save_to_disk(tmp_path / "saved")
    dd = load_data(Config(dataset=str(tmp_path / "saved"), text_column="sentence", label_column="y", label_names=["pos", "neg"]))
    assert dd["train"].features["label"].names == ["pos", "neg"]
    assert dd["train"]["text"][0] == "i feel happy today"


def test_bundled_emotion_matches_the_shared_copy_and_hub_order():
    dd = load_data(Config())  # the Hub is out of reach here: the bundled copy is used
    assert {s: len(d) for s, d in dd.items()} == {"train": 16000, "validation": 2000, "test": 2000}
    assert dd["train"].features["label"].names == ["sadness", "joy", "love", "anger", "fear", "surprise"]
    assert dd["train"][42]["id"] == "train-00042"
    assert (bundled_emotion_dir() / "train.parquet").stat().st_size == 991338


def test_max_train_samples_is_stratified_and_keeps_ids():
    dd = load_data(Config(max_train_samples=1600))
    assert len(dd["train"]) == 1600
    counts = pd.Series(dd["train"]["label"]).value_counts()
    assert abs(counts[5] - 57) <= 2  # surprise keeps its 3.6% share
    assert all(i.startswith("train-") for i in dd["train"]["id"])


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("fine", "joy"), ("bad", "rage")], r"train.csv: row 1, column 'label': label 'rage' is not one of the 2 labels"),
        ([("fine", "joy"), ("", "sadness")], r"train.csv: row 1, column 'text': text is empty"),
        ([("fine", "joy"), (None, "sadness")], r"train.csv: row 1, column 'text': text is empty"),
    ],
)
def test_bad_rows_name_file_row_column_and_fix(tmp_path, rows, message):
    folder = write_split_files(tmp_path / "d", "csv", rows)
    with pytest.raises(CleanloopError, match=message) as err:
        load_data(Config(dataset=str(folder), label_names=["joy", "sadness"]))
    assert "fix:" in str(err.value)


def test_non_string_text_is_rejected(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": 7, "label": "b"}\n')
    with pytest.raises(CleanloopError, match=r"row 1, column 'text': text is not a string \(int\)"):
        load_data(Config(dataset=str(path)))


def test_missing_column_lists_the_columns(tmp_path):
    folder = write_split_files(tmp_path / "d", "csv")
    with pytest.raises(CleanloopError, match=r"column 'tweet' is missing \(columns: text, label\).*--text-column"):
        load_data(Config(dataset=str(folder), text_column="tweet"))


def test_duplicate_ids_are_rejected(tmp_path):
    folder = write_split_files(tmp_path / "d", "parquet", extra={"uid": ["a", "b", "a", "c"]})
    with pytest.raises(CleanloopError, match=r"rows 0 and 2, column 'uid': duplicate id 'a'"):
        load_data(Config(dataset=str(folder), id_column="uid"))


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(CleanloopError, match="does not exist"):
        load_data(Config(dataset=str(tmp_path / "nope.csv")))


def test_describe_counts_and_plots(tmp_path):
    dd = load_data(Config(dataset=str(write_split_files(tmp_path / "d", "csv"))))
    table = describe(dd)
    joy = table[(table.split == "train") & (table.label == "joy")].iloc[0]
    assert joy.examples == 2 and joy.share == 0.5 and joy.words_mean == 4.0
    pngs = plot_describe(dd, tmp_path / "plots")
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_missing_label_column_is_named_not_counted(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a b", "c d"], "category": ["x", "y"]}).to_csv(path, index=False)
    with pytest.raises(CleanloopError, match=r"column 'label' is missing \(columns: text, category\).*--label-column"):
        load_data(Config(dataset=str(path)))


def test_integer_labels_in_csv_sort_as_numbers(tmp_path):
    path = tmp_path / "d.csv"
    rows = [(f"text {i} here", str(i % 12)) for i in range(24)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    dd = load_data(Config(dataset=str(path)))
    names = dd["train"].features["label"].names
    assert names == [str(i) for i in range(12)]  # not "0", "1", "10", "11", "2", ...
    assert [names[i] for i in dd["train"]["label"]] == [label for _, label in rows]


def test_non_utf8_file_names_line_and_fix(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\nhello,joy\ncaf\xe9,sadness\n".encode("latin-1"))
    with pytest.raises(CleanloopError, match=r"d.csv: line 3 is not UTF-8 text \(byte 0xe9.*fix: save it as UTF-8"):
        load_data(Config(dataset=str(path)))


def test_cli_writes_files_only_its_user_can_read(tmp_path):
    """Every process cleanloop starts runs with umask 077: folders 0700, files 0600."""
    import os
    import stat
    import subprocess
    import sys
    from pathlib import Path

    data = write_split_files(tmp_path / "d")
    exe = Path(sys.executable).with_name("cleanloop")
    done = subprocess.run([str(exe), "data", "describe", "--dataset", str(data), "--workdir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    made = [tmp_path / "run", *(tmp_path / "run").rglob("*")]
    assert any(p.suffix == ".png" for p in made)
    for p in made:
        assert stat.S_IMODE(os.stat(p).st_mode) == (0o700 if p.is_dir() else 0o600), p


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_one_missing_value_rule_for_every_format_in_load_and_predict(tmp_path, fmt):
    from cleanloop.model.readers import read_texts

    rows = [("NA", "joy"), (None, "sadness"), ("fine", "joy")]  # "NA" is a text; None: empty cell / null / null
    folder = write_split_files(tmp_path / fmt, fmt, rows)
    with pytest.raises(CleanloopError, match=rf"train.{fmt}: row 1, column 'text': text is empty; fix: remove the row"):
        load_data(Config(dataset=str(folder)))
    with pytest.raises(CleanloopError, match=rf"train.{fmt}: row 1, column 'text': text is empty"):
        read_texts(folder / f"train.{fmt}")
    with pytest.raises(CleanloopError, match=rf"train.{fmt}: column 'tweet' is missing \(columns: text, label\)"):
        read_texts(folder / f"train.{fmt}", "tweet")


def test_a_new_format_is_one_reader_and_both_load_and_predict_read_it(tmp_path):
    from cleanloop.model import readers

    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\ni feel happy\tjoy\nso sad\tsadness\n\tjoy\n")
    with pytest.raises(CleanloopError, match=r"cannot read .*train.tsv: expected a .csv, .json, .jsonl.* file, got '.tsv'"):
        load_data(Config(dataset=str(path)))

    @readers.reader("tsv", ".tsv")
    def _tsv(p):
        return pd.read_csv(p, sep="\t", dtype=object, keep_default_na=False)

    try:
        with pytest.raises(CleanloopError, match=r"train.tsv: row 2, column 'text': text is empty"):
            load_data(Config(dataset=str(path)))
        path.write_text("text\tlabel\ni feel happy\tjoy\nso sad\tsadness\n")
        assert load_data(Config(dataset=str(path)))["train"]["text"] == ["i feel happy", "so sad"]
        assert readers.read_texts(path) == ["i feel happy", "so sad"]
        assert load_data(Config(dataset=str(tmp_path)))["train"]["label"] == [0, 1]  # a folder of split files too
    finally:
        del readers.READERS[".tsv"]


def test_plain_text_files_give_one_text_per_line_and_bad_files_name_the_format(tmp_path):
    from cleanloop.model.readers import read_texts

    (tmp_path / "t.txt").write_text("one\n\n  \ntwo\n")
    assert read_texts(tmp_path / "t.txt", "ignored") == ["one", "two"]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CleanloopError, match=r"bad.json: cannot be read as json .*fix: check the file format"):
        read_texts(tmp_path / "bad.json")

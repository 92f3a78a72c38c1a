"""Files and workdirs: atomic writes survive SIGKILL, one writer per workdir, private modes, safe export,
and a workdir refuses data other than its own. Real files and real subprocesses; no server needed."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from cleanloop.atomic import save_npy, write_file, write_folder, write_json
from cleanloop.config import Config
from cleanloop.errors import CleanloopError
from cleanloop.identity import check_source, example_fingerprint
from cleanloop.lock import workdir_lock
from cleanloop.loops.export import EXPORT_MARKER, CleaningInfo, export_dataset, export_model

CLI = [sys.executable, "-m", "cleanloop"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- atomic writes ----------------------------------------------------------------------------------


def test_write_file_keeps_the_old_content_when_the_writer_fails(tmp_path):
    path = tmp_path / "sub" / "state.json"
    write_json(path, {"round": 1})
    assert mode(path) == 0o600 and mode(path.parent) == 0o700

    def broken(tmp):
        Path(tmp).write_text('{"round": ')
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_file(path, broken)
    assert json.loads(path.read_text()) == {"round": 1}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left behind


def test_write_folder_replaces_as_a_whole_and_repairs_a_kill_between_renames(tmp_path):
    target = tmp_path / "round-001"
    write_folder(target, lambda tmp: (tmp / "a.txt").write_text("one"))
    assert (target / "a.txt").read_text() == "one" and mode(target) == 0o700
    write_folder(target, lambda tmp: (tmp / "b.txt").write_text("two"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    # a kill after the old folder was moved aside and before the new one was renamed in
    os.replace(target, tmp_path / ".round-001.old")
    with pytest.raises(RuntimeError):
        write_folder(target, lambda tmp: (_ for _ in ()).throw(RuntimeError("killed")))
    assert (target / "b.txt").read_text() == "two"  # the old folder is back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-001"]


WRITER = r"""
import sys, numpy as np
from cleanloop.atomic import save_npy
n = 0
while True:
    n += 1
    save_npy(sys.argv[1], np.full((400, 400), n, dtype=np.float64))
"""


def test_save_npy_killed_at_random_points_never_leaves_a_truncated_file(tmp_path):
    path = tmp_path / "cache" / "oof.npy"
    save_npy(path, np.zeros((400, 400)))
    rng = np.random.default_rng(0)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        time.sleep(1.0 + rng.uniform(0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        arr = np.load(path)  # never raises: the old or the new array, whole
        assert arr.shape == (400, 400) and (arr == arr[0, 0]).all()


def test_a_truncated_out_of_fold_cache_is_computed_again(tmp_path):
    from cleanloop.loops.judge import _load_cache

    path = tmp_path / "oof.npy"
    np.save(path, np.ones((10, 3)))
    assert _load_cache(path, (10, 3)).shape == (10, 3)
    path.write_bytes(path.read_bytes()[:100])  # what an in-place write killed half-way left
    assert _load_cache(path, (10, 3)) is None
    assert _load_cache(tmp_path / "none.npy", (10, 3)) is None


# --- one writer per workdir ----------------------------------------------------------------------------


HOLDER = r"""
import sys, time
from cleanloop.lock import workdir_lock
with workdir_lock(sys.argv[1], "cleanloop retrain-loop"):
    print("held", flush=True)
    time.sleep(120)
"""


def tiny_csv(path: Path, extra: str | None = None) -> Path:
    rows = [(f"good day number {i}", "pos") for i in range(6)] + [(f"bad day number {i}", "neg") for i in range(6)]
    if extra:
        rows.insert(3, (extra, "neg"))
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return path


def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_dies_with_it(tmp_path):
    work = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(work)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        data = tiny_csv(tmp_path / "d.csv")
        proc = subprocess.run(CLI + ["data", "describe", "--dataset", str(data), "--workdir", str(work)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and f"pid {holder.pid}" in err[0] and "cleanloop retrain-loop" in err[0], proc.stderr
        assert "Traceback" not in proc.stderr
        with pytest.raises(CleanloopError, match=f"pid {holder.pid}"):
            with workdir_lock(work, "cleanloop train"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL released the lock: the next writer goes on, and may take it again inside (re-entrant)
    with workdir_lock(work, "cleanloop train"):
        with workdir_lock(work, "cleanloop flag"):
            pass
    proc = subprocess.run(CLI + ["data", "describe", "--dataset", str(tiny_csv(tmp_path / "d.csv")), "--workdir", str(work)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # what the command wrote is the user's only
    png = work / "data" / "class_frequencies.png"
    assert mode(png) == 0o600 and mode(png.parent) == 0o700


def test_readers_take_no_lock(tmp_path):
    work = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(work)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run(CLI + ["config", "--workdir", str(work)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


# --- export never writes over what cleanloop did not make -----------------------------------------------


def tiny_version():
    feats = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"]),
                               "original_label": datasets.ClassLabel(names=["neg", "pos"]),
                               "label_source": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"id": ["a", "b"], "text": ["x", "y"], "label": [0, 1], "original_label": [0, 0],
                                     "label_source": ["original", "corrected"]}, features=feats)
    return datasets.DatasetDict({"train": ds})


def test_export_writes_new_or_empty_folders_and_never_touches_user_files(tmp_path):
    version, info = tiny_version(), CleaningInfo(rounds=1)
    out = export_dataset(version, tmp_path / "new", info)
    assert (out / "data" / "train.parquet").exists() and (out / EXPORT_MARKER).exists()
    (tmp_path / "empty").mkdir()
    export_dataset(version, tmp_path / "empty", info)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    with pytest.raises(CleanloopError, match="not made by cleanloop export.*notes.txt|notes.txt.*not made by cleanloop"):
        export_dataset(version, mine, info, overwrite=True)  # --overwrite does not open a user's folder
    assert (mine / "notes.txt").read_text() == "my notes" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    with pytest.raises(CleanloopError, match="--overwrite"):
        export_dataset(version, out, info)  # an earlier export: only with --overwrite
    export_dataset(version, out, info, overwrite=True)
    (out / "data" / "mine.csv").write_text("a,b")
    with pytest.raises(CleanloopError, match="data/mine.csv"):
        export_dataset(version, out, info, overwrite=True)  # the user's file in it is never deleted
    assert (out / "data" / "mine.csv").read_text() == "a,b"
    assert datasets.load_dataset(str(tmp_path / "empty"))["train"]["id"] == ["a", "b"]


def test_export_model_is_refused_in_a_user_folder(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "README.md").write_text("card")
    (model / "dynamics.npz").write_bytes(b"x")
    dest = export_model(model, tmp_path / "out")
    assert sorted(p.name for p in dest.iterdir()) == [EXPORT_MARKER, "README.md"]
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "weights.bin").write_bytes(b"w")
    with pytest.raises(CleanloopError, match="new or empty folder"):
        export_model(model, tmp_path / "user", overwrite=True)
    assert (tmp_path / "user" / "weights.bin").read_bytes() == b"w"


def test_export_cli_refuses_a_user_folder_in_one_line_and_hub_is_private_by_default(tmp_path):
    import cleanloop.cli  # noqa: F401
    from cleanloop.cli.options import app

    export = app.commands["export"]
    assert {p.name: p.default for p in export.params}["private"] is True
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("k")
    version = tmp_path / "work" / "versions" / "round-000"
    version.parent.mkdir(parents=True)
    from cleanloop.labeling.journal import Journal
    from cleanloop.loops.versions import write_version

    base = tiny_version()["train"].select_columns(["id", "text", "label"])
    write_version(datasets.DatasetDict({"train": base}), Journal(":memory:"), version.parent, 0)
    proc = subprocess.run(CLI + ["export", "--workdir", str(tmp_path / "work"), "--to", str(mine), "--overwrite"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not made by cleanloop" in proc.stderr and (mine / "keep.txt").read_text() == "k"


# --- a workdir knows its data -----------------------------------------------------------------------------


def load(cfg: Config):
    from cleanloop.model.data import load_data

    return load_data(cfg)


def test_fingerprint_is_of_split_and_text():
    a = example_fingerprint("train", "i feel fine")
    assert a == example_fingerprint("train", "i feel fine") and len(a) == 16
    assert a != example_fingerprint("test", "i feel fine") and a != example_fingerprint("train", "i feel fine!")


def test_changed_data_in_a_used_workdir_is_refused_with_what_changed(tmp_path):
    cfg = Config(dataset=str(tiny_csv(tmp_path / "d.csv")), workdir=str(tmp_path / "work"))
    check_source(cfg, load(cfg))
    assert mode(Path(cfg.workdir) / "source.json") == 0o600
    check_source(cfg, load(cfg))  # the same data again: fine
    tiny_csv(tmp_path / "d.csv", extra="a row inserted by the user")  # every later positional id moves
    with pytest.raises(CleanloopError, match=r"another text \(e\.g\. train-00003.*new --workdir.*--id-column"):
        check_source(cfg, load(cfg))


def test_with_stable_ids_only_a_changed_text_is_refused(tmp_path):
    df = pd.DataFrame({"key": ["k1", "k2", "k3", "k4"], "text": ["good", "fine", "bad", "awful"],
                       "label": ["pos", "pos", "neg", "neg"]})
    df.to_csv(tmp_path / "d.csv", index=False)
    cfg = Config(dataset=str(tmp_path / "d.csv"), workdir=str(tmp_path / "work"), id_column="key")
    check_source(cfg, load(cfg))
    pd.concat([df, pd.DataFrame({"key": ["k5"], "text": ["great"], "label": ["pos"]})]).to_csv(tmp_path / "d.csv", index=False)
    check_source(cfg, load(cfg))  # a row added under a new id: fine
    df.assign(text=["good", "fine", "bad", "terrible"]).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(CleanloopError, match="1 with another text.*k4"):
        check_source(cfg, load(cfg))


def test_rows_that_only_moved_keep_their_ids(tmp_path):
    df = pd.DataFrame({"text": ["good", "fine", "bad", "awful", "good"], "label": ["pos", "pos", "neg", "neg", "pos"]})
    df.to_csv(tmp_path / "d.csv", index=False)
    cfg = Config(dataset=str(tmp_path / "d.csv"), workdir=str(tmp_path / "work"))
    first = check_source(cfg, load(cfg))["train"]
    was = {i: t for i, t in zip(first["id"], first["text"])}
    df.iloc[[3, 4, 0, 2, 1]].to_csv(tmp_path / "d.csv", index=False)  # the user sorted the file
    moved = check_source(cfg, load(cfg))["train"]
    assert moved["text"] == ["awful", "good", "good", "bad", "fine"] and moved.column_names == first.column_names
    assert {i: t for i, t in zip(moved["id"], moved["text"])} == was and sorted(moved["id"]) == sorted(first["id"])
    df.iloc[[3, 4, 0, 2, 1]].assign(label=["neg", "neg", "pos", "neg", "pos"]).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(CleanloopError, match="another"):  # moved and relabelled: no longer the same examples
        check_source(cfg, load(cfg))

"""The Workdir: the layout it owns, round naming, child workdirs sharing the cache, the lock, atomic
writes, and that no other module builds a path inside a workdir."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cleanloop.config import Config
from cleanloop.errors import CleanloopError
from cleanloop.lock import OWNER_FILE
from cleanloop.workdir import Workdir, round_dir, round_name, rounds_in

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = [ROOT / "src" / "cleanloop", ROOT / "model", ROOT / "loops", ROOT / "labeling"]


def test_layout_is_the_documented_one(tmp_path):
    wd = Workdir(tmp_path)
    layout = {
        wd.model("finetune"): "model", wd.model("features"): "features", wd.checkpoints: "checkpoints",
        wd.cache: "cache", wd.oof_fold(2): "oof/fold-2", wd.tune: "tune", wd.study_db: "tune/study.db",
        wd.trial(4).root: "tune/trial-4", wd.data_plots: "data", wd.scores: "scores", wd.flags: "flags",
        wd.flag_scores: "flags/scores.parquet", wd.review_queue: "flags/review_queue.parquet",
        wd.queue_embeddings: "flags/queue_embeddings.npy", wd.source: "source.json", wd.journal: "journal.sqlite",
        wd.versions: "versions", wd.version(0): "versions/round-000", wd.version(12): "versions/round-012",
        wd.loop: "loop", wd.loop_state: "loop/state.json", wd.loop_options: "loop/options.json",
        wd.session: "loop/session.json", wd.history: "loop/history.json", wd.history_plot: "loop/history.png",
        wd.report: "loop/report.md", wd.round(1).root: "loop/round-001", wd.round("final").root: "loop/final",
        wd.round(1).pool_probs: "loop/round-001/probs.npy", wd.round(1).batch: "loop/round-001/batch.parquet",
        wd.round(2).review_queue: "loop/round-002/flags/review_queue.parquet", wd.active().root: "active",
        wd.active().journal: "active/journal.sqlite", wd.active().round(3).root: "active/loop/round-003",
        wd.cached("features", "abc"): "cache/features-abc.npy",
        wd.active().finetune("running").root: "active/loop/finetune/running",
        wd.active().finetune("accepted").pool_embeddings: "active/loop/finetune/accepted/embeddings.npy",
        wd.finetune("running").label_anchors: "loop/finetune/running/anchors.npy",
        wd.finetune("running").eval_embeddings: "loop/finetune/running/eval_embeddings.npy",
        wd.finetune("running").finetune_info: "loop/finetune/running/finetune.json",
        wd.finetune("running").finetune_log: "loop/finetune/running/finetune.log",
        wd.finetune("running").model("finetune"): "loop/finetune/running/model",
    }
    for path, rel in layout.items():
        assert path == tmp_path / rel, (path, rel)
    assert wd.argilla_home == (tmp_path / "argilla").absolute() and wd.argilla_home.is_absolute()
    assert Workdir.of(Config(workdir=str(tmp_path))).root == tmp_path


def test_the_embedded_servers_default_home_comes_from_the_workdir(tmp_path):
    from cleanloop.labeling.embedded import resolve_home

    assert resolve_home(Config(workdir=str(tmp_path / "w"))) == Workdir(tmp_path / "w").argilla_home


def test_round_naming_is_one_function(tmp_path):
    assert [round_name(r) for r in (0, 7, 123, "final")] == ["round-000", "round-007", "round-123", "final"]
    assert round_dir(tmp_path, 5) == tmp_path / "round-005"
    wd = Workdir(tmp_path)
    assert rounds_in(wd.versions) == [] and wd.latest_version() == 0  # no versions folder yet
    for r in (0, 2, 11):
        wd.version(r).mkdir(parents=True)
    (wd.versions / "round-abc").mkdir()  # not a round
    (wd.versions / ".round-003.x.tmp").mkdir()  # a temp folder of a write in progress
    assert rounds_in(wd.versions) == [0, 2, 11] and wd.latest_version() == 11
    assert wd.version(wd.latest_version()).name == round_name(11)


def test_child_workdirs_share_the_parents_cache(tmp_path):
    wd = Workdir(tmp_path)
    children = [wd.round(1), wd.round("final"), wd.trial(0), wd.active(), wd.active().round(2)]
    assert all(c.cache == wd.cache for c in children)
    assert len({c.root for c in children}) == len(children) and all(c.root != wd.root for c in children)
    # what one round caches, the next finds, with no link or copy
    wd.round(1).save_npy(wd.round(1).cached("features", "k"), np.arange(3))
    assert np.array_equal(np.load(wd.round(2).cached("features", "k")), np.arange(3))
    assert not (wd.round(1).root / "cache").exists()
    # a workdir of its own (cleanloop export --workdir WORKDIR/active) has its own cache
    assert Workdir(wd.active().root).cache == tmp_path / "active" / "cache"


def test_a_rounds_model_and_checkpoints_stay_in_the_round(tmp_path):
    from cleanloop.model.train import ClassifierTrainer

    rnd = Workdir(tmp_path).round(3)
    trainer = ClassifierTrainer(Config(workdir=str(tmp_path), method="features"), workdir=rnd)
    assert trainer.workdir.model("features") == tmp_path / "loop" / "round-003" / "features"
    assert trainer.workdir.checkpoints == tmp_path / "loop" / "round-003" / "checkpoints"


def test_writes_are_atomic_and_stay_inside_the_workdir(tmp_path):
    wd = Workdir(tmp_path / "w")
    wd.write_json(wd.loop_state, {"round": 1})
    wd.write_text(wd.report, "# report")
    assert json.loads(wd.loop_state.read_text()) == {"round": 1} and wd.report.read_text() == "# report"
    assert sorted(p.name for p in wd.loop.iterdir()) == ["report.md", "state.json"]  # no temp file left
    assert (wd.loop_state.stat().st_mode & 0o777) == 0o600
    with pytest.raises(ValueError, match="not inside workdir"):
        wd.write_text(tmp_path / "elsewhere.txt", "x")
    with pytest.raises(ValueError, match="not inside workdir"):
        wd.round(1).write_text(wd.loop_state, "x")  # a round writes in its own folder (and the shared cache)
    assert not (tmp_path / "elsewhere.txt").exists()


def test_the_lock_names_its_holder_and_refuses_a_second_writer(tmp_path):
    wd = Workdir(tmp_path / "w")
    code = ("import sys; from cleanloop.workdir import Workdir\n"
            "try:\n    Workdir(sys.argv[1]).lock('second').__enter__()\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    with wd.lock("cleanloop test") as held:
        assert held is wd
        assert json.loads((wd.root / OWNER_FILE).read_text())["command"] == "cleanloop test"
        with wd.lock("again"):  # re-entrant within a process
            pass
        out = subprocess.run([sys.executable, "-c", code, str(wd.root)], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith(CleanloopError.__name__) and "cleanloop test" in out.stdout, out.stderr
    assert not (wd.root / OWNER_FILE).exists()


# --- nothing else builds a path inside a workdir ---------------------------------------------------

FORBIDDEN = {
    "a path joined onto the config's workdir (use Workdir.of(cfg))": r"\.workpath\b|\bworkdir\)?\s*/\s*[\"'fP(]",
    "a config rewritten to move the workdir (use a child Workdir)": r"\.replace\([^)]*\bworkdir\s*=",
    "a round folder named by hand (use workdir.round_name)": r"round-\{[^}]*:0?3d\}|round-\[0-9\]",
    "a workdir file named by hand (use its Workdir property)":
        r"[\"'](journal\.sqlite|source\.json|session\.json|history\.json|options\.json|study\.db)[\"']",
}


@pytest.mark.parametrize("line", ['out = cfg.workpath / "flags"', 'cfg.replace(workdir=str(root / name), seed=1)',
                                  'name = f"round-{rnd:03d}"', 'p.glob("round-[0-9][0-9][0-9]")',
                                  'return (Path(cfg.workdir) / "argilla").absolute()', 'JOURNAL_FILE = "journal.sqlite"'])
def test_the_path_check_catches_the_old_ways(line):
    assert any(re.search(p, line) for p in FORBIDDEN.values())


def test_no_module_outside_workdir_py_builds_a_workdir_path():
    bad = []
    for folder in PACKAGE:
        for path in sorted(folder.rglob("*.py")):
            if path.name == "workdir.py" and path.parent.name == "cleanloop":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                for what, pattern in FORBIDDEN.items():
                    if re.search(pattern, code):
                        bad.append(f"{path.relative_to(ROOT)}:{n}: {what}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_doctests():
    import doctest

    from cleanloop import workdir

    result = doctest.testmod(workdir)
    assert result.failed == 0 and result.attempted >= 4

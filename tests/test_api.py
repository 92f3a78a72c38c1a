"""cleanloop from Python (:mod:`cleanloop.api`): the README's cleaning round run as written, on ~140
short texts with injected label flips, the real packaged encoder (``method = "features"``) and the
real embedded Argilla; the API, the CLI and the retrain loop's flag step share one flag pipeline."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
from click.testing import CliRunner
from test_review_loop import NAMES, answer_as_annotator, expected_train, exported_train, make_data

import cleanloop
from cleanloop import api
from cleanloop.workdir import Workdir

ROOT = Path(__file__).resolve().parents[1]


def readme_round() -> tuple[str, str]:
    """The README's Python round, split after its push line: (up to the push, the rest)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- python-round -->\n```python\n(.*?)```\n<!-- /python-round -->", readme, re.S).group(1)
    lines = block.splitlines(keepends=True)
    cut = next(n for n, line in enumerate(lines) if line.startswith("cleanloop.push(")) + 1
    return "".join(lines[:cut]), "".join(lines[cut:])


def test_readme_round_runs_from_python(tmp_path, argilla_server, monkeypatch, capsys):
    flipped = make_data(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    # flat keys the round needs; the annotator answers all at once (waves: test_review_order_browser.py)
    (run / "cleanloop.toml").write_text(f"""
workdir = "work"
seed = 0
[data]
dataset = "{tmp_path / 'data'}"
id_column = "id"
label_names = {NAMES!r}
[training]
method = "features"
[flagging]
flag_source = "oof"
folds = 3
max_review = 20
[argilla]
argilla_url = "{argilla_server.url}"
argilla_workspace = "cleanloop"
argilla_dataset = "api-readme"
[review]
review_wave = 0
""".replace("'", '"'))
    monkeypatch.chdir(run)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.owner_key)
    before_push, after_push = readme_round()
    ns: dict = {}
    exec(compile(before_push, "README.md", "exec"), ns)  # noqa: S102  (the README's own example)
    cfg, flags = ns["cfg"], ns["flags"]
    assert len(set(flags.queue["id"]) & set(flipped)) >= len(flipped) - 2  # the flips are found
    assert (run / "work" / "flags" / "report.md").exists()
    answers = answer_as_annotator(argilla_server, cfg, flipped)  # the annotator, through the web UI's endpoints
    exec(compile(after_push, "README.md", "exec"), ns)  # noqa: S102
    printed = capsys.readouterr().out
    assert "{'train': 90, 'validation': 24, 'test': 24}" in printed
    assert "round-001" in printed and "PullResult(round=1" in printed
    pd.testing.assert_frame_equal(exported_train(run / "emotion-cleaned"), expected_train(cfg, answers),
                                  check_dtype=False)


def test_one_call_per_step_the_cli_and_the_loop_share_the_flag_pipeline(tmp_path):
    from cleanloop.cli import app
    from cleanloop.loops.retrain import flag_step

    flipped = make_data(tmp_path / "data")
    cfg = cleanloop.Config(dataset=str(tmp_path / "data"), id_column="id", label_names=NAMES,
                           workdir=str(tmp_path / "work"), method="features", flag_source="oof", folds=3, max_review=20, seed=0)
    loaded = cleanloop.load(cfg)
    assert loaded.label_names == NAMES and loaded.sizes == {"train": 90, "validation": 24, "test": 24}
    trained = cleanloop.train(cfg)
    assert trained.output_dir == Workdir.of(cfg).model("features") and trained.metrics["test"]["accuracy"] > 0.9

    flags = cleanloop.flag(cfg, with_map=False, progress=False)  # flagging from Python: one call
    assert len(set(flags.queue["id"]) & set(flipped)) >= len(flipped) - 2
    assert flags.report.exists() and (flags.folder / "confident_examples.parquet").exists()
    # the retrain loop's flag step runs the same pipeline: the same scores and queue
    step = flag_step(cfg, loaded.data["train"], cfg.max_review, set())
    pd.testing.assert_frame_equal(step.scores, flags.scores)
    pd.testing.assert_frame_equal(step.queue, flags.queue)
    # ... and so does the command, which prints what the call returned
    args = ["--dataset", cfg.dataset, "--id-column", "id", "--label-names", ",".join(NAMES), "--workdir", cfg.workdir,
            "--method", "features", "--flag-source", "oof", "--folds", "3", "--seed", "0", "--max-review", "20"]
    res = CliRunner().invoke(app, ["flag", *args, "--no-map"])
    assert res.exit_code == 0, res.output
    assert (f"flagged {int(flags.scores['is_issue'].sum()):,} of 90" in res.output
            and f"review queue {len(flags.queue):,} (max_review 20)" in res.output)
    pd.testing.assert_frame_equal(pd.read_parquet(flags.folder / "scores.parquet"), flags.scores)

    scored = cleanloop.score(cfg, splits=["test"], progress=False)
    assert [(s.split, s.examples) for s in scored.splits] == [("test", 24)] and scored.splits[0].path.exists()
    texts = ["the striker scored twice in the cup final", "the chef baked fresh bread and butter"]
    pred = cleanloop.predict(cfg, texts, top_k=2, output=tmp_path / "pred.csv")
    assert [p.label for p in pred.predictions] == ["sports", "food"]
    assert pd.read_csv(pred.output)["label"].tolist() == ["sports", "food"]
    res = CliRunner().invoke(app, ["predict", "--workdir", cfg.workdir, "--method", "features", "--json", *texts])
    assert res.exit_code == 0 and '"label": "sports"' in res.stdout.splitlines()[0], res.output


def test_no_module_outside_cli_imports_cli():
    offenders = []
    for folder in (ROOT / "src" / "cleanloop", ROOT / "model", ROOT / "labeling", ROOT / "loops"):
        for path in folder.rglob("*.py"):
            if "cli" in path.relative_to(ROOT).parts or path.name == "__main__.py":  # `python -m cleanloop` runs the CLI
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("cleanloop.cli")]
    assert not offenders


def test_the_steps_are_importable_from_cleanloop_lazily():
    code = ("import sys, cleanloop; assert 'cleanloop.api' not in sys.modules; f = cleanloop.flag; "
            "import cleanloop.api as api; assert f is api.flag and 'push' in dir(cleanloop)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    for name in ("load", "train", "score", "flag", "push", "pull", "apply", "export", "predict", "active"):
        assert getattr(cleanloop, name) is getattr(api, name)

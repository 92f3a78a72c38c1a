"""A round loop's history: one row per round, then the final model; as JSON, a plot and a report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cleanloop.workdir import Workdir


def history(state, keys: Sequence[str]) -> list[dict]:
    """One row per round of a :class:`~cleanloop.loops.rounds.LoopState` (the ``keys`` of its results and
    its step times), then the final model's row."""
    results = [r for _, r in sorted(state.rounds.items(), key=lambda kv: int(kv[0]))]
    rows = [{k: r.get(k) for k in keys} | {"step_seconds": r.get("step_seconds", {})} for r in results]
    if state.final:
        rows.append({k: state.final.get(k) for k in keys} | {"step_seconds": state.final.get("step_seconds", {})})
    return rows


def _fmt(v) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def write_history(workdir: Workdir, rows: list[dict], keys: Sequence[str], title: str, about: Sequence[str]) -> Path:
    """``loop/history.json``, ``loop/history.png`` (evaluation and reviews per round) and ``loop/report.md``
    (``title``, the ``about`` paragraphs, then a table of ``keys``); returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir.write_json(workdir.history, rows)
    labels = [str(r["round"]) for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, style in (("test_accuracy", "o-"), ("test_macro_f1", "s--"), ("val_accuracy", "o:")):
        vals = [r.get(key) for r in rows]
        if any(v is not None for v in vals):
            a1.plot(labels, [np.nan if v is None else v for v in vals], style, label=key)
    a1.set_xlabel("round (model trained at its start; final = after the last round)")
    a1.set_title("evaluation")
    if a1.lines:
        a1.legend()
    x = np.arange(len(rows))
    for off, key in ((-0.27, "reviewed"), (0.0, "changed"), (0.27, "removed")):
        a2.bar(x + off, [r.get(key) or 0 for r in rows], width=0.27, label=key)
    a2.set_xticks(x, labels)
    a2.set_title("reviews per round")
    a2.legend()
    fig.tight_layout()
    workdir.write_file(workdir.history_plot, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)

    lines = [f"# {title}", ""]
    for paragraph in about:
        lines += [paragraph, ""]
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    lines += ["", f"![history]({workdir.history_plot.name})", ""]
    return workdir.write_text(workdir.report, "\n".join(lines))

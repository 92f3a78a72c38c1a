"""The flagging report: counts, a given-vs-suggested matrix, the top suspects and a 2-D map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cleanloop.atomic import write_file, write_text


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def flag_counts(scores: pd.DataFrame, label_names: list[str]) -> pd.DataFrame:
    """Per label: examples, flagged with that given label, flagged with that suggested label."""
    flagged = scores[scores["is_issue"]]
    return pd.DataFrame(
        {
            "examples": scores["given_label"].value_counts().reindex(label_names, fill_value=0),
            "flagged_given": flagged["given_label"].value_counts().reindex(label_names, fill_value=0),
            "flagged_suggested": flagged["suggested_label"].value_counts().reindex(label_names, fill_value=0),
        }
    )


def plot_flag_matrix(scores: pd.DataFrame, label_names: list[str], path: Path) -> Path:
    """Heat map of flagged examples: given label (rows) vs suggested label (columns)."""
    plt = _plt()
    flagged = scores[scores["is_issue"]]
    m = pd.crosstab(flagged["given_label"], flagged["suggested_label"]).reindex(
        index=label_names, columns=label_names, fill_value=0
    )
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(m.to_numpy(), cmap="Reds")
    ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    for (i, j), v in np.ndenumerate(m.to_numpy()):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set_xlabel("suggested label")
    ax.set_ylabel("given label")
    ax.set_title(f"{len(flagged):,} flagged examples")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return path


def embedding_map(embeddings: np.ndarray, seed: int = 42) -> np.ndarray:
    """2-D UMAP of (N, D) embeddings (cosine metric), as in the chapter: (N, 2)."""
    import umap

    return umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_jobs=1).fit_transform(embeddings)


def plot_embedding_map(xy: np.ndarray, scores: pd.DataFrame, label_names: list[str], path: Path) -> Path:
    """One panel per given label (density of its examples), flagged examples marked in black."""
    plt = _plt()
    cols = 3
    rows = int(np.ceil(len(label_names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    cmaps = ["Greys", "Blues", "Oranges", "Reds", "Purples", "Greens"]
    given = scores["given_label"].to_numpy()
    flagged = scores["is_issue"].to_numpy()
    for k, name in enumerate(label_names):
        ax = axes.flat[k]
        sel = given == name
        ax.hexbin(xy[sel, 0], xy[sel, 1], cmap=cmaps[k % len(cmaps)], gridsize=20, linewidths=(0,), mincnt=1)
        ax.scatter(xy[sel & flagged, 0], xy[sel & flagged, 1], s=6, c="black", label="flagged")
        ax.set_title(f"{name} ({int((sel & flagged).sum())} flagged)")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(label_names):]:
        ax.axis("off")
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return path


def _md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def _copies_section(scores: pd.DataFrame) -> list[str]:
    """Report lines on copies of a text with conflicting labels and on outliers (none without the checks)."""
    if "flagged_by" not in scores:
        return []
    conflict = scores[scores["duplicate"] | scores["near_duplicate"]]
    outliers = scores[scores["outlier"]]
    lines = ["## Copies with conflicting labels, and outliers", "",
             f"{conflict['duplicate_group'].nunique():,} groups of copies carry more than one label "
             f"({int(scores['duplicate'].sum()):,} exact and {int(scores['near_duplicate'].sum()):,} near copies; "
             f"each group is reviewed as one record); {len(outliers):,} texts are unlike any other (outliers).", ""]
    if len(conflict):
        show = conflict.sort_values(["duplicate_group", "rank"]).head(20)[["duplicate_group", "id", "given_label", "text"]]
        lines += [_md_table(show), ""]
    return lines


def write_report(
    scores: pd.DataFrame, queue: pd.DataFrame, confident: pd.DataFrame, label_names: list[str], outdir: Path,
    source: str, embeddings: np.ndarray | None = None, seed: int = 42,
) -> Path:
    """Write ``report.md`` and its PNGs into ``outdir``; returns the report's path.

    embeddings: optional (N, D) array, row i for ``scores`` row i, for the 2-D map.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    counts = flag_counts(scores, label_names)
    plot_flag_matrix(scores, label_names, outdir / "flag_matrix.png")
    top = scores.head(20)[["rank", "id", "given_label", "suggested_label", "suggested_score", "suspicion", "text"]]
    top = top.assign(suggested_score=top["suggested_score"].map("{:.3f}".format),
                     suspicion=top["suspicion"].map("{:.3f}".format))
    lines = [
        "# cleanloop flagging report",
        "",
        f"Signals from: {source}. {len(scores):,} examples; cleanlab flags {int(scores['is_issue'].sum()):,} "
        f"({scores['is_issue'].mean():.1%}); {len(queue):,} go to the review queue.",
        "",
        "## Flagged per label",
        "",
        _md_table(counts.reset_index(names="label")),
        "",
        "![given vs suggested](flag_matrix.png)",
        "",
        "## Top 20 suspects",
        "",
        _md_table(top),
        "",
        *_copies_section(scores),
        "## Most confident examples per class (look for shortcuts)",
        "",
        _md_table(confident[["given_label", "loss", "text"]].assign(loss=confident["loss"].map("{:.4f}".format))),
    ]
    if embeddings is not None:
        xy = embedding_map(embeddings, seed)
        plot_embedding_map(xy, scores, label_names, outdir / "embedding_map.png")
        lines += ["", "## Map of the embeddings (UMAP), flagged examples in black", "", "![map](embedding_map.png)"]
    path = outdir / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path

"""The code's shape, for issue 15's before/after: files, lines, the longest functions, per folder.

    python bench/layout.py --label after            # this checkout
    python bench/layout.py --label before --rev 0443636   # a commit, read from git (nothing checked out)

Writes ``bench/results/layout.json`` (one entry per label). Lines are physical lines of the package's
``.py`` files (src/cleanloop, model, loops, labeling; tests and benches apart).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import update_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ("src/cleanloop", "model", "loops", "labeling")


def _files(rev: str | None) -> dict[str, str]:
    """Path -> source of every package ``.py`` file, in the working tree or at ``rev``."""
    if rev is None:
        return {str(p.relative_to(ROOT)): p.read_text() for d in PACKAGE for p in sorted((ROOT / d).rglob("*.py"))}
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", rev, "--", *PACKAGE],
                           check=True, capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{n}"], check=True, capture_output=True,
                              text=True).stdout for n in names if n.endswith(".py")}


def shape(files: dict[str, str], top: int = 5) -> dict:
    """Files, lines and the ``top`` longest functions, overall and per top-level folder."""
    functions, folders = [], {}
    for path, text in files.items():
        folder = path.split("/")[1] if path.startswith("src/") else path.split("/")[0]
        entry = folders.setdefault(folder, {"files": 0, "lines": 0})
        entry["files"] += 1
        entry["lines"] += len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append({"lines": node.end_lineno - node.lineno + 1, "where": f"{path}:{node.lineno}",
                                  "name": node.name})
    functions.sort(key=lambda f: -f["lines"])
    return {"files": sum(f["files"] for f in folders.values()), "lines": sum(f["lines"] for f in folders.values()),
            "folders": folders, "longest_functions": functions[:top]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True, help="Name of this measurement in the JSON (e.g. before, after).")
    ap.add_argument("--rev", default=None, help="A git revision to read instead of the working tree.")
    args = ap.parse_args()
    result = shape(_files(args.rev))
    result["rev"] = args.rev or "working tree"
    update_results("layout", {args.label: result})
    print(f"{args.label}: {result['files']} files, {result['lines']:,} lines; longest "
          f"{result['longest_functions'][0]['name']} ({result['longest_functions'][0]['lines']} lines)")


if __name__ == "__main__":
    main()

"""Bad input, tried as a new user would: every case must end in one clear line, never a traceback.

Each case runs the real ``cleanloop`` command in a subprocess, in a scratch folder with small bad
files (a CSV without its label column, Latin-1 text, broken TOML, a taken port, a server that is
down...). A case counts as a *clear error* when the command exits non-zero, prints no
``Traceback``, and its standard error has exactly one line starting with ``error:`` (click's
usage errors print ``Error: ...`` after a usage line, which also counts). Writes
``bench/results/bad_inputs.json`` with ``bad_inputs_tried``, ``bad_inputs_clear_error``,
``tracebacks`` and each case's command and first error line.

    .venv/bin/python bench/bad_inputs.py            # all cases (about 3 minutes on 2 cores)
    .venv/bin/python bench/bad_inputs.py -k port    # only the cases whose name contains 'port'
    /work/main/.venv/bin/python bench/bad_inputs.py --reference main_before   # the same cases on main
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import update_results  # noqa: E402

CSV = "text,label\n" + "".join(f"text number {i} is here,{'joy' if i % 2 else 'sadness'}\n" for i in range(12))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_files(root: Path) -> None:
    """The scratch folder's files, each with one thing wrong (or right, as the base of a wrong option)."""
    (root / "good.csv").write_text(CSV)
    (root / "nolabel.csv").write_text("text,category\n" + "".join(f"t {i},a\n" for i in range(5)))
    (root / "onelabel.csv").write_text("text,label\n" + "".join(f"t {i},joy\n" for i in range(5)))
    (root / "empty.csv").write_text("")
    (root / "header_only.csv").write_text("text,label\n")
    (root / "latin1.csv").write_bytes("text,label\ncaf\xe9 au lait,joy\nthe tea,sadness\n".encode("latin-1"))
    (root / "latin1.txt").write_bytes("i feel great\ncaf\xe9 au lait\n".encode("latin-1"))
    (root / "data.txt").write_text("not a data set\n")
    (root / "emptytext.csv").write_text("text,label\nhello,joy\n,sadness\nbye,joy\n")
    (root / "dupids.csv").write_text("id,text,label\n1,a b,joy\n1,c d,sadness\n")
    (root / "badlabel.csv").write_text("text,label\na b,joy\nc d,sadness\n")
    (root / "broken.jsonl").write_text('{"text": "a", "label": "joy"}\n{"text": "b", "label": \n')
    (root / "fake.parquet").write_text("this is not parquet\n")
    (root / "nosplits").mkdir(exist_ok=True)
    (root / "nosplits" / "readme.md").write_text("nothing here\n")
    (root / "texts.csv").write_text("tweet\nhello there\n")
    (root / "texts.xlsx").write_bytes(b"PK\x03\x04 not really")
    (root / "empty.txt").write_text("\n\n")
    tomls = {
        "bad.toml": "epochs = [1\n",
        "unknown.toml": "[training]\nepochz = 2\n",
        "wrongtype.toml": 'batch_size = "big"\n',
        "fraction.toml": "batch_size = 3.5\n",
        "boolnum.toml": "epochs = true\n",
        "listtext.toml": 'text_column = ["a", "b"]\n',
        "twice.toml": "epochs = 1\n[training]\nepochs = 2\n",
        "negreview.toml": "max_review = -5\n",
    }
    for name, text in tomls.items():
        (root / name).write_text(text)


def cases(root: Path, taken_port: int, dead_port: int) -> list[tuple[str, list[str], str | None]]:
    """(name, cleanloop arguments, standard input or None)."""
    w = ["--workdir", str(root / "run")]  # every command; --dataset only those that read the data set
    d = ["--dataset", str(root / "good.csv"), *w]
    return [
        ("dataset_missing", ["train", "--dataset", str(root / "nowhere.csv")], None),
        ("dataset_no_label_column", ["train", "--dataset", str(root / "nolabel.csv")], None),
        ("dataset_one_label", ["train", "--dataset", str(root / "onelabel.csv")], None),
        ("dataset_empty_file", ["train", "--dataset", str(root / "empty.csv")], None),
        ("dataset_header_only", ["train", "--dataset", str(root / "header_only.csv")], None),
        ("dataset_not_utf8", ["train", "--dataset", str(root / "latin1.csv")], None),
        ("dataset_unsupported_type", ["train", "--dataset", str(root / "data.txt")], None),
        ("dataset_empty_text", ["train", "--dataset", str(root / "emptytext.csv")], None),
        ("dataset_duplicate_ids", ["train", "--dataset", str(root / "dupids.csv"), "--id-column", "id"], None),
        ("dataset_label_not_in_names", ["train", "--dataset", str(root / "badlabel.csv"),
                                        "--label-names", "anger,fear"], None),
        ("dataset_broken_jsonl", ["train", "--dataset", str(root / "broken.jsonl")], None),
        ("dataset_fake_parquet", ["train", "--dataset", str(root / "fake.parquet")], None),
        ("dataset_folder_without_splits", ["train", "--dataset", str(root / "nosplits")], None),
        ("dataset_wrong_text_column", ["train", *d, "--text-column", "tweet"], None),
        ("dataset_text_is_label_column", ["train", *d, "--text-column", "label"], None),
        ("config_missing", ["train", "--config", str(root / "nowhere.toml")], None),
        ("config_bad_toml", ["train", "--config", str(root / "bad.toml")], None),
        ("config_unknown_key", ["train", "--config", str(root / "unknown.toml")], None),
        ("config_wrong_type", ["train", "--config", str(root / "wrongtype.toml")], None),
        ("config_fractional_int", ["train", "--config", str(root / "fraction.toml")], None),
        ("config_bool_as_number", ["train", "--config", str(root / "boolnum.toml")], None),
        ("config_list_as_text", ["train", "--config", str(root / "listtext.toml")], None),
        ("config_key_twice", ["train", "--config", str(root / "twice.toml")], None),
        ("config_negative_max_review", ["flag", "--config", str(root / "negreview.toml")], None),
        ("option_epochs_zero", ["train", *d, "--epochs", "0"], None),
        ("option_learning_rate_negative", ["train", *d, "--learning-rate", "-1e-4"], None),
        ("option_learning_rate_nan", ["train", *d, "--learning-rate", "nan"], None),
        ("option_batch_size_zero", ["train", *d, "--batch-size", "0"], None),
        ("option_eval_batch_size_zero", ["flag", *d, "--eval-batch-size", "0"], None),
        ("option_max_length_zero", ["train", *d, "--max-length", "0"], None),
        ("option_folds_one", ["flag", *d, "--folds", "1"], None),
        ("option_filter_by_unknown", ["flag", *d, "--filter-by", "prune_by_magic"], None),
        ("option_max_review_negative", ["flag", *d, "--max-review", "-1"], None),
        ("option_method_unknown", ["train", *d, "--method", "magic"], None),
        ("option_seed_negative", ["train", *d, "--seed", "-1"], None),
        ("option_label_smoothing_one", ["train", *d, "--label-smoothing", "1.0"], None),
        ("option_warmup_ratio_two", ["train", *d, "--warmup-ratio", "2"], None),
        ("option_single_label_name", ["train", *d, "--label-names", "joy"], None),
        ("option_epochs_not_a_number", ["train", *d, "--epochs", "three"], None),
        ("predict_file_not_utf8", ["predict", "--file", str(root / "latin1.txt"), *w], None),
        ("predict_file_missing", ["predict", "--file", str(root / "nowhere.txt"), *w], None),
        ("predict_file_wrong_type", ["predict", "--file", str(root / "texts.xlsx"), *w], None),
        ("predict_file_wrong_column", ["predict", "--file", str(root / "texts.csv"), *w], None),
        ("predict_file_only_blank_lines", ["predict", "--file", str(root / "empty.txt"), *w], None),
        ("predict_no_model", ["predict", "i feel great", "--model", str(root / "no-model"), *w], None),
        ("predict_empty_stdin", ["predict", *w], ""),
        ("predict_output_wrong_suffix", ["predict", "hi", "--output", str(root / "out.xlsx"), *w], None),
        ("serve_port_taken", ["serve", "--port", str(taken_port), *w], None),
        ("serve_bad_host", ["serve", "--host", "no-such-host.invalid", "--port", "0", *w], None),
        ("serve_no_model", ["serve", "--model", str(root / "no-model"), "--port", "0", *w], None),
        ("push_without_queue", ["push", *d], None),
        ("pull_server_down", ["pull", *d, "--argilla-url", f"http://127.0.0.1:{dead_port}"], None),
        ("argilla_up_remote_url", ["argilla", "up", *w, "--argilla-url", "http://example.com:6900"], None),
        ("argilla_url_not_a_url", ["argilla", "status", *w, "--argilla-url", "localhost6900"], None),
        ("argilla_url_bad_port", ["argilla", "status", *w, "--argilla-url", "http://127.0.0.1:99999"], None),
        ("argilla_bad_annotator_name", ["argilla", "up", *w, "--argilla-annotators", "Bad Name",
                                        "--argilla-url", f"http://127.0.0.1:{dead_port}"], None),
        ("export_nowhere", ["export", *w], None),
        ("export_without_version", ["export", *w, "--to", str(root / "export")], None),
        ("unknown_command", ["trian", *d], None),
    ]


def verdict(rc: int, stderr: str) -> tuple[bool, bool, str]:
    """(clear error, traceback, the error line)."""
    traceback = "Traceback (most recent call last)" in stderr
    lines = [ln for ln in stderr.splitlines() if ln.lower().startswith("error:")]
    clear = rc != 0 and not traceback and len(lines) == 1 and len(lines[0]) > len("error: ") + 10
    return clear, traceback, lines[0] if lines else (stderr.strip().splitlines() or [""])[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="run only the cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per case")
    parser.add_argument("--reference", default="",
                        help="store this run's counts under this key instead (e.g. 'main_before': run it with "
                             "another checkout's python to compare)")
    args = parser.parse_args()

    exe = Path(sys.executable).with_name("cleanloop")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ARGILLA_API_KEY": "not-a-real-key",
           "TOKENIZERS_PARALLELISM": "false"}
    results = []
    with tempfile.TemporaryDirectory(prefix="cleanloop-bad-") as tmp, socket.socket() as taken:
        root = Path(tmp)
        make_files(root)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        dead_port = _free_port()
        for name, argv, stdin in cases(root, taken.getsockname()[1], dead_port):
            if args.k not in name:
                continue
            t0 = time.monotonic()
            try:
                done = subprocess.run([str(exe), *argv], input=stdin, capture_output=True, text=True, cwd=root,
                                      env=env, timeout=args.timeout,
                                      stdin=subprocess.DEVNULL if stdin is None else None)
                rc, stderr = done.returncode, done.stderr
            except subprocess.TimeoutExpired:
                rc, stderr = -1, f"timed out after {args.timeout:.0f} s"
            clear, traceback, line = verdict(rc, stderr)
            results.append({"case": name, "argv": ["cleanloop", *[a.replace(tmp, "$TMP") for a in argv]],
                            "rc": rc, "clear_error": clear, "traceback": traceback,
                            "message": line.replace(tmp, "$TMP")[:300], "seconds": round(time.monotonic() - t0, 1)})
            mark = "ok " if clear else ("TB " if traceback else "?? ")
            print(f"{mark} {name:<36} {results[-1]['message'][:110]}", flush=True)
    summary = {
        "bad_inputs_tried": len(results),
        "bad_inputs_clear_error": sum(r["clear_error"] for r in results),
        "tracebacks": sum(r["traceback"] for r in results),
    }
    print(json.dumps(summary))
    if args.reference:
        failed = [r["case"] for r in results if not r["clear_error"]]
        path = update_results("bad_inputs", {args.reference: {**summary, "not_clear": failed, "exe": str(exe)}})
        print(f"-> {path}")
    elif not args.k:
        path = update_results("bad_inputs", {**summary, "cases": results})
        print(f"-> {path}")


if __name__ == "__main__":
    main()

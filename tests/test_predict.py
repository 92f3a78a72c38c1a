"""`Predictor` predictions and `cleanloop predict`: agreement with score_frame, input and output forms."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cleanloop.cli import app
from cleanloop.errors import CleanloopError
from cleanloop.model.predict import Predictor
from cleanloop.model.score import score_frame
from cleanloop.model.serve import prediction_record, predictions_from_probs

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
TEXTS = [
    "i feel so happy and grateful today",
    "im feeling really lonely and down",
    "i am furious that they cancelled again",
    "i feel a bit nervous about tomorrow",
    "ok",
    "i was amazed to see how much the little garden had grown over the summer while we were away",
    "i love you all so much",
    "",  # an empty text is still a text
    "émotions: ça va 😊",
    "i feel like i am still looking at a blank canvas blank pieces of paper",
]

_MODEL_CACHE: dict[str, str] = {}


def build_tiny_model(folder) -> str:
    """The packaged MiniLM with a fresh 6-label head whose weights are drawn from a fixed seed
    (large enough that the probabilities are far from uniform), saved with its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from cleanloop.model.infer import packaged_model_dir

    hf_logging.set_verbosity_error()
    base = packaged_model_dir()
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=gen) * 0.5)
        model.classifier.bias.zero_()
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Folder of a small untrained classifier, built once per session (shared with test_serve)."""
    if "dir" not in _MODEL_CACHE:
        _MODEL_CACHE["dir"] = build_tiny_model(tmp_path_factory.mktemp("tiny_model"))
    return _MODEL_CACHE["dir"]


@pytest.fixture(scope="module")
def predictor(tiny_model) -> Predictor:
    # fp32 everywhere: the 1e-5 comparisons below hold for fp32, not for bf16 on CPUs that have it
    return Predictor.load(tiny_model, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def reference(predictor) -> np.ndarray:
    """What `cleanloop score` computes for TEXTS: (N, C) probabilities."""
    df = score_frame(predictor, [f"t{i}" for i in range(len(TEXTS))], TEXTS, None)
    return np.stack(df["probs"].to_numpy())


def _probs(records: list[dict]) -> np.ndarray:
    return np.array([[r["probabilities"][name] for name in LABELS] for r in records])


# --- Python ---------------------------------------------------------------------------


def test_predict_agrees_with_score_frame(predictor, reference):
    preds = predictor.predict(TEXTS)
    assert [p.label for p in preds] == [LABELS[i] for i in reference.argmax(1)]
    np.testing.assert_allclose([[p.probabilities[n] for n in LABELS] for p in preds], reference, atol=1e-5)
    np.testing.assert_allclose([p.score for p in preds], reference.max(1), atol=1e-5)
    # the tiny model is not uniform: the agreement above is not trivially true
    assert reference.max(1).min() > 1 / len(LABELS) + 0.02


def test_batch_size_and_batch_company_do_not_change_probabilities(predictor, reference):
    """The server groups one client's texts with other clients'; padding must not matter."""
    one_by_one = np.concatenate([predictor.predict_arrays([t], batch_size=1)["probs"] for t in TEXTS])
    np.testing.assert_allclose(one_by_one, reference, atol=1e-5)
    mixed = predictor.predict_arrays(TEXTS[::-1] + ["padding " * 40], batch_size=4)["probs"][: len(TEXTS)][::-1]
    np.testing.assert_allclose(mixed, reference, atol=1e-5)


def test_served_groups_are_packed_without_changing_probabilities(predictor, reference):
    """The served path packs a group's texts into unpadded sequences: same answers as padded batches,
    also when the group spans several sequences (a small token budget)."""
    from cleanloop.model.infer import packed_forward

    assert predictor.packs()
    np.testing.assert_allclose(predictor.predict_group(TEXTS), reference, atol=1e-5)
    small = packed_forward(predictor.model, predictor.tokenizer, TEXTS, predictor.max_length, max_tokens=16)
    padded = predictor.predict_arrays(TEXTS)
    np.testing.assert_allclose(small["probs"], reference, atol=1e-5)
    np.testing.assert_allclose(small["embeddings"], padded["embeddings"], atol=1e-4)


def test_a_model_whose_packed_answers_differ_is_served_padded(predictor):
    """RoBERTa counts positions from its padding index, so packing with positions from 0 changes its
    answers: the check refuses it and predict_group falls back to padded batches."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from cleanloop.model.infer import classifier_step, forward_batches, packed_forward

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=predictor.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, num_labels=3, pad_token_id=0,
                           max_position_embeddings=80)
    roberta = Predictor(RobertaForSequenceClassification(config).eval(), predictor.tokenizer, ["a", "b", "c"])
    padded = forward_batches(roberta.model, roberta.tokenizer, TEXTS, classifier_step)["probs"]
    assert np.abs(packed_forward(roberta.model, roberta.tokenizer, TEXTS)["probs"] - padded).max() > 1e-4
    assert not roberta.packs()
    np.testing.assert_allclose(roberta.predict_group(TEXTS), padded, atol=1e-6)


def test_prediction_record_top_k(predictor, reference):
    preds = predictions_from_probs(reference, LABELS)
    rec = prediction_record(preds[0], top_k=3)
    assert [d["label"] for d in rec["top_k"]] == [LABELS[i] for i in np.argsort(-reference[0])[:3]]
    assert rec["top_k"][0] == {"label": rec["label"], "score": rec["score"]}
    assert abs(sum(rec["probabilities"].values()) - 1) < 1e-5
    assert "top_k" not in prediction_record(preds[0])


# --- the CLI --------------------------------------------------------------------------


@pytest.fixture
def run(tiny_model, tmp_path, monkeypatch):
    """Invoke `cleanloop predict --model TINY ...` in an empty folder; return the click Result."""
    monkeypatch.chdir(tmp_path)  # no stray ./cleanloop.toml
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(app, ["predict", "--model", tiny_model, "--precision", "fp32", *map(str, args)], input=input)

    return invoke


def _json_lines(result) -> list[dict]:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_cli_texts_as_arguments_json_lines_when_piped(run, reference):
    rows = _json_lines(run(*TEXTS[:4]))  # CliRunner's stdout is not a terminal -> JSON lines
    assert [r["text"] for r in rows] == TEXTS[:4]
    np.testing.assert_allclose(_probs(rows), reference[:4], atol=1e-5)
    assert [r["label"] for r in rows] == [LABELS[i] for i in reference[:4].argmax(1)]


def test_cli_top_k_and_table(run):
    rows = _json_lines(run("i feel great", "--top-k", 2, "--json"))
    assert len(rows[0]["top_k"]) == 2 and rows[0]["top_k"][0]["label"] == rows[0]["label"]
    res = run("i feel great", "so sad", "--table")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["label", "score", "text"]
    assert lines[1].split()[0] in LABELS and lines[1].endswith("i feel great")
    res = run("i feel great", "--table", "--top-k", 3)
    assert res.stdout.splitlines()[1].count(",") == 2


def test_cli_standard_input(run, reference):
    rows = _json_lines(run(input="\n".join(TEXTS[:3]) + "\n\n"))  # blank lines are skipped
    np.testing.assert_allclose(_probs(rows), reference[:3], atol=1e-5)


@pytest.mark.parametrize("kind", ["txt", "csv", "jsonl", "parquet"])
def test_cli_file_forms(run, reference, tmp_path, kind):
    texts = [t for t in TEXTS if t.strip()]
    expected = reference[[TEXTS.index(t) for t in texts]]
    path = tmp_path / f"in.{kind}"
    df = pd.DataFrame({"id": range(len(texts)), "tweet": texts})
    if kind == "txt":
        path.write_text("\n".join(texts) + "\n", encoding="utf-8")
        args = ["--file", path]
    else:
        {"csv": lambda: df.to_csv(path, index=False), "jsonl": lambda: df.to_json(path, orient="records", lines=True),
         "parquet": lambda: df.to_parquet(path)}[kind]()
        args = ["--file", path, "--text-column", "tweet"]
    rows = _json_lines(run(*args))
    assert [r["text"] for r in rows] == texts
    np.testing.assert_allclose(_probs(rows), expected, atol=1e-5)


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_cli_output_file(run, reference, tmp_path, suffix):
    out = tmp_path / "out" / f"pred.{suffix}"
    res = run(*TEXTS[:5], "--output", out)
    assert res.exit_code == 0, res.output
    assert f"5 predictions -> {out}" in res.stdout
    df = pd.read_parquet(out) if suffix == "parquet" else pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == ["text", "label", "score"] + [f"prob_{n}" for n in LABELS]
    assert df["text"].tolist() == TEXTS[:5]
    np.testing.assert_allclose(df[[f"prob_{n}" for n in LABELS]].to_numpy(), reference[:5], atol=1e-5)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left behind


@pytest.mark.parametrize(
    "args, input, message",
    [
        (["--file", "missing.txt"], None, "no file"),
        (["--file", "in.csv"], None, "column 'text' is missing (columns: tweet); fix: name the right column with"),
        (["--file", "in.xlsx"], None, "expected a"),
        (["hello", "--file", "in.csv"], None, "both texts and --file"),
        (["hello", "--output", "out.json"], None, "--output must end in .parquet or .csv"),
        (["hello", "--top-k", "7"], None, "model has 6 labels"),
        ([], "\n \n", "no texts in standard input"),
        (["--file", "nulls.jsonl", "--text-column", "tweet"], None, "row 1, column 'tweet': text is empty"),
        (["--file", "blank.csv", "--text-column", "tweet"], None, "row 1, column 'tweet': text is empty"),
    ],
)
def test_cli_errors_say_what_and_fix(run, tmp_path, args, input, message):
    pd.DataFrame({"tweet": ["a", "b"]}).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "in.xlsx").write_text("x")
    (tmp_path / "nulls.jsonl").write_text('{"tweet": "a"}\n{"tweet": null}\n')
    (tmp_path / "blank.csv").write_text("tweet,n\na,1\n,2\n")  # the same missing value in every format
    res = run(*args, input=input)
    assert isinstance(res.exception, CleanloopError), res.output
    assert message in str(res.exception)


def test_cli_missing_model_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["predict", "--workdir", str(tmp_path / "nothing"), "hi"])
    assert isinstance(res.exception, CleanloopError) and "run 'cleanloop train' first" in str(res.exception)

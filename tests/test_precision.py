"""Precision: the setting, auto's choice and its fallback, bf16 and int8 through the one inference loop."""

from __future__ import annotations

import doctest
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cleanloop.cli import app
from cleanloop.config import Config
from cleanloop.errors import CleanloopError
from cleanloop.model import precision
from cleanloop.model.infer import classifier_step, forward_batches
from cleanloop.model.predict import Predictor
from test_predict import TEXTS, tiny_model  # noqa: F401  (the session's tiny classifier)


def test_doctests():
    assert doctest.testmod(precision).failed == 0


def test_config_validates_precision_and_the_cli_has_the_option(tmp_path, monkeypatch):
    with pytest.raises(CleanloopError, match="precision must be one of auto, fp32, bf16, int8, got 'fp16'"):
        Config(precision="fp16")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["config", "--precision", "int8"])
    assert res.exit_code == 0 and json.loads(res.stdout)["model"]["precision"] == "int8"
    res = CliRunner().invoke(app, ["config", "--precision", "half"])  # the choices are the option's
    assert res.exit_code == 2 and "'half' is not one of 'auto', 'fp32', 'bf16', 'int8'" in res.output


def test_auto_picks_bf16_only_where_native_and_falls_back_on_a_failed_check():
    lacks = "this CPU has no avx512_bf16 or amx_bf16"
    assert precision._pick("auto", None, lacks, None) == ("fp32", f"auto: {lacks}")
    assert precision._pick("auto", "amx_bf16", lacks, None) == ("bf16", "auto: amx_bf16")
    passed = {"bf16": {"agreement": 0.9995}}
    assert precision._pick("auto", "avx512_bf16", lacks, passed)[0] == "bf16"
    used, why = precision._pick("auto", "avx512_bf16", lacks, {"bf16": {"agreement": 0.998}})
    assert used == "fp32" and "99.80%" in why
    # bf16 that agrees but runs slower (a small model on a GPU, H200: 0.88x when scoring) is not picked
    used, why = precision._pick("auto", "cuda", lacks, {"bf16": {"agreement": 1.0, "speedup": 0.88}})
    assert used == "fp32" and "slower" in why and "0.88x" in why
    assert precision._pick("auto", "cuda", lacks, {"bf16": {"agreement": 1.0, "speedup": 1.7}})[0] == "bf16"
    # an explicit choice is kept, whatever the check said
    assert precision._pick("bf16", None, lacks, {"bf16": {"agreement": 0.5}}) == ("bf16", "asked")
    with pytest.raises(CleanloopError, match="int8 runs on CPU only"):
        precision.resolve("int8", torch.device("cuda"))
    with pytest.raises(CleanloopError, match="got 'fp8'"):
        precision.resolve("fp8", torch.device("cpu"))


def test_auto_on_this_machine_follows_its_cpu_flags():
    used, why = precision.resolve("auto", torch.device("cpu"))
    flags = precision.cpu_flags()
    assert used == ("bf16" if {"avx512_bf16", "amx_bf16"} & flags else "fp32"), why
    assert precision.hardware(torch.device("cpu"))["native_bf16"] == (None if used == "fp32" else why[len("auto: "):])


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):  # noqa: F811
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoModelForSequenceClassification.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def test_bf16_and_int8_run_in_the_inference_loop_close_to_fp32(model_and_tokenizer):
    model, tok = model_and_tokenizer
    probs = {p: forward_batches(model, tok, TEXTS, classifier_step, 4, 64, precision=p) for p in ("fp32", "bf16", "int8")}
    ref = probs["fp32"]["probs"]
    for p in ("bf16", "int8"):
        got = probs[p]["probs"]
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
        assert np.abs(got - ref).max() < 0.1, p  # same model, lower precision
        assert not np.array_equal(got, ref), p  # ... and really another computation
        assert np.isfinite(probs[p]["embeddings"]).all()
    # int8 quantizes a copy: the caller's model keeps its float Linear layers
    assert not precision.is_quantized(model)
    assert isinstance(model.classifier, torch.nn.Linear)


def test_predictor_int8_quantizes_once_and_auto_obeys_the_recorded_check(tiny_model, tmp_path):  # noqa: F811
    p8 = Predictor.load(tiny_model, device="cpu", precision="int8")
    assert p8.precision == "int8" and precision.is_quantized(p8.model)
    assert precision.prepare(p8.model, "int8") is p8.model  # not quantized twice
    quantized = [m for m in p8.model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert {m.weight().qscheme() for m in quantized} == {torch.per_channel_affine}  # one scale per output row
    # a model whose check found bf16 changing top labels: auto keeps fp32 wherever it loads
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    (folder / "metrics.json").write_text(json.dumps({"precision": {"checks": {"bf16": {"agreement": 0.99}}}}))
    p = Predictor.load(folder, device="cpu")
    assert p.precision == "fp32"
    if precision.native_bf16(torch.device("cpu")):
        assert "99.00%" in p.precision_reason


def test_compare_reports_speed_next_to_agreement_and_accuracy_change():
    labels = np.array([0, 1, 1, 0])
    fp32 = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    low = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])  # flips the last (right) label

    checks = precision.compare(lambda p: low, labels, ["fp32", "int8"], reference=(fp32, 1.0))
    assert checks["fp32"]["accuracy"] == 1.0 and checks["fp32"]["per_s"] == 4.0
    assert checks["int8"]["agreement"] == 0.75
    assert checks["int8"]["accuracy_change_pt"] == -25.0
    assert checks["int8"]["max_prob_diff"] == pytest.approx(0.2)
    line = precision.describe("int8", "asked", checks)
    assert "top-1 agreement 75.00%" in line and "(-25.00 pt)" in line and "/s (" in line
    assert "not measured" in precision.describe("bf16", "asked", None)
    assert precision.describe("fp32", "auto: this CPU has no avx512_bf16 or amx_bf16") == (
        "precision fp32 (auto: this CPU has no avx512_bf16 or amx_bf16)")


def test_cli_predict_says_which_precision_runs(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["predict", "--model", tiny_model, "--precision", "int8", "--json", "i feel great"])
    assert res.exit_code == 0, res.output
    assert "precision int8 (asked); not measured against fp32" in res.stderr
    assert json.loads(res.stdout)["label"]

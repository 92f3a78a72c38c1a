"""Numeric precision of inference and training: fp32, bf16 where the hardware runs it natively,
int8 (dynamic quantization of the Linear layers, CPU) only when asked.

``auto`` picks bf16 on a CPU with AVX-512 bf16 or AMX, or on a GPU with bf16, and fp32 elsewhere,
unless the model's own check (run by ``cleanloop train`` on the validation split and kept in
``metrics.json``) found bf16 changing more than 0.1% of the top labels, or running slower than fp32
(small models on a GPU can be launch-bound, where bf16's casts cost more than they save).

>>> resolve("fp32", torch.device("cpu"))
('fp32', 'asked')
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from cleanloop.config import PRECISIONS
from cleanloop.errors import CleanloopError

MIN_AGREEMENT = 0.999  # top-1 agreement with fp32 below which `auto` falls back to fp32
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> str | None:
    """What makes bf16 native on ``device`` ('avx512_bf16', 'amx_bf16', 'cuda'), or None."""
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    found = [f for f in BF16_CPU_FLAGS if f in cpu_flags()]
    if not found:  # no /proc/cpuinfo: ask torch's own cpuinfo
        cpu = getattr(torch, "cpu", None)
        if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
            found = ["amx_bf16"]
        elif getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
            found = ["avx512_bf16"]
    return found[-1] if found else None


def hardware(device: torch.device) -> dict:
    """The facts ``auto`` goes by, for metrics.json and the benchmarks."""
    flags = cpu_flags()
    return {
        "device": device.type,
        "native_bf16": native_bf16(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")),
    }


def validate(precision: str) -> str:
    if precision not in PRECISIONS:
        raise CleanloopError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve(requested: str, device: torch.device, checks: dict | None = None) -> tuple[str, str]:
    """The precision to run and why: ``(precision, reason)``.

    requested: one of PRECISIONS. checks: the ``precision.checks`` record of a model's
    metrics.json (``{"bf16": {"agreement": ...}, ...}``), or None when unknown.
    """
    validate(requested)
    if requested == "int8" and device.type != "cpu":
        raise CleanloopError(f"precision int8 runs on CPU only, the model is on {device.type}; fix: --precision bf16 or auto")
    lacks = "this GPU has no bf16" if device.type == "cuda" else f"this CPU has no {' or '.join(BF16_CPU_FLAGS)}"
    return _pick(requested, native_bf16(device), lacks, checks)


def _pick(requested: str, native: str | None, lacks: str, checks: dict | None) -> tuple[str, str]:
    if requested != "auto":
        return requested, "asked"
    if native is None:
        return "fp32", f"auto: {lacks}"
    check = (checks or {}).get("bf16", {})
    agreement, speedup = check.get("agreement"), check.get("speedup")
    if agreement is not None and agreement < MIN_AGREEMENT:
        return "fp32", f"auto: bf16 agreed with fp32 on only {agreement:.2%} of validation top labels (< {MIN_AGREEMENT:.1%})"
    if speedup is not None and speedup < 1.0:
        return "fp32", f"auto: bf16 ran slower than fp32 on the validation split ({speedup:.2f}x)"
    return "bf16", f"auto: {native}"


def checks_of(folder: str | Path) -> dict | None:
    """The precision checks recorded in a model folder's metrics.json, if any."""
    import json

    path = Path(folder) / "metrics.json"
    try:
        return json.loads(path.read_text()).get("precision", {}).get("checks")
    except (OSError, ValueError, AttributeError):
        return None


def is_quantized(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())


def prepare(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The module to run: for int8 a dynamically quantized copy (Linear layers), else ``model``.
    Idempotent: an already quantized model is returned as it is.

    int8 weights get one scale per output channel, not one per matrix: on 2,000 emotion validation
    tweets and three fine-tuned MiniLMs it agreed with fp32 on 96-98% of the top labels instead of
    94-97%, at the same speed (accuracy change -0.1 to -0.65 pt instead of -0.9 to -1.3)."""
    if precision != "int8" or is_quantized(model):
        return model
    if next(model.parameters()).device.type != "cpu":
        raise CleanloopError("precision int8 runs on CPU only; fix: --precision bf16 or auto on a GPU")
    import copy

    import warnings

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).eval(), {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig})


def autocast(precision: str, device: torch.device):
    """The context the forward pass runs in: bf16 autocast, or nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compare(
    run: Callable[[str], np.ndarray],
    labels: np.ndarray,
    precisions: Sequence[str],
    reference: tuple[np.ndarray, float] | None = None,
) -> dict:
    """Time and compare precisions on labelled texts against fp32.

    run: maps a precision to the (N, C) probabilities of all N texts. labels: (N,) integer labels.
    reference: fp32 probabilities and the seconds they took, when already computed.
    Returns ``{precision: {"per_s", "speedup", "agreement", "max_prob_diff", "accuracy",
    "accuracy_change_pt"}}``, fp32 included (agreement 1).
    """
    labels = np.asarray(labels)
    if reference is None:
        t0 = time.perf_counter()
        reference = (run("fp32"), time.perf_counter() - t0)
    ref, ref_s = reference
    n = len(labels)
    ref_acc = float((ref.argmax(1) == labels).mean())
    out = {"fp32": {"per_s": round(n / ref_s, 1), "speedup": 1.0, "agreement": 1.0, "accuracy": ref_acc}}
    for p in precisions:
        if p == "fp32":
            continue
        t0 = time.perf_counter()
        probs = run(p)
        s = time.perf_counter() - t0
        acc = float((probs.argmax(1) == labels).mean())
        out[p] = {
            "per_s": round(n / s, 1),
            "speedup": round(ref_s / s, 2),
            "agreement": float((probs.argmax(1) == ref.argmax(1)).mean()),
            "max_prob_diff": round(float(np.abs(probs - ref).max()), 4),
            "accuracy": acc,
            "accuracy_change_pt": round(100 * (acc - ref_acc), 2),
        }
    return out


def summary(checks: dict) -> str:
    """One line per measured precision: speed next to the agreement and accuracy change."""
    parts = []
    for p, c in checks.items():
        if p == "fp32":
            parts.append(f"fp32 {c['per_s']:,.0f}/s, accuracy {c['accuracy']:.2%}")
        else:
            parts.append(
                f"{p} {c['per_s']:,.0f}/s ({c['speedup']:.2f}x), top-1 agreement {c['agreement']:.2%}, "
                f"accuracy {c['accuracy']:.2%} ({c['accuracy_change_pt']:+.2f} pt)"
            )
    return "; ".join(parts)


def describe(precision: str, reason: str, checks: dict | None = None) -> str:
    """One line for command output: the precision in use, why, and its measured cost when not fp32.

    >>> describe("int8", "asked", {"int8": {"per_s": 650.0, "speedup": 2.6, "agreement": 0.972,
    ...                                    "accuracy": 0.909, "accuracy_change_pt": -0.85}})
    'precision int8 (asked); on validation: 650/s (2.60x fp32), top-1 agreement 97.20%, accuracy 90.90% (-0.85 pt)'
    """
    line = f"precision {precision} ({reason})"
    c = (checks or {}).get(precision)
    if precision == "fp32":
        return line
    if c is None:
        return line + "; not measured against fp32 on this model (cleanloop train measures it)"
    return (f"{line}; on validation: {c['per_s']:,.0f}/s ({c['speedup']:.2f}x fp32), top-1 agreement "
            f"{c['agreement']:.2%}, accuracy {c['accuracy']:.2%} ({c['accuracy_change_pt']:+.2f} pt)")

"""Shared bits of the benchmark scripts: where results go and what machine made them."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from cleanloop.atomic import write_text

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (lscpu's), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> dict:
    import torch

    from importlib.metadata import version

    from cleanloop.model.precision import hardware

    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpu_model": cpu_model(),
        "cpu_vector_flags": hardware(torch.device("cpu"))["cpu_flags"],  # avx2/fma/avx512*/amx*: what bf16 needs
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("cleanloop", "torch", "transformers", "datasets", "cleanlab", "scikit-learn")},
    }


def update_results(name: str, part: dict) -> Path:
    """Merge ``part`` into ``bench/results/<name>.json`` (so parts can run separately) and rewrite it atomically."""
    path = RESULTS / f"{name}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    for key, val in part.items():
        if isinstance(val, dict) and isinstance(data.get(key), dict):
            data[key].update(val)
        else:
            data[key] = val
    data["machine"] = machine()
    return write_text(path, json.dumps(data, indent=2) + "\n")


def use_device(name: str) -> None:
    """``--device``: ``cpu`` hides the GPUs (call before any CUDA use), ``cuda`` insists on one, ``auto`` takes what there is."""
    if name == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif name == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here; fix: run on a GPU machine or pass --device cpu")


def fresh_dir(path: Path) -> Path:
    """Empty ``path`` for a new run: only a folder a bench made (its marker file) or an empty one is
    removed; anything else stops the bench, so a mistyped --workdir never deletes a user's files."""
    import shutil

    path = Path(path)
    marker = path / ".cleanloop-bench"
    if path.exists() and any(path.iterdir()) and not marker.exists():
        raise SystemExit(f"{path} is not empty and was not made by a cleanloop bench; fix: pass another --workdir")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    marker.touch()
    return path

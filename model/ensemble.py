"""Train several fine-tuned models and save them as ONE model folder (``cleanloop train --ensemble N``).

The folder holds one complete model per member (``member-0/``, ``member-1/``, ...) and an
``ensemble.json`` naming them; :meth:`~cleanloop.model.predict.Predictor.load` turns it into an
:class:`~cleanloop.model.predict.EnsemblePredictor` that averages the members' probabilities, so
``score``, ``predict``, ``serve`` and ``flag`` use it like a single model. Beside the members:
``metrics.json`` (the ensemble's validation and test metrics, each member's, and the members'
average), confusion matrices, a model card, and ``dynamics.npz`` with every member's epoch records
(flagging averages them all).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cleanloop.atomic import folder_tmp, replace_folder
from cleanloop.config import Config
from cleanloop.errors import CleanloopError
from cleanloop.model.predict import ENSEMBLE_META
from cleanloop.model.train import ClassifierTrainer, TrainResult, evaluate_splits, model_dir
from cleanloop.model.tune import TUNED


def seed_members(cfg: Config, n: int) -> list[Config]:
    """``n`` copies of ``cfg`` with seeds ``cfg.seed``, ``cfg.seed + 1``, ...

    >>> [c.seed for c in seed_members(Config(seed=7), 3)]
    [7, 8, 9]
    """
    if n < 1:
        raise CleanloopError(f"an ensemble needs at least 1 member, got {n}; fix: pass --ensemble 2 or more")
    return [cfg.replace(seed=cfg.seed + i) for i in range(n)]


def train_ensemble(
    members: Sequence[Config],
    dd,
    output_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Fine-tune one model per config in ``members`` and save them as one ensemble folder.

    members: the members' settings (same data, base model and max_length; e.g. :func:`seed_members`
    or the best settings of a study). dd: DatasetDict with train (and validation, test).
    Returns a :class:`TrainResult` whose ``metrics`` are the ensemble's, plus ``members`` (each
    member's seed, settings, accuracy and macro F1 per split) and ``member_average``.
    """
    members = list(members)
    if not members:
        raise CleanloopError("an ensemble needs at least 1 member; fix: pass --ensemble 2 or more")
    cfg = members[0]
    if any(m.method != "finetune" for m in members):
        raise CleanloopError("--ensemble trains fine-tuned models; fix: drop --method features")
    out = Path(output_dir) if output_dir is not None else model_dir(cfg)
    tmp = folder_tmp(out)
    names = dd["train"].features["label"].names
    results: list[TrainResult] = []
    for i, mcfg in enumerate(members):
        if progress is not None:
            progress(f"ensemble member {i + 1}/{len(members)}: seed {mcfg.seed}, "
                     + ", ".join(f"{k} {getattr(mcfg, k)}" for k in TUNED))
        res = ClassifierTrainer(mcfg).train(dd, tmp / f"member-{i}")
        if not res.main_process:
            return res
        results.append(res)

    eval_probs = {s: (np.asarray(dd[s]["label"]), np.mean([r.probs[s] for r in results], axis=0))
                  for s in results[0].probs}
    metrics = evaluate_splits(eval_probs, names, tmp, f"ensemble of {len(members)}")
    keys = ("accuracy", "macro_f1")
    metrics["members"] = [
        {"folder": f"member-{i}", "seed": m.seed, "settings": {k: getattr(m, k) for k in TUNED},
         "train_seconds": round(r.train_seconds, 2), **{s: {k: r.metrics[s][k] for k in keys} for s in r.probs}}
        for i, (m, r) in enumerate(zip(members, results))
    ]
    metrics["member_average"] = {
        s: {k: float(np.mean([r.metrics[s][k] for r in results])) for k in keys} for s in results[0].probs
    }
    seconds = sum(r.train_seconds for r in results)
    records = 0
    dyn_files = [tmp / f"member-{i}" / "dynamics.npz" for i in range(len(members))]
    if all(p.exists() for p in dyn_files):  # one file with every member's epoch records
        dyns = [np.load(p) for p in dyn_files]
        probs = np.concatenate([d["probs"] for d in dyns])
        records = len(probs)
        np.savez_compressed(tmp / "dynamics.npz", ids=dyns[0]["ids"], labels=dyns[0]["labels"], probs=probs)
        for p in dyn_files:
            p.unlink()
    trainer = ClassifierTrainer(cfg)
    info = trainer._run_info(dd, seconds, records)
    info["ensemble"] = len(members)
    trainer._write(tmp, metrics, info, names)
    card = tmp / "README.md"
    card.write_text(card.read_text() + _card_section(metrics))
    (tmp / ENSEMBLE_META).write_text(json.dumps(
        {"members": [f"member-{i}" for i in range(len(members))], "combine": "mean of probabilities"}, indent=2))
    replace_folder(tmp, out)
    probs = {s: p for s, (_, p) in eval_probs.items()}
    return TrainResult(out, metrics, seconds, probs=probs)


def _card_section(metrics: dict) -> str:
    lines = ["", "## Ensemble", "",
             f"{len(metrics['members'])} fine-tuned models; predictions average their probabilities "
             "(`Predictor.load` on this folder does it).", "",
             "| member | seed | validation macro F1 | test accuracy | test macro F1 |", "|---|---:|---:|---:|---:|"]
    for m in metrics["members"]:
        val, test = m.get("validation", {}), m.get("test", {})
        lines.append(f"| {m['folder']} | {m['seed']} | {val.get('macro_f1', float('nan')):.3f} | "
                     f"{test.get('accuracy', float('nan')):.1%} | {test.get('macro_f1', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"

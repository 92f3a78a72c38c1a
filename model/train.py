"""Train the classifier: a fine-tuned transformer (default) or frozen features + logistic regression.

:class:`ClassifierTrainer` takes a :class:`~cleanloop.config.Config` and a
``DatasetDict`` (columns id, text, label) and writes, in one folder:
the model (and tokenizer), ``metrics.json`` (validation and test), confusion
matrix PNGs, a model card ``README.md`` and, for fine-tuning, ``dynamics.npz``
(each train example's probabilities at every epoch end and its last embeddings, for flagging).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cleanloop import __version__
from cleanloop.atomic import folder_tmp, replace_folder
from cleanloop.config import SMALL_DATA, Config
from cleanloop.model.card import model_card
from cleanloop.model import precision as prec
from cleanloop.model.infer import classifier_step, default_device, encoder_step, forward_batches, resolve_model_name
from cleanloop.model.metrics import classification_metrics, plot_confusion_matrix
from cleanloop.model.predict import FEATURES_HEAD, FEATURES_META
from cleanloop.workdir import Workdir

log = logging.getLogger(__name__)


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights ``n / (C * count_c)``, mean 1 over examples; unseen classes get 1.

    labels: (N,) integer labels. Returns (C,) float32 weights.
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 1.0)
    return w.astype(np.float32)


@dataclass
class TrainResult:
    """What a training run produced."""

    output_dir: Path
    metrics: dict
    train_seconds: float
    main_process: bool = True  # False on the other ranks of an `accelerate launch` run, which save nothing
    probs: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (N, C) probabilities of the saved model


def model_dir(cfg: Config) -> Path:
    """Where ``cleanloop train`` puts the model of ``cfg.method`` (in ``cfg.workdir``)."""
    return Workdir.of(cfg).model(cfg.method)


def evaluate_splits(probs_by_split: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], out: Path,
                    title: str) -> dict:
    """Metrics per split, and a confusion-matrix PNG for each in ``out`` (``confusion_<split>.png``)."""
    metrics = {}
    for split, (y, probs) in probs_by_split.items():
        metrics[split] = m = classification_metrics(y, probs.argmax(1), names)
        plot_confusion_matrix(m["confusion_matrix"], names, f"{title} ({split})", out / f"confusion_{split}.png")
    return metrics


def train_epochs(cfg: Config, n_examples: int) -> float:
    """Epochs of a fine-tune on ``n_examples``: ``cfg.epochs``, or when it is 0 (auto) ``cfg.judge_epochs``
    on small data (under :data:`~cleanloop.config.SMALL_DATA` examples) and 1 otherwise.

    One epoch of 3,000 examples is 94 steps of 32: too few. On 3,000 emotion tweets with 10% label errors
    (bench/noise.py) 3 epochs reached 80.4% test accuracy and 8 reached 88.1% (the best epoch by validation
    macro F1 is kept), and a model that trained ``--judge-epochs`` judges its labels itself, beside two
    judging runs (cleanloop.loops.judge): AP 0.854 and 0.852 (model seeds 42 and 1) against 0.815 after
    3 epochs, the judging runs at 1.3x its training against 1.58x a 3-epoch model's.

    >>> train_epochs(Config(), 3000), train_epochs(Config(), 16000), train_epochs(Config(epochs=3), 3000)
    (8.0, 1.0, 3)
    """
    if cfg.epochs:
        return cfg.epochs
    return cfg.judge_epochs if n_examples < SMALL_DATA else 1.0


def _training_args(cfg: Config, checkpoints: Path, per_epoch: bool, bf16: bool, device: torch.device):
    """The Trainer's settings from ``cfg``: best epoch by validation macro F1 when there are several."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,
        label_smoothing_factor=cfg.label_smoothing,
        eval_strategy="epoch" if per_epoch else "no",
        save_strategy="epoch" if per_epoch else "no",
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=per_epoch,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        train_sampling_strategy="group_by_length",
        logging_strategy="steps",
        logging_steps=50,
        disable_tqdm=False,  # the CLI quiets transformers' logging, which would otherwise hide the bar
        report_to="none",
        seed=cfg.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        bf16=bf16,
        use_cpu=bf16 and device.type == "cpu",  # the Trainer's bf16 on CPU asks for it
    )


def _weighted_loss(cfg: Config, labels: np.ndarray, n_classes: int):
    """The loss with inverse class-frequency weights (``cfg.class_weights``), or None: the model's own."""
    if not cfg.class_weights:
        return None
    w = torch.tensor(class_weights(labels, n_classes))

    def loss_func(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        return torch.nn.functional.cross_entropy(
            logits.float(), labels, weight=w.to(logits.device), label_smoothing=cfg.label_smoothing
        )

    return loss_func


def training_log_line(logs: dict) -> str:
    """One readable line for a log of the Trainer (a training step, an evaluation or the run's summary).

    >>> training_log_line({"loss": 1.6104, "grad_norm": 1.739, "learning_rate": 9.596e-05, "epoch": 0.1})
    'epoch 0.10  loss 1.6104  learning rate 9.60e-05'
    >>> training_log_line({"eval_loss": 0.41, "eval_accuracy": 0.9175, "eval_macro_f1": 0.8934, "eval_runtime": 9.1,
    ...                    "epoch": 1.0})
    'epoch 1.00  validation loss 0.4100  accuracy 91.75%  macro F1 0.893'
    >>> training_log_line({"train_runtime": 308.6, "train_samples_per_second": 51.85, "train_loss": 0.9105, "epoch": 1.0})
    'trained 1 epoch in 309 s (51.9 examples/s), mean loss 0.9105'
    """
    epoch = float(logs.get("epoch", 0))
    if "train_runtime" in logs:
        n = f"{epoch:g} epoch" + ("" if epoch == 1 else "s")
        return (f"trained {n} in {float(logs['train_runtime']):.0f} s "
                f"({float(logs.get('train_samples_per_second', 0)):.1f} examples/s), "
                f"mean loss {float(logs.get('train_loss', float('nan'))):.4f}")
    if "eval_loss" in logs:
        parts = [f"validation loss {float(logs['eval_loss']):.4f}"]
        if "eval_accuracy" in logs:
            parts.append(f"accuracy {float(logs['eval_accuracy']):.2%}")
        if "eval_macro_f1" in logs:
            parts.append(f"macro F1 {float(logs['eval_macro_f1']):.3f}")
        return f"epoch {epoch:.2f}  " + "  ".join(parts)
    if "loss" in logs:
        line = f"epoch {epoch:.2f}  loss {float(logs['loss']):.4f}"
        return line + (f"  learning rate {float(logs['learning_rate']):.2e}" if "learning_rate" in logs else "")
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items()
                     if k != "total_flos")


def _use_readable_progress(trainer) -> None:
    """Give ``trainer`` its usual progress bar, writing :func:`training_log_line` lines instead of raw log dicts."""
    from transformers.trainer_callback import ProgressCallback

    class ReadableProgress(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.set_description("train (steps)")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                self.training_bar.write(training_log_line(logs))

    trainer.pop_callback(ProgressCallback)
    trainer.add_callback(ReadableProgress())


def _dynamics_recorder(cfg: Config, tok, texts: list[str], precision: str):
    """A TrainerCallback recording every train example's probabilities at each epoch end (training
    dynamics; with ``dynamics_epochs`` = k, at the last k epoch ends only): ``.probs``, ``.seconds``,
    and the model's own sentence embeddings of the train texts at the latest epoch end, from the same
    pass (``.embeddings``: the representation the neighbour-label signal votes in)."""
    from transformers import TrainerCallback

    epoch_ends = math.ceil(cfg.epochs)  # a fractional last epoch ends too
    skip_ends = max(0, epoch_ends - cfg.dynamics_epochs) if cfg.dynamics_epochs else 0

    class DynamicsCallback(TrainerCallback):
        def __init__(self):
            self.ends, self.probs, self.seconds, self.embeddings = 0, [], 0.0, None

        def on_epoch_end(self, args, state, control, model=None, **kw):
            self.ends += 1
            if self.ends <= skip_ends:
                return
            t0 = time.perf_counter()
            out = forward_batches(model, tok, texts, classifier_step, cfg.eval_batch_size, cfg.max_length,
                                  precision=precision)
            self.probs.append(out["probs"].astype(np.float32))
            self.embeddings = out["embeddings"].astype(np.float16)
            self.seconds += time.perf_counter() - t0

    return DynamicsCallback()


class ClassifierTrainer:
    """Train, evaluate and save a classifier as ``cfg`` says, in ``workdir`` (default ``Workdir.of(cfg)``:
    its model folder, its checkpoints while fine-tuning, its feature cache)::

        result = ClassifierTrainer(cfg).train(dataset_dict)
        result.metrics["test"]["accuracy"]
    """

    def __init__(self, cfg: Config, callbacks: tuple = (), workdir: Workdir | None = None):
        self.cfg = cfg
        self.callbacks = list(callbacks)  # extra transformers TrainerCallbacks (e.g. tuning's pruning)
        self.workdir = workdir or Workdir.of(cfg)

    def train(self, dd, output_dir: Path | None = None) -> TrainResult:
        out = Path(output_dir) if output_dir is not None else self.workdir.model(self.cfg.method)
        if self.cfg.method == "features":
            return self._train_features(dd, out)
        if not self.cfg.epochs:  # auto: as the data's size says
            self.cfg = self.cfg.replace(epochs=train_epochs(self.cfg, len(dd["train"])))
            log.info("epochs: %g (auto for %s train examples: --judge-epochs under %s, else 1; --epochs sets them)",
                     self.cfg.epochs, f"{len(dd['train']):,}", f"{SMALL_DATA:,}")
        return self._train_finetune(dd, out)

    # --- fine-tuning -------------------------------------------------------------
    def _train_finetune(self, dd, out: Path) -> TrainResult:
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            DataCollatorWithPadding,
            Trainer,
            set_seed,
        )

        cfg = self.cfg
        names = dd["train"].features["label"].names
        base = resolve_model_name(cfg.base_model)
        set_seed(cfg.seed)
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(
            base,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
        )

        def tokenize(batch):
            enc = tok(batch["text"], truncation=True, max_length=cfg.max_length)
            enc["length"] = [len(x) for x in enc["input_ids"]]
            return enc

        keep = ["input_ids", "attention_mask", "token_type_ids", "labels", "length"]
        enc = dd.map(tokenize, batched=True, desc="tokenize").rename_column("label", "labels")
        enc = enc.remove_columns([c for c in enc["train"].column_names if c not in keep])
        has_val = "validation" in dd
        per_epoch = cfg.epochs > 1 and has_val
        device = default_device()
        run_prec = prec.resolve(cfg.precision, device)[0]  # before the check: dynamics, training
        train_bf16 = run_prec == "bf16"  # int8 is for inference only: it trains in fp32
        args = _training_args(cfg, self.workdir.checkpoints, per_epoch, train_bf16, device)

        def compute_metrics(pred):
            return {
                k: v
                for k, v in classification_metrics(pred.label_ids, pred.predictions.argmax(-1), names).items()
                if k in ("accuracy", "macro_f1", "weighted_f1")
            }

        loss_func = _weighted_loss(cfg, np.asarray(dd["train"]["label"]), len(names))

        recorder = _dynamics_recorder(cfg, tok, list(dd["train"]["text"]), run_prec)

        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=enc["train"],
            eval_dataset=enc["validation"] if has_val else None,
            processing_class=tok,
            data_collator=DataCollatorWithPadding(tok),
            compute_metrics=compute_metrics if has_val else None,
            compute_loss_func=loss_func,
            callbacks=([recorder] if cfg.record_dynamics else []) + self.callbacks,
        )
        _use_readable_progress(trainer)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        if not trainer.is_world_process_zero():
            return TrainResult(out, {}, seconds, main_process=False)

        tmp = folder_tmp(out)
        trainer.save_model(str(tmp))
        # without the autocast wrapper that bf16 training put on forward: the evaluation below is fp32
        model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
        eval_probs, val_seconds = {}, 0.0
        for split in ("validation", "test"):  # the model's own figures: fp32
            if split in dd:
                t0 = time.perf_counter()
                probs = forward_batches(
                    model, tok, list(dd[split]["text"]), classifier_step, cfg.eval_batch_size, cfg.max_length
                )["probs"]
                val_seconds = val_seconds or time.perf_counter() - t0
                eval_probs[split] = (np.asarray(dd[split]["label"]), probs)
        metrics = evaluate_splits(eval_probs, names, tmp, "fine-tuned " + Path(base).name)
        metrics["precision"] = self._check_precision(model, tok, dd, eval_probs, val_seconds, device, train_bf16)
        dynamics = recorder.probs
        info = self._run_info(dd, seconds, len(dynamics))
        info["dynamics_seconds"] = round(recorder.seconds, 2)
        if dynamics:
            np.savez_compressed(
                tmp / "dynamics.npz",
                ids=np.asarray(dd["train"]["id"]),
                labels=np.asarray(dd["train"]["label"]),
                probs=np.stack(dynamics),
                embeddings=recorder.embeddings,
            )
        self._write(tmp, metrics, info, names)
        shutil.rmtree(self.workdir.checkpoints, ignore_errors=True)
        replace_folder(tmp, out)
        return TrainResult(out, metrics, seconds, probs={s: p for s, (_, p) in eval_probs.items()})

    # --- frozen features + logistic regression -----------------------------------
    def _train_features(self, dd, out: Path) -> TrainResult:
        from sklearn.dummy import DummyClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        import joblib

        cfg = self.cfg
        names = dd["train"].features["label"].names
        feats = {split: extract_features(cfg, ds, self.workdir) for split, ds in dd.items()}
        y = {split: np.asarray(ds["label"]) for split, ds in dd.items()}
        start = time.perf_counter()
        head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=cfg.seed))
        head.fit(feats["train"], y["train"])
        seconds = time.perf_counter() - start
        dummy = DummyClassifier(strategy="most_frequent").fit(feats["train"], y["train"])

        tmp = folder_tmp(out)
        eval_probs, dummy_probs = {}, {}
        for split in ("validation", "test"):
            if split in dd:
                eval_probs[split] = (y[split], _full_proba(head, feats[split], len(names)))
                dummy_probs[split] = (y[split], _full_proba(dummy, feats[split], len(names)))
        metrics = evaluate_splits(eval_probs, names, tmp, "features + logistic regression")
        dummy_metrics = evaluate_splits(dummy_probs, names, tmp / "dummy", "most frequent class")
        shutil.rmtree(tmp / "dummy")
        metrics["dummy"] = {s: {k: m[k] for k in ("accuracy", "macro_f1", "weighted_f1")} for s, m in dummy_metrics.items()}
        device = default_device()
        used, why = prec.resolve(cfg.precision, device)
        metrics["precision"] = {"requested": cfg.precision, "used": used, "why": why, "hardware": prec.hardware(device),
                                "checks": None}
        joblib.dump(head, tmp / FEATURES_HEAD)
        (tmp / FEATURES_META).write_text(
            json.dumps(
                {"base_model": cfg.base_model, "pooling": cfg.pooling, "max_length": cfg.max_length, "label_names": names},
                indent=2,
            )
        )
        self._write(tmp, metrics, self._run_info(dd, seconds, 0), names)
        replace_folder(tmp, out)
        return TrainResult(out, metrics, seconds)

    def _check_precision(self, model, tok, dd, eval_probs, val_seconds, device, train_bf16) -> dict:
        """Measure bf16 (where native or asked) and int8 (CPU) against fp32 on the validation split,
        then pick the precision later loads use: ``auto`` falls back to fp32 if bf16 changes more
        than 0.1% of the top labels; an explicit choice is kept and its figures reported."""
        cfg = self.cfg
        record = {"requested": cfg.precision, "training": "bf16" if train_bf16 else "fp32",
                  "hardware": prec.hardware(device), "min_agreement": prec.MIN_AGREEMENT, "checks": None}
        if "validation" in eval_probs:
            candidates = ["bf16"] if prec.native_bf16(device) or cfg.precision == "bf16" else []
            candidates += ["int8"] if device.type == "cpu" else []
            texts = list(dd["validation"]["text"])

            def run(p):
                return forward_batches(model, tok, texts, classifier_step, cfg.eval_batch_size, cfg.max_length,
                                       precision=p)["probs"]

            labels, ref = eval_probs["validation"]
            record["checks"] = prec.compare(run, labels, candidates, reference=(ref, val_seconds))
            record["checked_on"] = f"validation ({len(texts):,} texts)"
        record["used"], record["why"] = prec.resolve(cfg.precision, device, record["checks"])
        return record

    # --- shared ------------------------------------------------------------------
    def _run_info(self, dd, seconds: float, epochs_recorded: int) -> dict:
        import platform

        return {
            "cleanloop_version": __version__,
            "config": self.cfg.to_dict(),
            "train_examples": len(dd["train"]),
            "train_seconds": round(seconds, 2),
            "dynamics_epochs": epochs_recorded,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
            "torch": torch.__version__,
            "python": platform.python_version(),
        }

    def _write(self, folder: Path, metrics: dict, info: dict, names: list[str]) -> None:
        (folder / "metrics.json").write_text(json.dumps({**metrics, "run": info}, indent=2))
        (folder / "cleanloop.json").write_text(
            json.dumps({"label_names": names, "max_length": self.cfg.max_length, "method": self.cfg.method}, indent=2)
        )
        (folder / "README.md").write_text(model_card(self.cfg, metrics, info, names))


def _full_proba(clf, X: np.ndarray, num_classes: int) -> np.ndarray:
    probs = np.zeros((len(X), num_classes), dtype=np.float32)
    probs[:, clf.classes_] = clf.predict_proba(X)
    return probs


def extract_features(cfg: Config, ds, workdir: Workdir | None = None) -> np.ndarray:
    """Frozen-encoder features (N, D) for a split, cached on disk (in the cache of ``workdir``, default
    ``Workdir.of(cfg)``) by model, pooling and content."""
    from transformers import AutoModel, AutoTokenizer

    device = default_device()
    precision = prec.resolve(cfg.precision, device)[0]
    key = hashlib.sha1()
    for part in (cfg.base_model, cfg.pooling, str(cfg.max_length), precision):
        key.update(part.encode() + b"\0")
    for i, t in zip(ds["id"], ds["text"]):
        key.update(i.encode() + b"\0" + t.encode() + b"\0")
    wd = workdir or Workdir.of(cfg)
    cache = wd.cached("features", key.hexdigest()[:20])
    if cache.exists():
        return np.load(cache)
    name = resolve_model_name(cfg.base_model)
    model = AutoModel.from_pretrained(name).to(device)
    tok = AutoTokenizer.from_pretrained(name)
    from tqdm.auto import tqdm

    with tqdm(total=len(ds), desc="embed", unit="ex") as bar:
        feats = forward_batches(
            model, tok, list(ds["text"]), encoder_step(cfg.pooling), cfg.eval_batch_size, cfg.max_length, bar.update,
            precision,
        )["features"]
    wd.save_npy(cache, feats)
    return feats

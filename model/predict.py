"""Load a trained model folder and predict: the one object behind score, predict and serve."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cleanloop.errors import CleanloopError
from cleanloop.model.infer import (
    classifier_step,
    default_device,
    encoder_step,
    forward_batches,
    packed_forward,
    packing_agrees,
    resolve_model_name,
)
from cleanloop.model.precision import checks_of, prepare, resolve

FEATURES_HEAD = "logreg.joblib"
FEATURES_META = "features.json"
ENSEMBLE_META = "ensemble.json"  # in an ensemble folder: {"members": [sub-folder names]}


@dataclass
class Prediction:
    """One text's prediction: the top label, its probability, and all labels' probabilities."""

    label: str
    score: float
    probabilities: dict[str, float]

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]


class Predictor:
    """A text classifier loaded from a folder: a fine-tuned cleanloop model, a
    ``--method features`` run (frozen encoder + logistic regression), an ensemble
    (``cleanloop train --ensemble N``, see :class:`EnsemblePredictor`), or any Hub /
    local sequence-classification model with ``id2label``::

        p = Predictor.load("runs/emotion/model")
        p.predict(["i feel great"])[0].label   # 'joy'
    """

    def __init__(
        self, model, tokenizer, label_names: list[str], max_length: int = 64, head=None, pooling="mean",
        precision: str = "fp32", precision_reason: str = "asked",
    ):
        self.precision = precision  # resolved: 'fp32', 'bf16' or 'int8'
        self.precision_reason = precision_reason
        self.model = prepare(model, precision)
        self.tokenizer = tokenizer
        self.label_names = list(label_names)
        self.max_length = max_length
        self.head = head  # sklearn classifier over frozen features, or None
        self.pooling = pooling
        self._packs: bool | None = None  # see packs()

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = None, max_length: int = 64, precision: str = "auto"
    ) -> "Predictor":
        """precision: 'auto' (bf16 where native, unless the model's recorded check refused it), 'fp32',
        'bf16' or 'int8'; the one picked is ``predictor.precision``, why in ``precision_reason``."""
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(path)
        if (folder / ENSEMBLE_META).exists():
            members = json.loads((folder / ENSEMBLE_META).read_text())["members"]
            return EnsemblePredictor([cls.load(folder / m, device, max_length, precision) for m in members])
        dev = torch.device(device) if device is not None else default_device()
        prec = resolve(precision, dev, checks_of(folder))
        if (folder / FEATURES_HEAD).exists():
            import joblib

            meta = json.loads((folder / FEATURES_META).read_text())
            encoder_name = resolve_model_name(meta["base_model"])
            model = AutoModel.from_pretrained(encoder_name).to(dev)
            tok = AutoTokenizer.from_pretrained(encoder_name)
            head = joblib.load(folder / FEATURES_HEAD)
            return cls(model, tok, meta["label_names"], meta.get("max_length", max_length), head, meta["pooling"], *prec)
        name = str(folder) if folder.exists() else resolve_model_name(str(path))
        try:
            model = AutoModelForSequenceClassification.from_pretrained(name).to(dev)
            tok = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise CleanloopError(
                f"cannot load a classifier from {path} ({str(exc).splitlines()[0][:160]}); "
                "fix: point at the model folder written by 'cleanloop train' (WORKDIR/model)"
            ) from None
        id2label = model.config.id2label or {}
        names = [id2label.get(i, str(i)) for i in range(model.config.num_labels)]
        meta_file = folder / "cleanloop.json"
        if meta_file.exists():
            max_length = json.loads(meta_file.read_text()).get("max_length", max_length)
        return cls(model, tok, names, max_length, precision=prec[0], precision_reason=prec[1])

    def predict_arrays(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Class probabilities and embeddings for N texts.

        Returns ``probs`` (N, C) softmax probabilities, rows summing to one, columns
        in ``label_names`` order, and ``embeddings`` (N, D) mean-pooled last hidden states.
        """
        if self.head is None:
            return forward_batches(
                self.model, self.tokenizer, texts, classifier_step, batch_size, self.max_length, progress, self.precision
            )
        feats = forward_batches(
            self.model, self.tokenizer, texts, encoder_step(self.pooling), batch_size, self.max_length, progress,
            self.precision,
        )["features"]
        probs = np.zeros((len(feats), len(self.label_names)), dtype=np.float32)
        probs[:, self.head.classes_] = self.head.predict_proba(feats)
        return {"probs": probs, "embeddings": feats}

    def packs(self) -> bool:
        """Whether :meth:`predict_group` packs texts without padding: a fine-tuned classifier whose
        packed answers match its padded ones (checked once, on a few probe texts)."""
        if self._packs is None:
            self._packs = self.head is None and packing_agrees(self.model, self.tokenizer, self.max_length,
                                                               self.precision)
        return self._packs

    def predict_group(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """``probs`` (N, C) of a small group of texts in arrival order (the served path's groups):
        packed into unpadded sequences where :meth:`packs`, else :meth:`predict_arrays`' padded batches."""
        if self.packs():
            return packed_forward(self.model, self.tokenizer, texts, self.max_length, self.precision)["probs"]
        return self.predict_arrays(texts, batch_size)["probs"]

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
        """One :class:`Prediction` per text, in input order."""
        probs = self.predict_arrays(texts, batch_size)["probs"] if len(texts) else np.zeros((0, 0))
        out = []
        for row in probs:
            top = int(row.argmax())
            out.append(
                Prediction(self.label_names[top], float(row[top]), dict(zip(self.label_names, map(float, row))))
            )
        return out


class EnsemblePredictor(Predictor):
    """Several predictors over the same labels, used as one: the mean of their probabilities.

    ``embeddings`` are the first member's, so they keep the single model's dimension.
    ``Predictor.load`` returns one for a folder written by ``cleanloop train --ensemble N``.
    """

    def __init__(self, members: Sequence[Predictor]):
        first = members[0]
        for m in members[1:]:
            if m.label_names != first.label_names:
                raise CleanloopError(
                    f"ensemble members predict different labels ({first.label_names} vs {m.label_names}); "
                    "fix: build the ensemble from models trained on the same data"
                )
        super().__init__(first.model, first.tokenizer, first.label_names, first.max_length, first.head, first.pooling,
                         first.precision, first.precision_reason)
        self.members = list(members)

    def predict_arrays(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Like :meth:`Predictor.predict_arrays`; ``probs`` is the members' mean (rows still sum to one)."""
        n, done = len(self.members), [0, 0]  # texts done over all members, texts reported

        def member_progress(k: int) -> None:  # report each text once, after all members saw it
            done[0] += k
            if progress is not None and done[0] // n > done[1]:
                progress(done[0] // n - done[1])
                done[1] = done[0] // n

        outs = [m.predict_arrays(texts, batch_size, member_progress) for m in self.members]
        if not outs[0]:
            return outs[0]
        return {"probs": np.mean([o["probs"] for o in outs], axis=0), "embeddings": outs[0]["embeddings"]}

    def packs(self) -> bool:
        """Whether every member packs (:meth:`Predictor.packs`)."""
        return all([m.packs() for m in self.members])

    def predict_group(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Like :meth:`Predictor.predict_group`: the members' mean, each packed where it packs."""
        return np.mean([m.predict_group(texts, batch_size) for m in self.members], axis=0)

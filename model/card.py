"""Model card (README.md with the YAML header the Hub reads) for a trained classifier."""

from __future__ import annotations

from cleanloop.config import DEFAULT_BASE_MODEL, Config


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def model_card(cfg: Config, metrics: dict, info: dict, names: list[str]) -> str:
    """Markdown model card: what was trained on what, how, and how well."""
    base = "sentence-transformers/all-MiniLM-L6-v2" if cfg.base_model == DEFAULT_BASE_MODEL else cfg.base_model
    dataset = cfg.dataset if "/" in cfg.dataset and not cfg.dataset.startswith((".", "/")) else None
    method = (
        "fine-tuned end to end (AutoModelForSequenceClassification)"
        if cfg.method == "finetune"
        else f"frozen encoder features ({cfg.pooling} pooling) + logistic regression"
    )
    header = ["---", "library_name: transformers", "pipeline_tag: text-classification", "tags:", "- cleanloop"]
    header += ["- text-classification", f"base_model: {base}"]
    if dataset:
        header += ["datasets:", f"- {dataset}"]
    if "test" in metrics:
        header += [
            "model-index:",
            f"- name: cleanloop-{cfg.method}",
            "  results:",
            "  - task: {type: text-classification}",
            f"    dataset: {{name: {dataset or 'local data'}, type: {dataset or 'local'}, split: test}}",
            "    metrics:",
            f"    - {{type: accuracy, value: {metrics['test']['accuracy']:.4f}}}",
            f"    - {{type: f1, name: macro F1, value: {metrics['test']['macro_f1']:.4f}}}",
        ]
    header.append("---")
    lines = [
        "\n".join(header),
        "",
        f"# cleanloop {cfg.method} classifier",
        "",
        f"A {len(names)}-class text classifier ({', '.join(names)}), {method}, from `{base}`,",
        f"trained with cleanloop {info['cleanloop_version']} on {info['train_examples']:,} examples of `{cfg.dataset}`.",
        "",
        "## Results",
        "",
        "| split | accuracy | macro F1 | weighted F1 |",
        "|---|---:|---:|---:|",
    ]
    for split in ("validation", "test"):
        if split in metrics:
            m = metrics[split]
            lines.append(f"| {split} | {_pct(m['accuracy'])} | {m['macro_f1']:.3f} | {m['weighted_f1']:.3f} |")
    for split, m in metrics.get("dummy", {}).items():
        lines.append(f"| {split} (most-frequent baseline) | {_pct(m['accuracy'])} | {m['macro_f1']:.3f} | {m['weighted_f1']:.3f} |")
    if "test" in metrics:
        lines += ["", "Per class on test:", "", "| label | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        for n in names:
            c = metrics["test"]["per_class"][n]
            lines.append(f"| {n} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1-score']:.3f} | {int(c['support'])} |")
    lines += [
        "",
        "## Training",
        "",
        f"- epochs {cfg.epochs:g}, learning rate {cfg.learning_rate}, batch size {cfg.batch_size}, max length {cfg.max_length}",
        f"- label smoothing {cfg.label_smoothing}, class-weighted loss: {'yes' if cfg.class_weights else 'no'}, seed {cfg.seed}",
        f"- wall time {info['train_seconds']:.0f} s on {info['device']} (torch {info['torch']})",
        "",
        "## Use",
        "",
        "```python",
        "from cleanloop.model.predict import Predictor",
        "Predictor.load('path/to/this/folder').predict(['i feel so happy today'])",
        "```",
        "",
        "The confusion matrices are in `confusion_validation.png` and `confusion_test.png`.",
        "",
    ]
    return "\n".join(lines)

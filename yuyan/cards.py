"""Model cards: render `model_cards/yuyan.md` with huggingface_hub's `ModelCard` from a run's own metrics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_NAME = "yuyan.md"


def template_path() -> Path:
    """The card template: `model_cards/` beside the package in a checkout, or where setup.cfg installs it."""
    candidates = [
        Path(__file__).resolve().parents[1] / "model_cards" / TEMPLATE_NAME,
        Path(sys.prefix) / "share" / "yuyan" / "model_cards" / TEMPLATE_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"the model card template {TEMPLATE_NAME} is missing (looked in {candidates})")


def stack_name(layer_types: list[str]) -> str:
    kinds = set(layer_types)
    if kinds == {"lstm"}:
        return "lstm"
    if kinds == {"full_attention"}:
        return "attention"
    return "hybrid"


def render_model_card(metrics: dict[str, Any], run: dict[str, Any], config: dict[str, Any], repo_id: str) -> ModelCard:
    training = run.get("training", {})
    stack = stack_name(metrics["layer_types"])
    model_name = repo_id.rsplit("/", 1)[-1]
    # Numbers come from the run's own metrics, never typed in; `model_name` + `eval_results` make `model-index`.
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        license="apache-2.0",
        tags=["yuyan", stack, "custom_code", "causal-lm"] + (["lstm", "attention"] if stack == "hybrid" else []),
        model_name=model_name,
        eval_results=[
            EvalResult(
                task_type="text-generation",
                dataset_type="text",
                dataset_name=str(metrics.get("validation_data", "validation data")),
                dataset_split="validation",
                metric_type="perplexity",
                metric_value=round(float(metrics["validation_perplexity"]), 4),
                metric_name="validation perplexity",
            )
        ],
    )
    layer_types = metrics["layer_types"]
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=model_name,
        repo_id=repo_id,
        stack_description={"lstm": "recurrent (LSTM)", "attention": "Transformer decoder",
                           "hybrid": "hybrid LSTM + attention"}[stack],
        parameters=f"{metrics['parameters']:,}",
        num_layers=len(layer_types),
        layer_summary=", ".join(layer_types),
        hidden_size=config.get("hidden_size"),
        num_heads=config.get("num_attention_heads"),
        num_kv_heads=config.get("num_key_value_heads"),
        intermediate_size=config.get("intermediate_size"),
        vocab_size=config.get("vocab_size"),
        max_positions=config.get("max_position_embeddings"),
        block_size=training.get("block_size"),
        train_data=metrics.get("train_data"),
        validation_data=metrics.get("validation_data"),
        steps=metrics.get("steps"),
        stop_reason=metrics.get("stop_reason"),
        tokens_seen=f"{metrics.get('tokens_seen', 0):,}",
        learning_rate=training.get("learning_rate"),
        batch_size=training.get("batch_size"),
        gradient_accumulation_steps=training.get("gradient_accumulation_steps"),
        processes=metrics.get("processes", 1),
        weight_decay=training.get("weight_decay"),
        max_grad_norm=training.get("max_grad_norm"),
        mixed_precision=training.get("mixed_precision"),
        seed=training.get("seed"),
        hardware=f"{metrics.get('device')} ({metrics.get('hardware')})",
        train_minutes=f"{metrics.get('train_seconds', 0) / 60:.1f}",
        tokens_per_second=f"{metrics.get('tokens_per_second', 0):,.0f}",
        validation_loss=f"{metrics['validation_loss']:.4f}",
        validation_perplexity=f"{metrics['validation_perplexity']:.2f}",
        license_text="Apache-2.0 for the model weights and code; the training data keeps its own licence.",
    )


def write_model_card(folder: str | Path, metrics: dict[str, Any], run: dict[str, Any], repo_id: str | None = None) -> Path:
    """Render the card for the model in `folder` (its config.json) and write it as folder/README.md."""
    import json

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    card = render_model_card(metrics, run, config, repo_id or folder.resolve().name)
    path = folder / "README.md"
    card.save(path)
    return path


__all__ = ["render_model_card", "write_model_card", "template_path"]

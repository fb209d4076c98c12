"""Model cards: every folder Yuyan writes gets a README.md that is a complete Hub model card.

The templates live in `model_cards/` (Jinja, rendered by huggingface_hub's `ModelCard.from_template`):

- `yuyan.md`           a pretrained language model (`yuyan pretrain`),
- `yuyan-finetuned.md` a model fine-tuned for a task (`yuyan finetune`).

What goes in comes from the folder itself: the run's own metrics file (metrics.json: every number of the
evaluation, training time and throughput), the run record (run.json: data and hyperparameters), config.json
(architecture) and the tokenizer files. Nothing is typed in. Evaluation results also go into the card's YAML as
`model-index`, with the metric values exactly as metrics.json holds them.

`write_model_card(folder, metrics, run)` is called at the end of a run; `yuyan card --model DIR` (see
`yuyan.hub`) re-renders a folder's card from its files with `render_card_for_folder`.
"""

from __future__ import annotations

import json
import math
import os
import re
import site
import sys
import sysconfig
import unicodedata
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from yuyan.files import write_text_atomic
from yuyan.records import (
    METRICS_FILE,
    RUN_FILE,
    FinetuneMetrics,
    MetricsRecord,
    PretrainMetrics,
    RunRecord,
    metrics_from_dict,
    read_metrics,
    read_run,
    run_from_dict,
)
from yuyan.tasks import task_for_pipeline

PRETRAINED_TEMPLATE = "yuyan.md"
FINETUNED_TEMPLATE = "yuyan-finetuned.md"
LICENSE = "apache-2.0"

STACK_DESCRIPTIONS = {
    "lstm": "recurrent (LSTM)",
    "attention": "Transformer decoder",
    "hybrid": "hybrid LSTM + attention",
}

# Training settings shown in a fine-tuned model's card, in this order, when the run records them.
FINETUNE_SETTINGS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "weight_decay", "optim",
    "max_grad_norm", "label_smoothing_factor", "max_length", "max_seq_length", "block_size", "bf16", "fp16",
    "mixed_precision", "total_train_batch_size", "adam_beta1", "adam_beta2", "adam_epsilon",
    "gradient_checkpointing", "seed", "steps", "epochs",
)
LORA_SETTINGS = ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "bias", "use_rslora", "merged",
                 "trainable_parameters")

# Bookkeeping that `Trainer.evaluate` returns beside the metrics: not evaluation results.
NOT_METRICS = re.compile(r"^(eval_)?(epoch|step|runtime|samples_per_second|steps_per_second|.*_per_second)$")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


# ---------------------------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------------------------


def template_path(name: str = PRETRAINED_TEMPLATE) -> Path:
    """A card template: `model_cards/` beside the package in a checkout, else where setup.cfg installs it
    (`<prefix>/share/yuyan/model_cards`)."""
    candidates = [Path(__file__).resolve().parents[1] / "model_cards" / name]
    prefixes = [sys.prefix, sysconfig.get_paths().get("data"), getattr(site, "USER_BASE", None)]
    for prefix in dict.fromkeys(p for p in prefixes if p):
        candidates.append(Path(prefix) / "share" / "yuyan" / "model_cards" / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"the model card template {name} is missing (looked in {', '.join(str(c) for c in candidates)})"
    )


# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------


def _stack_config(layer_types: list[str]):
    """A `YuyanConfig` of the layer stack alone (sizes left at their defaults), to ask it what the stack holds;
    None when the stack was not recorded."""
    from yuyan.modeling import YuyanConfig

    if not layer_types:
        return None
    return YuyanConfig(mixer_types=list(layer_types), num_hidden_layers=len(layer_types))


def stack_name(layer_types: list[str]) -> str:
    """'lstm', 'attention' or 'hybrid', from a layer stack ('hybrid' when it was not recorded)."""
    config = _stack_config(layer_types)
    if config is None or (config.has_lstm and config.has_attention):
        return "hybrid"
    return "lstm" if config.has_lstm else "attention"


def looks_like_hub_id(value: Any) -> bool:
    """`org/name`, and not a path on this machine."""
    return (
        isinstance(value, str) and bool(_HUB_ID.match(value)) and not os.path.exists(value)
        and not value.startswith((".", "/"))
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any, digits: int = 4) -> str:
    """A number for the card's text (the YAML keeps the exact value)."""
    if not _is_number(value):
        return "not recorded" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:.{digits}f}"


def _value(value: Any) -> str:
    """A setting for the card's text; lists joined."""
    if value is None or value == "" or value == []:
        return "not recorded"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _describe_data(description: Any) -> str:
    """A data description for the text: local paths shortened to their file names (a card is public; the
    folder layout of the machine that trained it is not the reader's business)."""
    if isinstance(description, (list, tuple)):
        description = ", ".join(str(d) for d in description)
    if not description:
        return "not recorded"
    parts = []
    for part in str(description).split(", "):
        parts.append(Path(part).name if os.path.isabs(part) else part)
    return ", ".join(parts)


def _duration(seconds: Any) -> str:
    if not _is_number(seconds):
        return "not recorded"
    if seconds < 10:
        return f"{seconds:.2f} seconds"
    if seconds < 120:
        return f"{seconds:.1f} seconds"
    if seconds < 7200:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds / 3600:.1f} hours"


def _hardware(metrics: MetricsRecord) -> str:
    device, hardware = metrics.device, metrics.hardware
    if device and hardware:
        return f"{device} ({hardware})"
    return str(device or hardware or "not recorded")


def _metric_label(name: str) -> str:
    """`eval_accuracy` -> `accuracy`: the metric type in model-index."""
    return name[5:] if name.startswith("eval_") else name


def evaluation_scores(metrics: FinetuneMetrics | dict[str, Any]) -> dict[str, float]:
    """A fine-tuning run's evaluation results, as they go into `model-index`: the numbers of its `metrics`
    under their own names, without the bookkeeping entries (epoch, runtime, throughput)."""
    if isinstance(metrics, dict):
        metrics = FinetuneMetrics.from_dict(metrics)
    scores = metrics.metrics or {}
    if not isinstance(scores, dict):
        raise ValueError(f"metrics.json: 'metrics' should map metric names to values, not {type(scores).__name__}")
    return {name: value for name, value in scores.items() if _is_number(value) and not NOT_METRICS.match(name)}


def _dataset_type(name: Any) -> str:
    return name if looks_like_hub_id(name) else "custom"


def _byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + extra)] = byte
            extra += 1
    return table


def vocabulary_scripts(folder: Path) -> list[str]:
    """The writing systems of the tokenizer's learned (multi-byte) tokens, most frequent first: what the
    vocabulary was fitted to. Empty when the folder has no byte-level tokenizer.json."""
    path = Path(folder) / "tokenizer.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab = data["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(vocab, dict):
        return []
    decoder = _byte_decoder()
    special = {t.get("content") for t in data.get("added_tokens", []) if isinstance(t, dict)}
    counts: dict[str, int] = {}
    for token in vocab:
        if token in special:
            continue
        if all(ch in decoder for ch in token):
            raw = bytes(decoder[ch] for ch in token)
            if len(raw) < 2:
                continue  # the byte alphabet itself
            text = raw.decode("utf-8", errors="ignore")
        else:
            text = token
        scripts = set()
        for ch in text:
            if ch.isalpha():
                try:
                    first = unicodedata.name(ch).split()[0]
                except ValueError:
                    continue
                scripts.add({"CJK": "Han", "HANGUL": "Hangul"}.get(first, first.title()))
        for script in scripts:
            counts[script] = counts.get(script, 0) + 1
    total = sum(counts.values())
    return [s for s, n in sorted(counts.items(), key=lambda item: -item[1]) if n >= max(1, total // 100)]


def _languages(metrics: MetricsRecord, run: RunRecord) -> list[str] | None:
    """Languages, only where the run recorded them (`language` in metrics, run data or training settings)."""
    for source in (metrics.extra, run.data or {}, run.training or {}):
        value = source.get("language") if isinstance(source, dict) else None
        if value:
            return [value] if isinstance(value, str) else list(value)
    return None


def _tags(stack: str, *extra: str) -> list[str]:
    tags = ["yuyan", stack]
    if stack == "hybrid":
        tags += ["lstm", "attention"]
    tags += ["custom_code", *extra]
    return list(dict.fromkeys(tags))


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


def _architecture(metrics: MetricsRecord, config: dict[str, Any]) -> dict[str, Any]:
    # config.json says `mixer_types` (`layer_types` in folders written before 0.2).
    layer_types = metrics.layer_types or config.get("mixer_types") or config.get("layer_types") or []
    stack = stack_name(layer_types)
    stack_config = _stack_config(layer_types)
    has_attention = stack_config is not None and stack_config.has_attention
    width = f"{_value(config.get('hidden_size'))}"
    if has_attention:
        width += (f" (attention heads {_value(config.get('num_attention_heads'))}, key/value heads "
                  f"{_value(config.get('num_key_value_heads'))}")
    else:
        width += " ("
    intermediate = config.get("intermediate_size")
    width += ("; " if has_attention else "") + (f"MLP {intermediate})" if intermediate else "no MLP)")
    return {
        "stack": stack,
        "stack_description": STACK_DESCRIPTIONS[stack],
        "parameters": _fmt(metrics.parameters),
        "num_layers": len(layer_types),
        "layer_summary": ", ".join(layer_types) or "not recorded",
        "width": width,
        "vocab_size": _value(config.get("vocab_size")),
        "max_positions": _value(config.get("max_position_embeddings")),
        "has_attention": has_attention,
    }


def _tokenizer_section(folder: Path | None, languages: list[str] | None) -> dict[str, Any]:
    scripts = vocabulary_scripts(folder) if folder is not None else []
    return {
        "languages": ", ".join(languages) if languages else "",
        "vocabulary_scripts": ", ".join(scripts),
    }


def _recorded(value: Any) -> bool:
    return value is not None and value != "" and value != []


def _pretraining_hyperparameters(training: dict[str, Any], metrics: PretrainMetrics, block_size: Any) -> str:
    """The optimisation settings of a pretraining run, as one line; what the run did not record is left out."""
    get = training.get
    parts = []
    if _recorded(get("learning_rate")):
        schedule = f"learning rate {_value(get('learning_rate'))}"
        if _recorded(get("warmup_steps")):
            schedule += (f" (linear warm-up over {_value(get('warmup_steps'))} steps, at most a tenth of the run, "
                         "then cosine decay")
            if _recorded(get("min_learning_rate_ratio")):
                schedule += f" to {_value(get('min_learning_rate_ratio'))} of it"
            schedule += ")"
        parts.append(schedule)
    if _recorded(get("batch_size")):
        batch = f"batch {_value(get('batch_size'))} sequences"
        if _recorded(block_size):
            batch += f" x {_value(block_size)} tokens"
        if _recorded(get("gradient_accumulation_steps")):
            batch += f" x {_value(get('gradient_accumulation_steps'))} accumulation steps"
        if _recorded(metrics.processes):
            batch += f" x {_value(metrics.processes)} processes"
        parts.append(batch)
    adam = [f"betas {get('adam_beta1')}, {get('adam_beta2')}"] if _recorded(get("adam_beta1")) and _recorded(
        get("adam_beta2")) else []
    if _recorded(get("weight_decay")):
        adam.append(f"weight decay {_value(get('weight_decay'))}")
    adamw = "AdamW" + (f" ({'; '.join(adam)})" if adam else "")
    parts.append(f"Muon on the hidden matrices, {adamw} on the rest" if get("optimizer") == "muon" else adamw)
    if metrics.regularisation:
        chosen = metrics.regularisation
        parts.append(f"hidden dropout {_value(chosen['hidden_dropout'])} (chosen for about "
                     f"{chosen['planned_passes']:.1f} planned passes over the training text)")
    if _recorded(get("max_grad_norm")):
        parts.append(f"gradient clipping {_value(get('max_grad_norm'))}" if get("max_grad_norm") else
                     "no gradient clipping")
    precision = metrics.mixed_precision or get("mixed_precision")
    if _recorded(precision):
        parts.append(f"mixed precision {_value(precision)}")
    if _recorded(get("seed")):
        parts.append(f"seed {_value(get('seed'))}")
    return "; ".join(parts)


def _from_template(template: str, card_data: ModelCardData, model_name: str, repo_id: str,
                   architecture: dict[str, Any], folder: Path | None, languages: list[str] | None,
                   **values: Any) -> ModelCard:
    """Render a card template with what every card shows (names, architecture, tokenizer) and `values`."""
    return ModelCard.from_template(
        card_data, template_path=str(template_path(template)), model_name=model_name, repo_id=repo_id,
        **architecture, **_tokenizer_section(folder, languages), **values,
    )


def _render_pretrained(metrics: PretrainMetrics, run: RunRecord, config, repo_id, folder) -> ModelCard:
    training = run.training or {}
    data = run.data or {}
    architecture = _architecture(metrics, config)
    model_name = repo_id.rsplit("/", 1)[-1]
    languages = _languages(metrics, run)
    validation_name = _describe_data(metrics.validation_data or data.get("validation"))

    eval_results = []
    for metric_type, key, name in (("loss", "validation_loss", "validation loss (nats per token)"),
                                   ("perplexity", "validation_perplexity", "validation perplexity")):
        if _is_number(getattr(metrics, key)):
            eval_results.append(EvalResult(
                task_type="text-generation", task_name="Causal language modeling",
                dataset_type=_dataset_type(training.get("dataset")), dataset_name=validation_name,
                dataset_split=training.get("validation_split") or "validation",
                metric_type=metric_type, metric_name=name, metric_value=getattr(metrics, key),
            ))
    card_data = ModelCardData(
        language=languages,
        license=LICENSE,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=_tags(architecture["stack"], "text-generation", "causal-lm"),
        datasets=[training["dataset"]] if looks_like_hub_id(training.get("dataset")) else None,
        model_name=model_name,
        eval_results=eval_results or None,
    )

    loss_history = [p for p in metrics.loss_history or [] if isinstance(p, (list, tuple)) and len(p) == 2]
    eval_history = [p for p in metrics.eval_history or [] if isinstance(p, (list, tuple)) and len(p) == 2]
    block_size = training.get("block_size") or data.get("block_size")
    hyperparameters = _pretraining_hyperparameters(training, metrics, block_size)
    card = _from_template(
        PRETRAINED_TEMPLATE, card_data, model_name, repo_id, architecture, folder, languages,
        block_size=_value(block_size),
        train_data=_describe_data(metrics.train_data or data.get("train")),
        validation_data=validation_name,
        steps=_fmt(metrics.steps),
        stop_reason=_value(metrics.stop_reason),
        tokens_seen=_fmt(metrics.tokens_seen),
        hyperparameters=hyperparameters,
        hardware=_hardware(metrics),
        train_time=_duration(metrics.train_seconds),
        tokens_per_second=f"{metrics.tokens_per_second:,.0f}" if _is_number(metrics.tokens_per_second)
        else "not recorded",
        validation_loss=_fmt(metrics.validation_loss),
        validation_perplexity=f"{metrics.validation_perplexity:.2f}"
        if _is_number(metrics.validation_perplexity) else "not recorded",
        first_loss=_fmt(loss_history[0][1]) if loss_history else "",
        first_loss_step=_fmt(loss_history[0][0]) if loss_history else "",
        last_loss=_fmt(loss_history[-1][1]) if loss_history else "",
        last_loss_step=_fmt(loss_history[-1][0]) if loss_history else "",
        eval_history=[(_fmt(step), _fmt(loss)) for step, loss in eval_history],
    )
    return card


def _render_finetuned(metrics: FinetuneMetrics, run: RunRecord, config, repo_id, folder) -> ModelCard:
    task = metrics.task
    spec = task_for_pipeline(task)
    auto_class, task_phrase = spec.auto_class, spec.phrase
    training = run.training or {}
    lora = getattr(run, "lora", None) or None
    architecture = _architecture(metrics, config)
    model_name = repo_id.rsplit("/", 1)[-1]
    languages = _languages(metrics, run)
    base_model = metrics.base_model
    dataset = metrics.dataset
    validation_name = _describe_data(metrics.validation_data or "validation split")

    is_adapter = folder is not None and is_adapter_folder(folder)
    scores = evaluation_scores(metrics)
    eval_results = [
        EvalResult(
            task_type=task, task_name=task_phrase[0].upper() + task_phrase[1:],
            dataset_type=_dataset_type(dataset), dataset_name=validation_name, dataset_split="validation",
            metric_type=_metric_label(name), metric_name=_metric_label(name), metric_value=value,
        )
        for name, value in scores.items()
    ]
    card_data = ModelCardData(
        language=languages,
        license=LICENSE,
        library_name="peft" if is_adapter else "transformers",
        pipeline_tag=task,
        tags=_tags(architecture["stack"], task, "fine-tuned", *(["lora"] if lora else []),
                   *(["peft"] if is_adapter else [])),
        base_model=base_model if looks_like_hub_id(base_model) else None,
        datasets=[dataset] if looks_like_hub_id(dataset) else None,
        metrics=sorted({_metric_label(name) for name in scores}) or None,
        model_name=model_name,
        eval_results=eval_results or None,
    )

    settings = [(key, _value(training[key])) for key in FINETUNE_SETTINGS
                if training.get(key) not in (None, "", [], False) and not (key == "max_steps" and training[key] == -1)]
    lora_settings = [(key, _value(lora[key])) for key in LORA_SETTINGS if isinstance(lora, dict)
                     and lora.get(key) not in (None, "", [])]
    id2label = config.get("id2label") or {}
    labels = [] if not spec.has_labels else [
        id2label[k] for k in sorted(id2label, key=lambda k: (0, int(k), "") if str(k).isdigit() else (1, 0, str(k)))
    ]
    base_is_path = isinstance(base_model, str) and not looks_like_hub_id(base_model)
    card = _from_template(
        FINETUNED_TEMPLATE, card_data, model_name, repo_id, architecture, folder, languages,
        task=task,
        task_phrase=task_phrase,
        auto_class=auto_class,
        base_model=(f"a local model ({Path(base_model).resolve().name})" if base_is_path else base_model)
        or "not recorded",
        base_model_is_hub=looks_like_hub_id(base_model),
        labels=", ".join(str(label) for label in labels),
        dataset=_describe_data(dataset),
        validation_data=validation_name,
        settings=settings,
        lora_settings=lora_settings,
        uses_lora=bool(lora),
        is_adapter=is_adapter,
        hardware=_hardware(metrics),
        train_time=_duration(metrics.train_seconds),
        scores=[(_metric_label(name), _fmt(value)) for name, value in scores.items()],
    )
    return card


def render_model_card(
    metrics: MetricsRecord | dict[str, Any],
    run: RunRecord | dict[str, Any] | None,
    config: dict[str, Any],
    repo_id: str,
    folder: str | Path | None = None,
) -> ModelCard:
    """The card for a pretraining or a fine-tuning run (the records, or their JSON as dicts)."""
    metrics = metrics_from_dict(metrics)
    run = run_from_dict(run or {}, finetuning=metrics.is_finetuning)
    folder = Path(folder) if folder is not None else None
    if metrics.is_finetuning:
        return _render_finetuned(metrics, run, config, repo_id, folder)
    return _render_pretrained(metrics, run, config, repo_id, folder)


def default_repo_id(folder: str | Path) -> str:
    """The folder's name; for a staging folder (`yuyan pretrain` writes `OUTPUT/.final-XXXX.tmp` and moves its files
    into OUTPUT), the name of the folder it is staged in."""
    folder = Path(folder).resolve()
    if folder.name.startswith(".") or folder.name.endswith(".tmp"):
        folder = folder.parent
    return folder.name


def is_adapter_folder(folder: str | Path) -> bool:
    """A LoRA adapter saved on its own (`yuyan finetune --lora`): adapter_config.json and no config.json."""
    folder = Path(folder)
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def model_config(folder: str | Path, metrics: MetricsRecord | dict[str, Any],
                 run: RunRecord | dict[str, Any]) -> dict[str, Any]:
    """config.json of the model in `folder`; for an adapter folder, that of its base model where it is on this
    machine (else empty: the card then leaves the sizes out)."""
    folder = Path(folder)
    path = folder / "config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if not is_adapter_folder(folder):
        raise FileNotFoundError(f"{path} is missing: save the model there before writing its card")
    metrics = metrics_from_dict(metrics)
    run = run_from_dict(run or {}, finetuning=metrics.is_finetuning)
    candidates = [(getattr(run, "lora", None) or {}).get("base_model_path"), getattr(metrics, "base_model", None)]
    try:
        adapter = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        candidates.append(adapter.get("base_model_name_or_path"))
    except (OSError, ValueError, AttributeError):
        pass
    for candidate in candidates:
        if isinstance(candidate, str) and (Path(candidate) / "config.json").is_file():
            return json.loads((Path(candidate) / "config.json").read_text(encoding="utf-8"))
    return {}


def write_model_card(
    folder: str | Path, metrics: MetricsRecord | dict[str, Any], run: RunRecord | dict[str, Any] | None,
    repo_id: str | None = None,
) -> Path:
    """Render the card for the model in `folder` (its config.json and tokenizer) and write it as
    folder/README.md. `repo_id` (`org/name`) goes into the loading examples; by default the folder's name."""
    folder = Path(folder)
    config = model_config(folder, metrics, run or {})
    card = render_model_card(metrics, run, config, repo_id or default_repo_id(folder), folder)
    return write_text_atomic(folder / "README.md", str(card))


def read_run_files(folder: str | Path) -> tuple[MetricsRecord, RunRecord]:
    """metrics.json and run.json of a model folder; FileNotFoundError naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    needed = (METRICS_FILE, RUN_FILE) + (() if is_adapter_folder(folder) else ("config.json",))
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}: a card is rendered from the run's own files (written by "
            "`yuyan pretrain` / `yuyan finetune`)"
        )
    metrics = read_metrics(folder)
    return metrics, read_run(folder, finetuning=metrics.is_finetuning)


def render_card_for_folder(folder: str | Path, repo_id: str | None = None) -> Path:
    """Re-render folder/README.md from folder/metrics.json and folder/run.json (`yuyan card`)."""
    metrics, run = read_run_files(folder)
    return write_model_card(folder, metrics=metrics, run=run, repo_id=repo_id)


def card_repo_id(folder: str | Path) -> str | None:
    """The repo id a generated card was rendered for, when folder/README.md is exactly what the folder's files
    render (so re-rendering it loses nothing); None for a card edited by hand or not made by Yuyan."""
    folder = Path(folder)
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
        metrics, run = read_run_files(folder)
        config = model_config(folder, metrics, run)
    except (OSError, ValueError):
        return None
    candidates = re.findall(r'from_pretrained\("([^"]+)"', text)[:1] + [default_repo_id(folder)]
    for candidate in dict.fromkeys(candidates):
        try:
            rendered = render_model_card(metrics, run, config, candidate, folder)
        except (ValueError, KeyError, TypeError, FileNotFoundError):
            return None
        if str(rendered).strip() == text.strip():
            return candidate
    return None


__all__ = [
    "card_repo_id",
    "default_repo_id",
    "evaluation_scores",
    "is_adapter_folder",
    "model_config",
    "read_run_files",
    "render_card_for_folder",
    "render_model_card",
    "stack_name",
    "template_path",
    "vocabulary_scripts",
    "write_model_card",
]

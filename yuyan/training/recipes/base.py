"""What a task recipe hands to the fine-tuning driver, and the label helpers classification and tagging share."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from yuyan.tasks import config_labels


@dataclass
class TaskSetup:
    """What a task needs for one dataset (the driver, `yuyan.training.finetune`, takes the task's model class and
    pipeline task from the table, `yuyan.tasks.TASKS`); built before the model is loaded."""

    train_dataset: Any
    eval_dataset: Any
    data_collator: Callable
    head_modules: list[str] = field(default_factory=list)
    """Freshly initialised head layers: fully trained (LoRA `modules_to_save`)."""
    config_updates: dict[str, Any] = field(default_factory=dict)
    """Given to `from_pretrained` (num_labels, id2label, label2id)."""
    compute_metrics: Callable | None = None
    preprocess_logits_for_metrics: Callable | None = None
    final_evaluation: Callable | None = None
    """(trainer) -> metrics computed after training besides the Trainer's own evaluation (QA spans, generation)."""
    loss_only_evaluation: bool = False
    """The Trainer's evaluation keeps no logits (language-model logits are vocabulary-sized)."""
    data_info: dict[str, Any] = field(default_factory=dict)
    """Recorded in run.json under "data" (columns, label names, lengths)."""
    prepare_model: Callable | None = None
    """(model) -> None: last changes to the loaded model (generation config)."""


def label_name(value: Any, names: Sequence[str] | None, where: str) -> str:
    """A label value as the string used in `id2label`: integers stay digits (or index `names`), text as is."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float):
        if math.isnan(value):
            value = None
        elif value.is_integer():
            value = int(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{where}: an example has no label (empty or missing value)")
    if names is not None and isinstance(value, int):
        if not 0 <= value < len(names):
            raise ValueError(
                f"{where}: label {value} is outside the {len(names)} label names given ({', '.join(names)})"
            )
        return names[value]
    return value.strip() if isinstance(value, str) else str(value)


def ordered_labels(found: Iterable[str], names: Sequence[str] | None, outside_first: bool = False) -> list[str]:
    """The label set in id order: `names` when given; else numbers numerically, text alphabetically (with "O"
    first for tagging)."""
    if names is not None:
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be distinct: {list(names)}")
        return list(names)
    labels = set(found)
    if labels and all(label.lstrip("-").isdigit() for label in labels):
        ordered = sorted(labels, key=int)
    else:
        ordered = sorted(labels)
    if outside_first and "O" in labels:
        ordered.remove("O")
        ordered.insert(0, "O")
    return ordered


def check_known(values: Iterable[str], known: Sequence[str], where: str, what: str = "label") -> None:
    known_set = set(known)
    unknown = sorted({value for value in values if value not in known_set})
    if unknown:
        shown = ", ".join(repr(value) for value in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        listed = ", ".join(repr(value) for value in list(known)[:20]) + (", ..." if len(known) > 20 else "")
        raise ValueError(f"{where}: {what}(s) {shown} not among the training {what}s ({listed})")


def labelled_head(labels: Sequence[str]) -> dict[str, Any]:
    """The `TaskSetup` fields of a task whose new `score` head predicts one of `labels` (classification,
    tagging): the head trained whole under LoRA, the label names in the config, argmax predictions kept."""
    return {"head_modules": ["score"], "config_updates": config_labels(labels),
            "preprocess_logits_for_metrics": argmax_logits}


def first_logits(logits: Any) -> Any:
    """Models may return (logits, extras...) to the Trainer: the logits are first."""
    return logits[0] if isinstance(logits, (tuple, list)) else logits


def argmax_logits(logits, labels):
    """`preprocess_logits_for_metrics`: keep only the predicted ids, not the logits."""
    return first_logits(logits).argmax(dim=-1)


__all__ = [
    "TaskSetup",
    "argmax_logits",
    "check_known",
    "first_logits",
    "label_name",
    "ordered_labels",
]

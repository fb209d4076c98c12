"""The fine-tuning tasks, in one table (`TASKS`): per task its model class, the pipeline task its folders serve, its
default length, its recipe and its aliases. Fine-tuning (`yuyan.training.finetune`), the loader
(`yuyan.loading.load_finetuned`), the question-answering pipeline (`yuyan.pipelines`) and the model cards
(`yuyan.cards`) read it.

How each task is trained (data preparation, metrics) is its recipe, a module of `yuyan.training.recipes`; this
table names it and imports nothing from training, so that everything below training can read the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Task:
    """One fine-tuning task: how `yuyan finetune` trains it, what its folder loads as, how its card names it."""

    name: str
    """Our name (`--task`, run.json "task")."""
    pipeline_task: str
    """transformers' pipeline task the output folder serves, and its Hub tag (metrics.json "task")."""
    model_class_name: str
    """The `yuyan.modeling` class fine-tuned (and loaded back by `load_finetuned`)."""
    auto_class: str
    """The transformers Auto class that loads the folder (shown in the card)."""
    peft_task_type: str
    """peft's TaskType name for `--lora`."""
    default_max_length: int
    """Tokens per example when `--max-seq-length` is not given."""
    recipe_module: str
    """The module under `yuyan.training.recipes` that prepares the data and computes the metrics (`prepare`)."""
    phrase: str
    """The task in words, for the model card."""
    has_labels: bool = False
    """Whether the head predicts named labels (id2label in the config, run.json data "labels")."""
    aliases: tuple[str, ...] = ()

    @property
    def model_class(self) -> type:
        from yuyan import modeling

        return getattr(modeling, self.model_class_name)


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("classification", "text-classification", "YuyanForSequenceClassification",
             "AutoModelForSequenceClassification", "SEQ_CLS", 256, "classification", "text classification",
             has_labels=True, aliases=("text-classification", "sequence-classification")),
        Task("token-classification", "token-classification", "YuyanForTokenClassification",
             "AutoModelForTokenClassification", "TOKEN_CLS", 256, "tagging", "token classification (tagging)",
             has_labels=True, aliases=("tagging", "ner")),
        Task("question-answering", "question-answering", "YuyanForQuestionAnswering",
             "AutoModelForQuestionAnswering", "QUESTION_ANS", 384, "question_answering",
             "extractive question answering", aliases=("qa", "extractive-qa")),
        Task("text-generation", "text-generation", "YuyanForCausalLM", "AutoModelForCausalLM", "CAUSAL_LM", 512,
             "generation", "text generation", aliases=("generation",)),
    )
}


def get_task(name: str) -> Task:
    """The task called `name` (or one of its aliases); ValueError listing the tasks otherwise."""
    for task in TASKS.values():
        if name == task.name or name in task.aliases:
            return task
    raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}")


def task_for_pipeline(pipeline_task: str) -> Task:
    """The task whose folders serve `pipeline_task` (metrics.json names a run's task that way)."""
    for task in TASKS.values():
        if task.pipeline_task == pipeline_task:
            return task
    raise ValueError(
        f"unknown fine-tuning task {pipeline_task!r} in metrics.json; allowed: "
        f"{sorted(task.pipeline_task for task in TASKS.values())}"
    )


def config_labels(labels: Sequence[str]) -> dict[str, Any]:
    """The config fields of a head that predicts one of `labels` (classification, tagging): how fine-tuning builds
    the head and how the loader rebuilds it under a LoRA adapter."""
    return {
        "num_labels": len(labels),
        "id2label": {index: label for index, label in enumerate(labels)},
        "label2id": {label: index for index, label in enumerate(labels)},
    }


__all__ = ["TASKS", "Task", "config_labels", "get_task", "task_for_pipeline"]

"""Task recipes for `yuyan.training.finetune`: data loading, preprocessing, metrics and post-processing per task.

- `data`: CSV / TSV / JSON / JSONL / SQuAD v1.1 files → `datasets.Dataset`, column checks.
- `classification`: text (+ pair) → label; accuracy, macro-F1.
- `tagging`: words + tags → per-token labels (first sub-token labelled); entity F1 over BIO chunks.
- `question_answering`: SQuAD-style extractive QA: windows with a stride, n-best spans, SQuAD EM / F1, and the
  `question-answering` pipeline that transformers 5 no longer ships (registered by `yuyan.pipelines`).
- `generation`: prompt → completion with the loss on the completion only; ROUGE-L / chrF / BLEU of greedy outputs.

The registry below (`TASKS`) is the one table of the tasks: per task its model class, pipeline task, default
length, recipe module (data preparation and metrics) and aliases. Fine-tuning, loading and the model cards read it.

Nothing here imports `datasets` at module level except `data`; `question_answering` imports only torch, numpy and
transformers, so `import yuyan` can register its pipeline cheaply.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


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
    """The module under `yuyan.training.tasks` that prepares the data and computes the metrics (`prepare`)."""
    phrase: str
    """The task in words, for the model card."""
    has_labels: bool = False
    """Whether the head predicts named labels (id2label in the config, run.json data "labels")."""
    aliases: tuple[str, ...] = ()

    @property
    def model_class(self) -> type:
        from yuyan import modeling

        return getattr(modeling, self.model_class_name)

    @property
    def recipe(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.recipe_module}")


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


__all__ = ["TASKS", "Task", "get_task", "task_for_pipeline"]

"""Task recipes for `yuyan.training.finetune`: data preparation, metrics and post-processing per task. The table of
the tasks (model class, pipeline task, default length, which recipe) is `yuyan.tasks.TASKS`.

- `tables`: CSV / TSV / JSON / JSONL / SQuAD v1.1 files → `datasets.Dataset`, column checks.
- `base`: what a recipe hands to the driver (`TaskSetup`), and the label helpers classification and tagging share.
- `classification`: text (+ pair) → label; accuracy, macro-F1.
- `tagging`: words + tags → per-token labels (first sub-token labelled); entity F1 over BIO chunks.
- `question_answering`: SQuAD-style extractive QA: labelled windows, SQuAD EM / F1 (the windowing and span search
  are the pipeline's, `yuyan.pipelines.question_answering`).
- `generation`: prompt → completion with the loss on the completion only; ROUGE-L / chrF / BLEU of greedy outputs.

Every recipe has `prepare(train, validation, tokenizer, data_args, train_path, validation_path, max_length)`
returning a `TaskSetup`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from yuyan.tasks import Task


def recipe_of(task: Task) -> ModuleType:
    """The recipe module of `task` (imported on first use: each pulls in its own metrics libraries)."""
    return importlib.import_module(f"{__name__}.{task.recipe_module}")


__all__ = ["recipe_of"]

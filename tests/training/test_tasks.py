"""yuyan.tasks: the one table of fine-tuning tasks, each with its recipe; and the pipelines Yuyan registers."""

from __future__ import annotations

import pytest
import transformers
from transformers import pipelines

import yuyan
from yuyan.pipelines import register_pipelines
from yuyan.pipelines.question_answering import QuestionAnsweringPipeline
from yuyan.tasks import TASKS, get_task, task_for_pipeline
from yuyan.training.recipes import recipe_of


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_loads_as_its_auto_class_and_has_a_recipe(name):
    task = TASKS[name]
    auto_class = getattr(transformers, task.auto_class)
    assert auto_class._model_mapping[yuyan.YuyanConfig] is task.model_class, "the card's Auto class loads it"
    assert callable(recipe_of(task).prepare)
    assert task_for_pipeline(task.pipeline_task) is task
    assert all(get_task(alias) is task for alias in (name, *task.aliases))


def test_names_and_aliases_are_unambiguous_and_unknown_ones_refused():
    names = [n for task in TASKS.values() for n in (task.name, *task.aliases)]
    assert len(names) == len(set(names))
    with pytest.raises(ValueError, match="unknown task 'summarization'; the tasks are classification"):
        get_task("summarization")
    with pytest.raises(ValueError, match="unknown fine-tuning task 'summarization' in metrics.json"):
        task_for_pipeline("summarization")


def test_the_question_answering_pipeline_is_registered_once_by_import_yuyan():
    registered = pipelines.PIPELINE_REGISTRY.supported_tasks["question-answering"]
    assert registered["impl"] is QuestionAnsweringPipeline
    before = dict(pipelines.PIPELINE_REGISTRY.supported_tasks)
    register_pipelines()
    assert pipelines.PIPELINE_REGISTRY.supported_tasks == before

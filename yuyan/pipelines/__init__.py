"""The transformers pipelines Yuyan adds, one module each, registered here, once (by `import yuyan`).

transformers 5 removed its `question-answering` pipeline; Yuyan's own (`QuestionAnsweringPipeline`, with the
windowing and span search that fine-tuning shares, in `yuyan.pipelines.question_answering`) takes its place, so
that `pipeline("question-answering", model=folder)` works for the folders `yuyan finetune --task
question-answering` writes. Where transformers still ships the pipeline, its own is left alone.
"""

from __future__ import annotations


def register_pipelines() -> None:
    """Register the pipelines transformers lacks; a second call changes nothing."""
    from transformers import AutoModelForQuestionAnswering, pipelines

    from yuyan.pipelines.question_answering import QuestionAnsweringPipeline

    removed = getattr(pipelines, "REMOVED_TASKS", {})
    supported = pipelines.PIPELINE_REGISTRY.supported_tasks
    if "question-answering" in supported:
        if supported["question-answering"].get("impl") is QuestionAnsweringPipeline:
            return
        if "question-answering" not in removed:
            return  # transformers' own pipeline
    removed.pop("question-answering", None)
    pipelines.PIPELINE_REGISTRY.register_pipeline(
        "question-answering",
        pipeline_class=QuestionAnsweringPipeline,
        pt_model=AutoModelForQuestionAnswering,
        type="text",
    )


__all__ = ["register_pipelines"]

"""Fine-tuning for extractive question answering in the SQuAD v1.1 format: the answer is a span of the context.

Examples are encoded in windows as the pipeline reads them (`yuyan.pipelines.question_answering`: the question
first, then the context, cut into overlapping windows), and predictions take the pipeline's span search.

Training. A window is labelled with the first and last tokens of the answer's character span (the first answer
of the example); windows that do not hold the whole answer are left out of training (SQuAD v1.1 has no
unanswerable questions, so there is nothing to teach them).

Prediction (`predict_answers`): the best span of every validation example over all its windows (`best_answers`).

Scores (`squad_scores`): exact match and token F1 of the official SQuAD v1.1 script, in percent: answers are
lower-cased, punctuation and the articles a / an / the removed and whitespace collapsed before comparing; each
prediction takes its best score over the reference answers.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from yuyan.pipelines.question_answering import (
    DEFAULT_DOC_STRIDE,
    DEFAULT_MAX_ANSWER_LENGTH,
    DEFAULT_N_BEST,
    best_answers,
    check_window,
    encode_windows,
)


# ----------------------------------------------------------------------------------------------------------------
# Answer spans
# ----------------------------------------------------------------------------------------------------------------


def answer_token_span(offsets: Sequence[tuple[int, int] | None], start_char: int, end_char: int
                      ) -> tuple[int, int] | None:
    """First and last token of the character span [start_char, end_char) in a window, or None if the window does
    not hold the whole span."""
    context_tokens = [k for k, offset in enumerate(offsets) if offset is not None]
    if not context_tokens or end_char <= start_char:
        return None
    if offsets[context_tokens[0]][0] > start_char or offsets[context_tokens[-1]][1] < end_char:
        return None
    start = next(k for k in context_tokens if offsets[k][1] > start_char)
    end = next(k for k in reversed(context_tokens) if offsets[k][0] < end_char)
    return (start, end) if end >= start else None


def answer_mismatch(context: str, text: str, start: int) -> bool:
    return not (0 <= start and context[start : start + len(text)] == text and text.strip())


# ----------------------------------------------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------------------------------------------


def predict_answers(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    example_of_window: Sequence[int],
    offsets_of_window: Sequence[Sequence[tuple[int, int] | None]],
    contexts: Sequence[str],
    n_best_size: int = DEFAULT_N_BEST,
    max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
) -> list[str]:
    """The best answer text of every example, from the logits of all windows (rows of the two arrays)."""
    windows_of_example: dict[int, list[int]] = collections.defaultdict(list)
    for window, example in enumerate(example_of_window):
        windows_of_example[example].append(window)
    answers = []
    for example, context in enumerate(contexts):
        windows = windows_of_example.get(example, [])
        best = best_answers(
            [start_logits[w] for w in windows],
            [end_logits[w] for w in windows],
            [offsets_of_window[w] for w in windows],
            context,
            n_best_size,
            max_answer_length,
        )
        answers.append(best[0]["answer"])
    return answers


# ----------------------------------------------------------------------------------------------------------------
# SQuAD v1.1 scores
# ----------------------------------------------------------------------------------------------------------------

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(character for character in text if character not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    common = collections.Counter(predicted) & collections.Counter(expected)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(predicted)
    recall = same / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and F1 in percent; each prediction is scored against its best reference."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} questions")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = sum(max((exact_match(p, r) for r in refs), default=0.0) for p, refs in zip(predictions, references))
    f1 = sum(max((token_f1(p, r) for r in refs), default=0.0) for p, refs in zip(predictions, references))
    return {"exact_match": 100 * em / len(predictions), "f1": 100 * f1 / len(predictions)}


# ----------------------------------------------------------------------------------------------------------------
# Task setup
# ----------------------------------------------------------------------------------------------------------------


def read_answers(value: Any, where: str, row: int) -> list[tuple[str, int]]:
    """(text, answer_start) pairs from `{"text": [...], "answer_start": [...]}` or a list of `{"text",
    "answer_start"}` objects."""
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
        if isinstance(texts, str):
            texts, starts = [texts], [starts]
        if texts is None or starts is None or len(texts) != len(starts):
            raise ValueError(f"{where}: row {row}: answers need as many 'text' as 'answer_start' values: {value!r}")
        return [(str(text), int(start)) for text, start in zip(texts, starts)]
    if isinstance(value, (list, tuple)) and all(isinstance(item, dict) for item in value):
        return [(str(item["text"]), int(item["answer_start"])) for item in value]
    raise ValueError(
        f"{where}: row {row}: answers must be {{'text': [...], 'answer_start': [...]}} or a list of "
        f"{{'text', 'answer_start'}} objects, not {value!r}"
    )


def _read_examples(dataset, question_column, context_column, answers_column, id_column, where):
    questions, contexts, answers, ids = [], [], [], []
    id_values = dataset[id_column] if id_column in dataset.column_names else None
    for row, (question, context, value) in enumerate(
        zip(dataset[question_column], dataset[context_column], dataset[answers_column])
    ):
        name = str(id_values[row]) if id_values is not None else f"row {row}"
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: example {name}: the question is empty")
        if not isinstance(context, str) or not context.strip():
            raise ValueError(f"{where}: example {name}: the context is empty")
        pairs = read_answers(value, where, row)
        if not pairs:
            raise ValueError(f"{where}: example {name} has no answer (SQuAD v1.1 questions all have one)")
        for text, start in pairs:
            if answer_mismatch(context, text, start):
                found = context[max(start, 0) : max(start, 0) + len(text)]
                raise ValueError(
                    f"{where}: example {name}: the answer {text!r} is not inside its context at answer_start="
                    f"{start} (the context there reads {found!r})"
                )
        questions.append(question)
        contexts.append(context)
        answers.append(pairs)
        ids.append(name)
    return questions, contexts, answers, ids


def _labelled_windows(tokenizer, questions, contexts, answers, max_length, doc_stride):
    encoded, example_of_window, offsets_of_window = encode_windows(tokenizer, questions, contexts, max_length,
                                                                   doc_stride)
    rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "start_positions": [], "end_positions": []}
    for window, example in enumerate(example_of_window):
        text, start = answers[example][0]
        span = answer_token_span(offsets_of_window[window], start, start + len(text))
        if span is None:
            continue
        rows["input_ids"].append(encoded["input_ids"][window])
        rows["attention_mask"].append(encoded["attention_mask"][window])
        rows["start_positions"].append(span[0])
        rows["end_positions"].append(span[1])
    return rows


def prepare(train, validation, tokenizer, data_args, train_path: str, validation_path: str, max_length: int):
    import datasets
    from transformers import DataCollatorWithPadding

    from .base import TaskSetup
    from .tables import check_columns, pick_column

    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("question answering needs a fast tokenizer (character offsets)")
    question_column = pick_column(train, train_path, data_args.question_column, ("question",), "--question-column")
    context_column = pick_column(train, train_path, data_args.context_column, ("context",), "--context-column")
    answers_column = pick_column(train, train_path, data_args.answers_column, ("answers",), "--answers-column")
    check_columns(validation, validation_path, [(question_column, "--question-column"),
                                                (context_column, "--context-column"),
                                                (answers_column, "--answers-column")])
    doc_stride = data_args.doc_stride if data_args.doc_stride is not None else min(DEFAULT_DOC_STRIDE, max_length // 4)
    check_window(max_length, doc_stride)
    id_column = data_args.id_column
    train_examples = _read_examples(train, question_column, context_column, answers_column, id_column, train_path)
    validation_examples = _read_examples(validation, question_column, context_column, answers_column, id_column,
                                         validation_path)

    train_rows = _labelled_windows(tokenizer, *train_examples[:3], max_length, doc_stride)
    if not train_rows["input_ids"]:
        raise ValueError(f"{train_path}: no window of max_seq_length={max_length} tokens holds a whole answer")
    eval_rows = _labelled_windows(tokenizer, *validation_examples[:3], max_length, doc_stride)
    if not eval_rows["input_ids"]:
        raise ValueError(f"{validation_path}: no window of max_seq_length={max_length} tokens holds a whole answer")
    questions, contexts, answers, _ = validation_examples
    encoded, example_of_window, offsets_of_window = encode_windows(tokenizer, questions, contexts, max_length,
                                                                   doc_stride)
    prediction_dataset = datasets.Dataset.from_dict(
        {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    )
    n_best_size, max_answer_length = data_args.n_best_size, data_args.max_answer_length

    def final_evaluation(trainer) -> dict[str, float]:
        output = trainer.predict(prediction_dataset, metric_key_prefix="predict")
        start_logits, end_logits = output.predictions[:2]
        predicted = predict_answers(start_logits, end_logits, example_of_window, offsets_of_window, contexts,
                                    n_best_size, max_answer_length)
        return squad_scores(predicted, [[text for text, _ in pairs] for pairs in answers])

    def prepare_model(model) -> None:
        model.config.question_answering = {"max_seq_length": max_length, "doc_stride": doc_stride}

    return TaskSetup(
        train_dataset=datasets.Dataset.from_dict(train_rows),
        eval_dataset=datasets.Dataset.from_dict(eval_rows),
        data_collator=DataCollatorWithPadding(tokenizer),
        head_modules=["qa_outputs"],
        final_evaluation=final_evaluation,
        prepare_model=prepare_model,
        data_info={
            "question_column": question_column,
            "context_column": context_column,
            "answers_column": answers_column,
            "max_seq_length": max_length,
            "doc_stride": doc_stride,
            "n_best_size": n_best_size,
            "max_answer_length": max_answer_length,
            "train_windows": len(train_rows["input_ids"]),
            "validation_windows": len(example_of_window),
        },
    )


__all__ = [
    "answer_token_span",
    "exact_match",
    "normalize_answer",
    "predict_answers",
    "prepare",
    "read_answers",
    "squad_scores",
    "token_f1",
]

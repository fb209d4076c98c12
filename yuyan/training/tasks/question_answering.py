"""Extractive question answering in the SQuAD v1.1 format: the answer is a span of the context.

Encoding. Each example is encoded as the pair (question, context): `question <|endoftext|> context` (see
`tokenization_with_pair_separator` in `yuyan.training.finetune`); the question comes first, so that every context
token has read it (Yuyan's models are causal: a token's start / end logits see only the text to its left). A
context longer than the window is cut into overlapping windows (`return_overflowing_tokens`, `doc_stride` tokens
of overlap); only the context is ever truncated. A question longer than half the window is cut to half.

Training. A window is labelled with the first and last tokens of the answer's character span (the first answer
of the example); windows that do not hold the whole answer are left out of training (SQuAD v1.1 has no
unanswerable questions, so there is nothing to teach them).

Prediction (`best_answers`). In every window, the `n_best_size` highest start scores and end scores among the
context tokens are paired; a pair counts if end >= start and it spans at most `max_answer_length` tokens; its
score is start + end. The best pair over all windows of the example wins, and the answer is the context's text
between the pair's character offsets, with surrounding whitespace stripped (byte-level tokens carry their
leading space).

Scores (`squad_scores`): exact match and token F1 of the official SQuAD v1.1 script, in percent: answers are
lower-cased, punctuation and the articles a / an / the removed and whitespace collapsed before comparing; each
prediction takes its best score over the reference answers.

transformers 5 removed its `question-answering` pipeline; `QuestionAnsweringPipeline` here does the same job
with the same windowing and span search, and `yuyan.pipelines` (run by `import yuyan`) makes
`pipeline("question-answering", model=folder)` build it. This module imports only numpy, torch and transformers.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from yuyan.training.tasks import TASKS

DEFAULT_MAX_LENGTH = TASKS["question-answering"].default_max_length
DEFAULT_DOC_STRIDE = 128
DEFAULT_N_BEST = 20
DEFAULT_MAX_ANSWER_LENGTH = 30


# ----------------------------------------------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------------------------------------------


def check_window(max_length: int, doc_stride: int) -> None:
    question_room = max_length // 2
    if max_length < 8:
        raise ValueError(f"max_seq_length={max_length} is too short for question answering")
    if not 0 <= doc_stride < max_length - question_room - 2:
        raise ValueError(
            f"doc_stride={doc_stride} must be non-negative and less than {max_length - question_room - 2} for "
            f"max_seq_length={max_length} (the window's context part, with the question up to half the window)"
        )


def shorten_questions(tokenizer, questions: Sequence[str], max_tokens: int) -> list[str]:
    """Questions without leading whitespace, each cut to at most `max_tokens` tokens (at a token boundary)."""
    questions = [question.lstrip() for question in questions]
    encoded = tokenizer(questions, return_offsets_mapping=True, add_special_tokens=False)
    shortened = []
    for question, offsets in zip(questions, encoded["offset_mapping"]):
        if len(offsets) > max_tokens:
            question = question[: offsets[max_tokens - 1][1]]
        shortened.append(question)
    return shortened


def encode_windows(tokenizer, questions: Sequence[str], contexts: Sequence[str], max_length: int, doc_stride: int,
                   padding: bool | str = False, return_tensors: str | None = None):
    """Windows of (question, context) pairs. Returns the encoding, each window's example index, and each window's
    offsets with None for every token that is not context."""
    check_window(max_length, doc_stride)
    questions = shorten_questions(tokenizer, questions, max_length // 2)
    encoded = tokenizer(
        list(questions),
        list(contexts),
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=padding,
        return_tensors=return_tensors,
    )
    example_of_window = [int(index) for index in encoded.pop("overflow_to_sample_mapping")]
    offsets_of_window = []
    for window, offsets in enumerate(encoded.pop("offset_mapping")):
        sequence_ids = encoded.sequence_ids(window)
        offsets_of_window.append(
            [tuple(int(x) for x in offset) if sequence_ids[k] == 1 else None for k, offset in enumerate(offsets)]
        )
    return encoded, example_of_window, offsets_of_window


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
# Span search
# ----------------------------------------------------------------------------------------------------------------


def best_answers(
    start_scores: Sequence[Sequence[float]],
    end_scores: Sequence[Sequence[float]],
    offsets: Sequence[Sequence[tuple[int, int] | None]],
    context: str,
    n_best_size: int = DEFAULT_N_BEST,
    max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
    top_k: int = 1,
) -> list[dict[str, Any]]:
    """The `top_k` best answer spans over the windows of one example (one score row and offset list per window),
    best first: `{"answer", "start", "end", "score"}` with character positions in `context` and score = start
    score + end score. No valid span: one empty answer with score -inf."""
    candidates: dict[tuple[int, int], float] = {}
    for window_start, window_end, window_offsets in zip(start_scores, end_scores, offsets):
        window_start = np.asarray(window_start, dtype=np.float64)
        window_end = np.asarray(window_end, dtype=np.float64)
        context_tokens = np.array([k for k, offset in enumerate(window_offsets) if offset is not None], dtype=int)
        context_tokens = context_tokens[context_tokens < min(len(window_start), len(window_end))]
        if len(context_tokens) == 0:
            continue
        # Highest first; a stable sort keeps the earlier token first among equal scores.
        starts = context_tokens[np.argsort(-window_start[context_tokens], kind="stable")[:n_best_size]]
        ends = context_tokens[np.argsort(-window_end[context_tokens], kind="stable")[:n_best_size]]
        for start in starts:
            for end in ends:
                if end < start or end - start + 1 > max_answer_length:
                    continue
                first, last = window_offsets[start][0], window_offsets[end][1]
                text = context[first:last]
                stripped = text.strip()
                if not stripped:
                    continue
                first += len(text) - len(text.lstrip())
                last = first + len(stripped)
                score = float(window_start[start] + window_end[end])
                if candidates.get((first, last), -np.inf) < score:
                    candidates[(first, last)] = score
    if not candidates:
        return [{"answer": "", "start": 0, "end": 0, "score": float("-inf")}]
    ranked = sorted(candidates.items(), key=lambda item: (-item[1], item[0]))[:top_k]
    return [{"answer": context[first:last], "start": first, "end": last, "score": score}
            for (first, last), score in ranked]


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
# Pipeline
# ----------------------------------------------------------------------------------------------------------------


def _default_max_length(tokenizer, config) -> int:
    limits = [DEFAULT_MAX_LENGTH, getattr(tokenizer, "model_max_length", DEFAULT_MAX_LENGTH) or DEFAULT_MAX_LENGTH]
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        limits.append(positions)
    return int(min(limits))


def _masked_log_softmax(logits: np.ndarray, offsets: Sequence[tuple[int, int] | None]) -> np.ndarray:
    keep = np.array([offset is not None for offset in offsets] + [False] * (len(logits) - len(offsets)))[: len(logits)]
    scores = np.where(keep, logits.astype(np.float64), -np.inf)
    if not keep.any():
        return scores
    top = scores[keep].max()
    return scores - (top + np.log(np.exp(scores[keep] - top).sum()))


try:
    from transformers import Pipeline as _Pipeline
except ImportError:  # pragma: no cover - transformers is a dependency
    _Pipeline = object


class QuestionAnsweringPipeline(_Pipeline):
    """Extractive QA: `pipe(question=..., context=...)` or `pipe({"question": ..., "context": ...})` (or lists of
    them) → `{"answer", "score", "start", "end"}` (a list of `top_k` of them when `top_k > 1`).

    score = P(start) x P(end), each a softmax over the context tokens of the answer's window. Parameters (at
    creation or per call): `max_seq_len` and `doc_stride` (default: the values the model was fine-tuned with,
    saved as `config.question_answering`; else min(384, the model's positions) and min(128, max_seq_len // 4)),
    `top_k` (1), `max_answer_len` (30 tokens), `n_best_size` (20).
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("the question-answering pipeline needs a fast tokenizer (character offsets)")

    def _sanitize_parameters(self, max_seq_len=None, doc_stride=None, top_k=None, max_answer_len=None,
                             n_best_size=None, **kwargs):
        preprocess = {}
        if max_seq_len is not None:
            preprocess["max_seq_len"] = int(max_seq_len)
        if doc_stride is not None:
            preprocess["doc_stride"] = int(doc_stride)
        postprocess = {}
        if top_k is not None:
            if int(top_k) < 1:
                raise ValueError(f"top_k must be at least 1, not {top_k}")
            postprocess["top_k"] = int(top_k)
        if max_answer_len is not None:
            if int(max_answer_len) < 1:
                raise ValueError(f"max_answer_len must be at least 1, not {max_answer_len}")
            postprocess["max_answer_len"] = int(max_answer_len)
        if n_best_size is not None:
            postprocess["n_best_size"] = int(n_best_size)
        return preprocess, {}, postprocess

    def __call__(self, *args, **kwargs):
        question = kwargs.pop("question", None)
        context = kwargs.pop("context", None)
        if len(args) == 2 and question is None and context is None:
            question, context = args
            args = ()
        if question is not None or context is not None:
            if question is None or context is None:
                raise ValueError("give both question= and context=")
            if isinstance(question, str):
                inputs: Any = {"question": question, "context": context}
            else:
                contexts = [context] * len(question) if isinstance(context, str) else list(context)
                if len(contexts) != len(question):
                    raise ValueError(f"{len(question)} questions for {len(contexts)} contexts")
                inputs = [{"question": q, "context": c} for q, c in zip(question, contexts)]
        elif args:
            inputs = args[0]
        else:
            raise ValueError("give a question and a context")
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        return super().__call__(inputs, **kwargs)

    def preprocess(self, example, max_seq_len=None, doc_stride=None):
        if not isinstance(example, dict) or "question" not in example or "context" not in example:
            raise ValueError(f"a question-answering input is a dict with 'question' and 'context', not {example!r}")
        question, context = example["question"], example["context"]
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty")
        if not isinstance(context, str) or not context.strip():
            raise ValueError("the context is empty")
        trained = getattr(self.model.config, "question_answering", None) or {}
        max_length = max_seq_len or trained.get("max_seq_length") or _default_max_length(self.tokenizer,
                                                                                          self.model.config)
        if doc_stride is not None:
            stride = doc_stride
        elif trained.get("doc_stride") is not None and trained.get("max_seq_length") == max_length:
            stride = trained["doc_stride"]
        else:
            stride = min(DEFAULT_DOC_STRIDE, max_length // 4)
        encoded, _, offsets = encode_windows(self.tokenizer, [question], [context], max_length, stride,
                                             padding="longest", return_tensors="pt")
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "offsets": offsets,
            "context": context,
        }

    def _forward(self, inputs):
        outputs = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        return {
            "start_logits": outputs.start_logits,
            "end_logits": outputs.end_logits,
            "offsets": inputs["offsets"],
            "context": inputs["context"],
        }

    def postprocess(self, outputs, top_k=1, max_answer_len=DEFAULT_MAX_ANSWER_LENGTH, n_best_size=DEFAULT_N_BEST):
        start_logits = outputs["start_logits"].float().cpu().numpy()
        end_logits = outputs["end_logits"].float().cpu().numpy()
        offsets = outputs["offsets"]
        starts = [_masked_log_softmax(row, window) for row, window in zip(start_logits, offsets)]
        ends = [_masked_log_softmax(row, window) for row, window in zip(end_logits, offsets)]
        answers = best_answers(starts, ends, offsets, outputs["context"], max(n_best_size, top_k), max_answer_len,
                               top_k)
        for answer in answers:
            answer["score"] = float(np.exp(answer["score"]))
        answers = [{"score": a["score"], "start": a["start"], "end": a["end"], "answer": a["answer"]} for a in answers]
        return answers[0] if top_k == 1 else answers


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
    from .data import check_columns, pick_column

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
    "QuestionAnsweringPipeline",
    "answer_token_span",
    "best_answers",
    "encode_windows",
    "exact_match",
    "normalize_answer",
    "predict_answers",
    "prepare",
    "read_answers",
    "squad_scores",
    "token_f1",
]

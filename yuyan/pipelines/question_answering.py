"""Extractive question answering at inference: the `question-answering` pipeline that transformers 5 no longer
ships, with the windowing and span search that fine-tuning (`yuyan.training.recipes.question_answering`) shares.

Encoding. Each example is encoded as the pair (question, context): `question <|endoftext|> context` (see
`tokenization_with_pair_separator` in `yuyan.training.finetune`); the question comes first, so that every context
token has read it (Yuyan's models are causal: a token's start / end logits see only the text to its left). A
context longer than the window is cut into overlapping windows (`return_overflowing_tokens`, `doc_stride` tokens
of overlap); only the context is ever truncated. A question longer than half the window is cut to half.

Span search (`best_answers`). In every window, the `n_best_size` highest start scores and end scores among the
context tokens are paired; a pair counts if end >= start and it spans at most `max_answer_length` tokens; its
score is start + end. The best pair over all windows of the example wins, and the answer is the context's text
between the pair's character offsets, with surrounding whitespace stripped (byte-level tokens carry their
leading space).

`QuestionAnsweringPipeline` answers with the same windowing and span search; `yuyan.pipelines` (run by
`import yuyan`) makes `pipeline("question-answering", model=folder)` build it. This module imports only numpy,
transformers and the task table (`yuyan.tasks`), so that `import yuyan` registers the pipeline cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from yuyan.tasks import TASKS

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


__all__ = [
    "DEFAULT_DOC_STRIDE",
    "DEFAULT_MAX_ANSWER_LENGTH",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_N_BEST",
    "QuestionAnsweringPipeline",
    "best_answers",
    "check_window",
    "encode_windows",
    "shorten_questions",
]

"""Token classification (tagging, e.g. named entities): words with one tag each → one label per sub-word token.

Alignment. The words are joined with single spaces into one text, and that text is tokenised as running text
with character offsets, exactly as `pipeline("token-classification")` will tokenise a sentence later (pre-split
words fed with `is_split_into_words` would lose the leading space that Yuyan's byte-level tokens carry, and train
on tokens the pipeline never sees). Each token belongs to the word its first non-space character falls in; the
first token of a word carries the word's tag, the word's other tokens and tokens outside every word get -100
(ignored by the loss). Words cut off by truncation get no label in training and count as "O" in evaluation.

A causal model labels a token from the text up to and including it, never from the words after it.

Evaluation, in percent, word level: `f1` / `precision` / `recall` of entities, micro-averaged, an entity counting
as found only if its type and its exact word span match (the CoNLL / seqeval definition). Entities are read from
BIO tags with the conlleval rules: `B-X` starts one; `I-X` continues an `X` entity and starts one after `O` or
another type (IOB1); `E-X` / `S-X` (IOBES) are read too; a tag without a prefix, e.g. `PER`, is read as `I-PER`.
`accuracy` is the share of words whose tag is right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import TaskSetup, check_known, label_name, labelled_head, ordered_labels
from .tables import check_columns, pick_column

TOKENS_CANDIDATES = ("tokens", "words")
TAGS_CANDIDATES = ("tags", "ner_tags", "labels", "pos_tags")
OUTSIDE = "O"


# ----------------------------------------------------------------------------------------------------------------
# Alignment
# ----------------------------------------------------------------------------------------------------------------


def join_words(words: Sequence[str]) -> tuple[str, list[int]]:
    """The words as one space-separated text, and for each character the index of its word (-1 for spaces)."""
    char_to_word: list[int] = []
    for index, word in enumerate(words):
        if index:
            char_to_word.append(-1)
        char_to_word.extend([index] * len(word))
    return " ".join(words), char_to_word


def token_words(offsets: Sequence[tuple[int, int]], char_to_word: Sequence[int]) -> list[int | None]:
    """For each token (character span), the word of its first character that belongs to a word, or None."""
    words: list[int | None] = []
    for start, end in offsets:
        word = None
        for position in range(start, min(end, len(char_to_word))):
            if char_to_word[position] >= 0:
                word = char_to_word[position]
                break
        words.append(word)
    return words


def first_token_labels(words_of_tokens: Sequence[int | None], word_labels: Sequence[int], num_words: int
                       ) -> tuple[list[int], list[int]]:
    """Token labels (the word's label on its first token, -100 elsewhere) and each word's first token (-1: none)."""
    labels = [-100] * len(words_of_tokens)
    first_token = [-1] * num_words
    for position, word in enumerate(words_of_tokens):
        if word is not None and first_token[word] < 0:
            first_token[word] = position
            labels[position] = word_labels[word]
    return labels, first_token


def align_labels(tokenizer, words: Sequence[str], word_labels: Sequence[int], max_length: int | None = None
                 ) -> dict[str, list[int]]:
    """Tokenise one example (see the module docstring): input_ids, attention_mask, labels, first_token."""
    text, char_to_word = join_words(words)
    encoded = tokenizer(text, return_offsets_mapping=True, truncation=max_length is not None, max_length=max_length)
    labels, first_token = first_token_labels(token_words(encoded["offset_mapping"], char_to_word), word_labels,
                                             len(words))
    return {
        "input_ids": list(encoded["input_ids"]),
        "attention_mask": list(encoded["attention_mask"]),
        "labels": labels,
        "first_token": first_token,
    }


# ----------------------------------------------------------------------------------------------------------------
# Entity chunks and scores
# ----------------------------------------------------------------------------------------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == OUTSIDE or not tag:
        return OUTSIDE, ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BIES":
        return tag[0], tag[2:]
    return "I", tag


def entity_chunks(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The entities of a tag sequence as (type, first word, last word), read with the conlleval rules."""
    chunks = set()
    start = None
    previous_prefix, previous_type = OUTSIDE, ""
    for position, tag in enumerate(list(tags) + [OUTSIDE]):
        prefix, kind = _split_tag(tag)
        ends = previous_prefix in ("E", "S") or (
            previous_prefix in ("B", "I") and (prefix in ("B", "S", OUTSIDE) or kind != previous_type)
        )
        if start is not None and ends:
            chunks.add((previous_type, start, position - 1))
            start = None
        begins = prefix in ("B", "S") or (
            prefix in ("I", "E") and (previous_prefix in (OUTSIDE, "E", "S") or kind != previous_type)
        )
        if begins:
            start = position
        previous_prefix, previous_type = prefix, kind
    return chunks


def entity_scores(references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity precision / recall / F1 and word accuracy, in percent (exact span and type match)."""
    correct = found = expected = 0
    right_words = words = 0
    for gold, guess in zip(references, predictions):
        if len(gold) != len(guess):
            raise ValueError(f"a prediction has {len(guess)} tags for {len(gold)} words")
        gold_chunks, guess_chunks = entity_chunks(gold), entity_chunks(guess)
        correct += len(gold_chunks & guess_chunks)
        found += len(guess_chunks)
        expected += len(gold_chunks)
        right_words += sum(g == p for g, p in zip(gold, guess))
        words += len(gold)
    precision = correct / found if found else 0.0
    recall = correct / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "f1": 100 * f1,
        "precision": 100 * precision,
        "recall": 100 * recall,
        "accuracy": 100 * (right_words / words if words else 0.0),
    }


def word_predictions(token_predictions: np.ndarray, first_token: Sequence[int], id2label: Sequence[str],
                     fallback: str) -> list[str]:
    """Each word's tag: the prediction at its first token; `fallback` for a word with no token (truncated)."""
    tags = []
    for position in first_token:
        if 0 <= position < len(token_predictions) and 0 <= token_predictions[position] < len(id2label):
            tags.append(id2label[int(token_predictions[position])])
        else:
            tags.append(fallback)
    return tags


# ----------------------------------------------------------------------------------------------------------------
# Task setup
# ----------------------------------------------------------------------------------------------------------------


def _as_list(value: Any, what: str, where: str, row: int) -> list:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"{where}: row {row}: the {what} must be a list (or a space-separated string), not {value!r}")


def _read_examples(dataset, tokens_column: str, tags_column: str, names, where: str):
    words_list, tags_list = [], []
    for row, (words, tags) in enumerate(zip(dataset[tokens_column], dataset[tags_column])):
        words = [str(word) for word in _as_list(words, "tokens", where, row)]
        tags = [label_name(tag, names, where) for tag in _as_list(tags, "tags", where, row)]
        if len(words) != len(tags):
            raise ValueError(f"{where}: row {row} has {len(words)} tokens but {len(tags)} tags")
        words_list.append(words)
        tags_list.append(tags)
    return words_list, tags_list


def prepare(train, validation, tokenizer, data_args, train_path: str, validation_path: str,
            max_length: int) -> TaskSetup:
    import datasets
    from transformers import DataCollatorForTokenClassification

    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("token classification needs a fast tokenizer (character offsets)")
    tokens_column = pick_column(train, train_path, data_args.tokens_column, TOKENS_CANDIDATES, "--tokens-column")
    tags_column = pick_column(train, train_path, data_args.tags_column, TAGS_CANDIDATES, "--tags-column")
    check_columns(validation, validation_path, [(tokens_column, "--tokens-column"), (tags_column, "--tags-column")])

    names = data_args.class_names
    train_words, train_tags = _read_examples(train, tokens_column, tags_column, names, train_path)
    validation_words, validation_tags = _read_examples(validation, tokens_column, tags_column, names, validation_path)
    labels = ordered_labels({tag for tags in train_tags for tag in tags}, names, outside_first=True)
    check_known((tag for tags in train_tags for tag in tags), labels, train_path, "tag")
    check_known((tag for tags in validation_tags for tag in tags), labels, validation_path, "tag")
    label2id = {label: index for index, label in enumerate(labels)}
    fallback = OUTSIDE if OUTSIDE in label2id else labels[0]

    def encode(words_list, tags_list):
        columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
        first_tokens = []
        for chunk in range(0, len(words_list), 1000):
            joined = [join_words(words) for words in words_list[chunk : chunk + 1000]]
            encoded = tokenizer([text for text, _ in joined], return_offsets_mapping=True, truncation=True,
                                max_length=max_length)
            for index, (_, char_to_word) in enumerate(joined):
                words, tags = words_list[chunk + index], tags_list[chunk + index]
                labels_, first_token = first_token_labels(
                    token_words(encoded["offset_mapping"][index], char_to_word),
                    [label2id[tag] for tag in tags],
                    len(words),
                )
                columns["input_ids"].append(encoded["input_ids"][index])
                columns["attention_mask"].append(encoded["attention_mask"][index])
                columns["labels"].append(labels_)
                first_tokens.append(first_token)
        return datasets.Dataset.from_dict(columns), first_tokens

    train_dataset, _ = encode(train_words, train_tags)
    eval_dataset, validation_first_tokens = encode(validation_words, validation_tags)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions = eval_prediction.predictions
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        guesses = [
            word_predictions(predictions[index], validation_first_tokens[index], labels, fallback)
            for index in range(min(len(predictions), len(validation_tags)))
        ]
        return entity_scores(validation_tags[: len(guesses)], guesses)

    return TaskSetup(
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=DataCollatorForTokenClassification(tokenizer),
        compute_metrics=compute_metrics,
        **labelled_head(labels),
        data_info={
            "tokens_column": tokens_column,
            "tags_column": tags_column,
            "labels": labels,
            "max_seq_length": max_length,
        },
    )


__all__ = [
    "align_labels",
    "entity_chunks",
    "entity_scores",
    "first_token_labels",
    "join_words",
    "prepare",
    "token_words",
    "word_predictions",
]

"""Sequence classification: a text (and optionally a second text) → one label.

Labels come from the training file: their set, in a fixed order (numbers numerically, text alphabetically, or the
order of `class_names`), becomes `id2label` / `label2id` in the saved config, so `pipeline("text-classification")`
answers with the dataset's own label names. The model classifies from the hidden state of the last real token
(Yuyan's models are causal, so that is the only position that has read the whole text). A text pair is encoded as
`text <|endoftext|> pair` (see `tokenization_with_pair_separator`).

Metrics, in percent: accuracy, and macro-F1 (unweighted mean of per-class F1 over the classes that occur in the
references or the predictions, as scikit-learn's `f1_score(average="macro")` does).
"""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np

from .base import TaskSetup, check_known, label_name, labelled_head, ordered_labels
from .tables import as_text, check_columns, pick_column

TEXT_CANDIDATES = ("text", "sentence", "content", "document", "review")


def classification_metrics(predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
    predictions = np.asarray(predictions).reshape(-1)
    references = np.asarray(references).reshape(-1)
    if len(references) == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    accuracy = float((predictions == references).mean())
    f1s = []
    for label in np.union1d(predictions, references):
        true_positive = float(((predictions == label) & (references == label)).sum())
        predicted = float((predictions == label).sum())
        actual = float((references == label).sum())
        f1s.append(0.0 if true_positive == 0 else 2 * true_positive / (predicted + actual))
    return {"accuracy": 100 * accuracy, "macro_f1": 100 * float(np.mean(f1s))}


def _compute_metrics(eval_prediction) -> dict[str, float]:
    predictions = eval_prediction.predictions
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    return classification_metrics(predictions, eval_prediction.label_ids)


def prepare(train, validation, tokenizer, data_args, train_path: str, validation_path: str,
            max_length: int) -> TaskSetup:
    from transformers import DataCollatorWithPadding

    text_column = pick_column(train, train_path, data_args.text_column, TEXT_CANDIDATES, "--text-column")
    check_columns(validation, validation_path, [(text_column, "--text-column")])
    pair_column = data_args.text_pair_column
    if pair_column is not None:
        check_columns(train, train_path, [(pair_column, "--text-pair-column")])
        check_columns(validation, validation_path, [(pair_column, "--text-pair-column")])
    label_column = data_args.label_column
    check_columns(train, train_path, [(label_column, "--label-column")])
    check_columns(validation, validation_path, [(label_column, "--label-column")])

    names = data_args.class_names
    train_labels = [label_name(value, names, train_path) for value in train[label_column]]
    validation_labels = [label_name(value, names, validation_path) for value in validation[label_column]]
    labels = ordered_labels(train_labels, names)
    if names is not None:
        check_known(train_labels, labels, train_path)
    if len(labels) < 2:
        raise ValueError(f"{train_path}: classification needs at least 2 labels, the file has {labels}")
    check_known(validation_labels, labels, validation_path)
    label2id = {label: index for index, label in enumerate(labels)}

    def encode(dataset, label_values):
        def tokenize(batch, indices):
            texts = [as_text(value) for value in batch[text_column]]
            pairs = [as_text(value) for value in batch[pair_column]] if pair_column else None
            encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
            encoded["labels"] = [label2id[label_values[index]] for index in indices]
            return dict(encoded)

        return dataset.map(tokenize, batched=True, with_indices=True, remove_columns=dataset.column_names,
                           desc="tokenising")

    return TaskSetup(
        train_dataset=encode(train, train_labels),
        eval_dataset=encode(validation, validation_labels),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_compute_metrics,
        **labelled_head(labels),
        data_info={
            "text_column": text_column,
            "text_pair_column": pair_column,
            "label_column": label_column,
            "labels": labels,
            "max_seq_length": max_length,
        },
    )


__all__ = ["classification_metrics", "prepare"]

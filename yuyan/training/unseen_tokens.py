"""Fresh embeddings for the tokens a pretrained model never read.

A tokenizer trained on more text than the model was pretrained on (English and Chinese, say, for a model
pretrained on English only) has tokens that never occurred in pretraining. With tied embeddings their rows were
still trained, by the output softmax alone, to make those tokens unlikely: after pretraining they are long
vectors that all point the same way (a 15-minute WikiText-2 model: norm 3.7 against 1.3 for the tokens it read,
mean pairwise cosine 0.996), so as inputs the model cannot tell them apart. Fine-tuning on text full of them
starts from worse than a random init. `reset_unseen_token_embeddings` redraws those rows from the distribution of
the rows that were read (their mean and covariance), so that each starts as a distinct, typical token; this is the
idea behind transformers' `resize_token_embeddings(mean_resizing=True)` for newly added tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from yuyan.corpus import iter_texts

LINES_PER_BATCH = 1000


def token_counts(tokenizer, files: Iterable[str | os.PathLike], vocab_size: int,
                 text_column: str = "text") -> torch.Tensor:
    """How often each token id occurs in the files, read as `yuyan pretrain --data` reads them (files, globs or
    folders; .txt line by line with its line ending, the `text_column` of .jsonl / .csv / .parquet)."""
    try:
        texts = iter_texts(list(files), text_column=text_column, txt_split="line")
    except FileNotFoundError as error:
        raise ValueError(f"{error}: not a file; give the text files the model was pretrained on") from None
    counts = torch.zeros(vocab_size, dtype=torch.long)
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == LINES_PER_BATCH:
            _count(tokenizer, batch, counts)
            batch = []
    _count(tokenizer, batch, counts)
    return counts


def _count(tokenizer, lines: list[str], counts: torch.Tensor) -> None:
    if not lines:
        return
    ids = [token for row in tokenizer(lines, add_special_tokens=False)["input_ids"] for token in row]
    if ids:
        counts += torch.bincount(torch.tensor(ids), minlength=counts.numel())[: counts.numel()]


def reset_unseen_token_embeddings(model, seen: torch.Tensor, keep: Iterable[int] = (), seed: int = 0) -> list[int]:
    """Redraw the embedding rows of the tokens where `seen` is False (except the ids in `keep`, e.g. the special
    tokens, which pretraining may add without them being in the text) from a normal distribution with the mean
    and covariance of the seen rows. An untied output layer, if the model has one, gets the same treatment for
    its rows. Returns the ids redrawn."""
    embeddings = model.get_input_embeddings().weight
    if seen.shape != (embeddings.shape[0],):
        raise ValueError(f"seen has shape {tuple(seen.shape)}, expected ({embeddings.shape[0]},): one flag a token")
    unseen = ~seen
    unseen[[index for index in keep if 0 <= index < unseen.numel()]] = False
    ids = unseen.nonzero().flatten().tolist()
    if not ids:
        return []
    if int(seen.sum()) < 2:
        raise ValueError("fewer than 2 tokens were seen: the pretraining text does not match this tokenizer")
    generator = torch.Generator().manual_seed(seed)
    matrices = [embeddings]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != embeddings.data_ptr():
        matrices.append(output.weight)
    with torch.no_grad():
        for weight in matrices:
            weight[ids] = _draw_like(weight[seen].double(), len(ids), generator).to(weight.dtype)
    return ids


def _draw_like(rows: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` vectors from N(mean, covariance) of `rows`, through a Cholesky factor (a small ridge keeps it
    defined when there are fewer rows than dimensions)."""
    mean = rows.mean(0)
    centred = rows - mean
    covariance = centred.T @ centred / max(1, rows.shape[0] - 1)
    ridge = 1e-6 * covariance.diagonal().mean().clamp_min(1e-12)
    factor = torch.linalg.cholesky(covariance + ridge * torch.eye(rows.shape[1], dtype=rows.dtype))
    noise = torch.randn(count, rows.shape[1], generator=generator, dtype=rows.dtype)
    return mean + noise @ factor.T

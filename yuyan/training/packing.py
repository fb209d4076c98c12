"""Documents → tokenised, packed blocks for causal language modelling (`datasets` all the way).

The documents come from `yuyan.corpus.load_documents`. They are tokenised with `datasets.map(batched=True,
num_proc=...)` (cached by fingerprint), an end-of-text token is appended to each, and the stream is cut into
blocks of `block_size` tokens. With streaming documents nothing is held in memory or cached: the same steps run
lazily. `split_validation` holds out every k-th document when no validation text is given.
"""

from __future__ import annotations

import os

import datasets

from yuyan.corpus import TEXT_COLUMN


def split_validation(documents, fraction: float):
    """(train, validation): every k-th document (k = round(1 / fraction)) goes to validation.

    Deterministic and lazy, so it works the same for in-memory and streaming datasets, and never mixes the two
    halves of a document.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction {fraction} is not allowed: it must be in (0, 1)")
    every = max(2, round(1 / fraction))
    train = documents.filter(lambda _, i: i % every != every - 1, with_indices=True)
    validation = documents.filter(lambda _, i: i % every == every - 1, with_indices=True)
    return train, validation


def tokenize_and_pack(documents, tokenizer, block_size: int, num_proc: int | None = None):
    """Token blocks: each document's ids, then the end-of-text id, all concatenated and cut into `block_size`
    pieces (the ragged tail is dropped). Returns a dataset with one `input_ids` column."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-text (eos) token to separate documents")
    streaming = isinstance(documents, datasets.IterableDataset)
    map_kwargs = {} if streaming else {"num_proc": num_proc, "desc": "Tokenizing"}

    def tokenize(batch):
        # Documents longer than the model's context are expected here: they are cut into blocks below.
        ids = tokenizer(batch[TEXT_COLUMN], add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [row + [eos] for row in ids]}

    def pack(batch):
        stream = [token for row in batch["input_ids"] for token in row]
        usable = len(stream) - len(stream) % block_size
        return {"input_ids": [stream[i : i + block_size] for i in range(0, usable, block_size)]}

    tokenized = documents.map(tokenize, batched=True, remove_columns=[TEXT_COLUMN], **map_kwargs)
    # Pack 1,000 documents at a time: only each batch's ragged tail is lost.
    pack_kwargs = {} if streaming else {"num_proc": num_proc, "desc": f"Packing into blocks of {block_size}"}
    packed = tokenized.map(pack, batched=True, batch_size=1000, **pack_kwargs)
    if not streaming:
        packed = packed.with_format("torch")
    return packed


def default_num_proc() -> int | None:
    """Worker processes for `datasets.map`: none on small machines, where forking costs more than it saves."""
    cpus = os.cpu_count() or 1
    return min(8, cpus) if cpus > 4 else None


__all__ = [
    "default_num_proc",
    "split_validation",
    "tokenize_and_pack",
]

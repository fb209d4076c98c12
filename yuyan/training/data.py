"""Text sources → tokenised, packed blocks for causal language modelling (`datasets` all the way).

A source is local files (globs of txt / jsonl / json / csv / parquet), a `datasets` dataset (a Hub name, a local
data folder or a `save_to_disk` folder), or the embedded default corpus: the English documentation that ships
inside Python itself, built at run time. Documents are tokenised with `datasets.map(batched=True, num_proc=...)`
(cached by fingerprint), an end-of-text token is appended to each, and the stream is cut into blocks of
`block_size` tokens. With `streaming=True` nothing is held in memory or cached: the same steps run lazily.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from yuyan.tokenization.data import expand_paths, iter_dataset_texts, iter_texts, load_dataset_split

TEXT_COLUMN = "text"


@dataclass
class TextSource:
    """Where the documents come from: `files`, a `dataset` name, or neither (the embedded corpus)."""

    files: Sequence[str] = field(default_factory=list)
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    text_column: str = "text"
    streaming: bool = False
    # How a .txt file is cut into documents: "paragraph" (blank-line separated; WikiText, books), "line", "file".
    txt_split: str = "paragraph"

    def __post_init__(self):
        if self.files and self.dataset:
            raise ValueError("give either data files or a dataset name, not both")
        if self.files:
            expand_paths(list(self.files))  # fails now, naming the file, if one is missing or unreadable

    @property
    def description(self) -> str:
        if self.files:
            return ", ".join(str(f) for f in self.files)
        if self.dataset:
            return f"{self.dataset}" + (f" ({self.dataset_config})" if self.dataset_config else "") + f" [{self.split}]"
        return "the embedded Python documentation corpus"

    def texts(self) -> Iterator[str]:
        if self.files:
            return iter_texts(list(self.files), text_column=self.text_column, txt_split=self.txt_split)
        if self.dataset:
            return iter_dataset_texts(
                self.dataset, self.dataset_config, split=self.split, text_column=self.text_column, streaming=True
            )
        return iter(python_documentation())

    def fingerprint(self) -> str:
        """Changes when the source's content may have changed: file paths, sizes and modification times."""
        parts = [self.dataset or "", self.dataset_config or "", self.split, self.text_column, self.txt_split]
        for path in expand_paths(list(self.files)) if self.files else []:
            stat = path.stat()
            parts.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
        if not self.files and not self.dataset:
            parts.append(sys.version)
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _generate_documents(source: TextSource, fingerprint: str) -> Iterator[dict]:
    # `fingerprint` is unused here: it is part of gen_kwargs so that `datasets` caches per source content.
    for text in source.texts():
        yield {TEXT_COLUMN: text}


def load_documents(source: TextSource) -> datasets.Dataset | datasets.IterableDataset:
    """The source's documents as a dataset with one `text` column (streaming: an `IterableDataset`)."""
    if source.dataset and not source.streaming:
        dataset = load_dataset_split(source.dataset, source.dataset_config, split=source.split, streaming=False)
        if source.text_column not in dataset.column_names:
            raise ValueError(
                f"dataset {source.dataset!r} has no {source.text_column!r} column (columns: {dataset.column_names}); "
                "choose one with --text-column"
            )
        dataset = dataset.select_columns([source.text_column])
        if source.text_column != TEXT_COLUMN:
            dataset = dataset.rename_column(source.text_column, TEXT_COLUMN)
        return dataset.filter(lambda text: bool(text), input_columns=[TEXT_COLUMN])
    kwargs = {"source": source, "fingerprint": source.fingerprint()}
    if source.streaming:
        return datasets.IterableDataset.from_generator(_generate_documents, gen_kwargs=kwargs)
    try:
        return datasets.Dataset.from_generator(_generate_documents, gen_kwargs=kwargs)
    except datasets.exceptions.DatasetGenerationError as error:
        # The reader's own message (file, line, what is wrong) is the useful part.
        raise (error.__cause__ if isinstance(error.__cause__, ValueError) else error) from None


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


# ---------------------------------------------------------------------------------------------------------------
# The embedded corpus: documentation that ships inside Python
# ---------------------------------------------------------------------------------------------------------------

_SKIPPED_STDLIB_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


def python_documentation(max_bytes: int | None = None) -> list[str]:
    """English documents from Python itself: the reference topics of `pydoc_data.topics` (the text of `help()`),
    then the module, class and function docstrings of the standard library, read with `ast` (nothing is
    imported or run). Built fresh each time, in a fixed order: about 2 MB of text on CPython 3.11."""
    documents: list[str] = []
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a trimmed Python without pydoc_data: the docstrings alone still make a corpus
        topics = {}
    for name in sorted(topics):
        documents.append(topics[name].strip())

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if _SKIPPED_STDLIB_PARTS.intersection(relative.parts) or path.name.startswith("test_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node)
                # Short docstrings ("Return self.") teach little and repeat a lot.
                if docstring and len(docstring) >= 200:
                    documents.append(docstring)
        if max_bytes is not None and sum(map(len, documents)) >= max_bytes:
            break
    documents = [d for d in documents if d]
    if not documents:
        raise ValueError("this Python ships no documentation to build the embedded corpus from; give --data")
    return documents


def default_num_proc() -> int | None:
    """Worker processes for `datasets.map`: none on small machines, where forking costs more than it saves."""
    cpus = os.cpu_count() or 1
    return min(8, cpus) if cpus > 4 else None


__all__ = [
    "TextSource",
    "load_documents",
    "split_validation",
    "tokenize_and_pack",
    "python_documentation",
    "default_num_proc",
]

"""The texts of a corpus, read as a stream: one module for tokenizer training, pretraining and fine-tuning.

Readers. Local files (txt, JSON Lines, JSON arrays, CSV/TSV, Parquet) and `datasets` datasets. Every reader is a
generator that holds one record (or one 1 MiB read buffer) at a time, so memory stays flat however large the
corpus:

```python
>>> from yuyan.corpus import iter_texts
>>> for text in iter_texts(["corpus/*.jsonl", "notes.txt"], text_column="text", max_bytes=10_000_000):
...     ...
```

Errors are raised as `ValueError` / `FileNotFoundError` with the file (and line) that caused them. Generators raise
lazily, so call `expand_paths` first to check that every file exists and is readable before doing anything costly.

Sources. A `TextSource` is where a run's documents come from: local files, a `datasets` dataset (a Hub name, a
local data folder or a `save_to_disk` folder), or the embedded default corpus: the English documentation that
ships inside Python itself (`python_documentation`), built at run time. `load_documents` turns a source into a
`datasets` dataset with one `text` column (streaming: an `IterableDataset`), which pretraining tokenises and packs
(`yuyan.training.packing`).

Nothing here imports `datasets` until a dataset is read.
"""

from __future__ import annotations

import ast
import bz2
import csv
import glob
import gzip
import hashlib
import json
import lzma
import os
import sys
import sysconfig
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

# Suffixes read as text; a trailing compression suffix (.gz, .bz2, .xz) is also accepted, except for Parquet.
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES
_COMPRESSION = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}

TXT_SPLITS = ("line", "paragraph", "file")
_READ_CHUNK = 1 << 20  # characters read at a time when splitting on a separator


def _format_kind(path: Path) -> tuple[str, str | None]:
    """(data suffix, compression suffix or None) of a path, both lower-case."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = None
    if suffixes and suffixes[-1] in _COMPRESSION:
        compression = suffixes.pop()
    kind = suffixes[-1] if suffixes else ""
    return kind, compression


def is_supported_file(path: str | os.PathLike) -> bool:
    kind, compression = _format_kind(Path(path))
    return kind in SUPPORTED_SUFFIXES and not (compression and kind in PARQUET_SUFFIXES)


def _supported_list() -> str:
    return ", ".join(SUPPORTED_SUFFIXES) + " (text formats may end in .gz, .bz2 or .xz)"


def expand_paths(patterns: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Resolve files, directories and glob patterns (`**` allowed) to a sorted, de-duplicated list of readable files.

    A directory stands for every supported file below it. Raises `FileNotFoundError` for a path or pattern that
    matches nothing, and `ValueError` for a file of an unsupported type or one that cannot be opened.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    if not patterns:
        raise ValueError("no input files given")
    found: list[Path] = []
    for pattern in patterns:
        pattern = os.fspath(pattern)
        path = Path(pattern).expanduser()
        if glob.has_magic(pattern):
            matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(pattern), recursive=True))]
            files = [m for m in matches if m.is_file() and is_supported_file(m)]
            if not files:
                raise FileNotFoundError(f"no supported files match {pattern!r} (supported: {_supported_list()})")
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and is_supported_file(p))
            if not files:
                raise FileNotFoundError(f"directory {pattern!r} holds no supported files ({_supported_list()})")
        elif path.exists():
            if not is_supported_file(path):
                raise ValueError(f"{pattern}: unsupported file type; supported: {_supported_list()}")
            files = [path]
        else:
            raise FileNotFoundError(f"no such file: {pattern!r}")
        for file in files:
            _check_readable(file)
            if file not in found:
                found.append(file)
    return found


def _check_readable(path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from error


def _open_text(path: Path, compression: str | None):
    # utf-8-sig drops a leading byte order mark; newline="" keeps "\r\n" and lone "\r" as they are in the file.
    if compression:
        return _COMPRESSION[compression](path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def iter_file_texts(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    txt_split: str = "line",
    separator: str | None = None,
) -> Iterator[str]:
    """Yield the texts of one file, streaming.

    - `.txt` (also `.text`, `.md`): with `txt_split="line"` each line, its line ending kept (so the tokenizer
      learns newlines); `"paragraph"` joins the lines between blank lines; `"file"` yields the whole file at once
      (it is read into memory). With `separator` (e.g. `"<|endoftext|>"`), the file is split on that literal
      string instead and each piece is stripped of surrounding whitespace.
    - `.jsonl` / `.ndjson`: one JSON object per line; the text is `obj[text_column]`.
    - `.json`: a JSON array of objects (read incrementally) or JSON Lines.
    - `.csv` / `.tsv`: a header row naming `text_column`.
    - `.parquet`: the column `text_column`, read in record batches.

    Rows whose text is null are skipped; a missing column, a non-string value or a malformed line raises
    `ValueError` naming the file and line. Texts that are empty strings are skipped.
    """
    path = Path(path)
    kind, compression = _format_kind(path)
    try:
        if kind in TEXT_SUFFIXES:
            yield from _iter_txt(path, compression, txt_split, separator)
        elif kind in JSONL_SUFFIXES:
            yield from _iter_jsonl(path, compression, text_column)
        elif kind in JSON_SUFFIXES:
            yield from _iter_json(path, compression, text_column)
        elif kind in CSV_SUFFIXES:
            yield from _iter_csv(path, compression, text_column, delimiter="\t" if kind == ".tsv" else ",")
        elif kind in PARQUET_SUFFIXES and not compression:
            yield from _iter_parquet(path, text_column)
        else:
            raise ValueError(f"{path}: unsupported file type; supported: {_supported_list()}")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not valid UTF-8 text ({error.reason})") from None
    except (OSError, EOFError, lzma.LZMAError) as error:
        if isinstance(error, FileNotFoundError):
            raise FileNotFoundError(f"no such file: {str(path)!r}") from None
        raise ValueError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from error


def _iter_txt(path: Path, compression: str | None, txt_split: str, separator: str | None) -> Iterator[str]:
    if separator is not None:
        if not separator:
            raise ValueError("separator must be a non-empty string")
        yield from _iter_separated(path, compression, separator)
        return
    if txt_split not in TXT_SPLITS:
        raise ValueError(f"txt_split must be one of {', '.join(TXT_SPLITS)}, not {txt_split!r}")
    with _open_text(path, compression) as handle:
        if txt_split == "file":
            text = handle.read()
            if text:
                yield text
        elif txt_split == "line":
            for line in handle:
                yield line
        else:
            paragraph: list[str] = []
            for line in handle:
                if line.strip():
                    paragraph.append(line)
                elif paragraph:
                    yield "".join(paragraph)
                    paragraph = []
            if paragraph:
                yield "".join(paragraph)


def _iter_separated(path: Path, compression: str | None, separator: str) -> Iterator[str]:
    with _open_text(path, compression) as handle:
        pending = ""
        while True:
            chunk = handle.read(_READ_CHUNK)
            pending += chunk
            pieces = pending.split(separator)
            # The last piece may continue in the next chunk (or hold the start of a split separator).
            pending = pieces.pop() if chunk else ""
            for piece in pieces:
                piece = piece.strip()
                if piece:
                    yield piece
            if not chunk:
                break


def _text_field(record: Any, text_column: str, where: str) -> str | None:
    if isinstance(record, str):  # a JSON string is a text on its own
        return record
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a string or an object with a {text_column!r} field, got {type(record).__name__}")
    if text_column not in record:
        keys = ", ".join(map(repr, list(record)[:10])) or "none"
        raise ValueError(f"{where}: no {text_column!r} field (fields: {keys}); choose one with --text-column")
    value = record[text_column]
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{where}: field {text_column!r} is a {type(value).__name__}, not a string")


def _iter_jsonl(path: Path, compression: str | None, text_column: str, from_json_suffix: bool = False) -> Iterator[str]:
    with _open_text(path, compression) as handle:
        seen_record = False
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                if from_json_suffix and not seen_record:
                    raise ValueError(
                        f"{path}: expected a JSON array of objects or JSON Lines (one object per line); "
                        f"line {number} is not a complete JSON value ({error.msg})"
                    ) from None
                raise ValueError(f"{path}:{number}: malformed JSON line ({error.msg} at column {error.colno})") from None
            seen_record = True
            text = _text_field(record, text_column, f"{path}:{number}")
            if text:
                yield text


def _iter_json(path: Path, compression: str | None, text_column: str) -> Iterator[str]:
    with _open_text(path, compression) as handle:
        head = handle.read(4096).lstrip()
    if head.startswith("["):
        yield from _iter_json_array(path, compression, text_column)
    else:
        # A .json file that is not an array is read as JSON Lines (what `datasets`' to_json writes).
        yield from _iter_jsonl(path, compression, text_column, from_json_suffix=True)


def _iter_json_array(path: Path, compression: str | None, text_column: str) -> Iterator[str]:
    """Parse `[obj, obj, ...]` one element at a time with `raw_decode`, so the whole array is never in memory."""
    decoder = json.JSONDecoder()
    with _open_text(path, compression) as handle:
        buffer = handle.read(_READ_CHUNK).lstrip()
        position = 1  # past "["
        index = 0
        eof = False
        while True:
            # Skip whitespace and the comma between elements; refill when the buffer runs low.
            while True:
                while position < len(buffer) and buffer[position] in " \t\r\n,":
                    position += 1
                if position < len(buffer) or eof:
                    break
                chunk = handle.read(_READ_CHUNK)
                eof = not chunk
                buffer, position = buffer[position:] + chunk, 0
            if position >= len(buffer):
                raise ValueError(f"{path}: the JSON array is not closed with ']'")
            if buffer[position] == "]":
                return
            while True:
                try:
                    record, end = decoder.raw_decode(buffer, position)
                    # An element that ends exactly at the buffer's end may be a number cut in two: read more first.
                    if end < len(buffer) or eof:
                        break
                except json.JSONDecodeError as error:
                    if eof:
                        raise ValueError(f"{path}: malformed JSON in array element {index} ({error.msg})") from None
                chunk = handle.read(_READ_CHUNK)
                eof = not chunk
                buffer, position = buffer[position:] + chunk, 0
            text = _text_field(record, text_column, f"{path}: array element {index}")
            if text:
                yield text
            index += 1
            position = end  # the buffer is compacted only when it is refilled


def _iter_csv(path: Path, compression: str | None, text_column: str, delimiter: str) -> Iterator[str]:
    csv.field_size_limit(min(2**31 - 1, 1 << 40))
    with _open_text(path, compression) as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        fields = reader.fieldnames or []
        if text_column not in fields:
            shown = ", ".join(map(repr, fields[:10])) or "none"
            raise ValueError(f"{path}: no {text_column!r} column in the header (columns: {shown}); choose one with --text-column")
        for row in reader:
            text = row.get(text_column)
            if text:
                yield text


def _iter_parquet(path: Path, text_column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
        raise ValueError(f"{path}: not a readable Parquet file ({error})") from None
    names = parquet.schema_arrow.names
    if text_column not in names:
        shown = ", ".join(map(repr, names[:10])) or "none"
        raise ValueError(f"{path}: no {text_column!r} column (columns: {shown}); choose one with --text-column")
    for batch in parquet.iter_batches(batch_size=1024, columns=[text_column]):
        yield from _column_texts(batch.column(0).to_pylist(), text_column, f"{path}: ")


def _column_texts(values: Iterable[Any], text_column: str, where: str = "") -> Iterator[str]:
    """The non-empty strings of one batch of a text column; nulls are skipped, any other value is an error."""
    for text in values:
        if text is None:
            continue
        if not isinstance(text, str):
            raise ValueError(f"{where}column {text_column!r} holds {type(text).__name__} values, not strings")
        if text:
            yield text


def limit_texts(texts: Iterable[str], *, max_texts: int | None = None, max_bytes: int | None = None) -> Iterator[str]:
    """Pass texts through until `max_texts` texts or at least `max_bytes` UTF-8 bytes have been yielded.

    The byte limit is checked after each text, so the last text may go past it (texts are never cut). The source
    is not read further once a limit is reached.
    """
    for name, value in (("max_texts", max_texts), ("max_bytes", max_bytes)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if max_texts is None and max_bytes is None:
        yield from texts
        return
    count = size = 0
    for text in texts:
        yield text
        count += 1
        if max_texts is not None and count >= max_texts:
            return
        if max_bytes is not None:
            size += len(text.encode("utf-8"))
            if size >= max_bytes:
                return


def iter_texts(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    text_column: str = "text",
    txt_split: str = "line",
    separator: str | None = None,
    max_texts: int | None = None,
    max_bytes: int | None = None,
) -> Iterator[str]:
    """Stream the texts of local files, globs or directories, one file after another in sorted order.

    Paths are checked up front (see `expand_paths`), so a missing or unreadable file raises here, before the
    first text. Each file is read as described in `iter_file_texts`; `max_texts` / `max_bytes` stop the stream
    early (see `limit_texts`).
    """
    files = expand_paths(paths)
    if separator is None and txt_split not in TXT_SPLITS:
        raise ValueError(f"txt_split must be one of {', '.join(TXT_SPLITS)}, not {txt_split!r}")

    def stream() -> Iterator[str]:
        for file in files:
            yield from iter_file_texts(file, text_column=text_column, txt_split=txt_split, separator=separator)

    return limit_texts(stream(), max_texts=max_texts, max_bytes=max_bytes)


def texts_from_records(records: Iterable[Any], text_column: str = "text") -> Iterator[str]:
    """Texts of an iterable of strings or of mappings (rows of a `datasets` dataset, dicts); nulls and "" skipped.

    A `datasets.Dataset` is read in batches of its one text column, which is much faster than row by row.
    """
    if isinstance(records, (str, bytes)):
        raise TypeError("expected an iterable of texts, got a single string; pass a list, or files=... to read files")
    column_names = getattr(records, "column_names", None)
    if isinstance(column_names, Mapping):  # a DatasetDict: one dataset per split
        raise ValueError(f"got a DatasetDict with splits {list(column_names)}; pick one, e.g. dataset['train']")
    if isinstance(column_names, list) and text_column not in column_names:
        raise ValueError(f"the dataset has no {text_column!r} column (columns: {column_names}); choose one with text_column")
    if column_names is not None and hasattr(records, "iter") and hasattr(records, "select_columns"):
        for batch in records.select_columns([text_column]).iter(batch_size=1000):
            yield from _column_texts(batch[text_column], text_column)
        return
    for number, record in enumerate(records):
        if isinstance(record, str):
            text = record
        else:
            text = _text_field(record, text_column, f"record {number}")
        if text:
            yield text


def iter_dataset_texts(
    name: str,
    config: str | None = None,
    *,
    split: str = "train",
    text_column: str = "text",
    streaming: bool = True,
    max_texts: int | None = None,
    max_bytes: int | None = None,
    **load_kwargs: Any,
) -> Iterator[str]:
    """Stream the `text_column` of a `datasets` dataset: a Hub name, a local data folder (`load_dataset`), or a
    folder written by `Dataset.save_to_disk` (`load_from_disk`). Streaming by default, so nothing is downloaded
    or held in memory beyond the current batch.

    Loading happens on the first `next()`; failures (an unknown dataset, no network, a bad split or a missing
    column) are raised then as `ValueError`.
    """

    def stream() -> Iterator[str]:
        dataset = load_dataset_split(name, config, split=split, streaming=streaming, **load_kwargs)
        columns = getattr(dataset, "column_names", None)
        if columns is not None and text_column not in columns:
            raise ValueError(f"dataset {name!r} has no {text_column!r} column (columns: {columns}); choose one with --text-column")
        try:
            yield from texts_from_records(dataset, text_column)
        except ValueError as error:
            raise ValueError(f"dataset {name!r}: {error}") from None

    return limit_texts(stream(), max_texts=max_texts, max_bytes=max_bytes)


def load_dataset_split(name: str, config: str | None, *, split: str, streaming: bool, **load_kwargs: Any):
    """One split of a `datasets` dataset: a Hub name or local data folder (`load_dataset`), or a `save_to_disk`
    folder (`load_from_disk`). Any failure becomes a one-line `ValueError` naming the dataset, config and split."""
    import datasets

    local = Path(name).expanduser()
    try:
        if local.is_dir() and any((local / marker).exists() for marker in ("state.json", "dataset_dict.json")):
            dataset = datasets.load_from_disk(str(local))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise ValueError(f"bad split {split!r}; available: {list(dataset)}")
                dataset = dataset[split]
            return dataset.to_iterable_dataset() if streaming else dataset
        return datasets.load_dataset(name, config, split=split, streaming=streaming, **load_kwargs)
    except Exception as error:  # datasets raises many types: ConnectionError, DatasetNotFoundError, ValueError, ...
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"could not load dataset {name!r} (config {config!r}, split {split!r}): {message}") from error


# ---------------------------------------------------------------------------------------------------------------
# Sources: where a run's documents come from
# ---------------------------------------------------------------------------------------------------------------

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
    import datasets

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


__all__ = [
    "SUPPORTED_SUFFIXES",
    "TEXT_COLUMN",
    "TXT_SPLITS",
    "TextSource",
    "expand_paths",
    "is_supported_file",
    "iter_dataset_texts",
    "iter_file_texts",
    "iter_texts",
    "limit_texts",
    "load_dataset_split",
    "load_documents",
    "python_documentation",
    "texts_from_records",
]

"""Fine-tuning data files → `datasets.Dataset`.

- `.csv`: comma-separated with a header row; `.tsv`: tab-separated with a header row and no quoting (the GLUE
  convention: a `"` inside a sentence is text); any other suffix with an explicit `delimiter`.
- `.jsonl`: one JSON object per line; `.json`: JSON lines, a JSON array of objects, or a SQuAD v1.1 file
  (`{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers": [...]}]}]}]}`), which is
  flattened to one row per question: `id`, `title`, `context`, `question`, `answers` (`{"text": [...],
  "answer_start": [...]}`, the layout of the Hub's `squad` dataset).

Values are read as written: no string is turned into a missing value (`NA`, `null` and empty fields stay strings
in CSV / TSV).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

# A .json file up to this size is read whole first, to recognise SQuAD files and JSON arrays.
_MAX_WHOLE_JSON_BYTES = 1 << 30


def read_squad(path: str | Path) -> list[dict[str, Any]] | None:
    """The rows of a SQuAD v1.1 JSON file, one per question; None if the file is not in that layout."""
    path = Path(path)
    if path.stat().st_size > _MAX_WHOLE_JSON_BYTES:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return squad_rows(data)


def squad_rows(data: Any) -> list[dict[str, Any]] | None:
    """Flatten parsed SQuAD v1.1 JSON (`{"data": [articles]}`); None if `data` is not in that layout."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        return None
    articles = data["data"]
    if not all(isinstance(article, dict) and "paragraphs" in article for article in articles):
        return None
    rows = []
    for article in articles:
        title = article.get("title", "")
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph.get("qas", []):
                answers = qa.get("answers") or []
                rows.append(
                    {
                        "id": str(qa.get("id", len(rows))),
                        "title": title,
                        "context": context,
                        "question": qa["question"],
                        "answers": {
                            "text": [answer["text"] for answer in answers],
                            "answer_start": [int(answer["answer_start"]) for answer in answers],
                        },
                    }
                )
    return rows


def load_table(path: str | Path, delimiter: str | None = None) -> datasets.Dataset:
    """Read one data file (see the module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} not found")
    suffix = path.suffix.lower()
    try:
        if delimiter is not None or suffix in (".csv", ".tsv"):
            separator = delimiter if delimiter is not None else ("\t" if suffix == ".tsv" else ",")
            options: dict[str, Any] = {"delimiter": separator, "keep_default_na": False}
            if separator == "\t":
                options["quoting"] = csv.QUOTE_NONE
            dataset = datasets.load_dataset("csv", data_files=str(path), split="train", **options)
        elif suffix in (".json", ".jsonl"):
            rows = None
            if suffix == ".json" and path.stat().st_size <= _MAX_WHOLE_JSON_BYTES:
                try:
                    parsed = json.loads(path.read_text(encoding="utf-8-sig"))
                except json.JSONDecodeError:
                    parsed = None  # JSON lines
                rows = squad_rows(parsed)
                if rows is None and isinstance(parsed, list):
                    rows = parsed
                elif rows is None and parsed is not None:
                    raise ValueError(
                        f"{path}: a JSON object that is not a SQuAD v1.1 file; give JSON lines, an array of "
                        "objects, or a SQuAD file"
                    )
            dataset = (
                datasets.Dataset.from_list(rows)
                if rows is not None
                else datasets.load_dataset("json", data_files=str(path), split="train")
            )
        else:
            raise ValueError(
                f"{path}: unsupported data file type {suffix or '(no suffix)'!r}; use .csv, .tsv, .json or .jsonl, "
                "or give a delimiter for delimited text"
            )
    except ValueError:
        raise
    except (datasets.exceptions.DatasetGenerationError, json.JSONDecodeError, UnicodeDecodeError) as error:
        cause = error.__cause__ or error
        raise ValueError(f"cannot read {path}: {cause}") from error
    if len(dataset) == 0:
        raise ValueError(f"{path} holds no examples")
    return dataset


def limit(dataset: datasets.Dataset, count: int | None) -> datasets.Dataset:
    """The first `count` rows (all when None)."""
    if count is None or count >= len(dataset):
        return dataset
    if count < 1:
        raise ValueError(f"a sample limit must be positive, not {count}")
    return dataset.select(range(count))


def check_columns(dataset: datasets.Dataset, path: str | Path, needed: Sequence[tuple[str, str]]) -> None:
    """Raise a ValueError naming the first missing column. `needed`: (column, command-line flag) pairs."""
    for column, flag in needed:
        if column not in dataset.column_names:
            what = flag.removeprefix("--").removesuffix("-column").replace("-", " ")
            raise ValueError(
                f"{path}: the {what} column {column!r} is missing (columns: {', '.join(dataset.column_names)}); "
                f"name it with {flag}"
            )


def pick_column(dataset: datasets.Dataset, path: str | Path, given: str | None, candidates: Sequence[str],
                flag: str) -> str:
    """`given` if set (checked), else the first of `candidates` the file has."""
    if given is not None:
        check_columns(dataset, path, [(given, flag)])
        return given
    for name in candidates:
        if name in dataset.column_names:
            return name
    raise ValueError(
        f"{path}: none of the columns {', '.join(dataset.column_names)} is a known {flag[2:-7]} column "
        f"({', '.join(candidates)}); name it with {flag}"
    )


def as_text(value: Any) -> str:
    """A cell as text: a list of strings (sentences) is joined with spaces; None is empty."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(as_text(item) for item in value)
    return value if isinstance(value, str) else str(value)


__all__ = ["as_text", "check_columns", "limit", "load_table", "pick_column", "read_squad", "squad_rows"]

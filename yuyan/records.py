"""The two files a training run leaves beside its model, as small dataclasses: the only code that reads or writes
them. Training writes them, `yuyan.cards` renders the model card from them, `yuyan.hub` checks and uploads them,
the bench reads their numbers.

    run.json       how the run was set up (what `--resume` must match; how to run it again)
    metrics.json   what came out (evaluation, throughput, history); written last, so its presence means "done"

A run is a pretraining run (`yuyan pretrain`) or a fine-tuning run (`yuyan finetune`); each kind has its own pair
of records, told apart by `is_finetuning`. On disk the fine-tuning files name their task (`"task"`): that is how
`read_run` / `read_metrics` choose the class, in this one place.

The JSON is kept exactly as it has always been (same keys, same order, same values), so older folders load. Keys
a record does not know (written by a later version, or added by hand, such as `language`) are kept in `extra`
and written back unchanged. Every field may be missing: a card is still rendered from a partial record.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from yuyan.files import write_json_atomic

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"


@dataclass
class _Record:
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    FILE: ClassVar[str]
    is_finetuning: ClassVar[bool]
    # Keys written only when they hold a value (a fine-tuning run without test data has no test keys).
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        if not isinstance(values, dict):
            raise ValueError(f"{cls.FILE} should hold a JSON object, not {type(values).__name__}")
        names = set(cls._names())
        return cls(**{k: v for k, v in values.items() if k in names},
                   extra={k: v for k, v in values.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self._names()}
        for name in self.OPTIONAL:
            if values[name] is None:
                del values[name]
        return {**values, **self.extra}

    def write(self, folder: str | os.PathLike) -> Path:
        return write_json_atomic(Path(folder) / self.FILE, self.to_dict())


# ---------------------------------------------------------------------------------------------------------------
# run.json
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PretrainRun(_Record):
    """run.json of `yuyan pretrain`. `model`: the model settings as they were asked for (`preset` and the
    `YuyanConfig` fields set on top of it: the resolved configuration is config.json); `data`: sources,
    block size, tokenizer, seed; `training`: every `PretrainArguments` field."""

    FILE: ClassVar[str] = RUN_FILE
    is_finetuning: ClassVar[bool] = False

    model: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    training: dict[str, Any] | None = None

    def same_setup(self, other: PretrainRun) -> str | None:
        """The first section (`model`, `data`) in which `other` differs, or None: a resume must match both."""
        for name in ("model", "data"):
            if getattr(self, name) != getattr(other, name):
                return name
        return None


@dataclass
class FinetuneRun(_Record):
    """run.json of `yuyan finetune`: the Trainer settings, the LoRA settings (peft's names; None without LoRA),
    the task (our name: `classification`, ...) and the data (files, example counts, labels, options)."""

    FILE: ClassVar[str] = RUN_FILE
    is_finetuning: ClassVar[bool] = True

    training: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None
    task: str | None = None
    data: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------------------------
# metrics.json
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PretrainMetrics(_Record):
    """metrics.json of `yuyan pretrain`: the final evaluation on the whole validation set, the budget used and
    why the run stopped, throughput, the stack, and the loss / evaluation / time histories ([step, value] pairs)."""

    FILE: ClassVar[str] = METRICS_FILE
    is_finetuning: ClassVar[bool] = False
    OPTIONAL: ClassVar[tuple[str, ...]] = ("regularisation",)

    validation_loss: float | None = None
    validation_perplexity: float | None = None
    steps: int | None = None
    tokens_seen: int | None = None
    train_seconds: float | None = None
    tokens_per_second: float | None = None
    stop_reason: str | None = None
    parameters: int | None = None
    layer_types: list[str] | None = None
    processes: int | None = None
    mixed_precision: str | None = None
    device: str | None = None
    hardware: str | None = None
    loss_history: list | None = None
    eval_history: list | None = None
    time_history: list | None = None
    train_data: Any = None
    validation_data: Any = None
    # The planned passes over the training text and the hidden dropout they chose (absent when the model's dropout
    # was asked for, or the data was streamed).
    regularisation: dict[str, float] | None = None


@dataclass
class FinetuneMetrics(_Record):
    """metrics.json of `yuyan finetune`: the pipeline task (the Hub's name: `text-classification`, ...), the base
    model, the validation metrics (and test metrics when test data was given), time, size and hardware."""

    FILE: ClassVar[str] = METRICS_FILE
    is_finetuning: ClassVar[bool] = True
    OPTIONAL: ClassVar[tuple[str, ...]] = ("test_metrics", "test_data")

    task: str | None = None
    base_model: str | None = None
    metrics: dict[str, float] | None = None
    dataset: str | None = None
    validation_data: str | None = None
    test_metrics: dict[str, float] | None = None
    test_data: str | None = None
    train_seconds: float | None = None
    parameters: int | None = None
    layer_types: list[str] | None = None
    device: str | None = None
    hardware: str | None = None


RunRecord = PretrainRun | FinetuneRun
MetricsRecord = PretrainMetrics | FinetuneMetrics


def _is_finetuning(values: dict[str, Any]) -> bool:
    # The on-disk convention, read here only: fine-tuning files name their task, pretraining files do not.
    return isinstance(values, dict) and "task" in values


def run_from_dict(values: dict[str, Any] | RunRecord, finetuning: bool | None = None) -> RunRecord:
    """The run record of `values`; `finetuning` (from the metrics, when known) decides its kind for a partial
    record that does not name its task."""
    if isinstance(values, (PretrainRun, FinetuneRun)):
        return values
    if finetuning is None:
        finetuning = _is_finetuning(values)
    return (FinetuneRun if finetuning else PretrainRun).from_dict(values or {})


def metrics_from_dict(values: dict[str, Any] | MetricsRecord) -> MetricsRecord:
    if isinstance(values, (PretrainMetrics, FinetuneMetrics)):
        return values
    return (FinetuneMetrics if _is_finetuning(values) else PretrainMetrics).from_dict(values or {})


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def read_run(folder: str | os.PathLike, finetuning: bool | None = None) -> RunRecord:
    """folder/run.json; FileNotFoundError when it is missing, ValueError when it is not a JSON object.
    `finetuning`: the kind of run, when the folder's metrics already told it (see `run_from_dict`)."""
    return run_from_dict(_read_json(Path(folder) / RUN_FILE), finetuning)


def read_metrics(folder: str | os.PathLike) -> MetricsRecord:
    """folder/metrics.json; FileNotFoundError when it is missing, ValueError when it is not a JSON object."""
    return metrics_from_dict(_read_json(Path(folder) / METRICS_FILE))


__all__ = [
    "METRICS_FILE",
    "RUN_FILE",
    "FinetuneMetrics",
    "FinetuneRun",
    "MetricsRecord",
    "PretrainMetrics",
    "PretrainRun",
    "RunRecord",
    "metrics_from_dict",
    "read_metrics",
    "read_run",
    "run_from_dict",
]

"""A pretraining run's settings: the training arguments (`PretrainArguments`, each field a command-line flag) and the
model (`ModelSettings`, the `YuyanConfig` built once), resolved from a YAML file or a preset with command-line
overrides (`resolve_config`, `parse_overrides`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from yuyan.modeling import PRESETS, YuyanConfig


@dataclass
class PretrainArguments:
    """Everything a pretraining run needs besides the model architecture. Each field is a command-line flag."""

    output: str = field(default="runs/yuyan", metadata={"help": "output folder"})
    # data
    data: list[str] = field(default_factory=list, metadata={"help": "training files or globs (txt/jsonl/json/csv/parquet)"})
    validation_data: list[str] = field(default_factory=list, metadata={"help": "validation files or globs"})
    dataset: str | None = field(default=None, metadata={"help": "a `datasets` dataset name (Hub) or local folder"})
    dataset_config: str | None = field(default=None, metadata={"help": "the dataset's configuration name"})
    split: str = field(default="train", metadata={"help": "the dataset split to train on"})
    validation_split: str | None = field(default=None, metadata={"help": "the dataset split to validate on"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    txt_split: str = field(default="paragraph", metadata={"help": "a document of a .txt file: paragraph (blank-line separated) | line | file (the whole file as one stream, blank lines kept, as WikiText is scored)"})
    streaming: bool = field(default=False, metadata={"help": "stream the data (corpora larger than memory)"})
    validation_fraction: float = field(default=0.02, metadata={"help": "share of documents held out when no validation data is given"})
    num_proc: int | None = field(default=None, metadata={"help": "processes for tokenisation (datasets.map)"})
    # tokenizer
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder; without it one is trained on the data"})
    # batches and budget
    block_size: int = field(default=256, metadata={"help": "tokens per training sequence"})
    batch_size: int = field(default=16, metadata={"help": "sequences per device per micro-batch"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps (default: one epoch, without any budget)"})
    max_tokens: int | None = field(default=None, metadata={"help": "stop after this many training tokens"})
    max_minutes: float | None = field(default=None, metadata={"help": "training time: as many epochs as fit, the schedule ending with the budget (the first budget reached ends the run)"})
    # optimisation
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_learning_rate_ratio: float = field(default=0.1, metadata={"help": "final learning rate as a share of the peak"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw | muon (torch.optim.Muon on the 2-D hidden weights, AdamW on embeddings, head, norms, biases)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (not on norms, biases, embeddings)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: none)"})
    # Regularisation that follows the budget: a run that reads its text many times memorises it.
    multi_pass_dropout: float = field(default=0.1, metadata={"help": "the model's hidden dropout when the run is planned to read its training text more than --multi-pass-threshold times (decided once the run's length is known; shorter runs and streamed data train without; 0: never). A model.hidden_dropout given in the config or with --set is used instead, whatever the budget"})
    multi_pass_threshold: float = field(default=4.0, metadata={"help": "planned passes over the training text above which --multi-pass-dropout applies"})
    mixed_precision: str = field(default="no", metadata={"help": "no | bf16 | fp16 (bf16 is the fast path on CPUs with AMX)"})
    seed: int = field(default=42, metadata={"help": "seed of weights, data order and dropout"})
    # evaluation, logging, checkpoints
    eval_steps: int = field(default=200, metadata={"help": "evaluate every N steps"})
    eval_batches: int | None = field(default=50, metadata={"help": "batches per periodic evaluation (the final one uses all)"})
    logging_steps: int = field(default=10, metadata={"help": "log every N steps"})
    save_steps: int = field(default=500, metadata={"help": "checkpoint every N steps"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept (the newest)"})
    report_to: str = field(default="none", metadata={"help": "trackers for Accelerate: none | tensorboard | wandb | ..."})
    resume: str | None = field(default=None, metadata={"help": "resume: 'latest' or a checkpoint folder"})
    overwrite: bool = field(default=False, metadata={"help": "replace an output folder that holds another run"})
    peak_tflops: float | None = field(default=None, metadata={"help": "device peak for MFU (default: measured matmul peak)"})

    def validate(self) -> None:
        positive = ["block_size", "batch_size", "gradient_accumulation_steps", "eval_steps", "logging_steps", "save_steps"]
        for name in positive + ["max_steps", "max_tokens", "save_total_limit"]:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name}={value!r} is not allowed: it must be a positive integer.")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes={self.max_minutes} is not allowed: it must be positive.")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer={self.optimizer!r} is unknown; allowed: adamw, muon.")
        if self.optimizer == "muon" and not hasattr(torch.optim, "Muon"):
            raise ValueError(f"optimizer='muon' needs torch.optim.Muon, which torch {torch.__version__} lacks; use adamw.")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is unknown; allowed: no, bf16, fp16.")
        if self.learning_rate <= 0 or not 0 <= self.min_learning_rate_ratio <= 1:
            raise ValueError("learning_rate must be positive and min_learning_rate_ratio in [0, 1].")
        if not 0 <= self.multi_pass_dropout < 1:
            raise ValueError(f"multi_pass_dropout={self.multi_pass_dropout} is not allowed: it must be in [0, 1).")
        if self.multi_pass_threshold <= 0:
            raise ValueError(f"multi_pass_threshold={self.multi_pass_threshold} is not allowed: it must be positive.")
        if self.data and self.dataset:
            raise ValueError("give either --data files or --dataset, not both.")
        if self.txt_split not in ("paragraph", "line", "file"):
            raise ValueError(f"txt_split={self.txt_split!r} is unknown; allowed: paragraph, line, file.")
        if self.streaming and not (self.max_steps or self.max_tokens or self.max_minutes):
            raise ValueError("a streaming run needs a budget: --max-steps, --max-tokens or --max-minutes.")


# -------------------------------------------------------------------------------------------------------------
# Configuration: YAML files and presets, with command-line overrides
# -------------------------------------------------------------------------------------------------------------


@dataclass
class ModelSettings:
    """The run's model: the settings as asked for (`requested`: `preset` and `YuyanConfig` fields; run.json records
    them and a resume must match them) and the `YuyanConfig` they resolve to, built once, here. The run's tokenizer
    then sets its vocabulary size and special ids on that same config (`adopt_tokenizer`)."""

    requested: dict[str, Any]
    config: YuyanConfig

    @classmethod
    def resolve(cls, requested: dict[str, Any]) -> ModelSettings:
        values = dict(requested)
        preset = values.pop("preset", None)
        config = YuyanConfig.from_preset(preset, **values) if preset is not None else YuyanConfig(**values)
        return cls(dict(requested), config)

    def adopt_tokenizer(self, tokenizer) -> YuyanConfig:
        """The config with the tokenizer's vocabulary size and special ids (bos falls back to eos)."""
        config = self.config
        config.vocab_size = len(tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
        config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.validate_token_ids()
        return config


def _read_config_file(config: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model values, training values) of `--config`: a preset name or a YAML file."""
    if config in PRESETS:
        return {"preset": config}, {}
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"--config {config!r} is neither a YAML file nor a preset; presets: {sorted(PRESETS)}.")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    unknown = set(loaded) - {"model", "training"}
    if unknown or not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected the sections 'model' and 'training', found {sorted(loaded)}.")
    return dict(loaded.get("model") or {}), dict(loaded.get("training") or {})


def resolve_config(
    config: str | None, overrides: dict[str, Any] | None = None, training: dict[str, Any] | None = None
) -> tuple[ModelSettings, PretrainArguments]:
    """(the model, training arguments) from a YAML file or a preset name, then overrides.

    The YAML file has a `model:` section (`preset:` and/or any `YuyanConfig` field) and a `training:` section
    (any `PretrainArguments` field). `overrides` are `model.FIELD` / `FIELD` = value pairs (`--set`); `training`
    holds the values of explicit command-line flags, which win over the file. Every setting is checked here, the
    model's by building its `YuyanConfig`.
    """
    model_values, training_values = _read_config_file(config) if config is not None else ({"preset": "tiny-hybrid"}, {})
    known_training = {f.name for f in fields(PretrainArguments)}
    for key, value in (overrides or {}).items():
        if key.startswith("model."):
            model_values[key[len("model.") :]] = value
        elif key.startswith("training.") or key in known_training:
            training_values[key.removeprefix("training.")] = value
        else:
            model_values[key] = value
    training_values.update({k: v for k, v in (training or {}).items() if v is not None})

    unknown = set(training_values) - known_training
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}; allowed: {sorted(known_training)}.")
    arguments = PretrainArguments(**training_values)
    arguments.validate()
    return ModelSettings.resolve(model_values), arguments


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`key=value` strings; values are parsed as YAML scalars (numbers, booleans, lists)."""
    overrides = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set hidden_size=128")
        overrides[key.strip()] = yaml.safe_load(raw)
    return overrides


__all__ = ["ModelSettings", "PretrainArguments", "parse_overrides", "resolve_config"]

"""`yuyan finetune`: one flag per field of the task, data and LoRA dataclasses and of `TrainingArguments`."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from yuyan.cli.flags import dataclass_flags


def _argument_groups():
    from transformers import TrainingArguments

    from yuyan.training.finetune import DataArguments, FinetuneArguments, LoraArguments

    return (
        ("task", FinetuneArguments),
        ("data", DataArguments),
        ("LoRA", LoraArguments),
        ("training (transformers.TrainingArguments)", TrainingArguments),
    )


def build(subparsers, name: str, help: str):
    """Every field is a flag in transformers' spelling (`--learning_rate` or `--learning-rate`)."""
    from yuyan.training.finetune import TRAINING_DEFAULTS

    parser = subparsers.add_parser(
        name,
        help=help,
        description="Fine-tune a pretrained Yuyan model with the transformers Trainer. Every TrainingArguments "
        "field is a flag (--learning_rate or --learning-rate).",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[dataclass_flags(dtype, title=title) for title, dtype in _argument_groups()],
    )
    parser.add_argument("--output", dest="output_dir", default=argparse.SUPPRESS,
                        help="the output folder (--output_dir)")
    parser.set_defaults(handler=run, use_cpu=None, **TRAINING_DEFAULTS)
    return parser


def _unescape(value: str | None) -> str | None:
    """`\\t` and `\\n` typed on a command line mean a tab and a newline."""
    if value is None:
        return None
    return value.replace("\\t", "\t").replace("\\n", "\n")


def split_namespace(args: argparse.Namespace):
    """The parsed flags as the four argument objects: (FinetuneArguments, DataArguments, LoraArguments,
    TrainingArguments)."""
    from yuyan.training.finetune import _accelerator_available

    values = vars(args)

    def pick(dtype) -> dict[str, Any]:
        return {f.name: values[f.name] for f in dataclasses.fields(dtype) if f.init and f.name in values}

    (_, finetune_type), (_, data_type), (_, lora_type), (_, training_type) = _argument_groups()
    finetune_args = finetune_type(**pick(finetune_type))
    data_args = data_type(**pick(data_type))
    data_args.delimiter = _unescape(data_args.delimiter)
    data_args.prompt_suffix = _unescape(data_args.prompt_suffix)
    lora_args = lora_type(**pick(lora_type))
    training_values = pick(training_type)
    if not training_values.get("output_dir"):
        raise ValueError("give the output folder: --output DIR")
    if training_values.get("use_cpu") is None:
        training_values["use_cpu"] = not _accelerator_available()
    return finetune_args, data_args, lora_args, training_type(**training_values)


def run(args: argparse.Namespace) -> None:
    from yuyan.training.finetune import finetune

    finetune_args, data_args, lora_args, training_args = split_namespace(args)
    result = finetune(finetune_args, training_args, data_args, lora_args)
    shown = ", ".join(f"{name} {value:.4g}" for name, value in result["metrics"].items())
    print(f"{result['task']}: {shown} (validation); saved to {training_args.output_dir}")
    if result.get("test_metrics"):
        print(f"{result['task']}: " + ", ".join(f"{name} {value:.4g}" for name, value in result["test_metrics"].items())
              + f" (test: {finetune_args.test_file})")

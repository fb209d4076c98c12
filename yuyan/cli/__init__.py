"""The `yuyan` command: argparse in front of the library, and the only place that parses arguments and prints.

`COMMANDS` is the whole command line: each subcommand names the module under `yuyan/cli/` whose function builds
its parser (and sets the function that runs it as `handler`). Only the parser of the subcommand being run is
built, so `yuyan info` does not import the training stack; `yuyan --help` lists every subcommand from the table's
help strings alone. The library never imports this package (tests/test_imports.py checks it).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple

from yuyan.errors import CommandError


class Command(NamedTuple):
    module: str
    """The module under `yuyan.cli` that holds the command."""
    build: str
    """Its function `build(subparsers, name, help) -> parser`, which also sets the parser's `handler`."""
    help: str


COMMANDS: dict[str, Command] = {
    "info": Command("info", "build", "show the version and the model presets"),
    "tokenizer": Command("tokenizer", "build", "train a byte-level BPE or word-level tokenizer"),
    "pretrain": Command("pretrain", "build", "pretrain a model from scratch (Accelerate)"),
    "finetune": Command(
        "finetune", "build",
        "fine-tune a Yuyan model for a task (Trainer): classification, tagging, QA, generation; LoRA",
    ),
    "eval": Command("eval", "build", "perplexity, bits per byte and word perplexity of a saved model on text files"),
    "generate": Command(
        "generate", "build",
        "generate text from a model folder or Hub id (greedy, sampling, beam search; streaming; chat)",
    ),
    "card": Command("hub", "build_card",
                    "re-render a model folder's card (README.md) from its metrics.json and run.json"),
    "push": Command("hub", "build_push", "upload a model folder to the Hugging Face Hub"),
    "export": Command(
        "export", "build",
        "convert a model: to a plain transformers Llama folder (--format llama) or a GGUF file for llama.cpp "
        "(--format gguf), or a Llama one to Yuyan (--from llama)",
    ),
    "demo": Command("demo", "build", "train a tokenizer and a tiny model on Python's own docs (minutes)"),
}

# Failures a user causes and can fix: one line on stderr, exit status 2.
USER_ERRORS = (CommandError, ValueError, FileNotFoundError)


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The `yuyan` parser with the full parsers of `commands` (default: all) and the others listed by name only."""
    parser = argparse.ArgumentParser(prog="yuyan", description="Build your own small language model.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        if commands is None or name in commands:
            module = importlib.import_module(f"{__name__}.{command.module}")
            getattr(module, command.build)(subparsers, name, command.help)
        else:
            subparsers.add_parser(name, help=command.help)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The subcommand `argv` runs: its first word (the top-level parser has no option taking a value)."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(commands={_command_in(argv)})
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 1
    try:
        handler(args)
    except USER_ERRORS as error:
        print(f"yuyan {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0

"""The `yuyan` command: argparse in front of the package's functions, with no logic of its own."""

from __future__ import annotations

import argparse
import sys


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""


def positive_int(value: str) -> int:
    """argparse type: an integer above zero."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value!r}")
    return number


def _add_info_command(subparsers) -> None:
    parser = subparsers.add_parser("info", help="show the version and the model presets")
    parser.set_defaults(handler=_run_info)


def _run_info(args) -> None:
    from yuyan import __version__
    from yuyan.modeling.configuration_yuyan import PRESETS, YuyanConfig

    print(f"yuyan {__version__}")
    for name in PRESETS:
        config = YuyanConfig.from_preset(name)
        print(f"  {name:<16} {config.estimated_num_parameters() / 1e6:7.2f}M parameters  layers: {config.stack_summary()}")


def _add_tokenizer_commands(subparsers) -> None:
    """`yuyan tokenizer ...` (owned by yuyan.tokenization)."""
    try:
        from yuyan.tokenization.cli import add_tokenizer_commands
    except ImportError:
        return
    add_tokenizer_commands(subparsers)


def _add_dataclass_flags(parser, dataclass_type, skip: set[str] = frozenset()) -> None:
    """One `--flag-name` per dataclass field, defaulting to None so that config files keep their values."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(dataclass_type)
    for item in dataclasses.fields(dataclass_type):
        if item.name in skip:
            continue
        flag = "--" + item.name.replace("_", "-")
        hint = hints[item.name]
        help_text = item.metadata.get("help", "")
        if hint is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        elif typing.get_origin(hint) is list or hint == list[str]:
            parser.add_argument(flag, nargs="+", default=None, help=help_text)
        else:
            kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
            parser.add_argument(flag, type=kinds[0], default=None, help=help_text)


def _add_pretrain_command(subparsers) -> None:
    from yuyan.training.pretrain import PretrainArguments

    parser = subparsers.add_parser("pretrain", help="pretrain a model from scratch (Accelerate)")
    parser.add_argument("--config", default=None, help="a YAML file (configs/*.yaml) or a preset name")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a model field (hidden_size=128) or a training field (learning_rate=3e-4)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="continue the run in --output: from its latest checkpoint, or from the one given")
    _add_dataclass_flags(parser, PretrainArguments, skip={"resume"})
    parser.set_defaults(handler=_run_pretrain)


def _run_pretrain(args) -> None:
    import dataclasses

    from yuyan.training.pretrain import PretrainArguments, parse_overrides, pretrain, resolve_config

    explicit = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainArguments)}
    model_values, arguments = resolve_config(args.config, parse_overrides(args.set), explicit)
    metrics = pretrain(arguments, model_values)
    print(f"validation perplexity {metrics['validation_perplexity']:.2f} after {metrics['steps']} steps; "
          f"model saved to {arguments.output}")


def _add_eval_command(subparsers) -> None:
    from yuyan.training.evaluation import add_eval_command

    add_eval_command(subparsers)


def _add_generate_command(subparsers) -> None:
    from yuyan.generate import add_generate_command

    add_generate_command(subparsers)


def _add_hub_commands(subparsers) -> None:
    from yuyan.hub import add_card_command, add_push_command

    add_card_command(subparsers)
    add_push_command(subparsers)


def _add_finetune_command(subparsers) -> None:
    from yuyan.training.finetune import add_finetune_command

    add_finetune_command(subparsers)


def _add_export_command(subparsers) -> None:
    from yuyan.export import add_export_command

    add_export_command(subparsers)


def _add_demo_command(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train a tokenizer and a tiny model on Python's own docs (minutes)")
    parser.add_argument("--output", default="runs/demo", help="where the model goes")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    parser.add_argument("--preset", default="tiny-hybrid", help="model preset")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args) -> None:
    from yuyan.training.demo import run_demo

    run_demo(output=args.output, minutes=args.minutes, preset=args.preset)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yuyan", description="Build your own small language model.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_info_command(subparsers)
    _add_tokenizer_commands(subparsers)
    _add_pretrain_command(subparsers)
    _add_finetune_command(subparsers)
    _add_eval_command(subparsers)
    _add_generate_command(subparsers)
    _add_hub_commands(subparsers)
    _add_export_command(subparsers)
    _add_demo_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 1
    try:
        handler(args)
    except (CommandError, ValueError, FileNotFoundError) as error:
        print(f"yuyan {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # Run the imported module's `main`, not this `__main__` copy: subcommands raise `yuyan.cli.CommandError`, which
    # the copy's except clause would not know as its own class.
    from yuyan.cli import main as package_main

    sys.exit(package_main())

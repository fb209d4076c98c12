"""The `yuyan` command: argparse in front of the package's functions, with no logic of its own."""

from __future__ import annotations

import argparse
import sys


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yuyan", description="Build your own small language model.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_info_command(subparsers)
    _add_tokenizer_commands(subparsers)
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
    sys.exit(main())

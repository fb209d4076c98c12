"""`yuyan pretrain`: a YAML file or preset, `--set` overrides, and one flag per `PretrainArguments` field."""

from __future__ import annotations

import argparse
import dataclasses

from yuyan.cli.flags import dataclass_flags


def build(subparsers, name: str, help: str):
    from yuyan.training.pretrain import PretrainArguments

    # The run's own flags come first in --help, then one per PretrainArguments field (None unless typed, so that
    # the config file keeps its values).
    run_flags = argparse.ArgumentParser(add_help=False)
    run_flags.add_argument("--config", default=None, help="a YAML file (configs/*.yaml) or a preset name")
    run_flags.add_argument("--set", action="append", metavar="KEY=VALUE",
                           help="override a model field (hidden_size=128) or a training field (learning_rate=3e-4)")
    run_flags.add_argument("--resume", nargs="?", const="latest", default=None,
                           help="continue the run in --output: from its latest checkpoint, or from the one given")
    parser = subparsers.add_parser(
        name, help=help, parents=[run_flags, dataclass_flags(PretrainArguments, skip={"resume"}, unset=True)],
    )
    parser.set_defaults(handler=run)
    return parser


def run(args) -> None:
    from yuyan.training.pretrain import PretrainArguments, parse_overrides, pretrain, resolve_config

    explicit = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainArguments)}
    settings, arguments = resolve_config(args.config, parse_overrides(args.set), explicit)
    metrics = pretrain(arguments, settings)
    print(f"validation perplexity {metrics['validation_perplexity']:.2f} after {metrics['steps']} steps; "
          f"model saved to {arguments.output}")

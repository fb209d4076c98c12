"""`yuyan info`: the version and the model presets."""

from __future__ import annotations


def build(subparsers, name: str, help: str):
    parser = subparsers.add_parser(name, help=help)
    parser.set_defaults(handler=run)
    return parser


def run(args) -> None:
    from yuyan import __version__
    from yuyan.modeling.configuration_yuyan import PRESETS, YuyanConfig

    print(f"yuyan {__version__}")
    for name in PRESETS:
        config = YuyanConfig.from_preset(name)
        print(f"  {name:<16} {config.estimated_num_parameters() / 1e6:7.2f}M parameters  layers: {config.stack_summary()}")

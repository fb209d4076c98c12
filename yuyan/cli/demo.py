"""`yuyan demo`: the whole path (tokenizer, pretraining, reload, a sample) in a few minutes, no download."""

from __future__ import annotations


def build(subparsers, name: str, help: str):
    parser = subparsers.add_parser(name, help=help)
    parser.add_argument("--output", default="runs/demo", help="where the model goes")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    parser.add_argument("--preset", default="tiny-hybrid", help="model preset")
    parser.set_defaults(handler=run)
    return parser


def run(args) -> None:
    from yuyan.training.demo import run_demo

    run_demo(output=args.output, minutes=args.minutes, preset=args.preset)

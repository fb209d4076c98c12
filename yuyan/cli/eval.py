"""`yuyan eval`: perplexity, bits per byte and word perplexity of a saved model on text files, as a table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from yuyan.cli.types import positive_int


def build(subparsers, name: str, help: str):
    from yuyan.loading import DTYPES
    from yuyan.training.evaluation import DEFAULT_BATCH_SIZE

    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Score every token of the files' text (read whole, joined in order) with sliding windows, and report "
            "token perplexity, bits per byte and word-level perplexity (WikiText word count)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="saved Yuyan model folder (model and tokenizer)")
    parser.add_argument("--data", required=True, nargs="+", metavar="FILE", help="UTF-8 text files")
    parser.add_argument(
        "--block-size", type=positive_int, metavar="N",
        help="window length in tokens (default: max_position_embeddings, at most 1024)",
    )
    parser.add_argument("--stride", type=positive_int, metavar="N", help="window step in tokens (default: block size // 2)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, metavar="N", help="windows per forward pass")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype the model runs in")
    parser.add_argument("--device", metavar="DEVICE", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.set_defaults(handler=run)
    return parser


def format_results(result: dict[str, Any]) -> str:
    """A small table of the metrics and the counts."""
    rows = [
        ("perplexity", f"{result['perplexity']:.4f}"),
        ("bits per byte", f"{result['bits_per_byte']:.4f}"),
        ("word perplexity", f"{result['word_perplexity']:.4f}"),
        ("loss (nats/token)", f"{result['loss']:.4f}"),
        ("total NLL (nats)", f"{result['nll']:.2f}"),
        ("tokens", f"{result['tokens']:,}"),
        ("bytes", f"{result['bytes']:,}"),
        ("words", f"{result['words']:,}"),
        ("block size / stride", f"{result['block_size']} / {result['stride']}"),
        ("windows / batch size", f"{result['windows']:,} / {result['batch_size']}"),
        ("dtype", result["dtype"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run(args) -> None:
    from yuyan.training.evaluation import evaluate_files

    result = evaluate_files(
        args.model, args.data, block_size=args.block_size, stride=args.stride, batch_size=args.batch_size,
        dtype=args.dtype, device=args.device,
    )
    print(f"{args.model} on {', '.join(args.data)}")
    print(format_results(result))
    if args.json:
        from yuyan.files import write_json_atomic

        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, result)
        print(f"wrote {path}")

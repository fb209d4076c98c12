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

    result = run_demo(output=args.output, minutes=args.minutes, preset=args.preset)
    print(f"\nvalidation perplexity {result['validation_perplexity']:.2f} (loss {result['validation_loss']:.3f}) "
          f"after {result['steps']} steps, {result['tokens_seen']:,} tokens, {result['train_seconds'] / 60:.1f} min")
    print(f"model saved to {result['output']}")
    print(f"reloaded with AutoModelForCausalLM.from_pretrained; a sample:\n\n{result['sample']}\n")

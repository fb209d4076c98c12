"""A reproducible recipe sweep at a fixed wall-clock budget: which settings give the lowest validation loss per
CPU-minute, for one stack on WikiText-2.

Every run is `yuyan pretrain --max-minutes M` (the schedule ends with the budget) from one base config, with one
group of settings changed at a time (a one-factor-at-a-time sweep around the base: cheap enough for 2 cores, and
each row reads as "this change, all else equal"). Runs are chosen between by validation word perplexity, i.e. the
run's validation loss (nats per token over the whole validation file) times tokens per word of that file: the
same order as validation loss when the tokenizer is the same, and comparable across vocabularies when it is not.

    python bench/sweep.py --config configs/small-lstm.yaml --minutes 3                 # every axis
    python bench/sweep.py --config configs/small-lstm.yaml --minutes 3 --axes lr optimizer
    python bench/sweep.py --config configs/tiny-lstm.yaml --minutes 0.1 --axes lr --eval-steps 5   # a smoke run
    python bench/sweep.py --list                                                       # the axes and their values

Writes OUTPUT/NAME/ (each run's folder), OUTPUT/results.json and a Markdown table, OUTPUT/sweep.md (printed too).
A run whose metrics are already there with the same settings (and a config that still resolves to the same
recipe) is not run again, so an interrupted sweep continues where it stopped. Run it on an otherwise idle machine:
a busy core changes what a minute buys.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "wikitext-2"

# Each axis: named variants, each a set of overrides (`--set` keys: training fields, or `model.FIELD`), and
# `tokenizer` (a vocabulary size for the shared BPE tokenizer, or "word" for the word-level one).
AXES: dict[str, dict[str, dict]] = {
    "lr": {f"lr={lr:g}": {"learning_rate": lr} for lr in (5e-4, 1e-3, 2e-3, 4e-3, 6e-3, 8e-3)},
    "schedule": {
        "warmup 10": {"warmup_steps": 10},
        "warmup 200": {"warmup_steps": 200},
        "to 0": {"min_learning_rate_ratio": 0.0},
        "to 0.3": {"min_learning_rate_ratio": 0.3},
    },
    "batch": {
        "8x256": {"batch_size": 8, "block_size": 256},
        "32x256": {"batch_size": 32, "block_size": 256},
        "32x128": {"batch_size": 32, "block_size": 128},
        "16x512": {"batch_size": 16, "block_size": 512},
    },
    # Width x depth; the MLP keeps about 8/3 of the width (the small presets' 688 at 256). A config at one of these
    # shapes (configs/small-*.yaml are 256x4) skips that variant as its own base.
    "shape": {
        "256x8": {"model.hidden_size": 256, "model.intermediate_size": 688, "model.num_hidden_layers": 8},
        "192x8": {"model.hidden_size": 192, "model.intermediate_size": 512, "model.num_hidden_layers": 8},
        "192x12": {"model.hidden_size": 192, "model.intermediate_size": 512, "model.num_hidden_layers": 12},
        "256x4": {"model.hidden_size": 256, "model.intermediate_size": 688, "model.num_hidden_layers": 4},
        "256x2": {"model.hidden_size": 256, "model.intermediate_size": 688, "model.num_hidden_layers": 2},
        "384x4": {"model.hidden_size": 384, "model.intermediate_size": 1024, "model.num_hidden_layers": 4},
    },
    "vocab": {
        "bpe 4k": {"tokenizer": 4096},
        "bpe 16k": {"tokenizer": 16384},
        "bpe 32k": {"tokenizer": 32768},
        "word": {"tokenizer": "word"},
    },
    "regularisation": {
        "dropout 0.1": {"model.hidden_dropout": 0.1},
        "dropout 0.2": {"model.hidden_dropout": 0.2},
        "no weight decay": {"weight_decay": 0.0},
    },
    "tying": {"untied": {"model.tie_word_embeddings": False}, "tied": {"model.tie_word_embeddings": True}},
    "optimizer": {"muon": {"optimizer": "muon"}, "muon lr x2": {"optimizer": "muon", "learning_rate": "x2"}},
}
DEFAULT_TOKENIZER = 8192


def tokenizer_for(choice, output: Path) -> Path:
    """The shared tokenizer of a vocabulary choice (trained once on the training split)."""
    folder = output / f"tokenizer-{choice}"
    if not (folder / "tokenizer.json").exists():
        if choice == "word":
            from yuyan.tokenization import train_word_tokenizer

            train_word_tokenizer(files=[DATA / "train.txt"], output_dir=folder)
        else:
            from yuyan.tokenization import train_tokenizer

            train_tokenizer(files=[DATA / "train.txt"], vocab_size=int(choice), output_dir=folder, txt_split="paragraph")
    return folder


def tokens_per_word(tokenizer_dir: Path, text: str) -> float:
    from transformers import AutoTokenizer

    from yuyan.training.evaluation import count_words, tokenize_text

    return len(tokenize_text(AutoTokenizer.from_pretrained(tokenizer_dir), text)) / count_words(text)


def same_as_base(config: str, settings: dict, tokenizer) -> bool:
    """Whether a variant resolves to the base recipe itself (e.g. "tied" when the base ties): no need to run it."""
    from dataclasses import asdict

    from yuyan.training.pretrain import resolve_config

    (base_model, base_training), (model, training) = resolve_config(config), resolve_config(config, settings)
    return (tokenizer == DEFAULT_TOKENIZER and asdict(training) == asdict(base_training)
            and model.config.to_dict() == base_model.config.to_dict())


def training_text(args) -> Path:
    """The training file of the sweep: WikiText-2's, or its first `--train-fraction` (whole lines), which makes a
    short budget see as many epochs as a long budget sees of the whole file (how regularisation is judged)."""
    if args.train_fraction == 1:
        return DATA / "train.txt"
    path = args.output / f"train-{args.train_fraction:g}.txt"
    if not path.exists():
        lines = (DATA / "train.txt").read_text(encoding="utf-8").splitlines(keepends=True)
        keep, size, target = [], 0, args.train_fraction * sum(len(line) for line in lines)
        for line in lines:
            if size >= target:
                break
            keep.append(line)
            size += len(line)
        path.write_text("".join(keep), encoding="utf-8")
    return path


def base_settings(config: str) -> dict:
    """The base recipe as the config file resolves it: every training field and the model fields it sets."""
    from dataclasses import asdict

    from yuyan.training.pretrain import resolve_config

    model, training = resolve_config(config)
    return {**asdict(training), **{f"model.{k}": v for k, v in model.requested.items()}}


def run_record(overrides: dict, args, base: dict) -> tuple[dict, object, dict]:
    """(the run's `--set` settings, its tokenizer, the record that identifies it). The record holds the resolved
    base recipe, not only the config's path, so a cached run is not reused once the config file has changed."""
    tokenizer = overrides.get("tokenizer", DEFAULT_TOKENIZER)
    settings = {k: v for k, v in overrides.items() if k != "tokenizer"}
    if settings.get("learning_rate") == "x2":
        settings["learning_rate"] = 2 * base["learning_rate"]
    record = {"config": args.config, "base": base, "minutes": args.minutes, "tokenizer": tokenizer,
              "settings": settings, "mixed_precision": args.mixed_precision}
    if args.train_fraction != 1:
        record["train_fraction"] = args.train_fraction
    return settings, tokenizer, record


def final_training_loss(loss_history: list | None, last: int = 20) -> float | None:
    """Mean training loss over the last `last` logged steps: beside the validation loss, how far a run memorises its
    training text (with dropout on, the training loss is measured with it on, so it reads a little high)."""
    if not loss_history:
        return None
    tail = [loss for _, loss in loss_history[-last:]]
    return sum(tail) / len(tail)


def run_one(name: str, overrides: dict, args, base: dict) -> dict:
    folder = args.output / name.replace(" ", "_").replace("=", "-")
    settings, tokenizer, record = run_record(overrides, args, base)
    done = folder / "sweep.json"
    if done.exists() and json.loads(done.read_text()).get("record") == record:
        result = json.loads(done.read_text())
        if "train_loss" not in result:  # written before the column was added
            from yuyan.records import read_metrics

            result["train_loss"] = final_training_loss(read_metrics(folder).loss_history)
        return result
    if name != "base" and same_as_base(args.config, settings, tokenizer):
        print(f"\n=== {name}: the same recipe as the base, not run again", flush=True)
        return {}
    tokenizer_dir = tokenizer_for(tokenizer, args.output)
    command = [
        sys.executable, "-m", "yuyan.cli", "pretrain", "--config", args.config, "--data", str(training_text(args)),
        "--validation-data", str(DATA / "valid.txt"), "--txt-split", "file", "--tokenizer", str(tokenizer_dir),
        "--output", str(folder), "--overwrite", "--max-minutes", str(args.minutes),
        "--mixed-precision", args.mixed_precision, "--eval-steps", str(args.eval_steps), "--eval-batches", "20",
        "--save-steps", "1000000", "--logging-steps", "20", "--seed", str(args.seed),
    ]
    for key, value in settings.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    print(f"\n=== {name}: {' '.join(command[3:])}", flush=True)
    if args.dry_run:
        return {}
    subprocess.run(command, check=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    from yuyan.records import read_metrics

    metrics = read_metrics(folder)
    ratio = tokens_per_word(tokenizer_dir, (DATA / "valid.txt").read_text(encoding="utf-8"))
    result = {
        "record": record,
        "name": name,
        "validation_loss": metrics.validation_loss,
        "train_loss": final_training_loss(metrics.loss_history),
        "valid_word_perplexity": math.exp(metrics.validation_loss * ratio),
        "steps": metrics.steps,
        "tokens_seen": metrics.tokens_seen,
        "train_seconds": metrics.train_seconds,
        "parameters": metrics.parameters,
        "stop_reason": metrics.stop_reason,
    }
    done.write_text(json.dumps(result, indent=1))
    return result


def _loss(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "small-lstm.yaml"), help="the base recipe")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget of every run")
    parser.add_argument("--axes", nargs="+", default=list(AXES), choices=list(AXES))
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help="run only these variants of the chosen axes (e.g. at a longer budget: lr=0.006 192x12)")
    parser.add_argument("--train-fraction", type=float, default=1.0,
                        help="train on the first FRACTION of WikiText-2's training text (e.g. 0.0625 makes 3 minutes "
                        "several epochs, as 60 minutes on the whole file are)")
    parser.add_argument("--output", type=Path, default=None, help="default bench/results/sweep-CONFIG-MINUTES")
    parser.add_argument("--mixed-precision", default="bf16")
    parser.add_argument("--eval-steps", type=int, default=1_000_000, help="periodic evaluations (none by default)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--list", action="store_true", help="print the axes and exit")
    args = parser.parse_args()
    if args.list:
        for axis, variants in AXES.items():
            print(f"{axis}: " + "; ".join(f"{name} {settings}" for name, settings in variants.items()))
        return
    if not DATA.exists():
        sys.exit(f"WikiText-2 not found at {DATA}")
    if not 0 < args.train_fraction <= 1:
        parser.error(f"--train-fraction {args.train_fraction} must be in (0, 1].")
    unknown = set(args.only or []) - {name for axis in args.axes for name in AXES[axis]}
    if unknown:
        parser.error(f"--only {sorted(unknown)}: not variants of the axes {args.axes}; see --list.")
    if "optimizer" in args.axes:
        import torch

        if not hasattr(torch.optim, "Muon"):
            print("torch.optim.Muon is missing in this torch: the optimizer axis is skipped.")
            args.axes.remove("optimizer")
    stem = Path(args.config).stem
    data_part = "" if args.train_fraction == 1 else f"-data{args.train_fraction:g}"
    args.output = args.output or REPO / "bench" / "results" / f"sweep-{stem}-{args.minutes:g}min{data_part}"
    args.output.mkdir(parents=True, exist_ok=True)

    base = base_settings(args.config)
    runs = [("base", "base", {})] + [
        (axis, name, overrides) for axis in args.axes for name, overrides in AXES[axis].items()
        if args.only is None or name in args.only
    ]
    results = []
    for axis, name, overrides in runs:
        result = run_one(name, overrides, args, base)
        if result:
            results.append({"axis": axis, **result})
            (args.output / "results.json").write_text(json.dumps(results, indent=1))
    if args.dry_run:
        return

    reference = results[0]["valid_word_perplexity"]
    lines = [
        f"### Sweep: {stem}, {args.minutes:g} minutes a run, WikiText-2"
        + ("" if args.train_fraction == 1 else f" (first {args.train_fraction:g} of the training text)")
        + f", {args.mixed_precision}, seed {args.seed}",
        "",
        f"Base: `{args.config}` with a {DEFAULT_TOKENIZER:,}-token BPE tokenizer. One change a row; chosen by validation "
        "word perplexity (validation loss x tokens per word).",
        "",
        "| axis | run | changes | params | steps | tokens seen | train loss (last 20 steps) | valid loss "
        "| valid word ppl | vs base |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        changes = ", ".join(f"{k}={v}" for k, v in row["record"]["settings"].items())
        if row["record"]["tokenizer"] != DEFAULT_TOKENIZER:
            changes = ", ".join(filter(None, [changes, f"tokenizer={row['record']['tokenizer']}"]))
        lines.append(
            f"| {row['axis']} | {row['name']} | {changes or '-'} | {row['parameters'] / 1e6:.1f}M | {row['steps']:,} "
            f"| {row['tokens_seen']:,} | {_loss(row.get('train_loss'))} | {row['validation_loss']:.4f} "
            f"| {row['valid_word_perplexity']:,.1f} "
            f"| {row['valid_word_perplexity'] / reference:.3f} |"
        )
    best = min(results, key=lambda row: row["valid_word_perplexity"])
    lines += ["", f"Best: {best['name']} ({best['valid_word_perplexity']:,.1f} valid word perplexity)."]
    table = "\n".join(lines) + "\n"
    (args.output / "sweep.md").write_text(table)
    print("\n" + table)


if __name__ == "__main__":
    main()

"""Pretraining on WikiText-2 under a fixed wall-clock budget: the Yuyan `small` stacks and the classic `seed-lstm`
(optionally against transformers' LlamaForCausalLM at the shape of `configs/small-attention.yaml`, trained the way
transformers' `run_clm` example trains it: Trainer defaults, AdamW, learning rate 5e-5, linear decay over 3 epochs,
fp32).

Every model of a run gets the same tokenizer (byte-level BPE, or word-level with `--tokenizer-model word`, both
trained on the training split), the same packed blocks and the same budget: `yuyan pretrain --max-minutes`, which
measures each model's step time and ends its learning-rate schedule with the budget. The training file is read as
one stream (`--txt-split file`: blank lines kept, as the text is scored). Afterwards each model is scored on the
validation and test files with `yuyan eval`'s strided evaluation: word-level perplexity as the WikiText papers
count it (whitespace words + one end-of-line per line), so the numbers sit beside published LSTM results whatever
the tokenizer. With the word-level tokenizer and the whole training vocabulary (the default for `word`: 33,278
entries with `<unk>`), one token is one counted word: token and word perplexity are the same number.

    python bench/pretrain_budget.py --minutes 15                          # about an hour for the four models
    python bench/pretrain_budget.py --minutes 15 --tokenizer-model word   # the word-level rows
    python bench/pretrain_budget.py --minutes 60 --models hybrid          # the best stack alone
    python bench/pretrain_budget.py --minutes 0.2 --eval-chars 20000 --models attention seed-lstm   # a smoke run

Writes OUTPUT/results.json, OUTPUT/loss_vs_time.png and prints a Markdown table. Each Yuyan model trains in its
own `yuyan pretrain` process (the same command a user runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "wikitext-2"


def train_yuyan(kind: str, args, tokenizer_dir: Path, output: Path) -> dict:
    config = REPO / "configs" / (f"{kind}.yaml" if kind == "seed-lstm" else f"small-{kind}.yaml")
    command = [
        sys.executable, "-m", "yuyan.cli", "pretrain", "--config", str(config),
        "--data", str(DATA / "train.txt"), *map(str, args.extra_train_text),
        "--validation-data", str(DATA / "valid.txt"), "--txt-split", args.txt_split,
        "--tokenizer", str(tokenizer_dir), "--output", str(output), "--max-minutes", str(args.minutes),
        "--mixed-precision", args.mixed_precision,
        "--eval-steps", "100000", "--save-steps", "100000", "--logging-steps", "20", "--overwrite",
        "--block-size", str(args.block_size),
    ]
    for setting in args.set or []:
        command += ["--set", setting]
    subprocess.run(command, check=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    from yuyan.records import read_metrics

    metrics = read_metrics(output)
    losses = dict(metrics.loss_history)
    return {
        "tokens_seen": metrics.tokens_seen,
        "steps": metrics.steps,
        "stop_reason": metrics.stop_reason,
        "train_seconds": metrics.train_seconds,
        "parameters": metrics.parameters,
        "curve": [(seconds, losses[step]) for step, seconds in metrics.time_history],
    }


def train_llama(args, tokenizer_dir: Path, output: Path) -> dict:
    """LlamaForCausalLM with the Trainer's defaults (the run_clm recipe), stopped by the same time budget."""
    import torch
    from transformers import (
        AutoTokenizer, DataCollatorForLanguageModeling, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments,
    )

    from yuyan.corpus import TextSource, load_documents
    from yuyan.export import llama_config_from_yuyan
    from yuyan.training.packing import tokenize_and_pack
    from yuyan.training.pretrain import parse_overrides, resolve_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    documents = load_documents(TextSource(files=[str(DATA / "train.txt")], txt_split=args.txt_split))
    blocks = tokenize_and_pack(documents, tokenizer, args.block_size)
    # Llama at the attention stack's shape as configs/small-attention.yaml sets it (and any --set model.* fields),
    # with the tokenizer's vocabulary and special ids as the Yuyan run adopts them: the config `yuyan export` writes
    # for that model.
    reference = resolve_config(str(REPO / "configs" / "small-attention.yaml"), parse_overrides(args.set))[0]
    torch.manual_seed(42)
    model = LlamaForCausalLM(llama_config_from_yuyan(reference.adopt_tokenizer(tokenizer)))
    curve: list[tuple[float, float]] = []

    class TimeBudget(TrainerCallback):
        def on_train_begin(self, arguments, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_log(self, arguments, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                curve.append((time.perf_counter() - self.start, logs["loss"]))

        def on_step_end(self, arguments, state, control, **kwargs):
            if time.perf_counter() - self.start >= args.minutes * 60:
                control.should_training_stop = True

    training_args = TrainingArguments(
        output_dir=str(output), per_device_train_batch_size=16, logging_steps=20, save_strategy="no",
        report_to="none", num_train_epochs=3, seed=42, dataloader_drop_last=True,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=blocks.with_format(None),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=[TimeBudget()],
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(str(output))
    tokenizer.save_pretrained(str(output))
    return {
        "tokens_seen": trainer.state.global_step * 16 * args.block_size,
        "steps": trainer.state.global_step,
        "stop_reason": "max_minutes",
        "train_seconds": seconds,
        "parameters": model.num_parameters(),
        "curve": curve,
    }


def evaluate(model_dir: Path, args) -> dict:
    from yuyan.loading import load_model_and_tokenizer
    from yuyan.training.evaluation import evaluate_text

    # Any causal LM folder: the Llama exports are scored the same way as the Yuyan models.
    model, tokenizer = load_model_and_tokenizer(model_dir, device="cpu")
    scores = {}
    for split in ("valid", "test"):
        text = (DATA / f"{split}.txt").read_text(encoding="utf-8")
        if args.eval_chars:
            text = text[: args.eval_chars]
        result = evaluate_text(model, tokenizer, text, block_size=args.block_size, stride=args.block_size // 2,
                               batch_size=16)
        scores[split] = {k: result[k] for k in ("word_perplexity", "perplexity", "bits_per_byte", "tokens", "words")}
    return scores


def train_shared_tokenizer(args) -> Path:
    """One tokenizer for every model of the run, trained on the training split (reused when already there)."""
    from yuyan.tokenization.bpe import DEFAULT_VOCAB_SIZE

    vocabulary = args.vocab_size or ("all" if args.tokenizer_model == "word" else DEFAULT_VOCAB_SIZE)
    tokenizer_dir = args.output / f"tokenizer-{args.tokenizer_model}-{vocabulary}"
    if not (tokenizer_dir / "tokenizer.json").exists():
        if args.tokenizer_model == "word":
            from yuyan.tokenization import train_word_tokenizer

            train_word_tokenizer(files=[DATA / "train.txt"], vocab_size=args.vocab_size, output_dir=tokenizer_dir)
        else:
            from yuyan.tokenization import train_tokenizer

            train_tokenizer(files=[DATA / "train.txt"], vocab_size=vocabulary, output_dir=tokenizer_dir,
                            txt_split="paragraph")
    return tokenizer_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget per model")
    parser.add_argument("--models", nargs="+", default=["attention", "lstm", "hybrid", "seed-lstm"],
                        choices=["attention", "lstm", "hybrid", "seed-lstm", "llama"])
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "pretrain")
    parser.add_argument("--tokenizer-model", choices=("bpe", "word"), default="bpe",
                        help="one tokenizer for all models: byte-level BPE or word-level (rare words as <unk>)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="use this tokenizer folder instead of training one (e.g. finetune_report.py's bilingual one)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="tokenizer vocabulary (default: `yuyan tokenizer train`'s for bpe, 8192; every training "
                             "word for word)")
    parser.add_argument("--extra-train-text", type=Path, nargs="+", default=[], metavar="FILE",
                        help="Yuyan runs: text files trained on beside WikiText-2's training text (scored on "
                        "WikiText-2 alone), e.g. finetune_report.py's unpaired Tatoeba sentences")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--txt-split", choices=("file", "paragraph", "line"), default="file",
                        help="documents of the training file (file: one stream, blank lines kept, as it is scored)")
    parser.add_argument("--mixed-precision", default=None,
                        help="for the Yuyan runs (Llama keeps fp32, as run_clm); default: bf16 on a CPU with native "
                        "bfloat16 (AVX-512 / AMX), no otherwise (bf16 is about 20x slower than fp32 on AVX2)")
    parser.add_argument("--eval-chars", type=int, default=None, help="score only this many characters (smoke runs)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="passed to every Yuyan run's `yuyan pretrain --set` (a model or training field, e.g. "
                             "optimizer=muon, learning_rate=0.003): a candidate recipe tried on every stack at once")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"WikiText-2 not found at {DATA}")
    if args.mixed_precision is None:
        from yuyan.loading import cpu_has_native_bfloat16

        native = cpu_has_native_bfloat16()
        args.mixed_precision = "bf16" if native else "no"
        print(f"mixed precision: {args.mixed_precision} (this CPU {'has' if native else 'lacks'} native bfloat16)",
              flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = args.tokenizer or train_shared_tokenizer(args)

    results = {}
    for name in args.models:
        folder = args.output / name
        print(f"\n=== {name}: {args.minutes} minutes ===", flush=True)
        run = train_llama(args, tokenizer_dir, folder) if name == "llama" else train_yuyan(name, args, tokenizer_dir, folder)
        run["scores"] = evaluate(folder, args)
        if name != "llama":
            run["settings"] = args.set or []
        results[name] = run
        (args.output / "results.json").write_text(json.dumps(results, indent=1))

    labels = {"attention": "Yuyan small-attention", "lstm": "Yuyan small-lstm", "hybrid": "Yuyan small-hybrid",
              "seed-lstm": "seed-lstm (Embedding 128, LSTM 128, untied)",
              "llama": "HF Llama, run_clm recipe (Trainer defaults, fp32)"}
    from transformers import AutoTokenizer

    vocabulary = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    print(f"\n### WikiText-2, {args.minutes:g} minutes of training per model, 2-core CPU, "
          f"{'the' if args.tokenizer else args.tokenizer_model} tokenizer ({vocabulary:,} tokens)"
          f"{', Yuyan runs with ' + ' '.join(args.set) if args.set else ''}"
          f"{', trained also on ' + ' '.join(map(str, args.extra_train_text)) if args.extra_train_text else ''}\n")
    print("| model | params | steps | tokens seen | tokens/s | train min | valid word ppl | test word ppl "
          "| test token ppl | test bits/byte |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, run in results.items():
        valid, test = run["scores"]["valid"], run["scores"]["test"]
        print(f"| {labels[name]} | {run['parameters'] / 1e6:.1f}M | {run['steps']:,} | {run['tokens_seen']:,} "
              f"| {run['tokens_seen'] / run['train_seconds']:,.0f} | {run['train_seconds'] / 60:.2f} "
              f"| {valid['word_perplexity']:,.1f} | {test['word_perplexity']:,.1f} | {test['perplexity']:.1f} "
              f"| {test['bits_per_byte']:.3f} |")
    print("\nAnchors on these files: pytorch/examples' tied 2-layer LSTM, 40 epochs on a GPU: 87.17 test word "
          "perplexity; AWD-LSTM: 65.8.")

    try:
        import matplotlib
    except ImportError:
        print("\nno plot: matplotlib is not installed (pip install -e '.[bench]')")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for name, run in results.items():
        if run["curve"]:
            seconds, losses = zip(*run["curve"])
            axis.plot([s / 60 for s in seconds], losses, label=labels[name])
    axis.set_xlabel("training time (minutes)")
    axis.set_ylabel("training loss (nats per token)")
    axis.set_title(f"WikiText-2, {args.minutes:g}-minute budget")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.output / "loss_vs_time.png", dpi=120)
    print(f"\nplot: {args.output / 'loss_vs_time.png'}")


if __name__ == "__main__":
    main()

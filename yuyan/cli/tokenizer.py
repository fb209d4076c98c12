"""`yuyan tokenizer train`: the command-line front of `yuyan.tokenization` (argument parsing and the summary)."""

from __future__ import annotations

import argparse

from yuyan.cli.types import parse_size, positive_int
from yuyan.tokenization.bpe import (
    DEFAULT_CHAT_TEMPLATE,
    DEFAULT_MAX_TOKEN_BYTES,
    DEFAULT_MIN_FREQUENCY,
    DEFAULT_MODEL_MAX_LENGTH,
    DEFAULT_PRE_TOKENIZER,
    DEFAULT_VOCAB_SIZE,
    PRE_TOKENIZERS,
)


def build(subparsers, name: str, help: str):
    tokenizer = subparsers.add_parser(name, help=help)
    commands = tokenizer.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    tokenizer.set_defaults(handler=lambda args: tokenizer.print_help())

    train = commands.add_parser(
        "train",
        help="train a tokenizer on files or a datasets dataset",
        description=(
            "Train a byte-level BPE tokenizer (NFC, digits split, lossless; --pre-tokenizer picks how text is cut) "
            "or, with --model word, a word-level one (whitespace words, rare ones as <unk>), and save a folder that "
            "transformers.AutoTokenizer.from_pretrained loads without yuyan."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = train.add_argument_group("corpus (one of --data or --dataset)")
    source.add_argument(
        "--data", nargs="+", metavar="PATH",
        help="files, directories or glob patterns: .txt/.md, .jsonl/.json, .csv/.tsv, .parquet (text formats may be .gz/.bz2/.xz)",
    )
    source.add_argument("--dataset", metavar="NAME", help="a datasets dataset: Hub name, local data folder or save_to_disk folder")
    source.add_argument("--dataset-config", metavar="C", help="dataset configuration name")
    source.add_argument("--split", default="train", help="dataset split")
    source.add_argument("--no-streaming", action="store_true", help="download/load the whole dataset instead of streaming it")
    source.add_argument("--text-column", default="text", help="field or column holding the text (json, jsonl, csv, parquet, datasets)")
    source.add_argument(
        "--txt-split", choices=("line", "paragraph", "file"), default="line",
        help="what one text is in a .txt file",
    )
    source.add_argument("--txt-separator", metavar="STR", help="split .txt files on this literal string instead (e.g. '<|endoftext|>')")
    source.add_argument("--max-texts", type=positive_int, metavar="N", help="read at most N texts")
    source.add_argument("--max-bytes", type=parse_size, metavar="SIZE", help="stop after SIZE bytes of text, e.g. 200M")

    model = train.add_argument_group("tokenizer")
    model.add_argument(
        "--model", choices=("bpe", "word"), default="bpe",
        help="bpe: byte-level BPE (lossless, any text); word: whole words, rare ones as <unk> (the classic word-level "
        "language-model setup, e.g. WikiText), text split on whitespace, each line end a token",
    )
    model.add_argument("--vocab-size", type=positive_int, default=None, metavar="N", help=f"vocabulary size, special (and byte) tokens included (bpe default {DEFAULT_VOCAB_SIZE}; word default: every word seen --min-frequency times)")
    model.add_argument("--min-frequency", type=positive_int, default=None, metavar="N", help=f"bpe: a pair must occur N times to be merged (default {DEFAULT_MIN_FREQUENCY}); word: a word must occur N times to be kept (default 1)")
    model.add_argument("--special-tokens", nargs="+", default=[], metavar="TOKEN", help="extra special tokens (after <|endoftext|> <|pad|> <|system|> <|user|> <|assistant|>)")
    model.add_argument(
        "--pre-tokenizer", choices=sorted(PRE_TOKENIZERS), default=None,
        help=f"bpe: how text is cut before BPE merges (default {DEFAULT_PRE_TOKENIZER}). "
        + "; ".join(f"{c.name}: {c.summary}" for c in PRE_TOKENIZERS.values()),
    )
    model.add_argument("--max-token-bytes", type=positive_int, default=DEFAULT_MAX_TOKEN_BYTES, metavar="N", help="bpe: longest token in UTF-8 bytes")
    model.add_argument("--model-max-length", type=positive_int, default=DEFAULT_MODEL_MAX_LENGTH, metavar="N", help="model_max_length saved with the tokenizer")
    model.add_argument("--padding-side", choices=("right", "left"), default="right", help="left for batched generation")
    model.add_argument("--no-chat-template", action="store_true", help="save without the default chat template")

    output = train.add_argument_group("output")
    output.add_argument("--output", required=True, metavar="DIR", help="folder to save the tokenizer in")
    output.add_argument("--overwrite", action="store_true", help="replace the tokenizer files of a non-empty DIR")
    progress = output.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show progress bars")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress bars")
    train.set_defaults(handler=run_train)
    return tokenizer


def run_train(args) -> None:
    from yuyan.tokenization.bpe import train_tokenizer
    from yuyan.corpus import iter_dataset_texts
    from yuyan.tokenization.word import train_word_tokenizer

    if (args.data is None) == (args.dataset is None):
        raise ValueError("give the corpus with exactly one of --data PATH... or --dataset NAME")
    if args.data is None and (args.txt_separator or args.txt_split != "line"):
        raise ValueError("--txt-split and --txt-separator apply to --data .txt files only")
    common = dict(
        text_column=args.text_column,
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        special_tokens=args.special_tokens,
        max_texts=args.max_texts,
        max_bytes=args.max_bytes,
        model_max_length=args.model_max_length,
        padding_side=args.padding_side,
        chat_template=None if args.no_chat_template else DEFAULT_CHAT_TEMPLATE,
        output_dir=args.output,
        overwrite=args.overwrite,
        show_progress=args.progress,
        return_stats=True,
    )
    if args.model == "word":
        if args.pre_tokenizer is not None:
            raise ValueError("--pre-tokenizer applies to --model bpe only: the word-level tokenizer splits on whitespace")
        common["min_frequency"] = args.min_frequency or 1
        train = train_word_tokenizer  # the same corpus arguments, another model
    else:
        train = train_tokenizer
        common.update(
            vocab_size=args.vocab_size or DEFAULT_VOCAB_SIZE,
            min_frequency=args.min_frequency or DEFAULT_MIN_FREQUENCY,
            max_token_bytes=args.max_token_bytes,
            pre_tokenizer=args.pre_tokenizer or DEFAULT_PRE_TOKENIZER,
        )
    if args.data is not None:
        tokenizer, stats = train(files=args.data, txt_split=args.txt_split, separator=args.txt_separator, **common)
        source = " ".join(args.data)
    else:
        texts = iter_dataset_texts(
            args.dataset, args.dataset_config, split=args.split, text_column=args.text_column,
            streaming=not args.no_streaming,
        )
        tokenizer, stats = train(texts, **common)
        source = f"dataset {args.dataset}" + (f" ({args.dataset_config})" if args.dataset_config else "") + f", split {args.split}"

    size = len(tokenizer)
    print(f"Trained on {stats.texts:,} texts ({stats.bytes / 1e6:,.1f} MB) from {source} in {stats.seconds:.1f} s.")
    asked, minimum = common["vocab_size"], common["min_frequency"]
    what = "pairs" if args.model == "bpe" else "words"
    note = "" if asked is None or size >= asked else f" (asked for {asked:,}: the corpus has no more {what} seen {minimum}+ times)"
    if args.model == "word":
        note += f"; unknown words: {tokenizer.unk_token} = {tokenizer.unk_token_id}"
    print(f"Vocabulary: {size:,} tokens{note}.")
    print(
        f"Special tokens: bos/eos {tokenizer.eos_token} = {tokenizer.eos_token_id}, pad {tokenizer.pad_token} = "
        f"{tokenizer.pad_token_id}; others: {', '.join(tokenizer.extra_special_tokens) or 'none'}."
    )
    if args.model == "bpe":
        choice = PRE_TOKENIZERS[common["pre_tokenizer"]]
        where = (f"llama.cpp reproduces it (tokenizer.ggml.pre={choice.llama_cpp})" if choice.llama_cpp
                 else "llama.cpp cannot reproduce it, so models trained with it do not export to GGUF")
        print(f"Pre-tokenizer: {choice.name}; {where}.")
    print(f"Saved to {args.output} (load it with transformers.AutoTokenizer.from_pretrained).")


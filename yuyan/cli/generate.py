"""`yuyan generate`: prompts from flags, a file or standard input, streamed or printed or written as JSON lines,
and an interactive chat; the decoding itself is `yuyan.generate` (transformers' `generate`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from yuyan.errors import CommandError, one_line
from yuyan.generate import (
    DEFAULT_BATCH_SIZE,
    GENERATION_FLAGS,
    STRATEGIES,
    Completion,
    GenerationRun,
    build_generation_config,
    generate_texts,
    make_streamer,
    report_lines,
)
from yuyan.loading import DTYPES, load_model_and_tokenizer

EXIT_COMMANDS = ("/exit", "/quit")
RESET_COMMAND = "/reset"


def _one_line_error(parser: argparse.ArgumentParser):
    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {one_line(message)} (see {parser.prog} --help)\n")

    return error


def build(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=help,
        description="Generate text with a Yuyan model. Every flag overrides one field of the model folder's "
                    "generation_config.json (a transformers.GenerationConfig).",
    )
    # argparse prints its usage before an error; one line is easier to read in scripts and logs.
    parser.error = _one_line_error(parser)

    source = parser.add_argument_group("model and prompts")
    source.add_argument("--model", required=True, help="a model folder (yuyan pretrain's output) or a Hub id")
    source.add_argument("--prompt", action="append", default=None,
                        help="a prompt; repeat for several (an empty prompt starts from the bos token)")
    source.add_argument("--prompt-file", default=None,
                        help="one prompt per line ('-': standard input); without --prompt or --prompt-file, "
                             "prompts are read from standard input")
    source.add_argument("--chat", action="store_true",
                        help="interactive chat on standard input with the tokenizer's chat template "
                             f"({', '.join(EXIT_COMMANDS)} or end of input ends it, {RESET_COMMAND} starts over)")
    source.add_argument("--system", default=None, help="with --chat: a system message opening the conversation")
    source.add_argument("--truncate", action="store_true",
                        help="cut prompts longer than the model's positions from the left, keeping room for "
                             "--max-new-tokens (otherwise they are an error)")

    decoding = parser.add_argument_group("decoding (each flag overrides the folder's generation_config.json)")
    decoding.add_argument("--strategy", choices=STRATEGIES, default=None,
                          help="greedy: argmax; sample: do_sample; beam: beam search (num_beams 4 unless given). "
                               "The plain flags below override it")
    decoding.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None,
                          help="sample instead of taking the most likely token")
    for name, kind, help_text in GENERATION_FLAGS:
        decoding.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_text)
    decoding.add_argument("--seed", type=int, default=None, help="random seed (transformers.set_seed)")
    decoding.add_argument("--stop", nargs="+", default=None, metavar="STRING",
                          help="stop a completion at any of these strings (not included in the output)")

    running = parser.add_argument_group("running and output")
    running.add_argument("--fast", action="store_true",
                         help="decode with yuyan.FastGenerator (ONNX Runtime; greedy and sampling, CPU): several times "
                              "faster than transformers' generate, same tokens. The first run of a model exports it "
                              "once (seconds) and caches it; needs the onnx extra")
    running.add_argument("--dtype", choices=DTYPES, default=None, help="load the weights in this dtype")
    running.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    running.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                         help=f"prompts generated together, left-padded (default {DEFAULT_BATCH_SIZE})")
    running.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                         help="print tokens as they come (default: on when standard output is a terminal and "
                              "there is one prompt)")
    running.add_argument("--output", default=None, metavar="FILE.jsonl",
                         help="write one JSON row per completion (prompt, completion, token counts, tokens/s) "
                              "instead of printing")
    parser.set_defaults(handler=run)
    return parser


def _read_prompts(args) -> list[str]:
    prompts: list[str] = list(args.prompt or [])
    if args.prompt_file is not None:
        if args.prompt_file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            if not os.path.isfile(args.prompt_file):
                raise FileNotFoundError(f"prompt file {args.prompt_file} does not exist")
            with open(args.prompt_file, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        prompts.extend(line for line in lines if line.strip())
    elif args.prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise ValueError("no prompt: give --prompt TEXT, --prompt-file FILE, pipe prompts on standard input, "
                             "or use --chat")
        prompts.extend(line for line in sys.stdin.read().splitlines() if line.strip())
    if not prompts:
        raise ValueError("no prompts to generate from (the prompt file or standard input was empty)")
    return prompts


def _check_args(args) -> None:
    for name in ("max_new_tokens", "num_beams", "num_return_sequences", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if args.chat and (args.prompt is not None or args.prompt_file is not None or args.output is not None):
        raise ValueError("--chat reads the conversation from standard input: drop --prompt, --prompt-file and --output")
    if args.system is not None and not args.chat:
        raise ValueError("--system only applies with --chat")
    if args.fast and args.device != "cpu":
        raise ValueError(f"--fast decodes on the CPU (ONNX Runtime); drop --device {args.device}, or drop --fast")


def run(args) -> None:
    """The `yuyan generate` handler: every failure a user can cause becomes a one-line CommandError."""
    try:
        _run(args)
    except CommandError:
        raise
    except (ValueError, OSError, RuntimeError) as error:
        raise CommandError(one_line(error)) from None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(args) -> None:
    _check_args(args)
    prompts = None if args.chat else _read_prompts(args)
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise FileNotFoundError(f"the folder of --output {args.output} does not exist")
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype, device=args.device)
    flags = {name: getattr(args, name) for name, _, _ in GENERATION_FLAGS}
    config = build_generation_config(model.generation_config, strategy=args.strategy, stop=args.stop,
                                     do_sample=args.do_sample, **flags)
    beams = (config.num_beams or 1) > 1
    sequences = config.num_return_sequences or 1
    args.fast_generator = None
    if args.fast:
        if beams or sequences > 1:
            raise ValueError("--fast does greedy decoding and sampling, one sequence per prompt: drop --num-beams / "
                             "--strategy beam / --num-return-sequences, or drop --fast (transformers' generate)")
        from yuyan.fast import FastGenerator

        args.fast_generator = FastGenerator(model)
        _stderr(args.fast_generator.preparation.describe())
    if args.chat:
        if sequences > 1:
            raise ValueError("--chat keeps one reply per turn: drop --num-return-sequences")
        stream = args.stream if args.stream is not None else (sys.stdout.isatty() and not beams)
    else:
        stream = args.stream if args.stream is not None else (
            sys.stdout.isatty() and len(prompts) == 1 and sequences == 1 and not beams and args.output is None)
        if stream and args.output is not None:
            raise ValueError("--stream prints to the terminal: drop it with --output")
    if stream and (beams or sequences > 1):
        raise ValueError("streaming prints one sequence at a time: it does not work with beam search or "
                         "--num-return-sequences above 1; drop --stream")

    if args.chat:
        run = _chat(model, tokenizer, config, args, stream)
    else:
        with contextlib.ExitStack() as stack:
            output = stack.enter_context(open(args.output, "w", encoding="utf-8")) if args.output else None
            run = _generate_prompts(model, tokenizer, prompts, config, args, stream, output)
    for line in report_lines(run, model):
        _stderr(line)


def _header(completion: Completion, prompts: int, sequences: int) -> str:
    label = []
    if prompts > 1:
        label.append(f"prompt {completion.prompt_index + 1}/{prompts}")
    if sequences > 1:
        label.append(f"sequence {completion.sequence_index + 1}/{sequences}")
    return f"=== {', '.join(label)} ==="


def _generate_prompts(model, tokenizer, prompts, config, args, stream, output) -> GenerationRun:
    sequences = config.num_return_sequences or 1
    several = len(prompts) > 1 or sequences > 1
    stop = config.stop_strings
    if stream:
        run = GenerationRun()
        for index, prompt in enumerate(prompts):
            if several:
                print(f"=== prompt {index + 1}/{len(prompts)} ===", flush=True)
            part = generate_texts(model, tokenizer, [prompt], config, streamer=make_streamer(tokenizer, stop),
                                  batch_size=1, truncate=args.truncate, seed=args.seed if index == 0 else None,
                                  log=_stderr, fast=args.fast_generator)
            for completion in part.completions:
                completion.prompt_index = index
            run.extend(part)
        return run

    run = generate_texts(model, tokenizer, prompts, config, batch_size=args.batch_size, truncate=args.truncate,
                         seed=args.seed, log=_stderr, fast=args.fast_generator)
    if output is not None:
        for completion in run.completions:
            output.write(json.dumps(completion.to_dict(), ensure_ascii=False) + "\n")
        _stderr(f"wrote {len(run.completions)} rows to {args.output}")
        return run
    for completion in run.completions:
        if several:
            print(_header(completion, len(prompts), sequences))
        print(completion.completion, flush=True)
    return run


def _chat(model, tokenizer, config, args, stream) -> GenerationRun:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer of {args.model} has no chat template, which --chat needs")
    interactive = sys.stdin.isatty()
    opening = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(opening)
    run = GenerationRun()
    seed = args.seed
    if interactive:
        _stderr(f"chatting with {args.model}: {' or '.join(EXIT_COMMANDS)} to leave, {RESET_COMMAND} to start over")
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            break
        if not line:
            break
        text = line.rstrip("\r\n")
        if text.strip() in EXIT_COMMANDS:
            break
        if text.strip() == RESET_COMMAND:
            messages = list(opening)
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        streamer = make_streamer(tokenizer, config.stop_strings) if stream else None
        try:
            part = generate_texts(model, tokenizer, [prompt], config, streamer=streamer, batch_size=1,
                                  truncate=args.truncate, add_special_tokens=False, seed=seed, log=_stderr,
                                  fast=args.fast_generator)
        except KeyboardInterrupt:
            messages.pop()
            break
        seed = None
        reply = part.completions[0].completion
        if not stream:
            print(reply, flush=True)
        messages.append({"role": "assistant", "content": reply})
        run.extend(part)
    return run

"""`yuyan generate`: decode from any Yuyan model folder or Hub id at the terminal (issue #7).

Everything goes through transformers' own machinery: the folder's `generation_config.json` is the starting
`transformers.GenerationConfig`, each flag the user gives overrides one field of it, `--stop` becomes
`GenerationConfig.stop_strings` (transformers' `StopStringCriteria`), streaming is a `transformers.TextStreamer`,
and batches are left-padded with an attention mask.

```
yuyan generate --model runs/demo --prompt "The river" --max-new-tokens 40 --strategy sample --seed 0
yuyan generate --model runs/demo --prompt-file prompts.txt --strategy beam --num-beams 4 --output out.jsonl
yuyan generate --model runs/demo --chat
```

The same from Python:

```python
>>> from yuyan.generate import build_generation_config, generate_texts, load_model
>>> model, tokenizer = load_model("runs/demo")
>>> config = build_generation_config(model.generation_config, strategy="greedy", max_new_tokens=20)
>>> run = generate_texts(model, tokenizer, ["The river"], config, stop=["."])
>>> run.completions[0].completion, run.tokens_per_second
```
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

STRATEGIES = ("greedy", "sample", "beam")
DTYPES = ("float32", "bfloat16")
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_BEAMS = 4
DEFAULT_BATCH_SIZE = 8
EXIT_COMMANDS = ("/exit", "/quit")
RESET_COMMAND = "/reset"

# Plain flags that map one-to-one onto a `GenerationConfig` field: (field, type, help).
GENERATION_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("max_new_tokens", int, f"tokens to generate per prompt (default: the folder's, else {DEFAULT_MAX_NEW_TOKENS})"),
    ("temperature", float, "sampling temperature"),
    ("top_k", int, "sample from the k most likely tokens"),
    ("top_p", float, "nucleus sampling: the smallest set of tokens whose probability reaches p"),
    ("typical_p", float, "locally typical sampling mass"),
    ("repetition_penalty", float, "penalise tokens already in the sequence (> 1.0 penalises)"),
    ("no_repeat_ngram_size", int, "never repeat an n-gram of this size"),
    ("num_beams", int, "beams for beam search (1: no beam search)"),
    ("num_return_sequences", int, "completions returned per prompt"),
)


# ----------------------------------------------------------------------------------------------------------------
# Python API
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Completion:
    """One generated continuation of one prompt."""

    prompt: str
    completion: str
    prompt_index: int
    sequence_index: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    """Wall time of the `generate` call that produced this row (a whole batch, for batched prompts)."""

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["tokens_per_second"] = round(self.tokens_per_second, 3)
        row["seconds"] = round(self.seconds, 6)
        return row


@dataclass
class GenerationRun:
    """What `generate_texts` did: the completions, the time spent, and the cache size after every forward pass."""

    completions: list[Completion] = field(default_factory=list)
    seconds: float = 0.0
    cache_bytes: list[list[int]] = field(default_factory=list)
    """One list per `generate` call: the bytes held by the cache (keys, values, recurrent states) after each step."""

    @property
    def new_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.completions)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def cache_constant(self) -> bool:
        """True when the cache never changed size within any `generate` call (an all-LSTM model)."""
        return bool(self.cache_bytes) and all(len(set(sizes)) <= 1 for sizes in self.cache_bytes)

    def extend(self, other: "GenerationRun") -> None:
        self.completions.extend(other.completions)
        self.seconds += other.seconds
        self.cache_bytes.extend(other.cache_bytes)


def _one_line(error: BaseException | str) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _has_weights(folder: str) -> bool:
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    names = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
    return any(os.path.isfile(os.path.join(folder, name)) for name in names)


def _looks_local(name: str) -> bool:
    """A path rather than a Hub id (`name` or `owner/name`)."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
    )


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bars or info logs from transformers while loading: the command's stderr stays readable."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hub_verbosity = hub_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    # huggingface_hub logs every retry of an unreachable Hub as a warning.
    hub_logging.set_verbosity(hub_logging.CRITICAL)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hub_logging.set_verbosity(hub_verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_model(name_or_path: str, *, dtype: str | None = None, device: str = "cpu"):
    """Load `(model, tokenizer)` from a Yuyan model folder or a Hub id, ready for generation.

    Raises `FileNotFoundError` (one-line message) for a folder that does not exist or holds no weights, and
    `OSError` when a Hub id cannot be fetched.
    """
    expanded = os.path.expanduser(name_or_path)
    local = os.path.exists(expanded)
    if local:
        if not os.path.isdir(expanded):
            raise FileNotFoundError(f"{name_or_path} is a file, not a model folder")
        if not _has_weights(expanded):
            raise FileNotFoundError(
                f"{name_or_path} holds no model weights (model.safetensors or pytorch_model.bin): "
                "is it the model folder that `yuyan pretrain` wrote?"
            )
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise FileNotFoundError(f"{name_or_path} holds weights but no config.json")
    elif _looks_local(name_or_path):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import yuyan  # noqa: F401  (registers Yuyan with the Auto classes)

    try:
        target = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}: {_one_line(error)}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")

    kwargs = {}
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
        kwargs["dtype"] = getattr(torch, dtype)
    source = expanded if local else name_or_path
    try:
        with _quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as error:
        if local:
            raise OSError(f"could not load {name_or_path}: {_one_line(error)}") from None
        raise OSError(
            f"{name_or_path} is not a local model folder, and the Hugging Face Hub could not provide it "
            f"(offline, private or misspelt?): {_one_line(error)}"
        ) from None
    model.to(target).eval()
    return model, tokenizer


def build_generation_config(
    base,
    *,
    strategy: str | None = None,
    stop: Sequence[str] | None = None,
    do_sample: bool | None = None,
    **flags: Any,
):
    """A copy of `base` (the model's `GenerationConfig`) with the strategy, then the explicit flags, applied.

    `strategy` is "greedy" (no sampling, one beam), "sample" (sampling, one beam) or "beam" (no sampling,
    `num_beams` from the flags, else the base's if above 1, else 4, and at least `num_return_sequences`). Flags
    whose value is None are left as the base has them. Raises `ValueError` for a combination transformers rejects.
    """
    from transformers import GenerationConfig

    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    unknown = set(flags) - {name for name, _, _ in GENERATION_FLAGS}
    if unknown:
        raise TypeError(f"unknown generation flags: {sorted(unknown)}")
    given = {name: value for name, value in flags.items() if value is not None}
    if do_sample is not None:
        given["do_sample"] = do_sample

    if strategy is not None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        if strategy == "greedy":
            config.do_sample, config.num_beams = False, 1
        elif strategy == "sample":
            config.do_sample, config.num_beams = True, 1
        else:
            beams = config.num_beams if config.num_beams and config.num_beams > 1 else DEFAULT_BEAMS
            wanted = given.get("num_return_sequences") or config.num_return_sequences or 1
            config.do_sample, config.num_beams = False, max(beams, wanted)
    for name, value in given.items():
        setattr(config, name, value)
    if stop:
        config.stop_strings = list(stop)
    if config.max_new_tokens is None and config.max_length is None:
        config.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    try:
        config.validate(user_set_attributes=set(given))
    except ValueError as error:
        raise ValueError(_one_line(error)) from None
    return config


def cut_at_stop(text: str, stop: Iterable[str] | None) -> tuple[str, bool]:
    """`text` up to (not including) the earliest stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop or () if s and s in text]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


def _stop_prefix_length(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string (held back while streaming)."""
    longest = 0
    for s in stop:
        for size in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:size]):
                longest = size
                break
    return longest


def _make_streamer(tokenizer, stop: Sequence[str] | None = None, write: Callable[[str], None] | None = None):
    """A `transformers.TextStreamer` that prints new text only, and stops printing at a stop string.

    Text that could be the start of a stop string is held back until it is known not to be one, so the streamed
    output equals the non-streamed completion.
    """
    from transformers import TextStreamer

    class StopAwareStreamer(TextStreamer):
        def __init__(self):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.stop = [s for s in stop or () if s]
            self.pending = ""
            self.stopped = False

        def _emit(self, text: str, end: bool = False) -> None:
            if write is not None:
                write(text + ("\n" if end else ""))
            else:
                print(text, end="\n" if end else "", flush=True)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not self.stopped:
                self.pending += text
                cut, found = cut_at_stop(self.pending, self.stop)
                if found:
                    self._emit(cut)
                    self.pending, self.stopped = "", True
                else:
                    keep = 0 if stream_end else _stop_prefix_length(self.pending, self.stop)
                    self._emit(self.pending[: len(self.pending) - keep])
                    self.pending = self.pending[len(self.pending) - keep:]
            if stream_end:
                self._emit("", end=True)
                self.pending, self.stopped = "", False

    return StopAwareStreamer()


def cache_nbytes(cache) -> int:
    """Bytes held by a transformers `Cache`: attention keys/values plus recurrent (and conv) states."""
    import torch

    total = 0
    for layer in getattr(cache, "layers", None) or ():
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
        for name in ("recurrent_states", "conv_states"):
            states = getattr(layer, name, None)
            values = states.values() if isinstance(states, dict) else states or ()
            for tensor in values:
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
    return total


def max_positions(model) -> int | None:
    """The longest sequence the model's attention layers take, or None when it has none (all-LSTM)."""
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "full_attention" not in layer_types:
        return None
    return getattr(config, "max_position_embeddings", None)


def _fit_prompt(ids: list[int], index: int, limit: int | None, max_new_tokens: int, truncate: bool,
                log: Callable[[str], None]) -> list[int]:
    if limit is None:
        return ids
    room = limit - max_new_tokens
    if truncate:
        if room <= 0:
            raise ValueError(
                f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's {limit} positions"
            )
        if len(ids) > room:
            log(f"prompt {index + 1}: truncated from the left, {len(ids)} -> {room} tokens "
                f"(the model has {limit} positions, {max_new_tokens} kept for new tokens)")
            return ids[-room:]
        return ids
    if len(ids) > limit:
        hint = (f"pass --truncate to keep its last {room} tokens" if room > 0
                else f"pass --truncate, with --max-new-tokens below {limit}, to keep its last tokens")
        raise ValueError(
            f"prompt {index + 1} is {len(ids)} tokens, longer than the model's {limit} positions "
            f"(max_position_embeddings); {hint}"
        )
    if len(ids) + max_new_tokens > limit:
        log(f"note: prompt {index + 1} ({len(ids)} tokens) + {max_new_tokens} new tokens runs past the model's "
            f"{limit} positions; pass --truncate to keep within them")
    return ids


def _completion_length(new_tokens: list[int], eos: set[int], pad: int | None) -> int:
    """Tokens actually generated: up to and including the first eos, without the padding after a finished row."""
    for position, token in enumerate(new_tokens):
        if token in eos:
            return position + 1
    length = len(new_tokens)
    while length and pad is not None and new_tokens[length - 1] == pad:
        length -= 1
    return length


def _eos_ids(generation_config, model) -> set[int]:
    eos = generation_config.eos_token_id
    if eos is None:
        eos = model.config.eos_token_id
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)


def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    generation_config=None,
    *,
    stop: Sequence[str] | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    streamer=None,
    truncate: bool = False,
    add_special_tokens: bool = True,
    seed: int | None = None,
    log: Callable[[str], None] | None = None,
) -> GenerationRun:
    """Generate a completion (or `num_return_sequences` of them) for every prompt.

    Prompts are tokenized one by one, left-padded and generated `batch_size` at a time (None: all at once) with an
    attention mask. `generation_config` defaults to `model.generation_config`; `stop` adds stop strings (also read
    from `generation_config.stop_strings`), and each completion is cut before the first stop string it contains.
    An empty prompt starts from the bos token. For a model with attention layers, a prompt longer than
    `max_position_embeddings` raises `ValueError`, unless `truncate`, which keeps the prompt's last
    `max_position_embeddings - max_new_tokens` tokens. `streamer` (batch size 1 only) receives the tokens as
    they come, e.g. `_make_streamer(tokenizer, stop)` or a `transformers.TextIteratorStreamer`.
    """
    import torch
    from transformers import set_seed

    log = log or (lambda message: print(message, file=sys.stderr))
    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    stop = list(stop or ())
    if config.stop_strings:
        stop = list(dict.fromkeys([*([config.stop_strings] if isinstance(config.stop_strings, str)
                                     else config.stop_strings), *stop]))
    config.stop_strings = stop or None
    if config.max_new_tokens is None and config.max_length is None:
        config.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            next(iter(_eos_ids(config, model)), None))
    max_new_tokens = config.max_new_tokens or max(config.max_length - 1, 1)
    sequences_per_prompt = config.num_return_sequences or 1
    if streamer is not None and len(prompts) > 1 and (batch_size is None or batch_size > 1):
        raise ValueError("a streamer takes one sequence at a time: use batch_size=1 with several prompts")
    if seed is not None:
        set_seed(seed)

    limit = max_positions(model)
    encoded = []
    for index, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"] if prompt else []
        if not ids:
            bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else model.config.bos_token_id
            if bos is None:
                raise ValueError(f"prompt {index + 1} is empty and the tokenizer has no bos token to start from")
            ids = [bos]
        encoded.append(_fit_prompt(list(ids), index, limit, max_new_tokens, truncate, log))

    eos = _eos_ids(config, model)
    device = model.device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    run = GenerationRun()
    step = batch_size or max(len(prompts), 1)
    try:
        for start in range(0, len(prompts), step):
            batch = encoded[start:start + step]
            inputs = tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt")
            input_ids = inputs["input_ids"].to(device)
            attention_mask = inputs["attention_mask"].to(device)
            sizes: list[int] = []

            def record(module, args, output, sizes=sizes):
                cache = getattr(output, "cache", None)
                if cache is None and isinstance(output, dict):
                    cache = output.get("past_key_values")
                if cache is not None:
                    sizes.append(cache_nbytes(cache))

            hook = model.register_forward_hook(record)
            began = time.perf_counter()
            try:
                with torch.inference_mode():
                    output = model.generate(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        generation_config=config,
                        tokenizer=tokenizer,
                        streamer=streamer,
                    )
            except ValueError as error:
                raise ValueError(_one_line(error)) from None
            finally:
                hook.remove()
            seconds = time.perf_counter() - began
            sequences = output.sequences if hasattr(output, "sequences") else output
            new = sequences[:, input_ids.shape[1]:].tolist()
            run.seconds += seconds
            run.cache_bytes.append(sizes)
            for row, tokens in enumerate(new):
                offset, sequence_index = divmod(row, sequences_per_prompt)
                index = start + offset
                length = _completion_length(tokens, eos, config.pad_token_id)
                text = tokenizer.decode(tokens[:length], skip_special_tokens=True)
                text, _ = cut_at_stop(text, stop)
                run.completions.append(Completion(
                    prompt=prompts[index], completion=text, prompt_index=index, sequence_index=sequence_index,
                    prompt_tokens=len(encoded[index]), completion_tokens=length, seconds=seconds,
                ))
    finally:
        tokenizer.padding_side = padding_side
    return run


def _format_bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def report_lines(run: GenerationRun, model) -> list[str]:
    """The summary printed on stderr: tokens/s, and the cache's size over the run."""
    lines = [f"generated {run.new_tokens} tokens in {run.seconds:.2f} s ({run.tokens_per_second:.1f} tokens/s)"]
    steps = [sizes for sizes in run.cache_bytes if sizes]
    if not steps:
        return lines
    layer_types = getattr(model.config, "layer_types", None) or []
    if layer_types and all(kind == "lstm" for kind in layer_types):
        biggest = max(max(sizes) for sizes in steps)
        count = sum(len(sizes) for sizes in steps)
        if run.cache_constant:
            lines.append(f"memory: the LSTM recurrent state stayed at {_format_bytes(biggest)} for all {count} "
                         "forward passes (constant, whatever the length)")
        else:
            lines.append(f"memory: the LSTM recurrent state changed size during generation "
                         f"({_format_bytes(min(min(s) for s in steps))} to {_format_bytes(biggest)})")
    else:
        first = steps[-1][0]
        last = steps[-1][-1]
        lines.append(f"memory: the cache grew from {_format_bytes(first)} after the prompt to {_format_bytes(last)} "
                     "(attention keys and values grow with the length)")
    return lines


# ----------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------


def _one_line_error(parser: argparse.ArgumentParser):
    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {_one_line(message)} (see {parser.prog} --help)\n")

    return error


def add_generate_command(subparsers) -> argparse.ArgumentParser:
    """Add `yuyan generate` to the `yuyan` command's subparsers."""
    parser = subparsers.add_parser(
        "generate",
        help="generate text from a model folder or Hub id (greedy, sampling, beam search; streaming; chat)",
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
    parser.set_defaults(handler=run_generate_command)
    return parser


def _command_error(message: str) -> Exception:
    from yuyan.cli import CommandError

    return CommandError(_one_line(message))


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


def run_generate_command(args) -> None:
    """The `yuyan generate` handler: every failure a user can cause becomes a one-line CommandError."""
    from yuyan.cli import CommandError

    try:
        _run(args)
    except CommandError:
        raise
    except (ValueError, OSError, RuntimeError) as error:
        raise _command_error(str(error)) from None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(args) -> None:
    _check_args(args)
    prompts = None if args.chat else _read_prompts(args)
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise FileNotFoundError(f"the folder of --output {args.output} does not exist")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    flags = {name: getattr(args, name) for name, _, _ in GENERATION_FLAGS}
    config = build_generation_config(model.generation_config, strategy=args.strategy, stop=args.stop,
                                     do_sample=args.do_sample, **flags)
    beams = (config.num_beams or 1) > 1
    sequences = config.num_return_sequences or 1
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
            part = generate_texts(model, tokenizer, [prompt], config, streamer=_make_streamer(tokenizer, stop),
                                  batch_size=1, truncate=args.truncate, seed=args.seed if index == 0 else None,
                                  log=_stderr)
            for completion in part.completions:
                completion.prompt_index = index
            run.extend(part)
        return run

    run = generate_texts(model, tokenizer, prompts, config, batch_size=args.batch_size, truncate=args.truncate,
                         seed=args.seed, log=_stderr)
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
        streamer = _make_streamer(tokenizer, config.stop_strings) if stream else None
        try:
            part = generate_texts(model, tokenizer, [prompt], config, streamer=streamer, batch_size=1,
                                  truncate=args.truncate, add_special_tokens=False, seed=seed, log=_stderr)
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

"""Decoding behind `yuyan generate` (its command line is `yuyan/cli/generate.py`).

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
>>> from yuyan.generate import build_generation_config, generate_texts
>>> from yuyan.loading import load_model_and_tokenizer
>>> model, tokenizer = load_model_and_tokenizer("runs/demo", device="cpu")
>>> config = build_generation_config(model.generation_config, strategy="greedy", max_new_tokens=20)
>>> run = generate_texts(model, tokenizer, ["The river"], config, stop=["."])
>>> run.completions[0].completion, run.tokens_per_second
```
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from yuyan.errors import one_line

STRATEGIES = ("greedy", "sample", "beam")
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_BEAMS = 4
DEFAULT_BATCH_SIZE = 8

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


# Below this many new tokens the two weight copies of `decode_layout` cost more than its faster steps win back
# (docs/notes/throughput-experiments.md has the measurements, made on an AVX-512 CPU).
DECODE_LAYOUT_MIN_NEW_TOKENS = 32


@contextlib.contextmanager
def decode_layout(model) -> Iterator[None]:
    """Within this block, each projection weight of `model` is stored transposed in memory, for one-token decoding.

    A decode step multiplies one row per sequence by every weight. `F.linear(x, W)` computes `x @ W.T`, and the CPU
    BLAS streams a batch-1 product faster when `W.T` is the contiguous one. Only the strides change: shapes, values,
    parameter objects and tying stay, results are identical. The layout is undone on exit, so that nothing outside
    the block (saving, which needs contiguous tensors; optimisers; adapters) ever sees it. Off the CPU, or while
    training, it does nothing.
    """
    import torch

    changed = []
    # The copies are made outside inference mode even inside it: a parameter holding an inference tensor could
    # never be trained again.
    if not model.training and model.device.type == "cpu":
        with torch.inference_mode(False), torch.no_grad():
            for weight in _projection_weights(model):
                weight.data = weight.data.t().contiguous().t()
                changed.append(weight)
    try:
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for weight in changed:
                weight.data = weight.data.contiguous()


def _projection_weights(model) -> list:
    """The contiguous 2-D float weights that decoding multiplies by: linear layers (the head included) and the LSTM
    matrices, each once."""
    from torch import nn

    found = {}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            names = ("weight",)
        elif isinstance(module, nn.LSTM):
            names = tuple(name for name, _ in module.named_parameters(recurse=False) if name.startswith("weight"))
        else:
            continue
        for name in names:
            weight = getattr(module, name)
            if (
                type(weight) is nn.Parameter  # not a distributed or quantised tensor subclass
                and weight.dim() == 2
                and weight.dtype.is_floating_point
                and weight.is_contiguous()
                and min(weight.shape) > 1
            ):
                found[id(weight)] = weight
    return list(found.values())


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
        raise ValueError(one_line(error)) from None
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


def make_streamer(tokenizer, stop: Sequence[str] | None = None, write: Callable[[str], None] | None = None):
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
    # `has_attention` is YuyanConfig's; any other causal LM (a Llama export) is taken to have positions.
    if not getattr(config, "has_attention", True):
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


def _prepared_config(model, tokenizer, generation_config, stop: Sequence[str] | None):
    """A copy of the generation config with the stop strings merged, a length and a pad token set."""
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
    return config


def _encode_prompts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, truncate: bool,
                    add_special_tokens: bool, log: Callable[[str], None]) -> list[list[int]]:
    """Token ids of every prompt (the bos token for an empty one), fitted to the model's positions."""
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
    return encoded


def _generate_batch(model, tokenizer, batch: list[list[int]], config, streamer, fast=None):
    """One left-padded `model.generate` call (or `fast.generate`, with a `FastGenerator`): (new token ids per row,
    seconds, cache bytes after each step: none are counted on the fast path)."""
    import torch

    inputs = tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt")
    input_ids = inputs["input_ids"].to(model.device)
    attention_mask = inputs["attention_mask"].to(model.device)
    sizes: list[int] = []
    if fast is not None:
        # Stop strings end no fast decode early; the completions are cut at them all the same.
        fast_config = copy.deepcopy(config)
        fast_config.stop_strings = None
        began = time.perf_counter()
        sequences = fast.generate(input_ids, attention_mask=attention_mask, streamer=streamer,
                                  generation_config=fast_config)
        return sequences[:, input_ids.shape[1]:].tolist(), time.perf_counter() - began, sizes

    def record(module, args, output):
        cache = getattr(output, "cache", None)
        if cache is None and isinstance(output, dict):
            cache = output.get("past_key_values")
        if cache is not None:
            sizes.append(cache_nbytes(cache))

    hook = model.register_forward_hook(record)
    long_enough = (config.max_new_tokens or 0) >= DECODE_LAYOUT_MIN_NEW_TOKENS
    layout = decode_layout(model) if long_enough else contextlib.nullcontext()
    began = time.perf_counter()
    try:
        with torch.inference_mode(), layout:
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                    tokenizer=tokenizer, streamer=streamer)
    except ValueError as error:
        raise ValueError(one_line(error)) from None
    finally:
        hook.remove()
    seconds = time.perf_counter() - began
    sequences = output.sequences if hasattr(output, "sequences") else output
    return sequences[:, input_ids.shape[1]:].tolist(), seconds, sizes


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
    fast=None,
) -> GenerationRun:
    """Generate a completion (or `num_return_sequences` of them) for every prompt.

    Prompts are tokenized one by one, left-padded and generated `batch_size` at a time (None: all at once) with an
    attention mask. `generation_config` defaults to `model.generation_config`; `stop` adds stop strings (also read
    from `generation_config.stop_strings`), and each completion is cut before the first stop string it contains.
    An empty prompt starts from the bos token. For a model with attention layers, a prompt longer than
    `max_position_embeddings` raises `ValueError`, unless `truncate`, which keeps the prompt's last
    `max_position_embeddings - max_new_tokens` tokens. `streamer` (batch size 1 only) receives the tokens as
    they come, e.g. `make_streamer(tokenizer, stop)` or a `transformers.TextIteratorStreamer`. With `fast` (a
    `yuyan.FastGenerator` of the same model) the tokens come from it instead of `model.generate`.
    """
    from transformers import set_seed

    log = log or (lambda message: print(message, file=sys.stderr))
    config = _prepared_config(model, tokenizer, generation_config, stop)
    stop = config.stop_strings or []
    max_new_tokens = config.max_new_tokens or max(config.max_length - 1, 1)
    sequences_per_prompt = config.num_return_sequences or 1
    if streamer is not None and len(prompts) > 1 and (batch_size is None or batch_size > 1):
        raise ValueError("a streamer takes one sequence at a time: use batch_size=1 with several prompts")
    if seed is not None:
        set_seed(seed)
    encoded = _encode_prompts(model, tokenizer, prompts, max_new_tokens, truncate, add_special_tokens, log)

    eos = _eos_ids(config, model)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    run = GenerationRun()
    step = batch_size or max(len(prompts), 1)
    try:
        for start in range(0, len(prompts), step):
            new, seconds, sizes = _generate_batch(model, tokenizer, encoded[start:start + step], config, streamer,
                                                  fast)
            run.seconds += seconds
            run.cache_bytes.append(sizes)
            for row, tokens in enumerate(new):
                offset, sequence_index = divmod(row, sequences_per_prompt)
                index = start + offset
                length = _completion_length(tokens, eos, config.pad_token_id)
                text, _ = cut_at_stop(tokenizer.decode(tokens[:length], skip_special_tokens=True), stop)
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
    config = model.config
    if getattr(config, "has_lstm", False) and not getattr(config, "has_attention", True):  # an all-LSTM Yuyan
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

"""`FastGenerator`: greedy decoding and sampling at the speed of the machine rather than of Python.

`model.generate` runs every token through transformers' per-step machinery and PyTorch's per-operator dispatch; at
the widths Yuyan trains on a CPU that overhead, not the arithmetic, sets the speed. `FastGenerator` runs the same
function as one ONNX Runtime graph per step (the stateful decoder of yuyan/fast/onnx.py), keeps the state inside ONNX
Runtime between steps, and does only the token choice in Python, with transformers' own logits processors and
`torch.multinomial`, as `generate` does. So greedy tokens are `generate`'s, and a seeded sampling run draws from the
same random stream.

The export is the one-time preparation: it is cached on disk, keyed by the weights and the configuration, and
reused by every later `FastGenerator` of the same model (`generator.preparation` says what happened).

```python
>>> from yuyan import FastGenerator
>>> generator = FastGenerator("runs/demo")                  # or FastGenerator(model)
>>> generator.preparation.from_cache, generator.preparation.seconds
>>> ids = generator.generate(input_ids, max_new_tokens=64)  # prompt + new tokens, as model.generate returns
```
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from yuyan.fast.decoder import check_supported
from yuyan.fast.onnx import (
    DECODER_FILE,
    ONNX_FILE,
    OnnxDecoder,
    import_onnx_package,
    write_decoder_folder,
)

# Where prepared decoders are kept unless `cache_dir` (or YUYAN_CACHE) says otherwise.
DEFAULT_CACHE = Path("~/.cache/yuyan/fast")
# A prompt is read this many tokens per call: long prompts then never build an attention score matrix over the whole
# prompt at once (memory), and a chunk is long enough that the per-call cost does not show.
PROMPT_CHUNK = 512
# What `generate` uses where neither the call nor the model's generation config sets a value (transformers'
# documented global defaults).
GENERATE_DEFAULTS = {"max_length": 20, "do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0}
# Generation options that change the tokens and that the fast path does not implement, with their neutral values.
UNSUPPORTED = {
    "num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None, "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0, "bad_words_ids": None, "typical_p": 1.0, "min_p": None, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "stop_strings": None, "num_return_sequences": 1, "sequence_bias": None,
    "exponential_decay_length_penalty": None, "top_h": None, "min_length": 0,
}


@dataclass(frozen=True)
class Preparation:
    """The one-time preparation behind a `FastGenerator`: where the decoder lies, whether it came from the cache,
    and how long getting it (exporting, or finding and loading) took."""

    path: Path
    from_cache: bool
    seconds: float

    def describe(self) -> str:
        how = "loaded from the cache" if self.from_cache else "exported (once; cached for later runs)"
        return f"fast decoder {how} in {self.seconds:.1f} s: {self.path}"


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("YUYAN_CACHE"):
        return Path(os.environ["YUYAN_CACHE"]).expanduser() / "fast"
    return DEFAULT_CACHE.expanduser()


def preparation_key(model) -> str:
    """A digest of everything the exported graph depends on: the weights, the configuration and the exporting
    software (torch, onnx, and the source of the decoder and its export). Two models with equal weights and
    configuration share one prepared decoder."""
    import yuyan.fast.decoder
    import yuyan.fast.onnx

    digest = hashlib.sha256()
    # decoder.json is derived from the configuration and the decoder's source, both hashed here.
    digest.update(model.config.to_json_string(use_diff=False).encode())
    digest.update(f"{torch.__version__}|{import_onnx_package('onnx').__version__}".encode())
    for module in (yuyan.fast.decoder, yuyan.fast.onnx):
        digest.update(Path(module.__file__).read_bytes())
    # Each storage once: a tied head names the embedding's storage again (the name says it is shared).
    seen = {}
    for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
        digest.update(name.encode())
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if key in seen:
            digest.update(f"={seen[key]}".encode())
            continue
        seen[key] = name
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def prepare(model, cache_dir: str | os.PathLike | None = None) -> Preparation:
    """The prepared decoder of `model`: from the cache when there, else exported into it (atomically: a folder
    appears whole or not at all, so concurrent preparations of one model are harmless)."""
    from yuyan.files import publish_folder, staging_dir

    started = time.perf_counter()
    root = _cache_root(cache_dir)
    folder = root / preparation_key(model)
    if (folder / ONNX_FILE).is_file() and (folder / DECODER_FILE).is_file():
        return Preparation(folder, True, time.perf_counter() - started)
    with staging_dir(root, prefix=f".{folder.name}.tmp-") as staging:
        write_decoder_folder(model, staging)
        if not folder.exists():
            publish_folder(staging, folder)
    return Preparation(folder, False, time.perf_counter() - started)


class FastGenerator:
    """Greedy decoding and sampling for a Yuyan causal LM (every stack) through its stateful ONNX decoder.

    Args:
        model_or_folder: a `YuyanForCausalLM` (or a model loaded from a Yuyan folder with remote code), the path
            of a saved model folder, or a folder written by `yuyan export --format onnx` (used as it is).
        cache_dir: where prepared decoders are kept (default: `$YUYAN_CACHE/fast`, else `~/.cache/yuyan/fast`).
        threads: ONNX Runtime's threads (default: `torch.get_num_threads()`).

    Sampling and logits processors run in PyTorch (so that a seeded run draws `generate`'s random numbers), each
    step briefly on one thread: `torch.set_num_threads` is process-wide, so other PyTorch work running at the same
    moment in another thread sees one thread too.

    The model's `generation_config` gives the defaults of `generate`'s arguments, as for `model.generate`. Beam
    search and the logits processors other than temperature, top-k, top-p and `min_new_tokens` are not on the fast
    path: asking for them raises a ValueError that points to `model.generate`.
    """

    def __init__(self, model_or_folder, cache_dir: str | os.PathLike | None = None, threads: int | None = None):
        started = time.perf_counter()
        if isinstance(model_or_folder, (str, os.PathLike)) and (Path(model_or_folder) / DECODER_FILE).is_file():
            # An exported decoder (`yuyan export --format onnx`): nothing to prepare, no PyTorch model needed.
            self._open_export(Path(model_or_folder), threads, started)
            return
        if isinstance(model_or_folder, (str, os.PathLike)):
            from yuyan.loading import load_pretrained
            from yuyan.modeling import YuyanForCausalLM

            model = load_pretrained(YuyanForCausalLM, model_or_folder)
        else:
            model = model_or_folder
        if getattr(model.config, "model_type", None) != "yuyan" or not hasattr(model, "lm_head"):
            raise ValueError(
                f"FastGenerator runs Yuyan causal language models; got {type(model).__name__} "
                f"(model_type={getattr(model.config, 'model_type', None)!r})"
            )
        check_supported(model)
        self.vocab_size = model.config.vocab_size
        self.generation_config = model.generation_config
        prepared = prepare(model, cache_dir)
        self.decoder = OnnxDecoder(prepared.path, threads=threads)
        self.preparation = Preparation(prepared.path, prepared.from_cache, time.perf_counter() - started)

    def _open_export(self, folder: Path, threads: int | None, started: float) -> None:
        from transformers import GenerationConfig

        self.decoder = OnnxDecoder(folder, threads=threads)
        description = self.decoder.description
        self.vocab_size = description["vocab_size"]
        if (folder / "generation_config.json").is_file():
            self.generation_config = GenerationConfig.from_pretrained(folder)
        else:
            self.generation_config = GenerationConfig(
                bos_token_id=description["bos_token_id"], eos_token_id=description["eos_token_id"],
                pad_token_id=description["pad_token_id"],
            )
        self.preparation = Preparation(folder, True, time.perf_counter() - started)

    # -- settings -----------------------------------------------------------------------------------------------

    @staticmethod
    def _setting(config, name: str, given):
        if given is not None:
            return given
        value = getattr(config, name, None)
        return GENERATE_DEFAULTS.get(name) if value is None else value

    @staticmethod
    def _check_generation_config(config) -> None:
        for name, neutral in UNSUPPORTED.items():
            value = getattr(config, name, neutral)
            if value is not None and value != neutral:
                raise ValueError(
                    f"the model's generation config sets {name}={value!r}, which FastGenerator does not apply (it "
                    "does greedy decoding and sampling with temperature, top_k, top_p and min_new_tokens): use "
                    "model.generate, or set it back in the generation config"
                )

    # -- decoding -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        input_ids,
        attention_mask=None,
        max_new_tokens: int | None = None,
        min_new_tokens: int = 0,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        streamer=None,
        generation_config=None,
        **unsupported,
    ) -> torch.LongTensor:
        """Prompt + new tokens, `(batch, prompt + new)`, as `model.generate` returns them; rows that end early are
        filled with the pad token. Arguments left as None take `generation_config` (default: the model's), then
        `generate`'s defaults. Left-padded batches need `attention_mask`."""
        config = self.generation_config if generation_config is None else generation_config
        if unsupported.get("num_beams", 1) not in (None, 1):
            raise ValueError(
                f"num_beams={unsupported['num_beams']}: FastGenerator does greedy decoding and sampling only; for beam "
                "search use model.generate(..., num_beams=N)"
            )
        unsupported.pop("num_beams", None)
        if unsupported:
            raise ValueError(
                f"FastGenerator.generate does not take {sorted(unsupported)}; it takes max_new_tokens, "
                "min_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id and streamer. "
                "For other options use model.generate"
            )
        self._check_generation_config(config)
        input_ids = torch.as_tensor(input_ids).to("cpu", torch.long)
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (batch, length) with at least one token; got shape {tuple(input_ids.shape)}")
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size:
            raise ValueError(
                f"input_ids holds ids outside this model's vocabulary [0, {self.vocab_size}): is the tokenizer "
                "the model's own?"
            )
        mask = torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask).to("cpu").long()
        if mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; input_ids has {tuple(input_ids.shape)}")
        if bool((mask.sum(1) == 0).any()):
            raise ValueError("a row of attention_mask has no real token: every prompt needs at least one")

        max_new_tokens = self._max_new_tokens(config, max_new_tokens, input_ids.shape[1])
        do_sample = bool(self._setting(config, "do_sample", do_sample))
        eos = self._setting(config, "eos_token_id", eos_token_id)
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        pad = self._setting(config, "pad_token_id", pad_token_id)
        if pad is None and eos:
            pad = eos[0]
        processors = self._processors(config, input_ids.shape[1], min_new_tokens, eos, do_sample, temperature, top_k,
                                      top_p)

        if streamer is not None:
            streamer.put(input_ids.cpu())
        logits, state, decoder_mask, positions = self._read_prompts(input_ids, mask)
        batch, prompt_length = input_ids.shape
        # NumPy arrays filled in place: at one token per step, PyTorch's per-operator cost and rebuilding growing
        # arrays would be a noticeable share of a small model's step.
        tokens = np.empty((batch, prompt_length + max_new_tokens), np.int64)
        tokens[:, :prompt_length] = input_ids.numpy()
        read = decoder_mask.shape[1]
        decoder_mask = np.concatenate([decoder_mask, np.ones((batch, max_new_tokens), np.int64)], axis=1)
        unfinished = np.ones(batch, dtype=bool)
        length = prompt_length
        for step in range(max_new_tokens):
            if do_sample or processors:
                chosen = self._choose(tokens[:, :length], logits, processors, do_sample)
            else:
                chosen = logits.argmax(axis=-1)  # the first of equal maxima, as torch.argmax
            if eos:
                chosen = np.where(unfinished, chosen, pad)
            tokens[:, length] = chosen
            length += 1
            if streamer is not None:
                streamer.put(torch.from_numpy(tokens[:, length - 1].copy()))
            if eos:
                unfinished &= ~np.isin(chosen, eos)
                if not unfinished.any():
                    break
            if step + 1 == max_new_tokens:
                break
            read += 1
            logits, state = self.decoder.step(tokens[:, length - 1 : length], positions[:, None], decoder_mask[:, :read],
                                              state)
            positions = positions + 1
        if streamer is not None:
            streamer.end()
        return torch.from_numpy(tokens[:, :length].copy())

    @staticmethod
    def _choose(tokens: np.ndarray, logits: np.ndarray, processors, do_sample: bool) -> np.ndarray:
        """The next tokens through transformers' logits processors and `torch.multinomial`, as `generate` picks
        them (so a seeded run draws the same random numbers)."""
        threads = torch.get_num_threads()
        # On one PyTorch thread: ONNX Runtime's workers are still spinning from the step just run, and a
        # multi-threaded PyTorch operator would wait for the cores they hold (measured: a batch of 8 sampled three
        # times slower so). The choice is tiny next to the step either way.
        torch.set_num_threads(1)
        try:
            scores = torch.from_numpy(logits)
            if processors:
                scores = processors(torch.from_numpy(tokens), scores)
            if do_sample:
                return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1).numpy()
            return torch.argmax(scores, dim=-1).numpy()
        finally:
            torch.set_num_threads(threads)

    @staticmethod
    def _max_new_tokens(config, given: int | None, prompt_length: int) -> int:
        if given is None:
            given = config.max_new_tokens
        if given is None:
            max_length = config.max_length or GENERATE_DEFAULTS["max_length"]
            given = max_length - prompt_length
        if given < 1:
            raise ValueError(f"max_new_tokens={given}: give at least 1 new token")
        return int(given)

    def _processors(self, config, prompt_length, min_new_tokens, eos, do_sample, temperature, top_k, top_p):
        """transformers' logits processors, in `generate`'s order."""
        from transformers.generation import (
            LogitsProcessorList,
            MinNewTokensLengthLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        processors = LogitsProcessorList()
        if min_new_tokens and eos:
            processors.append(MinNewTokensLengthLogitsProcessor(prompt_length, min_new_tokens, torch.tensor(eos)))
        if do_sample:
            temperature = self._setting(config, "temperature", temperature)
            top_k = self._setting(config, "top_k", top_k)
            top_p = self._setting(config, "top_p", top_p)
            if temperature is not None and temperature != 1.0:
                processors.append(TemperatureLogitsWarper(temperature))
            if top_k:
                processors.append(TopKLogitsWarper(top_k=top_k))
            if top_p is not None and top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p=top_p))
        return processors

    def _read_prompts(self, input_ids: torch.Tensor, mask: torch.Tensor):
        """Run the prompts through the decoder: the last position's logits, the state, the decoder's attention mask
        and each row's next position. Rows of one length are read together; with padding, each row is read alone
        (an LSTM layer reads every position it is given) and the states are put side by side, keys and values
        left-padded."""
        if bool(mask.all()):
            ids = input_ids.numpy()
            logits, state = self._read(ids, self.decoder.start(ids.shape[0]))
            positions = np.full(ids.shape[0], ids.shape[1], dtype=np.int64)
            return logits, state, np.ones(ids.shape, np.int64), positions
        rows = [input_ids[row][mask[row].bool()].numpy()[None] for row in range(input_ids.shape[0])]
        results = [self._read(row, self.decoder.start(1)) for row in rows]
        lengths = np.array([row.shape[1] for row in rows], dtype=np.int64)
        longest = int(lengths.max())
        logits = np.concatenate([result[0] for result in results], axis=0)
        state = []
        for index, entry in enumerate(self.decoder.description["state"]):
            parts = [result[1][index] for result in results]
            if entry["kind"] in ("key", "value"):
                parts = [np.pad(part, ((0, 0), (0, 0), (longest - part.shape[2], 0), (0, 0))) for part in parts]
            state.append(np.concatenate(parts, axis=0))
        decoder_mask = (np.arange(longest)[None, :] >= (longest - lengths)[:, None]).astype(np.int64)
        return logits, state, decoder_mask, lengths

    def _read(self, ids: np.ndarray, state):
        """One prompt batch (no padding) in chunks of PROMPT_CHUNK tokens."""
        batch, length = ids.shape
        logits = None
        for start in range(0, length, PROMPT_CHUNK):
            chunk = ids[:, start : start + PROMPT_CHUNK]
            positions = np.broadcast_to(np.arange(start, start + chunk.shape[1], dtype=np.int64), chunk.shape)
            logits, state = self.decoder.step(chunk, positions, np.ones((batch, start + chunk.shape[1]), np.int64), state)
        return logits, state


__all__ = ["FastGenerator", "Preparation", "prepare", "preparation_key"]

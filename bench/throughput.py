"""Training and decoding throughput of the Yuyan stacks against transformers' LlamaForCausalLM.

Same run, same dimensions (width, depth, heads, MLP width, vocabulary, tied embeddings), same data:

- training tokens/s: forward + backward + fused AdamW step on batches of `--batch` x `--seq` tokens, in float32
  and in bfloat16 autocast (the mixed precision Accelerate uses), median over `--steps` timed steps;
- the bf16 loss curve against the fp32 one (same initial weights, same batches);
- decoding (`--decode-preset`, by default the bench dimensions: d 256, 4 layers, 4 heads, MLP 688,
  vocabulary 8,192, tied): greedy `generate` tokens/s from a 32-token prompt at batch 1 x 128 new tokens and batch
  8 x 1,024 new tokens, every Yuyan stack with its default `generate` call (what `pipeline` and `yuyan generate`
  do) against Llama with its default options and with its fastest ones (`cache_implementation="static"`), and
  the cache's size after 128 and 1,024 tokens (an all-LSTM model's must not grow). Medians of `--repeats` runs,
  the models taking turns in each repeat, so that noise from other work on the machine falls on all alike.
  `--decode-options` adds each model again with bf16 weights, with transformers' automatic compilation of the
  decode step on the CPU (a static cache and a `CompileConfig` that allows every device; the first call of each
  shape pays the compilation, in the warm-up), and with both.

`--fast` measures `yuyan.FastGenerator` (the stateful decoder in ONNX Runtime) instead: every stack beside its own
`generate` and HF Llama's `generate` at batch 1 x `--fast-short` and batch 8 x `--long` new tokens, then new
tokens/s after a `--long-prompt`-token prompt (where an LSTM's constant state meets a growing attention cache), and
the preparation's cost, first (export) and from the cache.

Tokens are the UTF-8 bytes of WikiText-2 (../shared/data) when present, so the loss curves mean something;
random ids otherwise. Prints Markdown tables; `--json PATH` also writes the raw figures.

    python bench/throughput.py                      # the BENCHMARKS.md tables
    python bench/throughput.py --skip-training      # decoding only (11 min at --threads 1 --repeats 2, loaded)
    python bench/throughput.py --quick              # a smoke run
    python bench/throughput.py --skip-training --fast --threads 2    # FastGenerator (BENCHMARKS.md)
    python bench/throughput.py --skip-training --decode-options --threads 2   # the decode options side by side
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from yuyan import YuyanConfig, YuyanForCausalLM
from yuyan.export import llama_config_from_yuyan

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2" / "train.txt"


def token_stream(vocab_size: int, count: int, seed: int) -> torch.Tensor:
    if DATA.exists():
        data = torch.frombuffer(bytearray(DATA.read_bytes()[: count * 2]), dtype=torch.uint8).long()
        return data[:count]
    return torch.randint(0, vocab_size, (count,), generator=torch.Generator().manual_seed(seed))


def llama_like(config: YuyanConfig) -> LlamaForCausalLM:
    """transformers' Llama at the Yuyan config's dimensions: the config `yuyan export` writes for it, so the two
    models differ only in their code."""
    llama = LlamaForCausalLM(llama_config_from_yuyan(config))
    llama.set_attn_implementation("sdpa")  # the rows are named after it: pinned, not left to transformers' default
    return llama


def build_models(preset_size: str) -> dict[str, torch.nn.Module]:
    models = {}
    for kind in ("attention", "lstm", "hybrid"):
        torch.manual_seed(0)
        models[f"yuyan {preset_size}-{kind}"] = YuyanForCausalLM(YuyanConfig.from_preset(f"{preset_size}-{kind}"))
    torch.manual_seed(0)
    models["HF Llama (sdpa)"] = llama_like(YuyanConfig.from_preset(f"{preset_size}-attention"))
    return models


def train_all(models: dict, initial: dict, batches, precision: str, warmup: int) -> dict[str, tuple]:
    """Seconds per timed step and loss per step, for every model. The models take turns step by step, so that
    noise from other work on the machine falls on all of them alike."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    optimizers = {}
    for name, model in models.items():
        model.load_state_dict(initial[name])
        model.train()
        optimizers[name] = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    times = {name: [] for name in models}
    losses = {name: [] for name in models}
    for step, batch in enumerate(batches):
        for name, model in models.items():
            start = time.perf_counter()
            with autocast:
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - start
            losses[name].append(loss.item())
            if step >= warmup:
                times[name].append(elapsed)
    return {name: (times[name], losses[name]) for name in models}


def cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        tensors = [getattr(layer, "keys", None), getattr(layer, "values", None)]
        tensors += list(getattr(layer, "recurrent_states", {}).values())
        total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total


# The bench dimensions for decoding (~20 MB of weights in fp32); positions for --fast's long prompt.
DECODE_DIMS = dict(
    vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
    intermediate_size=688, max_position_embeddings=8448, tie_word_embeddings=True,
)


def decoding_models(preset: str | None) -> dict[str, tuple[torch.nn.Module, dict]]:
    """name -> (model, extra `generate` options). Yuyan models get none: their default call is what is measured."""
    dims = dict(DECODE_DIMS)
    if preset:
        dims = {k: v for k, v in YuyanConfig.from_preset(f"{preset}-attention").to_dict().items() if k in dims}
    layers = dims["num_hidden_layers"]
    stacks = {
        "attention": ["full_attention"] * layers,
        "lstm": ["lstm"] * layers,
        "hybrid": ["lstm" if i % 2 == 0 else "full_attention" for i in range(layers)],
    }
    models = {}
    for kind, layer_types in stacks.items():
        torch.manual_seed(0)
        models[f"yuyan {kind}"] = (YuyanForCausalLM(YuyanConfig(**dims, layer_types=layer_types)).eval(), {})
    torch.manual_seed(0)
    llama = llama_like(YuyanConfig(**dims)).eval()
    models["HF Llama, default"] = (llama, {})
    models["HF Llama, static cache"] = (llama, {"cache_implementation": "static"})
    return models


@torch.no_grad()
def generation_rate(model, batch: int, new_tokens: int, vocab: int, options: dict) -> tuple[float, int]:
    """Greedy tokens/s of one `generate` call (prompt of 32 tokens), and the cache's size at its end."""
    prompt = torch.randint(3, vocab, (batch, 32), generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    out = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        do_sample=False, eos_token_id=None, pad_token_id=0, return_dict_in_generate=True, **options,
    )
    return batch * new_tokens / (time.perf_counter() - start), cache_bytes(out.cache)


def with_decode_options(models: dict[str, tuple[torch.nn.Module, dict]]) -> dict[str, tuple[torch.nn.Module, dict]]:
    """Each model as given, in bf16, compiled (static cache, `generate`'s automatic compilation allowed on the
    CPU), and both. Llama's static-cache row is already one of the models, so it gets the bf16 twin only."""
    from copy import deepcopy

    from transformers import CompileConfig

    compiled = CompileConfig(fullgraph=True, dynamic=False)
    compiled._compile_all_devices = True  # transformers compiles only on accelerators unless told otherwise
    # Every model here shares transformers' decorated forward code object, and each model, dtype and shape is one
    # more compiled version of it: more than dynamo's default limit of 8 in this one process.
    torch._dynamo.config.recompile_limit = 64
    compile_options = {"cache_implementation": "static", "compile_config": compiled}
    variants = {}
    bf16_copies = {}  # one per model object: Llama's default and static-cache rows share theirs
    for name, (model, options) in models.items():
        if id(model) not in bf16_copies:
            bf16_copies[id(model)] = deepcopy(model).to(torch.bfloat16)
        bf16 = bf16_copies[id(model)]
        variants[name] = (model, options)
        variants[f"{name}, bf16"] = (bf16, options)
        if not options:
            variants[f"{name}, compiled"] = (model, compile_options)
            variants[f"{name}, bf16 compiled"] = (bf16, compile_options)
    return variants


def bench_decoding(args) -> dict[str, dict]:
    models = decoding_models(args.decode_preset)
    if args.decode_options:
        models = with_decode_options(models)
    vocab = next(iter(models.values()))[0].config.vocab_size
    shapes = {"b1": (1, args.short), "b8": (8, args.long)}
    # Warm-up, and the cache's size at batch 8 after the short run, to set against its size after the long one.
    short_cache = {name: generation_rate(model, 8, args.short, vocab, options)[1] for name, (model, options) in models.items()}
    if args.decode_options:  # a compiled step is compiled per shape: both timed shapes are warmed up first
        for batch, new_tokens in shapes.values():
            for model, options in models.values():
                generation_rate(model, batch, new_tokens, vocab, options)
    runs = {name: {key: [] for key in shapes} for name in models}
    for _ in range(args.repeats):
        for key, (batch, new_tokens) in shapes.items():
            for name, (model, options) in models.items():
                runs[name][key].append(generation_rate(model, batch, new_tokens, vocab, options))
    results = {}
    for name in models:
        row = results[name] = {"b8_short_cache_bytes": short_cache[name]}
        for key in shapes:
            row[f"{key}_tokens_per_s"] = statistics.median(rate for rate, _ in runs[name][key])
            row[f"{key}_cache_bytes"] = runs[name][key][0][1]
    default, static = results["HF Llama, default"], results["HF Llama, static cache"]
    dims = next(iter(models.values()))[0].config
    print(f"\n### Decoding: greedy `generate`, 32-token prompt, d {dims.hidden_size}, {dims.num_hidden_layers} layers, "
          f"vocabulary {dims.vocab_size}, {torch.get_num_threads()} threads, medians of {args.repeats}\n")
    print(f"| model | b1 x {args.short} tok/s | ×Llama | ×Llama static | b8 x {args.long} tok/s | ×Llama "
          f"| ×Llama static | b8 cache after {args.short} | b8 cache after {args.long} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in results.items():
        print(
            f"| {name} | {row['b1_tokens_per_s']:.0f} | {row['b1_tokens_per_s'] / default['b1_tokens_per_s']:.2f} "
            f"| {row['b1_tokens_per_s'] / static['b1_tokens_per_s']:.2f} | {row['b8_tokens_per_s']:.0f} "
            f"| {row['b8_tokens_per_s'] / default['b8_tokens_per_s']:.2f} "
            f"| {row['b8_tokens_per_s'] / static['b8_tokens_per_s']:.2f} "
            f"| {row['b8_short_cache_bytes']:,} B | {row['b8_cache_bytes']:,} B |"
        )
    return results


class TokenClock:
    """A streamer that notes when each token arrives: the first `put` is the prompt, the next ones new tokens
    (bench/llama_cpp_decode.py times FastGenerator with it too)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass

    def rate_after_prompt(self, batch: int) -> float:
        """Tokens/s from the first new token to the last (the prompt's reading left out)."""
        steps = len(self.times) - 2
        return batch * steps / (self.times[-1] - self.times[1])


def bench_fast(args) -> dict[str, dict]:
    """FastGenerator (ONNX Runtime) beside `generate` on every stack, and HF Llama's `generate`, in one run: batch 1
    and batch 8, then a long prompt (LSTM state against a growing attention cache). Also the preparation's cost,
    first (export) and from the cache."""
    import tempfile

    from yuyan import FastGenerator

    models = {name: model for name, (model, options) in decoding_models(args.decode_preset).items() if not options}
    llama = models.pop("HF Llama, default")
    cache_dir = Path(tempfile.mkdtemp(prefix="yuyan-fast-bench-"))
    vocab = llama.config.vocab_size
    results: dict[str, dict] = {}
    fast = {}
    for name, model in models.items():
        first = FastGenerator(model, cache_dir=cache_dir)
        again = FastGenerator(model, cache_dir=cache_dir)
        fast[name] = again
        results[name] = {"prepare_first_s": first.preparation.seconds, "prepare_cached_s": again.preparation.seconds}

    def fast_rate(generator, batch, new_tokens):
        prompt = torch.randint(3, vocab, (batch, 32), generator=torch.Generator().manual_seed(1))
        start = time.perf_counter()
        generator.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=[], pad_token_id=0)
        return batch * new_tokens / (time.perf_counter() - start)

    shapes = {"b1": (1, args.fast_short), "b8": (8, args.long)}
    contenders = {"HF Llama generate": lambda b, n: generation_rate(llama, b, n, vocab, {})[0]}
    for name in models:
        contenders[f"{name} generate"] = (lambda m: lambda b, n: generation_rate(m, b, n, vocab, {})[0])(models[name])
        contenders[f"{name} FastGenerator"] = (lambda g: lambda b, n: fast_rate(g, b, n))(fast[name])
    for run in contenders.values():  # warm-up
        run(1, 8)
    rates = {name: {key: [] for key in shapes} for name in contenders}
    for _ in range(args.repeats):
        for key, (batch, new_tokens) in shapes.items():
            for name, run in contenders.items():
                rates[name][key].append(run(batch, new_tokens))
    table = {name: {key: statistics.median(values) for key, values in row.items()} for name, row in rates.items()}
    reference = table["HF Llama generate"]

    # The long prompt: new tokens/s after it, FastGenerator only (medians of the repeats).
    long_rates = {}
    if args.long_prompt:
        prompt = torch.randint(3, vocab, (1, args.long_prompt), generator=torch.Generator().manual_seed(2))
        for name, generator in fast.items():
            values = []
            for _ in range(args.repeats):
                clock = TokenClock()
                generator.generate(prompt, max_new_tokens=args.long_new, min_new_tokens=args.long_new, eos_token_id=[],
                                   pad_token_id=0, streamer=clock)
                values.append(clock.rate_after_prompt(1))
            long_rates[name] = statistics.median(values)
            results[name]["long_prompt_tokens_per_s"] = long_rates[name]

    dims = llama.config
    print(f"\n### FastGenerator: greedy, 32-token prompt, d {dims.hidden_size}, {dims.num_hidden_layers} layers, vocabulary "
          f"{dims.vocab_size}, {torch.get_num_threads()} threads, medians of {args.repeats}\n")
    print(f"| decoder | b1 x {args.fast_short} tok/s | ×HF Llama generate | b8 x {args.long} tok/s | ×HF Llama generate |")
    print("|---|---:|---:|---:|---:|")
    for name, row in table.items():
        print(f"| {name} | {row['b1']:.0f} | {row['b1'] / reference['b1']:.2f} | {row['b8']:.0f} "
              f"| {row['b8'] / reference['b8']:.2f} |")
        if name in results:
            results[name].update(row)
    if long_rates:
        attention = long_rates.get("yuyan attention")
        print(f"\n{args.long_prompt}-token prompt, then {args.long_new} new tokens at batch 1 (tokens/s after the prompt):\n")
        print("| FastGenerator | tok/s | ×attention |")
        print("|---|---:|---:|")
        for name, rate in long_rates.items():
            print(f"| {name} | {rate:.0f} | {rate / attention:.2f} |" if attention else f"| {name} | {rate:.0f} | |")
    print("\nPreparation (export, then from the cache):\n")
    print("| model | first s | cached s |")
    print("|---|---:|---:|")
    for name in models:
        print(f"| {name} | {results[name]['prepare_first_s']:.1f} | {results[name]['prepare_cached_s']:.2f} |")
    results["HF Llama generate"] = reference
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "base"], help="training models")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per model and precision")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip-training", action="store_true", help="decoding only")
    parser.add_argument("--decode-preset", default=None, choices=["tiny", "small", "base"],
                        help="decoding models at a preset's dimensions instead of the bench dimensions")
    parser.add_argument("--short", type=int, default=128, help="new tokens at batch 1")
    parser.add_argument("--long", type=int, default=1024, help="new tokens at batch 8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-options", action="store_true",
                        help="also decode in bf16, compiled (static cache), and both")
    parser.add_argument("--fast", action="store_true",
                        help="FastGenerator beside generate and HF Llama (batch 1 and 8, a long prompt, preparation)")
    parser.add_argument("--fast-short", type=int, default=160, help="with --fast: new tokens at batch 1")
    parser.add_argument("--long-prompt", type=int, default=8192, help="with --fast: the long prompt's tokens (0: skip)")
    parser.add_argument("--long-new", type=int, default=128, help="with --fast: new tokens after the long prompt")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="few steps, short generation: a smoke run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.short, args.long, args.repeats = 2, 1, 16, 32, 1
        args.fast_short, args.long_prompt, args.long_new = 16, 600, 16
    if args.threads:
        torch.set_num_threads(args.threads)

    results: dict[str, dict] = {}
    if not args.skip_training:
        results["training"] = bench_training(args)
    if args.fast:
        results["fast"] = bench_fast(args)
    else:
        results["decoding"] = bench_decoding(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


def bench_training(args) -> dict[str, dict]:
    models = build_models(args.preset)
    vocab = next(iter(models.values())).config.vocab_size
    total_steps = args.warmup + args.steps
    stream = token_stream(vocab, total_steps * args.batch * args.seq, seed=0)
    batches = list(stream.view(total_steps, args.batch, args.seq))
    initial = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in models.items()}

    results: dict[str, dict] = {name: {"parameters": m.num_parameters()} for name, m in models.items()}
    tokens_per_step = args.batch * args.seq
    for precision in ("fp32", "bf16"):
        for name, (times, losses) in train_all(models, initial, batches, precision, args.warmup).items():
            row = results[name]
            row[f"train_{precision}_tokens_per_s"] = tokens_per_step / statistics.median(times)
            row[f"train_{precision}_losses"] = losses
            print(f"{name:<26} {precision}: {row[f'train_{precision}_tokens_per_s']:8.0f} tokens/s "
                  f"loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)

    reference = results["HF Llama (sdpa)"]
    ref_train = reference["train_fp32_tokens_per_s"]
    print(f"\n### Training throughput, `{args.preset}` presets, batch {args.batch} x {args.seq}, "
          f"{torch.get_num_threads()} threads, medians\n")
    print("| model | params | train fp32 tok/s | ×Llama fp32 | train bf16 tok/s | ×Llama fp32 | ×Llama bf16 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in results.items():
        print(
            f"| {name} | {row['parameters'] / 1e6:.1f}M "
            f"| {row['train_fp32_tokens_per_s']:.0f} | {row['train_fp32_tokens_per_s'] / ref_train:.2f} "
            f"| {row['train_bf16_tokens_per_s']:.0f} | {row['train_bf16_tokens_per_s'] / ref_train:.2f} "
            f"| {row['train_bf16_tokens_per_s'] / reference['train_bf16_tokens_per_s']:.2f} |"
        )
    print(f"\n### bf16 against fp32: loss after {total_steps} steps (same weights, same batches)\n")
    print("| model | fp32 loss | bf16 loss | largest gap over the run |")
    print("|---|---:|---:|---:|")
    for name, row in results.items():
        gap = max(abs(a - b) for a, b in zip(row["train_fp32_losses"], row["train_bf16_losses"]))
        print(f"| {name} | {row['train_fp32_losses'][-1]:.3f} | {row['train_bf16_losses'][-1]:.3f} | {gap:.3f} |")
    return results


if __name__ == "__main__":
    main()

"""Benchmark: decoding speed of a Yuyan attention model exported to GGUF and run in llama.cpp (llama-cpp-python).

    python bench/llama_cpp_decode.py                      # f32, 2 threads, batch 1 x 160 new tokens, median of 3
    python bench/llama_cpp_decode.py --dtype q8_0 --repeats 5

The model has the decoding benchmark's dimensions (bench/throughput.py: d 256, 4 attention layers, 4 heads, MLP 688,
vocabulary 8,192, tied embeddings) and random weights (seed 0): speed does not depend on what the weights learnt.
Its tokenizer is Yuyan's default (the qwen2 pre-tokenizer, which the GGUF file needs), trained on Python's own
documentation, so the script needs no data. The folder is exported with `yuyan.gguf_export.export_to_gguf`.

(Named so that running it as a script does not shadow the `llama_cpp` package, as a `llama_cpp.py` here would.)

Measured, in turns (llama.cpp, then Yuyan, `--repeats` times) so that both see the same machine load:
- llama.cpp: `Llama.generate` with greedy sampling from a 32-token prompt; the time of the 160 one-token steps
  after the prompt (the prompt's own evaluation is left out), on `--threads` threads;
- Yuyan's `FastGenerator` (ONNX Runtime, f32), timed the same way: the one-token steps after the prompt;
- reference: Yuyan's `model.generate` (greedy, f32, the same prompt) on the same number of torch threads, timed
  whole (its prompt pass included, as in bench/throughput.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from yuyan import YuyanConfig, YuyanForCausalLM
from yuyan.corpus import python_documentation
from yuyan.gguf_export import GGUF_DTYPES, export_to_gguf
from yuyan.tokenization import special_token_ids, train_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import TokenClock  # noqa: E402  (bench/throughput.py, beside this script)

# The decoding benchmark's dimensions (bench/throughput.py, BENCHMARKS.md "Decoding"), attention only.
DIMS = dict(
    vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
    intermediate_size=688, max_position_embeddings=2048, tie_word_embeddings=True,
)
PROMPT_TOKENS = 32


def build_model_folder(folder: Path) -> YuyanForCausalLM:
    tokenizer = train_tokenizer(python_documentation(), vocab_size=DIMS["vocab_size"], show_progress=False)
    torch.manual_seed(0)
    model = YuyanForCausalLM(YuyanConfig(**DIMS, **special_token_ids(tokenizer))).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def llama_cpp_decode_rate(llm, prompt: list[int], new_tokens: int) -> float:
    """Tokens/s of `new_tokens` greedy one-token steps after the prompt has been evaluated."""
    steps = llm.generate(prompt, top_k=1, temp=0.0, reset=True)
    next(steps)  # the prompt's evaluation and the first token
    start = time.perf_counter()
    for _ in range(new_tokens):
        next(steps)
    elapsed = time.perf_counter() - start
    steps.close()
    return new_tokens / elapsed


def fast_generator_rate(generator, prompt: list[int], new_tokens: int) -> float:
    """Tokens/s of the one-token steps after the prompt's evaluation and first token, as for llama.cpp."""
    clock = TokenClock()
    generator.generate(torch.tensor([prompt]), max_new_tokens=new_tokens + 1, min_new_tokens=new_tokens + 1,
                       eos_token_id=[], pad_token_id=0, streamer=clock)
    return new_tokens / (clock.times[-1] - clock.times[1])


@torch.no_grad()
def yuyan_generate_rate(model, prompt: list[int], new_tokens: int) -> float:
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, eos_token_id=None, pad_token_id=0)
    return new_tokens / (time.perf_counter() - start)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=GGUF_DTYPES, default="f32", help="how the GGUF file stores matrices")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads and torch threads")
    parser.add_argument("--new-tokens", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (median taken)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama-cpp-python is not installed: pip install llama-cpp-python (it compiles llama.cpp)")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as work:
        folder, path = Path(work) / "model", Path(work) / "model.gguf"
        model = build_model_folder(folder)
        summary = export_to_gguf(folder, path, dtype=args.dtype)
        from yuyan import FastGenerator

        fast = FastGenerator(model, cache_dir=Path(work) / "fast")
        prompt = torch.randint(3, DIMS["vocab_size"], (PROMPT_TOKENS,),
                               generator=torch.Generator().manual_seed(1)).tolist()
        llm = llama_cpp.Llama(str(path), n_ctx=PROMPT_TOKENS + args.new_tokens + 8, n_batch=PROMPT_TOKENS,
                              n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
        try:
            # One untimed run of each: the first calls allocate buffers and warm caches.
            llama_cpp_decode_rate(llm, prompt, 8)
            yuyan_generate_rate(model, prompt, 8)
            fast_generator_rate(fast, prompt, 8)
            runs = {"llama.cpp": [], "yuyan FastGenerator": [], "yuyan generate": []}
            for _ in range(args.repeats):
                runs["llama.cpp"].append(llama_cpp_decode_rate(llm, prompt, args.new_tokens))
                runs["yuyan FastGenerator"].append(fast_generator_rate(fast, prompt, args.new_tokens))
                runs["yuyan generate"].append(yuyan_generate_rate(model, prompt, args.new_tokens))
        finally:
            llm.close()

    rates = {name: statistics.median(values) for name, values in runs.items()}
    environment = {
        "cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "llama_cpp_python": llama_cpp.__version__, "threads": args.threads,
    }
    print(f"{environment['cpu']}, {environment['cpus']} CPUs; llama-cpp-python {environment['llama_cpp_python']}, "
          f"torch {environment['torch']}; {args.threads} threads; batch 1, {PROMPT_TOKENS}-token prompt, "
          f"{args.new_tokens} new tokens, medians of {args.repeats}\n")
    print("| runtime | weights | decode tok/s | runs |\n|---|---|---:|---|")
    print(f"| llama.cpp (GGUF) | {args.dtype}, {summary['bytes'] / 1e6:.1f} MB | {rates['llama.cpp']:.0f} | "
          + ", ".join(f"{v:.0f}" for v in runs["llama.cpp"]) + " |")
    print(f"| Yuyan `FastGenerator` (ONNX Runtime) | f32 | {rates['yuyan FastGenerator']:.0f} | "
          + ", ".join(f"{v:.0f}" for v in runs["yuyan FastGenerator"]) + " |")
    print(f"| Yuyan `generate` (reference) | f32 | {rates['yuyan generate']:.0f} | "
          + ", ".join(f"{v:.0f}" for v in runs["yuyan generate"]) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": runs, "medians": rates, "dtype": args.dtype,
                                         "environment": environment}, indent=2) + "\n")


if __name__ == "__main__":
    main()

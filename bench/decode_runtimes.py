"""Which runtime should run the fast decoder? The same stateful decoder (yuyan/fast/decoder.py) in three runtimes, one
token per call, as FastGenerator drives it:

- PyTorch eager: `StatefulDecoder` called directly (no `generate` around it), under `torch.inference_mode`;
- ONNX Runtime: the exported graph (`yuyan export --format onnx`), what FastGenerator uses;
- torch.export + AOTInductor: the same module exported with dynamic batch and lengths and compiled ahead of time
  into a shared library (`torch._inductor.aoti_compile_and_package`), then loaded and called.

Each measurement runs in a process of its own, so that one runtime's threads (PyTorch's OpenMP workers spin for a
while after each call) never slow another, and a runtime that crashes on a model is reported, not fatal. For each: the
one-time preparation (export or compilation), loading it, and the median time of a one-token step at
batch 1 after a 32-token prompt, over `--steps` steps, at the bench dimensions (d 256, 4 layers, 4 heads, MLP 688,
vocabulary 8,192, tied), for the attention and the LSTM stack. Prints a Markdown table.

    python bench/decode_runtimes.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from yuyan import YuyanConfig, YuyanForCausalLM
from yuyan.fast.decoder import StatefulDecoder, empty_state, state_layout
from yuyan.fast.onnx import OnnxDecoder, decoder_description, export_decoder
from yuyan.files import write_json_atomic

DIMS = dict(
    vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
    intermediate_size=688, max_position_embeddings=2048, tie_word_embeddings=True,
)
PROMPT = 32


def step_times(step, steps: int) -> float:
    """Median seconds of `step(position)` over `steps` calls after the prompt."""
    times = []
    for position in range(PROMPT, PROMPT + steps):
        start = time.perf_counter()
        step(position)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def eager(model, steps: int) -> dict:
    decoder = StatefulDecoder(model).eval()
    state = empty_state(model.config, 1)
    with torch.inference_mode():
        _, *state = decoder(torch.arange(PROMPT)[None], torch.arange(PROMPT)[None], torch.ones(1, PROMPT, dtype=torch.long),
                            *state)

        def step(position):
            nonlocal state
            _, *state = decoder(torch.tensor([[5]]), torch.tensor([[position]]),
                                torch.ones(1, position + 1, dtype=torch.long), *state)

        return {"prepare_s": 0.0, "load_s": 0.0, "step_s": step_times(step, steps)}


def onnxruntime(model, steps: int, folder: Path) -> dict:
    start = time.perf_counter()
    export_decoder(model, folder / "model.onnx")
    write_json_atomic(folder / "decoder.json", decoder_description(model.config))
    prepared = time.perf_counter()
    decoder = OnnxDecoder(folder)
    loaded = time.perf_counter()
    ids = np.arange(PROMPT)[None]
    _, state = decoder.step(ids, ids, np.ones((1, PROMPT)), decoder.start(1))

    def step(position):
        nonlocal state
        _, state = decoder.step(np.array([[5]]), np.array([[position]]), np.ones((1, position + 1)), state)

    return {"prepare_s": prepared - start, "load_s": loaded - prepared, "step_s": step_times(step, steps)}


def aot_inductor(model, steps: int, folder: Path) -> dict:
    decoder = StatefulDecoder(model).eval()
    layout = state_layout(model.config)
    batch, length, past = 2, 3, 4
    state = [torch.zeros([batch] + [past if axis is None else axis for axis in t.shape[1:]]) for t in layout]
    example = (torch.zeros(batch, length, dtype=torch.long), torch.arange(past, past + length).expand(batch, -1),
               torch.ones(batch, past + length, dtype=torch.long), *state)
    auto = torch.export.Dim.AUTO
    dynamic = ({0: auto, 1: auto}, {0: auto, 1: auto}, {0: auto, 1: auto},
               tuple({0: auto, 2: auto} if t.grows else {0: auto} for t in layout))
    start = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(decoder, example, dynamic_shapes=dynamic, strict=False)
        package = torch._inductor.aoti_compile_and_package(program, package_path=str(folder / "decoder.pt2"))
    prepared = time.perf_counter()
    runner = torch._inductor.aoti_load_package(package)
    loaded = time.perf_counter()
    state = empty_state(model.config, 1)
    with torch.inference_mode():
        _, *state = runner(torch.arange(PROMPT)[None], torch.arange(PROMPT)[None], torch.ones(1, PROMPT, dtype=torch.long),
                           *state)

        def step(position):
            nonlocal state
            _, *state = runner(torch.tensor([[5]]), torch.tensor([[position]]),
                               torch.ones(1, position + 1, dtype=torch.long), *state)

        return {"prepare_s": prepared - start, "load_s": loaded - prepared, "step_s": step_times(step, steps)}


RUNTIMES = {"PyTorch eager": "eager", "ONNX Runtime": "onnxruntime", "torch.export + AOTInductor": "aoti"}
STACKS = {"attention": ["full_attention"] * 4, "lstm": ["lstm"] * 4}


def measure(runtime: str, stack: str, steps: int) -> dict:
    """One runtime on one stack, in this process."""
    torch.manual_seed(0)
    model = YuyanForCausalLM(YuyanConfig(**DIMS, layer_types=STACKS[stack])).eval()
    with tempfile.TemporaryDirectory() as root:
        if runtime == "eager":
            return eager(model, steps)
        if runtime == "onnxruntime":
            return onnxruntime(model, steps, Path(root))
        return aot_inductor(model, steps, Path(root))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-aoti", action="store_true", help="leave out AOTInductor (its compilation takes minutes)")
    parser.add_argument("--one", nargs=2, metavar=("RUNTIME", "STACK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print("RESULT " + json.dumps(measure(*args.one, args.steps)))
        return
    results = {}
    for stack in STACKS:
        for runtime, key in RUNTIMES.items():
            if key == "aoti" and args.skip_aoti:
                continue
            command = [sys.executable, __file__, "--one", key, stack, "--steps", str(args.steps)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            child = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
            if child.returncode != 0 or not lines:
                reason = (child.stderr.strip().splitlines() or ["no output"])[-1][:200]
                print(f"{runtime:28s} {stack:10s} failed (exit {child.returncode}): {reason}", flush=True)
                results[(runtime, stack)] = None
                continue
            row = results[(runtime, stack)] = json.loads(lines[-1][len("RESULT "):])
            print(f"{runtime:28s} {stack:10s} prepare {row['prepare_s']:6.1f} s  load {row['load_s']:5.2f} s  "
                  f"step {row['step_s'] * 1e3:.3f} ms", flush=True)
    print(f"\n### One-token decode step by runtime, batch 1, {args.threads or torch.get_num_threads()} threads, "
          f"median of {args.steps}\n")
    print("| runtime | stack | preparation s | loading s | step ms | tokens/s (step only) |")
    print("|---|---|---:|---:|---:|---:|")
    for (runtime, stack), row in results.items():
        if row is None:
            print(f"| {runtime} | {stack} | failed | | | |")
            continue
        print(f"| {runtime} | {stack} | {row['prepare_s']:.1f} | {row['load_s']:.2f} | {row['step_s'] * 1e3:.3f} "
              f"| {1 / row['step_s']:.0f} |")


if __name__ == "__main__":
    main()

"""Where a pretraining step's time goes on this CPU: forward + backward (float32 and bfloat16 autocast) and the
optimizer step (AdamW; Muon as torch.optim.Muon runs it, with its orthogonalisation in bfloat16; Muon as Yuyan's
`CpuMuon` runs it on a CPU without native bfloat16, in float32), at the shape `yuyan pretrain` trains a preset
(`configs/<preset>.yaml`: 16 x 256 tokens).

The Muon rows time what `yuyan pretrain --optimizer muon` steps: Muon on the hidden matrices plus AdamW on the
rest (embeddings, head, norms, biases). Gradients are real ones, from one backward pass; every timed row takes
`--steps` steps after one warm-up step, and the table gives the median. On a CPU without native bfloat16 (AVX2
only, `torch.backends.cpu.get_cpu_capability()` says AVX2) torch's bf16 matmuls are emulated, which is what the
last two rows tell apart.

    python bench/optimizer_step.py                       # small-hybrid, vocabulary 16,384
    python bench/optimizer_step.py --preset small-lstm --steps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from yuyan import YuyanConfig, YuyanForCausalLM
from yuyan.training.pretrain import CombinedOptimizer, PretrainArguments, make_optimizer


def median_seconds(step, steps: int) -> float:
    step()  # warm-up: allocations, oneDNN primitive creation
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small-hybrid")
    parser.add_argument("--vocab-size", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = YuyanForCausalLM(YuyanConfig.from_preset(args.preset, vocab_size=args.vocab_size)).train()
    ids = torch.randint(0, args.vocab_size, (args.batch_size, args.block_size))

    def forward_backward(autocast: bool):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(ids, labels=ids).loss
            loss.backward()
        return step

    rows = {"forward + backward, float32": median_seconds(forward_backward(False), args.steps),
            "forward + backward, bf16 autocast": median_seconds(forward_backward(True), args.steps)}
    model.zero_grad()
    forward_backward(False)()  # real gradients for the optimizer rows; kept for every step
    gradients = {name: p.grad.clone() for name, p in model.named_parameters()}
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}

    def optimizer_step(optimizer):
        def step():
            optimizer.step()
            for name, p in model.named_parameters():
                p.grad = gradients[name].clone()
        return step

    def with_torch_muon(optimizer: CombinedOptimizer) -> CombinedOptimizer:
        adamw, muon = optimizer.optimizers
        plain = torch.optim.Muon([p for group in muon.param_groups for p in group["params"]], **muon.defaults)
        return CombinedOptimizer([adamw, plain])

    def with_float32_muon(optimizer: CombinedOptimizer) -> CombinedOptimizer:
        optimizer.optimizers[1].float32 = True  # the AVX2 path, whatever this CPU would pick
        return optimizer

    muon_args = PretrainArguments(optimizer="muon", output="unused", learning_rate=3e-3)
    candidates = {
        "AdamW step (fused)": lambda: make_optimizer(model, PretrainArguments(output="unused")),
        "Muon + AdamW step, torch.optim.Muon (bf16 orthogonalisation)": lambda: with_torch_muon(
            make_optimizer(model, muon_args)),
        "Muon + AdamW step, CpuMuon (float32 orthogonalisation)": lambda: with_float32_muon(
            make_optimizer(model, muon_args)),
    }
    for label, build in candidates.items():
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(initial[name])
        rows[label] = median_seconds(optimizer_step(build()), args.steps)

    capability = torch.backends.cpu.get_cpu_capability()
    print(f"{args.preset}, vocabulary {args.vocab_size:,}, {args.batch_size} x {args.block_size} tokens; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, CPU capability {capability}; median of "
          f"{args.steps} steps")
    print()
    print("| part of a step | seconds (median) | against float32 forward + backward |")
    print("|---|---:|---:|")
    reference = rows["forward + backward, float32"]
    for label, seconds in rows.items():
        print(f"| {label} | {seconds:.3f} | {seconds / reference:.2f}x |")
    result = {"preset": args.preset, "vocab_size": args.vocab_size, "batch_size": args.batch_size,
              "block_size": args.block_size, "steps": args.steps, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu_capability": capability, "seconds": rows}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()

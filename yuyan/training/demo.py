"""`yuyan demo`: the whole path in a few minutes on a laptop CPU, with no download.

Builds the embedded corpus (the documentation inside Python), trains a byte-level BPE tokenizer and a tiny hybrid
model on it, reports validation perplexity, reloads the saved folder with `AutoModelForCausalLM` and generates.
"""

from __future__ import annotations

from pathlib import Path

import torch

DEMO_PROMPT = "The assert statement"


def run_demo(output: str = "runs/demo", minutes: float = 3.0, preset: str = "tiny-hybrid", seed: int = 0,
             overwrite: bool = True) -> dict:
    """Train and reload the demo model; returns the run's metrics plus `sample` (a generation) and `output`."""
    from yuyan.loading import load_model_and_tokenizer
    from yuyan.training.pretrain import PretrainArguments, pretrain

    args = PretrainArguments(
        output=output,
        block_size=128,
        batch_size=16,
        learning_rate=3e-3,
        warmup_steps=50,
        # The time budget alone: the run measures its step time, trains as many epochs as fit and ends its
        # learning-rate schedule with the budget, on any machine.
        max_minutes=minutes,
        eval_steps=250,
        eval_batches=20,
        logging_steps=10,
        save_steps=250,
        validation_fraction=0.05,
        seed=seed,
        overwrite=overwrite,
    )
    args.validate()
    metrics = pretrain(args, {"preset": preset, "vocab_size": 4096})
    folder = Path(output).resolve()

    model, tokenizer = load_model_and_tokenizer(folder, device="cpu")
    inputs = tokenizer(DEMO_PROMPT, return_tensors="pt")
    torch.manual_seed(seed)
    generated = model.generate(**inputs, max_new_tokens=60, do_sample=True, top_p=0.9, temperature=0.8,
                               pad_token_id=tokenizer.pad_token_id)
    sample = tokenizer.decode(generated[0], skip_special_tokens=True)
    return {**metrics, "sample": sample, "output": str(folder)}

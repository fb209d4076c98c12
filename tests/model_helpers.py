"""Tiny Yuyan models for tests: one per stack, small enough that a forward pass takes milliseconds; and a way to
run a script where `yuyan` cannot be imported (what a machine without the package sees)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

from yuyan import YuyanConfig, YuyanForCausalLM

STACKS = {
    "attention": ["full_attention"] * 3,
    "lstm": ["lstm"] * 3,
    "hybrid": ["lstm", "full_attention", "lstm"],
}

VOCAB = 97
PAD, EOS = 0, 1


def tiny_config(stack: str, **overrides) -> YuyanConfig:
    values = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=len(STACKS[stack]),
        layer_types=STACKS[stack],
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
        pad_token_id=PAD,
        bos_token_id=EOS,
        eos_token_id=EOS,
        # Larger than the default so that random models give peaked, well-separated logits: greedy and beam
        # comparisons then do not hinge on float rounding.
        initializer_range=0.2,
    )
    values.update(overrides)
    return YuyanConfig(**values)


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Ids 2.. avoid pad and eos so that generation never stops early by chance in the prompt.
    return torch.randint(2, VOCAB, (batch, length), generator=generator)


def generation_model(stack: str, **overrides) -> YuyanForCausalLM:
    """A seeded tiny language model in eval mode that never stops early: every generation comparison runs the full
    number of steps."""
    torch.manual_seed(0)
    model = YuyanForCausalLM(tiny_config(stack, **overrides)).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    return model


@torch.no_grad()
def manual_greedy(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding by re-running the whole sequence each step, no cache: the reference for cached decoding."""
    for _ in range(steps):
        next_token = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_token], dim=1)
    return ids


BLOCK_YUYAN = """
import sys

class BlockYuyan:
    def find_spec(self, name, path=None, target=None):
        if name == "yuyan" or name.startswith("yuyan."):
            raise ImportError("yuyan is blocked in this process")

sys.meta_path.insert(0, BlockYuyan())
try:
    import yuyan
    raise SystemExit("yuyan was importable")
except ImportError:
    pass
"""


def run_without_yuyan(script: str, tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    # Run from a folder that does not hold the package, so that only the saved files can supply the code.
    return subprocess.run(
        [sys.executable, "-c", BLOCK_YUYAN + textwrap.dedent(script)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )

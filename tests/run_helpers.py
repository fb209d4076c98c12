"""Tiny training runs for tests: a made-up corpus, the flags of a two-layer model that trains in milliseconds a
step, and `yuyan` run as a separate process (as a user or a launcher starts it)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

from yuyan import YuyanConfig, YuyanForCausalLM

WORDS = ("the cat sat on a mat and the dog ran to see what was in the box while birds sang songs of summer rain "
         "under a quiet grey sky near the old stone bridge").split()
# A two-layer hybrid (lstm, attention), 32 wide: every step takes milliseconds.
TINY = ["--config", "tiny-hybrid", "--set", "hidden_size=32", "--set", "num_hidden_layers=2",
        "--set", "intermediate_size=48", "--set", "num_attention_heads=4", "--set", "num_key_value_heads=2",
        "--set", "max_position_embeddings=64"]


def paragraphs(count: int, seed: int) -> list[str]:
    """`count` paragraphs of 15-40 words drawn from WORDS, the same for the same seed."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 40))) for _ in range(count)]


def write_corpus(root: Path) -> dict[str, Path]:
    """train.txt and valid.txt (paragraphs separated by blank lines) and a 320-token tokenizer trained on the first."""
    from yuyan.tokenization import train_tokenizer

    (root / "train.txt").write_text("".join(paragraph + "\n\n" for paragraph in paragraphs(60, seed=1)))
    (root / "valid.txt").write_text("".join(paragraph + "\n\n" for paragraph in paragraphs(12, seed=2)))
    train_tokenizer(files=[root / "train.txt"], vocab_size=320, output_dir=root / "tokenizer", txt_split="paragraph")
    return {"train": root / "train.txt", "valid": root / "valid.txt", "tokenizer": root / "tokenizer"}


def data_flags(corpus: dict[str, Path]) -> list[str]:
    return ["--data", str(corpus["train"]), "--validation-data", str(corpus["valid"]),
            "--tokenizer", str(corpus["tokenizer"])]


def free_port() -> int:
    """A port no other job on the machine listens on (Accelerate's default, 29500, may be taken by one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """`python -m yuyan.cli ARGS` in a new process, offline, on one thread."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "yuyan.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


def train_tiny_tokenizer(output_dir: Path):
    from yuyan.tokenization import train_tokenizer

    return train_tokenizer(texts=paragraphs(120, seed=0), vocab_size=300, output_dir=output_dir)


def build_model_folder(folder: Path, tokenizer_dir: Path, seed: int = 0) -> YuyanForCausalLM:
    """A tiny hybrid model saved with its tokenizer (no metrics, no card)."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = YuyanForCausalLM(YuyanConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, layer_types=["lstm", "full_attention"],
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def pretrain_tiny(root: Path, save_steps: int = 1000) -> Path:
    """A real (three-step) `yuyan pretrain` run; returns its output folder."""
    from yuyan.cli import main

    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text("\n\n".join(paragraphs(60, seed=1)) + "\n")
    (root / "valid.txt").write_text("\n\n".join(paragraphs(12, seed=2)) + "\n")
    train_tiny_tokenizer(root / "tokenizer")
    out = root / "run"
    code = main(["pretrain", *TINY, "--data", str(root / "train.txt"), "--validation-data", str(root / "valid.txt"),
                 "--tokenizer", str(root / "tokenizer"), "--block-size", "16", "--batch-size", "4", "--max-steps", "3",
                 "--save-steps", str(save_steps), "--output", str(out)])
    assert code == 0
    return out

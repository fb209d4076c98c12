"""`yuyan pretrain`: configuration, errors before training, a whole tiny run, exact resume after SIGKILL, and
data-parallel training on two CPU processes."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import yuyan  # noqa: F401
from yuyan.cli import main
from yuyan.training.data import TextSource, load_documents, python_documentation, split_validation
from yuyan.training.pretrain import (
    EpochShuffleSampler,
    PretrainArguments,
    resolve_config,
    warmup_cosine_schedule,
)

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the cat sat on a mat and the dog ran to see what was in the box while birds sang songs of summer rain "
         "under a quiet grey sky near the old stone bridge").split()
# A two-layer hybrid (lstm, attention), 32 wide: every step takes milliseconds.
TINY = ["--config", "tiny-hybrid", "--set", "hidden_size=32", "--set", "num_hidden_layers=2",
        "--set", "intermediate_size=48", "--set", "num_attention_heads=4", "--set", "num_key_value_heads=2",
        "--set", "max_position_embeddings=64"]


def paragraphs(count: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 40))) + "\n\n" for _ in range(count))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    (root / "train.txt").write_text(paragraphs(60, seed=1))
    (root / "valid.txt").write_text(paragraphs(12, seed=2))
    from yuyan.tokenization import train_tokenizer

    train_tokenizer(files=[root / "train.txt"], vocab_size=320, output_dir=root / "tokenizer", txt_split="paragraph")
    return {"train": root / "train.txt", "valid": root / "valid.txt", "tokenizer": root / "tokenizer"}


def data_flags(corpus) -> list[str]:
    return ["--data", str(corpus["train"]), "--validation-data", str(corpus["valid"]),
            "--tokenizer", str(corpus["tokenizer"])]


def free_port() -> int:
    """A port no other job on the machine listens on (Accelerate's default, 29500, may be taken by one)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "yuyan.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------


def test_yaml_config_then_flags_then_set_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  preset: small-lstm\n  hidden_size: 128\ntraining:\n  learning_rate: 0.002\n"
                      "  batch_size: 8\n  block_size: 64\n")
    model, training = resolve_config(
        str(config), {"num_hidden_layers": 3, "model.intermediate_size": 0, "block_size": 32}, {"batch_size": 4}
    )
    assert model == {"preset": "small-lstm", "hidden_size": 128, "num_hidden_layers": 3, "intermediate_size": 0}
    assert (training.learning_rate, training.batch_size, training.block_size) == (0.002, 4, 32)


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_resolve(name):
    model, training = resolve_config(str(REPO / "configs" / f"{name}.yaml"))
    assert model["preset"] == name
    training.validate()


def test_unknown_training_setting_is_refused(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("training:\n  learning_rte: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown training settings \['learning_rte'\]"):
        resolve_config(str(config))


def test_sampler_order_depends_only_on_seed_and_epoch():
    sampler = EpochShuffleSampler(50, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == list(range(50)) and first != second
    again = EpochShuffleSampler(50, seed=3)
    again.set_epoch(1)
    assert list(again) == second


def test_schedule_warms_up_then_decays_to_the_floor():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = warmup_cosine_schedule(optimizer, warmup_steps=4, total_steps=20, floor=0.1)
    rates = []
    for _ in range(20):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    rates.append(scheduler.get_last_lr()[0])
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))
    assert math.isclose(rates[-1], 0.1)


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def test_embedded_corpus_is_python_documentation():
    documents = python_documentation(max_bytes=300_000)
    assert len(documents) > 50
    assert any("assert" in d and "statement" in d for d in documents)
    assert all(isinstance(d, str) and d.strip() for d in documents)


def test_validation_split_is_deterministic_and_disjoint(corpus):
    documents = load_documents(TextSource(files=[str(corpus["train"])]))
    train, validation = split_validation(documents, 0.1)
    assert len(train) + len(validation) == len(documents) == 60
    assert len(validation) == 6
    assert not set(train["text"]) & set(validation["text"])


# ---------------------------------------------------------------------------------------------------------------
# Errors before training
# ---------------------------------------------------------------------------------------------------------------


def test_errors_are_reported_before_any_training(tmp_path, corpus, capsys):
    out = tmp_path / "out"
    cases = [
        (["--config", "huge-attention", *data_flags(corpus), "--output", str(out)], "'huge-attention' is neither a YAML file nor a preset"),
        ([*TINY, *data_flags(corpus), "--block-size", "128", "--output", str(out)],
         "block_size=128 is beyond the model's max_position_embeddings=64"),
        ([*TINY, "--data", str(tmp_path / "missing.txt"), "--output", str(out)], "missing.txt"),
        ([*TINY, *data_flags(corpus), "--max-steps", "0", "--output", str(out)], "max_steps=0 is not allowed"),
    ]
    for args, message in cases:
        assert main(["pretrain", *args]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists(), f"{message}: the output folder was written"

    no_text = tmp_path / "records.jsonl"
    no_text.write_text('{"content": "a document without a text column"}\n')
    assert main(["pretrain", *TINY, "--data", str(no_text), "--tokenizer", str(corpus["tokenizer"]),
                 "--block-size", "16", "--output", str(out)]) == 2
    assert "'text'" in capsys.readouterr().err
    assert not out.exists()


def test_output_holding_another_run_is_refused(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    common = [*TINY, *data_flags(corpus), "--block-size", "16", "--batch-size", "4", "--max-steps", "2",
              "--save-steps", "1", "--output", str(out)]
    assert main(["pretrain", *common]) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main(["pretrain", *common]) == 2
    assert "holds another run" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before, "the earlier run was touched"


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------


def test_a_tiny_run_writes_a_complete_model_folder(tmp_path, corpus):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, *data_flags(corpus), "--block-size", "16", "--batch-size", "4",
                 "--max-steps", "6", "--save-steps", "2", "--save-total-limit", "2", "--eval-steps", "3",
                 "--logging-steps", "1", "--report-to", "tensorboard", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    assert metrics["steps"] == 6 and len(metrics["loss_history"]) == 6 and len(metrics["eval_history"]) == 1
    assert metrics["tokens_seen"] == 6 * 4 * 16
    assert math.isclose(metrics["validation_perplexity"], math.exp(metrics["validation_loss"]), rel_tol=1e-6)
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-0000004", "step-0000006"]
    assert not list(out.rglob("*.tmp")), "a temporary file or folder was left behind"

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.layer_types == ["lstm", "full_attention"]
    assert model.config.vocab_size == len(tokenizer) and model.config.eos_token_id == tokenizer.eos_token_id
    card = (out / "README.md").read_text()
    assert f"{metrics['validation_perplexity']:.2f}" in card and "{{" not in card


def test_streaming_run_with_a_step_budget(tmp_path, corpus):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, *data_flags(corpus), "--streaming", "--block-size", "16", "--batch-size", "4",
                 "--max-steps", "3", "--eval-batches", "2", "--output", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3


def test_time_budget_stops_cleanly_and_saves(tmp_path, corpus):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, *data_flags(corpus), "--block-size", "16", "--batch-size", "4",
                 "--max-minutes", "0.0001", "--save-steps", "1000", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stop_reason"] == "max_minutes" and metrics["steps"] >= 1
    assert (out / "checkpoints" / f"step-{metrics['steps']:07d}").is_dir()


def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path, corpus):
    # Dropout on, several epochs (the corpus gives about ten steps an epoch): RNG and data position must both
    # be restored exactly for the weights to match bit for bit.
    common = [*TINY, "--set", "hidden_dropout=0.1", *data_flags(corpus), "--block-size", "16", "--batch-size",
              "4", "--max-steps", "30", "--save-steps", "2", "--eval-steps", "7", "--seed", "5"]
    straight = run_cli(["pretrain", *common, "--output", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "yuyan.cli", "pretrain", *common, "--output", str(out)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-0000008").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "model.safetensors").exists(), "the run finished before the kill"

    resumed = run_cli(["pretrain", *common, "--output", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resumed from" in resumed.stdout + resumed.stderr
    expected, got = load_file(tmp_path / "straight" / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    straight_metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    resumed_metrics = json.loads((out / "metrics.json").read_text())
    assert resumed_metrics["loss_history"] == straight_metrics["loss_history"]


def test_two_processes_follow_one_process_with_twice_the_batch(tmp_path, corpus):
    common = [*TINY, *data_flags(corpus), "--block-size", "16", "--max-steps", "6", "--save-steps", "100",
              "--eval-steps", "100", "--logging-steps", "1"]
    single = run_cli(["pretrain", *common, "--batch-size", "4", "--output", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr[-2000:]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    launch = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "configs" / "accelerate" / "cpu-2-processes.yaml"), "--main_process_port", str(free_port()),
         "-m", "yuyan.cli", "pretrain", *common,
         "--batch-size", "2", "--output", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert launch.returncode == 0, launch.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["tokens_seen"] == two["tokens_seen"]
    for (step_a, loss_a), (step_b, loss_b) in zip(one["loss_history"], two["loss_history"], strict=True):
        assert step_a == step_b and math.isclose(loss_a, loss_b, abs_tol=1e-4), (step_a, loss_a, loss_b)
    assert math.isclose(one["validation_loss"], two["validation_loss"], abs_tol=1e-4)

"""The package on an accelerator: the forward pass, every decoding strategy, pretraining and fine-tuning on a GPU,
checked against the CPU. Skipped where there is none (as on CI); `YUYAN_TEST_DEVICE` names another device
(`cuda:1`, `xpu`, `mps`, or `cpu` to try the file itself on a machine without one)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from model_helpers import PAD, STACKS, generation_model, random_ids
from run_helpers import TINY, build_model_folder, data_flags, run_cli, train_tiny_tokenizer
from yuyan import YuyanForCausalLM

DEVICE = torch.device(os.environ.get("YUYAN_TEST_DEVICE", "cuda"))


def _available(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    backend = getattr(torch, device.type, None)
    return bool(backend is not None and backend.is_available())


pytestmark = pytest.mark.skipif(not _available(DEVICE), reason=f"no {DEVICE} device on this machine")
ALL_STACKS = sorted(STACKS)


@pytest.fixture(autouse=True)
def full_fp32_matmuls():
    """cuDNN's LSTM and cuBLAS may use TF32 by default, which is not fp32: comparisons with the CPU need fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _left_padded_prompt() -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts, the second two tokens shorter and padded on the left as generate expects."""
    prompt = random_ids(2, 7, seed=3)
    mask = torch.ones_like(prompt)
    prompt[1, :2], mask[1, :2] = PAD, 0
    return prompt, mask


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_forward_and_loss_match_the_cpu(stack):
    model = generation_model(stack)
    prompt, mask = _left_padded_prompt()
    with torch.no_grad():
        expected = model(prompt, attention_mask=mask, labels=prompt)
        model.to(DEVICE)
        got = model(prompt.to(DEVICE), attention_mask=mask.to(DEVICE), labels=prompt.to(DEVICE))
    assert got.logits.device.type == DEVICE.type
    real = mask.bool()
    torch.testing.assert_close(got.logits.cpu()[real], expected.logits[real], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.loss.cpu(), expected.loss, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stack", ALL_STACKS)
@pytest.mark.parametrize("strategy", [
    {"do_sample": False},
    {"do_sample": False, "cache_implementation": "static"},
    {"do_sample": False, "num_beams": 3},
])
def test_deterministic_decoding_matches_the_cpu(stack, strategy):
    model = generation_model(stack)
    prompt, mask = _left_padded_prompt()
    expected = model.generate(prompt, attention_mask=mask, max_new_tokens=24, **strategy)
    model.to(DEVICE)
    got = model.generate(prompt.to(DEVICE), attention_mask=mask.to(DEVICE), max_new_tokens=24, **strategy)
    assert torch.equal(got.cpu(), expected)


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_sampling_and_bf16_decoding_run_on_the_device(stack):
    model = generation_model(stack).to(DEVICE)
    prompt, mask = _left_padded_prompt()
    torch.manual_seed(0)
    sampled = model.generate(prompt.to(DEVICE), attention_mask=mask.to(DEVICE), max_new_tokens=16, do_sample=True,
                             top_k=20, top_p=0.9)
    assert sampled.shape == (2, 7 + 16) and torch.equal(sampled[:, :7].cpu(), prompt)

    model.to(torch.bfloat16)
    greedy = model.generate(prompt.to(DEVICE), attention_mask=mask.to(DEVICE), max_new_tokens=16, do_sample=False)
    # bf16 rounds the logits; the tiny model's peaked ones still pick the same first tokens as fp32.
    reference = generation_model(stack).generate(prompt, attention_mask=mask, max_new_tokens=16, do_sample=False)
    assert greedy.shape == reference.shape
    assert torch.equal(greedy[:, 7:9].cpu(), reference[:, 7:9])


@pytest.mark.slow
def test_pretraining_runs_on_the_device_with_bf16(corpus, tmp_path):
    """`yuyan pretrain` with no device flag trains on the accelerator (Accelerate's choice) and saves a model that
    loads back on the CPU."""
    out = tmp_path / "run"
    result = run_cli(["pretrain", *TINY, *data_flags(corpus), "--output", str(out), "--max-steps", "8",
                      "--block-size", "32", "--batch-size", "4", "--mixed-precision", "bf16", "--eval-steps", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"].startswith(DEVICE.type), metrics["device"]
    assert metrics["steps"] == 8 and metrics["mixed_precision"] == "bf16"
    losses = torch.tensor([loss for _, loss in metrics["loss_history"]])
    assert len(losses) == 8 and torch.isfinite(losses).all()
    assert torch.isfinite(torch.tensor(metrics["validation_loss"]))
    model = YuyanForCausalLM.from_pretrained(out)
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.slow
def test_finetuning_a_classifier_runs_on_the_device(tmp_path):
    """The Trainer path of `yuyan finetune` on the accelerator learns an easy two-class task."""
    from yuyan import cli

    train_tiny_tokenizer(tmp_path / "tokenizer")
    build_model_folder(tmp_path / "base", tmp_path / "tokenizer")
    rows = [("the cat sat on a mat", 1), ("birds sang songs of summer rain", 0)] * 40
    table = "sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows)
    (tmp_path / "train.tsv").write_text(table)
    (tmp_path / "dev.tsv").write_text(table)
    out = tmp_path / "classifier"
    code = cli.main(["finetune", "--task", "classification", "--model", str(tmp_path / "base"),
                     "--train", str(tmp_path / "train.tsv"), "--validation", str(tmp_path / "dev.tsv"),
                     "--output", str(out), "--num_train_epochs", "3", "--learning-rate", "3e-3",
                     "--disable_tqdm", "true", "--save_strategy", "no"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"].startswith(DEVICE.type), metrics["device"]
    assert metrics["metrics"]["accuracy"] == 100.0

"""PEFT's plain call: `get_peft_model(model, LoraConfig(task_type=...))` without `target_modules` works on every
stack, as it does for Llama, because `import yuyan` registers Yuyan's default LoRA targets with peft."""

from __future__ import annotations

import pytest
import torch

from model_helpers import STACKS, random_ids, tiny_config
from yuyan import YuyanForCausalLM, YuyanForSequenceClassification
from yuyan.modeling import LORA_TARGET_MODULES

peft = pytest.importorskip("peft")

# Which of the default targets each stack has: the LSTM's out_proj only where there are LSTM layers, and so on.
EXPECTED = {
    "attention": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    "lstm": {"out_proj", "gate_up_proj", "down_proj"},
    "hybrid": {"qkv_proj", "o_proj", "out_proj", "gate_up_proj", "down_proj"},
}


def adapted_modules(model) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, LoraLayer)}


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_lora_without_target_modules(stack):
    torch.manual_seed(0)
    model = YuyanForCausalLM(tiny_config(stack)).eval()
    ids = random_ids(2, 6)
    with torch.no_grad():
        before = model(ids).logits
    lora = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", r=4))
    assert adapted_modules(lora) == EXPECTED[stack] <= set(LORA_TARGET_MODULES)
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    # LoRA's B starts at zero: the adapted model computes the same function until it is trained.
    with torch.no_grad():
        torch.testing.assert_close(lora(input_ids=ids).logits, before)
    # And the adapters train: one step moves the loss.
    lora.train()
    loss = lora(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for name, p in lora.named_parameters() if p.requires_grad and "lora_A" in name)


def test_lora_without_target_modules_on_a_task_head():
    model = YuyanForSequenceClassification(tiny_config("hybrid", num_labels=3))
    lora = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=4))
    assert adapted_modules(lora) == EXPECTED["hybrid"]
    assert any("score" in name and p.requires_grad for name, p in lora.named_parameters())


def test_finetune_uses_the_same_defaults():
    from yuyan.training.finetune import DEFAULT_LORA_TARGETS

    assert DEFAULT_LORA_TARGETS == list(LORA_TARGET_MODULES)

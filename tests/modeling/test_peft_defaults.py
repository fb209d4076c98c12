"""PEFT's plain call: `get_peft_model(model, LoraConfig(task_type=...))` without `target_modules` works on every
stack, as it does for Llama, because the model file registers Yuyan's default LoRA targets with peft: with `yuyan`
imported, and where a saved folder is loaded with `trust_remote_code` and `yuyan` cannot be imported."""

from __future__ import annotations

import json
import re

import pytest
import torch

from model_helpers import STACKS, random_ids, run_without_yuyan, tiny_config
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


@pytest.mark.slow
def test_lora_without_target_modules_on_remote_code_without_yuyan(tmp_path):
    folders = {}
    for stack in sorted(STACKS):
        folders[stack] = str(tmp_path / stack)
        YuyanForCausalLM(tiny_config(stack)).save_pretrained(folders[stack])
    # peft is imported only after the first model is loaded: the order a notebook often has.
    result = run_without_yuyan(f"""
        import json
        from transformers import AutoModelForCausalLM
        adapted = {{}}
        for stack, folder in {folders!r}.items():
            model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
            assert type(model).__name__ == "YuyanForCausalLM" and "yuyan" not in sys.modules
            import peft
            from peft.tuners.lora import LoraLayer
            lora = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", r=4))
            adapted[stack] = sorted({{name.rsplit(".", 1)[-1] for name, module in lora.named_modules()
                                     if isinstance(module, LoraLayer)}})
        print("ADAPTED=" + json.dumps(adapted))
        """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    adapted = json.loads(re.search(r"ADAPTED=(.*)", result.stdout).group(1))
    assert adapted == {stack: sorted(expected) for stack, expected in EXPECTED.items()}


@pytest.mark.slow
def test_remote_code_loads_where_peft_is_missing(tmp_path):
    YuyanForCausalLM(tiny_config("hybrid")).save_pretrained(tmp_path / "model")
    # None in sys.modules is what a machine without peft sees: its import fails and find_spec reports it absent.
    result = run_without_yuyan(f"""
        sys.modules["peft"] = None
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        print("LOADED=" + type(model).__name__)
        """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED=YuyanForCausalLM" in result.stdout

"""The decode fast path of `yuyan generate`: the projection weights laid out transposed for the generation, then
restored. The model's own `generate` is transformers' and untouched."""

from __future__ import annotations

import pytest
import torch

from model_helpers import STACKS, generation_model, random_ids
from yuyan import YuyanForCausalLM
from yuyan.generate import DECODE_LAYOUT_MIN_NEW_TOKENS, build_generation_config, decode_layout, generate_texts

ALL_STACKS = sorted(STACKS)


def weight_strides(model) -> dict[str, tuple[int, ...]]:
    return {name: p.stride() for name, p in model.named_parameters() if p.dim() == 2}


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_decode_layout_transposes_every_projection_and_restores_it(stack, tmp_path):
    model = generation_model(stack)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    prompt = random_ids(2, 5)
    with torch.no_grad():
        expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False)
        with decode_layout(model):
            inside = weight_strides(model)
            generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                                       do_sample=False)
    # Inside: the head and every linear / LSTM matrix are column-major (same shape); the tokens do not change.
    projections = [name for name in inside if "embed_tokens" not in name]
    assert projections and all(inside[name][0] == 1 for name in projections), inside
    torch.testing.assert_close(generated, expected)
    # Afterwards: contiguous again, same values, and the model saves and reloads.
    assert all(p.is_contiguous() for p in model.parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    model.save_pretrained(tmp_path)
    YuyanForCausalLM.from_pretrained(tmp_path)


class Tokenizer:
    """The least a tokenizer does for `generate_texts`: ids in, padding, text out."""

    pad_token_id, eos_token_id, padding_side = 0, 1, "left"

    def __call__(self, text, **kwargs):
        return {"input_ids": [2 + ord(ch) % 90 for ch in text]}

    def pad(self, batch, padding=True, return_tensors="pt"):
        width = max(len(ids) for ids in batch["input_ids"])
        ids = [[0] * (width - len(row)) + row for row in batch["input_ids"]]
        mask = [[0] * (width - len(row)) + [1] * len(row) for row in batch["input_ids"]]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(65 + i % 26) for i in ids)


def test_generate_texts_uses_the_layout_for_long_generations_only(monkeypatch):
    import yuyan.generate as generate

    model = generation_model("hybrid")
    entered = []
    real = generate.decode_layout
    monkeypatch.setattr(generate, "decode_layout", lambda m: (entered.append(m), real(m))[1])
    for new_tokens in (DECODE_LAYOUT_MIN_NEW_TOKENS - 1, DECODE_LAYOUT_MIN_NEW_TOKENS):
        config = build_generation_config(model.generation_config, strategy="greedy", max_new_tokens=new_tokens)
        generate_texts(model, Tokenizer(), ["abc"], config)
    assert entered == [model]
    assert all(p.is_contiguous() for p in model.parameters())


def test_decode_layout_leaves_a_training_model_alone():
    model = generation_model("lstm").train()
    with decode_layout(model):
        assert all(p.is_contiguous() for p in model.parameters())


def test_weights_are_restored_when_generate_fails():
    model = generation_model("attention")
    with pytest.raises(ValueError, match="outside this model's vocabulary"), decode_layout(model):
        model.generate(torch.tensor([[2, 3, 10_000]]), max_new_tokens=4)
    assert all(p.is_contiguous() for p in model.parameters())


def test_a_layout_made_under_inference_mode_leaves_a_trainable_model():
    """`yuyan generate` decodes under `torch.inference_mode()`; the restored weights must still be ordinary tensors
    that autograd can use."""
    model = generation_model("hybrid")
    prompt = random_ids(1, 5)
    with torch.inference_mode(), decode_layout(model):
        model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert not any(p.is_inference() for p in model.parameters())
    model.train()
    model(input_ids=prompt, labels=prompt).loss.backward()
    assert model.lm_head.weight.grad is not None

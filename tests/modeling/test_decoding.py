"""The decode fast path: `generate` runs with the projection weights laid out transposed, and undoes it."""

from __future__ import annotations

import pytest
import torch

from model_helpers import STACKS, generation_model, random_ids
from yuyan import YuyanForCausalLM

ALL_STACKS = sorted(STACKS)


def weight_strides(model) -> dict[str, tuple[int, ...]]:
    return {name: p.stride() for name, p in model.named_parameters() if p.dim() == 2}


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_generate_decodes_with_transposed_weights_and_restores_them(stack, tmp_path):
    model = generation_model(stack)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    seen = []
    hook = model.register_forward_hook(lambda module, args, output: seen.append(weight_strides(module)))
    prompt = random_ids(2, 5)
    with torch.no_grad():
        generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False)
    hook.remove()

    # Inside generate: the head and every linear / LSTM matrix are column-major (same shape).
    inside = seen[-1]
    projections = [name for name in inside if "embed_tokens" not in name]
    assert projections and all(inside[name][0] == 1 for name in projections), inside
    # Afterwards: contiguous again, same values, and the model saves and reloads to the same generations.
    assert all(p.is_contiguous() for p in model.parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    model.save_pretrained(tmp_path)
    reloaded = YuyanForCausalLM.from_pretrained(tmp_path).eval()
    reloaded.generation_config.eos_token_id = None
    again = reloaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False)
    torch.testing.assert_close(again, generated)


def test_short_generations_skip_the_layout():
    """Two weight copies cost more than a few faster steps win back: short calls run in the usual layout."""
    model = generation_model("lstm")
    seen = []
    hook = model.register_forward_hook(lambda module, args, output: seen.append(module.lm_head.weight.is_contiguous()))
    prompt = random_ids(1, 4)
    model.generate(prompt, max_new_tokens=model.DECODE_LAYOUT_MIN_NEW_TOKENS - 1, do_sample=False)
    assert seen and all(seen)
    seen.clear()
    model.generation_config.max_new_tokens = model.DECODE_LAYOUT_MIN_NEW_TOKENS
    model.generate(prompt, do_sample=False)
    assert seen and not any(seen)
    hook.remove()


def test_decode_layout_gives_the_same_logits():
    model = generation_model("hybrid")
    ids = random_ids(3, 6)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with model.decode_layout():
            assert not model.lm_head.weight.is_contiguous()
            inside = model(input_ids=ids).logits
    torch.testing.assert_close(inside, expected, rtol=1e-5, atol=1e-5)


def test_decode_layout_leaves_a_training_model_alone():
    model = generation_model("lstm").train()
    with model.decode_layout():
        assert all(p.is_contiguous() for p in model.parameters())


def test_weights_are_restored_when_generate_fails():
    model = generation_model("attention")
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        model.generate(torch.tensor([[2, 3, 10_000]]), max_new_tokens=model.DECODE_LAYOUT_MIN_NEW_TOKENS)
    assert all(p.is_contiguous() for p in model.parameters())


def test_generate_under_inference_mode_leaves_a_trainable_model():
    """`yuyan generate` and evaluation call `generate` under `torch.inference_mode()`; the restored weights must
    still be ordinary tensors that autograd can use."""
    model = generation_model("hybrid")
    prompt = random_ids(1, 5)
    with torch.inference_mode():
        model.generate(prompt, max_new_tokens=model.DECODE_LAYOUT_MIN_NEW_TOKENS, do_sample=False)
    assert not any(p.is_inference() for p in model.parameters())
    model.train()
    model(input_ids=prompt, labels=prompt).loss.backward()
    assert model.lm_head.weight.grad is not None

"""`model.generate` for every stack: greedy, sampling, beam search, padding, streaming, constant-memory LSTM state."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, GenerationConfig, TextIteratorStreamer

from model_helpers import PAD, STACKS, generation_model, manual_greedy, random_ids, tiny_config
from yuyan import YuyanForCausalLM

ALL_STACKS = sorted(STACKS)


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_greedy_generate_equals_a_manual_argmax_loop(stack):
    model = generation_model(stack)
    prompt = random_ids(2, 6)
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False)
    assert generated.shape == (2, 18)
    torch.testing.assert_close(generated, manual_greedy(model, prompt, 12))


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_generate_with_an_explicit_dynamic_cache(stack):
    model = generation_model(stack)
    prompt = random_ids(1, 5)
    cache = DynamicCache(config=model.config)
    generated = model.generate(prompt, cache=cache, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(generated, manual_greedy(model, prompt, 6))


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_seeded_sampling_is_reproducible(stack):
    model = generation_model(stack)
    prompt = random_ids(2, 4)
    settings = dict(max_new_tokens=10, do_sample=True, temperature=1.3, top_k=20, top_p=0.9)
    torch.manual_seed(123)
    first = model.generate(prompt, **settings)
    torch.manual_seed(123)
    second = model.generate(prompt, **settings)
    torch.manual_seed(7)
    other = model.generate(prompt, **settings)
    torch.testing.assert_close(first, second)
    assert not torch.equal(first, other), "different seeds gave the same 20 sampled tokens"


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_beam_search_returns_sequences_with_their_true_scores(stack):
    model = generation_model(stack)
    prompt = random_ids(1, 5)
    out = model.generate(
        prompt, max_new_tokens=6, num_beams=4, num_return_sequences=3, do_sample=False, length_penalty=1.0,
        output_scores=True, return_dict_in_generate=True,
    )
    assert out.sequences.shape == (3, 11)
    assert len({tuple(s.tolist()) for s in out.sequences}) == 3, "beams returned duplicates"
    # Re-score every returned sequence from scratch: sum of log-probabilities of its new tokens, divided by the
    # number of new tokens (length_penalty=1). A wrongly reordered LSTM state or KV cache gives scores that do not match.
    with torch.no_grad():
        log_probs = model(out.sequences, use_cache=False).logits.log_softmax(-1)
    new = out.sequences[:, 5:]
    token_scores = log_probs[:, 4:-1].gather(-1, new.unsqueeze(-1)).squeeze(-1)
    expected = token_scores.sum(-1) / new.shape[1]
    torch.testing.assert_close(out.sequences_scores, expected, atol=1e-4, rtol=1e-4)
    assert torch.all(out.sequences_scores[:-1] >= out.sequences_scores[1:]), "beams are not sorted by score"


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_left_padded_batch_generation_equals_row_by_row(stack):
    model = generation_model(stack)
    prompts = [random_ids(1, 7, seed=11)[0], random_ids(1, 3, seed=12)[0], random_ids(1, 5, seed=13)[0]]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD)
    mask = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = prompt
        mask[i, width - len(prompt) :] = 1
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    for i, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=8, do_sample=False)
        torch.testing.assert_close(batch[i, width - len(prompt) :], alone[0], msg=f"row {i}")


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_streaming_yields_the_generated_tokens(stack):
    model = generation_model(stack)
    prompt = random_ids(1, 4)

    class CollectingStreamer:
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.reshape(-1).tolist())

        def end(self):
            self.ended = True

    streamer = CollectingStreamer()
    generated = model.generate(prompt, max_new_tokens=7, do_sample=False, streamer=streamer)
    assert streamer.ended
    assert streamer.chunks[0] == prompt[0].tolist()  # the prompt first, then one token per step
    assert [t for chunk in streamer.chunks[1:] for t in chunk] == generated[0, 4:].tolist()
    assert TextIteratorStreamer  # the text streamers wrap this same put/end protocol


def cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
        for tensor in getattr(layer, "recurrent_states", {}).values():
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


@pytest.mark.slow
def test_all_lstm_generation_memory_does_not_grow_with_length():
    model = generation_model("lstm")
    prompt = random_ids(1, 4)
    sizes = {}
    for steps in (4, 64):
        out = model.generate(prompt, max_new_tokens=steps, do_sample=False, return_dict_in_generate=True)
        sizes[steps] = cache_bytes(out.cache)
    assert sizes[4] == sizes[64] == 3 * 2 * 32 * 4  # three layers of (h, c), width 32, float32

    attention = generation_model("attention")
    grow = [cache_bytes(attention.generate(prompt, max_new_tokens=n, return_dict_in_generate=True).cache) for n in (4, 64)]
    assert grow[1] > grow[0], "the size measure must see a growing KV cache"


def test_generation_config_defaults_come_from_the_model_config():
    model = YuyanForCausalLM(tiny_config("hybrid"))
    assert isinstance(model.generation_config, GenerationConfig)
    assert model.generation_config.eos_token_id == model.config.eos_token_id
    assert model.generation_config.pad_token_id == model.config.pad_token_id

"""The cache contract on every layer layout: cached forwards (token by token, in chunks, static) give the uncached
logits, the cache counts the tokens it has seen, and the LSTM state rolls back for assisted and prompt-lookup
decoding, whose tokens equal plain greedy's."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, StaticCache

from model_helpers import generation_model, manual_greedy, random_ids
from yuyan.internals import all_recurrent_cache_has_a_length

# Where the first layer is an LSTM, the cache's first layer holds no keys: positions and lengths must still come out
# right. Both hybrid orders are covered for that reason.
LAYOUTS = {
    "attention": ["full_attention"] * 3,
    "lstm": ["lstm"] * 3,
    "attention_first": ["full_attention", "lstm", "lstm"],
    "lstm_first": ["lstm", "full_attention", "lstm"],
}


def layout_model(layout: str, seed: int = 0):
    torch.manual_seed(seed)
    model = generation_model("attention", layer_types=LAYOUTS[layout], num_hidden_layers=len(LAYOUTS[layout]))
    return model


def feed(model, cache, ids: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    """Read `ids` through `cache` in the pieces that `cuts` marks, without position ids (as a hand-written decoding
    loop calls the model), and return the logits of every position."""
    logits = []
    with torch.no_grad():
        for start, end in zip([0, *cuts], [*cuts, ids.shape[1]]):
            logits.append(model(ids[:, start:end], cache=cache, use_cache=True).logits)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("pieces", ["token_by_token", "chunks"])
def test_cached_forwards_give_the_uncached_logits(layout, pieces):
    model = layout_model(layout)
    ids = random_ids(2, 12)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
    cuts = list(range(1, 12)) if pieces == "token_by_token" else [5, 6, 9]
    cache = DynamicCache(config=model.config)
    torch.testing.assert_close(feed(model, cache, ids, cuts), full, atol=1e-4, rtol=1e-4)
    if layout != "lstm":
        assert int(cache.get_seq_length()) == 12


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_static_cache_gives_the_uncached_logits(layout):
    model = layout_model(layout)
    ids = random_ids(2, 9)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
    cache = StaticCache(config=model.config, max_cache_len=16)
    torch.testing.assert_close(feed(model, cache, ids, [5, 6, 7, 8]), full, atol=1e-4, rtol=1e-4)
    if layout != "lstm":
        assert int(cache.get_seq_length()) == 9


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_greedy_generate_equals_greedy_without_a_cache(layout):
    model = layout_model(layout)
    prompt = random_ids(1, 6)
    generated = model.generate(prompt, max_new_tokens=12, do_sample=False)
    torch.testing.assert_close(generated, manual_greedy(model, prompt, 12))


def test_every_lstm_layer_counts_its_tokens():
    model = layout_model("lstm_first")
    cache = DynamicCache(config=model.config)
    feed(model, cache, random_ids(1, 7), [4])
    assert [int(cache.layers[i].get_seq_length()) for i in (0, 2)] == [7, 7]


# -- rolling back the LSTM state ------------------------------------------------------------------------------------


def lstm_layer(cache):
    return next(layer for layer in cache.layers if getattr(layer, "holds_lstm_state", False))


@pytest.mark.parametrize("keep", [None, 3])
def test_crop_puts_back_the_state_from_before_the_removed_tokens(keep):
    model = layout_model("lstm_first")
    ids = random_ids(1, 10)
    reference = DynamicCache(config=model.config)
    feed(model, reference, ids[:, :7], [])
    cache = DynamicCache(config=model.config)
    cache.activate_past_recording()
    lstm_layer(cache).activate_past_recording(recurrent_states_to_keep=keep)
    cache.layers[2].activate_past_recording(recurrent_states_to_keep=keep)
    feed(model, cache, ids[:, :5], [])
    feed(model, cache, ids[:, 5:], [])  # two forwards before one crop: both are recorded
    cache.crop(-3)
    for mine, theirs in zip(cache.layers, reference.layers):
        if getattr(mine, "holds_lstm_state", False):
            torch.testing.assert_close(mine.read(), theirs.read(), atol=1e-6, rtol=1e-6)
    assert int(cache.get_seq_length()) == 7
    # And the cache goes on from there as if the three tokens had never been read.
    torch.testing.assert_close(feed(model, cache, ids[:, 7:], []), feed(model, reference, ids[:, 7:], []),
                               atol=1e-5, rtol=1e-5)


def test_crop_without_recording_or_beyond_the_record_is_refused():
    model = layout_model("lstm")
    ids = random_ids(1, 6)
    cache = DynamicCache(config=model.config)
    feed(model, cache, ids, [])
    with pytest.raises(RuntimeError, match="activate_past_recording"):
        cache.crop(-1)
    cache.crop(0)  # nothing to forget: allowed
    for layer in cache.layers:
        layer.activate_past_recording(recurrent_states_to_keep=2)
    feed(model, cache, ids, [])
    with pytest.raises(ValueError, match="only the last 2"):
        cache.crop(-3)
    with pytest.raises(ValueError, match="negative"):
        lstm_layer(cache).crop(2)


def test_a_recorded_state_follows_padding():
    """A padded position leaves the state as it was, in the recorded states as in the others."""
    model = layout_model("lstm")
    row = random_ids(1, 6)
    alone = DynamicCache(config=model.config)
    feed(model, alone, row[:, :4], [])
    ids = torch.cat([torch.cat([torch.zeros(1, 2, dtype=torch.long), row], dim=1), random_ids(1, 8, seed=3)])
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    cache = DynamicCache(config=model.config)
    cache.activate_past_recording()
    with torch.no_grad():
        model(ids, attention_mask=mask, cache=cache, use_cache=True)
    cache.crop(-2)
    torch.testing.assert_close(lstm_layer(cache).read()[0], lstm_layer(alone).read()[0], atol=1e-6, rtol=1e-6)


class CountCalls:
    """Counts the model's forward calls and the tokens each LSTM rollback removed."""

    def __init__(self, model, monkeypatch):
        self.forwards, self.rolled_back = 0, []
        model.register_forward_pre_hook(lambda *_: setattr(self, "forwards", self.forwards + 1))
        layer_class = type(lstm_layer(DynamicCache(config=model.config))) if model.config.has_lstm else None
        if layer_class is not None:
            crop = layer_class.crop

            def counting_crop(layer, tokens_to_remove):
                self.rolled_back.append(-tokens_to_remove)
                return crop(layer, tokens_to_remove)

            monkeypatch.setattr(layer_class, "crop", counting_crop)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_prompt_lookup_decoding_gives_greedys_tokens(layout, monkeypatch):
    model = layout_model(layout)
    # A prompt that repeats itself, so that looked-up drafts are sometimes right and sometimes wrong.
    piece = random_ids(1, 5)
    prompt = torch.cat([piece, piece, piece[:, :3]], dim=1)
    greedy = model.generate(prompt, max_new_tokens=24, do_sample=False)
    calls = CountCalls(model, monkeypatch)
    looked_up = model.generate(prompt, max_new_tokens=24, do_sample=False, prompt_lookup_num_tokens=3)
    torch.testing.assert_close(looked_up, greedy)
    assert calls.forwards < 24, "no drafted token was ever accepted: the test did not exercise acceptance"
    if model.config.has_lstm:
        assert any(n > 0 for n in calls.rolled_back), "no draft was ever rejected: nothing was rolled back"


def assisted_or_refused(model, assistant, prompt, expected):
    """Assisted decoding gives `expected`; where the installed transformers cannot ask an all-LSTM assistant's cache
    for its length (5.24), it refuses with a ValueError instead."""
    settings = dict(max_new_tokens=expected.shape[1] - prompt.shape[1], do_sample=False, assistant_model=assistant,
                    num_assistant_tokens=3)
    if not assistant.config.has_attention and not all_recurrent_cache_has_a_length():
        with pytest.raises(ValueError, match="get_seq_length"):
            model.generate(prompt, **settings)
        return
    torch.testing.assert_close(model.generate(prompt, **settings), expected)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("assistant_layout", ["attention", "lstm"])
def test_assisted_decoding_gives_greedys_tokens(layout, assistant_layout):
    model = layout_model(layout)
    prompt = random_ids(1, 6)
    greedy = model.generate(prompt, max_new_tokens=16, do_sample=False)
    assisted_or_refused(model, layout_model(assistant_layout, seed=1), prompt, greedy)
    # A model assisting itself has every draft accepted: the other end of the rollback.
    assisted_or_refused(model, layout_model(layout), prompt, greedy)

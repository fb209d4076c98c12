"""The model core: shapes, loss, padding, cache, gradient checkpointing, attention kernels, heads, config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from model_helpers import EOS, PAD, STACKS, VOCAB, random_ids, tiny_config
from yuyan import (
    YuyanConfig,
    YuyanForCausalLM,
    YuyanForQuestionAnswering,
    YuyanForSequenceClassification,
    YuyanForTokenClassification,
    YuyanModel,
)
from yuyan.modeling import modeling_yuyan

ALL_STACKS = sorted(STACKS)


def build(stack: str, model_class=YuyanForCausalLM, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return model_class(tiny_config(stack, **overrides)).eval()


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_output_shapes_hidden_states_and_attentions(stack):
    model = build(stack)
    model.set_attn_implementation("eager")  # sdpa returns no attention weights, as in transformers
    ids = random_ids(2, 7)
    out = model(ids, output_hidden_states=True, output_attentions=True)
    assert out.logits.shape == (2, 7, VOCAB)
    # Embeddings plus one entry per layer.
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (2, 7, 32) for h in out.hidden_states)
    n_attention = sum(t == "full_attention" for t in model.config.layer_types)
    assert len(out.attentions or ()) == n_attention

    base = build(stack, YuyanModel)
    assert base(ids).last_hidden_state.shape == (2, 7, 32)


@pytest.mark.parametrize("stack", ["attention", "hybrid"])
def test_attention_weights_under_eager_are_causal_distributions(stack):
    model = build(stack)
    model.set_attn_implementation("eager")
    out = model(random_ids(1, 6), output_attentions=True)
    weights = out.attentions[0]
    assert weights.shape == (1, 4, 6, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 6))
    assert torch.all(weights.triu(diagonal=1) == 0), "a position attended to the future"


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_loss_is_the_shifted_cross_entropy(stack):
    model = build(stack)
    ids = random_ids(3, 9)
    labels = ids.clone()
    labels[0, :4] = -100  # ignored positions must not count
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, VOCAB).float()
    targets = labels[:, 1:].reshape(-1)
    expected = F.cross_entropy(logits, targets, ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_logits_to_keep_returns_the_last_positions(stack):
    model = build(stack)
    ids = random_ids(2, 8)
    full = model(ids).logits
    last = model(ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, VOCAB)
    torch.testing.assert_close(last, full[:, -1:])


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_padding_is_never_read_left_or_right(stack):
    model = build(stack)
    rows = [random_ids(1, 9, seed=1)[0], random_ids(1, 5, seed=2)[0], random_ids(1, 7, seed=3)[0]]
    alone = [model(row[None]).logits[0] for row in rows]
    width = max(len(r) for r in rows)
    for side in ("left", "right"):
        ids = torch.full((len(rows), width), PAD)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[i, span] = row
            mask[i, span] = 1
        logits = model(ids, attention_mask=mask).logits
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            torch.testing.assert_close(logits[i, span], alone[i], atol=1e-4, rtol=1e-4, msg=f"{side} padding, row {i}")


@pytest.mark.parametrize("stack", ["lstm", "hybrid"])
def test_lstm_state_after_left_padded_prefill_is_each_rows_own(stack):
    """The (h, c) in the cache after a padded prompt equals the state the row reaches alone."""
    model = build(stack)
    long, short = random_ids(1, 8, seed=4), random_ids(1, 3, seed=5)
    ids = torch.cat([long, torch.cat([torch.full((1, 5), PAD), short], dim=1)])
    mask = torch.cat([torch.ones(1, 8), torch.cat([torch.zeros(1, 5), torch.ones(1, 3)], dim=1)]).long()
    batch_cache = model(ids, attention_mask=mask, use_cache=True).cache
    for row, prompt in enumerate((long, short)):
        own_cache = model(prompt, use_cache=True).cache
        for layer_idx, layer_type in enumerate(model.config.layer_types):
            if layer_type == "lstm":
                torch.testing.assert_close(
                    batch_cache.layers[layer_idx].recurrent_states[0][row],
                    own_cache.layers[layer_idx].recurrent_states[0][0],
                    atol=1e-5, rtol=1e-5,
                )


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_gradient_checkpointing_gives_the_same_gradients(stack):
    model = build(stack).train()
    ids = random_ids(2, 10)

    def gradients():
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("stack", ["attention", "hybrid"])
def test_eager_and_sdpa_agree(stack):
    model = build(stack)
    ids = random_ids(2, 10)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    model.set_attn_implementation("sdpa")
    sdpa = model(ids, attention_mask=mask).logits
    model.set_attn_implementation("eager")
    eager = model(ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(eager[keep], sdpa[keep], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_resize_token_embeddings_keeps_the_tying(stack):
    model = build(stack)
    model.resize_token_embeddings(VOCAB + 11)
    assert model.config.vocab_size == VOCAB + 11
    assert model.lm_head.weight.shape == (VOCAB + 11, 32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model(torch.tensor([[VOCAB + 10]])).logits.shape == (1, 1, VOCAB + 11)


def test_untied_embeddings_stay_separate():
    model = build("lstm", tie_word_embeddings=False)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert model.num_parameters() == model.config.estimated_num_parameters()


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_dropout_is_active_only_in_training(stack):
    model = build(stack, hidden_dropout=0.3, attention_dropout=0.3)
    ids = random_ids(1, 8)
    torch.testing.assert_close(model(ids).logits, model(ids).logits)
    model.train()
    assert not torch.allclose(model(ids).logits, model(ids).logits)


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_sequence_classification_head(stack):
    model = build(stack, YuyanForSequenceClassification, num_labels=3)
    ids = random_ids(2, 6)
    ids[1, 4:] = PAD  # right padding: the row is classified from its last real token
    labels = torch.tensor([0, 2])
    out = model(ids, labels=labels)
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    alone = model(ids[1:, :4]).logits
    torch.testing.assert_close(out.logits[1:], alone, atol=1e-5, rtol=1e-5)


def padded_rows(rows: list[torch.Tensor], side: str, width: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows as one batch padded on `side`, with its attention mask."""
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    return ids, mask


def assert_classifies_padded_rows(model, rows, expected, embeddings=False):
    """The classifier's logits and loss for the rows, padded on either side (and given as embeddings), are
    `expected`; returns the right-padded batch."""
    labels = torch.tensor([2, 0])
    for side in ("left", "right"):
        ids, mask = padded_rows(rows, side)
        out = model(ids, attention_mask=mask, labels=labels)
        torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5, msg=f"{side} padding")
        torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
        if embeddings:
            embeds = model.get_input_embeddings()(ids)
            torch.testing.assert_close(model(inputs_embeds=embeds, attention_mask=mask).logits, expected,
                                       atol=1e-5, rtol=1e-5, msg=f"{side} padding, embeddings")
    return ids, mask


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_sequence_classification_mean_pooling_reads_every_real_token_and_no_padding(stack):
    model = build(stack, YuyanForSequenceClassification, num_labels=3, classifier_pooling="mean")
    rows = [random_ids(1, 6, seed=1)[0], random_ids(1, 4, seed=2)[0]]
    states = [model.model(row[None]).last_hidden_state[0] for row in rows]
    expected = torch.stack([model.score(state.mean(0)) for state in states])
    ids, mask = assert_classifies_padded_rows(model, rows, expected)
    # Without a mask the padding is found from pad_token_id, as the last-token head finds it (right padding: a
    # causal model never reads what comes after a row's tokens).
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)
    last = build(stack, YuyanForSequenceClassification, num_labels=3)  # the same weights, the default pooling
    assert last.config.classifier_pooling == "last"
    torch.testing.assert_close(last(rows[0][None]).logits[0], model.score(states[0][-1]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"classifier_pooling='max' is unknown; allowed: \['last', 'mean'\]"):
        tiny_config(stack, classifier_pooling="max")


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_token_classification_head(stack):
    model = build(stack, YuyanForTokenClassification, num_labels=5)
    ids = random_ids(2, 6)
    labels = torch.randint(0, 5, (2, 6))
    labels[0, 0] = -100
    out = model(ids, labels=labels)
    assert out.logits.shape == (2, 6, 5)
    expected = F.cross_entropy(out.logits.reshape(-1, 5), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_question_answering_head(stack):
    model = build(stack, YuyanForQuestionAnswering)
    ids = random_ids(2, 9)
    start, end = torch.tensor([1, 3]), torch.tensor([2, 7])
    out = model(ids, start_positions=start, end_positions=end)
    assert out.start_logits.shape == (2, 9) and out.end_logits.shape == (2, 9)
    expected = (F.cross_entropy(out.start_logits, start) + F.cross_entropy(out.end_logits, end)) / 2
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_every_parameter_gets_a_gradient(stack):
    model = build(stack).train()
    ids = random_ids(2, 6)
    model(ids, labels=ids).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_lstm_init_has_forget_bias_one_and_orthogonal_recurrence():
    model = build("lstm")
    lstm = model.model.layers[0].recurrent.lstm
    hidden = lstm.hidden_size
    assert torch.all(lstm.bias_ih_l0[hidden : 2 * hidden] == 1) and torch.all(lstm.bias_ih_l0[:hidden] == 0)
    block = lstm.weight_hh_l0[:hidden]
    torch.testing.assert_close(block @ block.T, torch.eye(hidden), atol=1e-5, rtol=0)


def test_token_ids_outside_the_vocabulary_give_a_clear_error():
    model = build("hybrid")
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        model(torch.tensor([[3, VOCAB + 5]]))


def test_a_cache_without_recurrent_layers_is_refused_for_lstm_models():
    model = build("hybrid")
    with pytest.raises(ValueError, match=r"DynamicCache\(config=model.config\)"):
        model(random_ids(1, 4), cache=DynamicCache(), use_cache=True)


def test_a_cache_for_another_batch_size_is_refused():
    model = build("lstm")
    cache = model(random_ids(2, 4), use_cache=True).cache
    with pytest.raises(ValueError, match="batch size"):
        model(random_ids(3, 1), cache=cache, use_cache=True)


def test_bfloat16_forward_and_backward_run():
    model = build("hybrid").to(torch.bfloat16).train()
    ids = random_ids(2, 8)
    out = model(ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    assert torch.isfinite(out.loss.float())


@pytest.mark.parametrize("padded", [False, True])
def test_lstm_under_bf16_autocast_without_a_bfloat16_kernel_runs_in_float32(monkeypatch, padded):
    """On a CPU without AVX-512 BF16 / AMX, oneDNN's bf16 LSTM (where autocast sends `nn.LSTM`) raises; the layer
    then runs its LSTM outside autocast, in float32, and hands bf16 back. Forced here (the probe answers "no"), so
    that every machine checks that route: the float32 model's logits (to bf16 rounding) and finite gradients."""
    monkeypatch.setattr(modeling_yuyan, "_cpu_has_bfloat16_lstm", lambda: False)
    model = build("hybrid")
    ids = random_ids(2, 8)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :3] = 0  # left padding: the packed-sequence route (no mask: the plain one)
    attention_mask = mask if padded else None
    expected = model(ids, attention_mask=attention_mask).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, attention_mask=attention_mask, labels=ids)
    real = mask.bool()
    torch.testing.assert_close(out.logits.float()[real], expected[real], atol=0.1, rtol=0.05)
    out.loss.backward()
    lstm_weight = model.model.layers[0].recurrent.lstm.weight_hh_l0
    assert lstm_weight.grad is not None and torch.isfinite(lstm_weight.grad).all()
    assert lstm_weight.grad.abs().sum() > 0


def test_bf16_autocast_forward_and_backward_run():
    """Whatever this CPU has: with a bf16 LSTM kernel the layer uses it, without one the float32 route."""
    model = build("hybrid").train()
    ids = random_ids(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss.float())


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(hidden_size=100, num_attention_heads=3), "hidden_size=100 is not divisible by num_attention_heads=3"),
        (dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads=3 does not divide"),
        (dict(layer_types=["full_attention", "gru"], num_hidden_layers=2), r"unknown entries \['gru'\]"),
        (dict(layer_types=["lstm"], num_hidden_layers=2), "layer_types has 1 entries but num_hidden_layers=2"),
        (dict(vocab_size=0), "vocab_size=0"),
        (dict(hidden_size=-8), "hidden_size=-8"),
        (dict(num_hidden_layers=0, layer_types=[]), "num_hidden_layers=0"),
        (dict(intermediate_size=-1), "intermediate_size=-1"),
        (dict(head_dim=7), "even head_dim"),
        (dict(hidden_dropout=1.5), "hidden_dropout=1.5"),
        (dict(hidden_act="nope"), "hidden_act='nope' is unknown"),
        (dict(vocab_size=10, pad_token_id=10), r"pad_token_id=10 is not allowed"),
    ],
)
def test_inconsistent_config_values_raise_value_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        YuyanConfig(**overrides)


def test_config_defaults_and_round_trip(tmp_path):
    config = YuyanConfig()
    assert config.layer_types == ["full_attention"] * config.num_hidden_layers
    assert config.tie_word_embeddings is True and config.use_cache is True
    assert config.head_dim == config.hidden_size // config.num_attention_heads
    assert config.rope_parameters["rope_type"] == "default"
    hybrid = tiny_config("hybrid")
    hybrid.save_pretrained(tmp_path)
    loaded = YuyanConfig.from_pretrained(tmp_path)
    assert loaded.layer_types == hybrid.layer_types
    assert loaded.to_diff_dict() == hybrid.to_diff_dict()


@pytest.mark.parametrize("name", ["tiny-attention", "tiny-lstm", "tiny-hybrid", "small-hybrid", "seed-lstm"])
def test_presets_build_models_of_the_stated_size(name):
    config = YuyanConfig.from_preset(name)
    model = YuyanForCausalLM(config)
    assert model.num_parameters() == config.estimated_num_parameters()
    kind = name.split("-")[-1]
    if kind == "attention":
        assert set(config.layer_types) == {"full_attention"}
    elif kind == "lstm":
        assert set(config.layer_types) == {"lstm"}
    else:
        assert set(config.layer_types) == {"full_attention", "lstm"}
    expected = {"tiny": 1e6, "small": 1e7, "seed": 2.7e6}[name.split("-")[0]]
    assert 0.5 * expected < model.num_parameters() < 1.5 * expected


def test_seed_lstm_is_the_classic_small_lstm_language_model():
    config = YuyanConfig.from_preset("seed-lstm")
    assert (config.vocab_size, config.hidden_size, config.layer_types) == (10000, 128, ["lstm"])
    assert config.tie_word_embeddings is False and config.intermediate_size == 0
    model = YuyanForCausalLM(config)
    assert model.model.layers[0].mlp is None
    assert model.model.layers[0].recurrent.lstm.hidden_size == 128


def test_presets_accept_overrides_and_reject_unknown_names():
    config = YuyanConfig.from_preset("tiny-hybrid", num_hidden_layers=6)
    assert config.layer_types == ["lstm", "full_attention"] * 3
    with pytest.raises(ValueError, match="unknown preset 'huge-attention'"):
        YuyanConfig.from_preset("huge-attention")


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_packed_sequences_are_read_as_if_alone(stack):
    """A padding-free batch (several sequences in one row, positions restarting at each, no mask: what
    transformers' flattening collators and TRL's packing hand over, for training: without a cache) gives each
    sequence its own logits."""
    model = build(stack)
    first, second, third = random_ids(1, 5, seed=1), random_ids(1, 4, seed=2), random_ids(1, 3, seed=3)
    packed = torch.cat([first, second, third], dim=1)
    positions = torch.cat([torch.arange(5), torch.arange(4), torch.arange(3)])[None]
    with torch.no_grad():
        logits = model(packed, position_ids=positions, use_cache=False).logits[0]
        alone = [model(ids).logits[0] for ids in (first, second, third)]
    torch.testing.assert_close(logits, torch.cat(alone), atol=1e-5, rtol=1e-5)
    # Two rows, each packed its own way, with the position ids of both.
    rows = torch.cat([packed, torch.cat([third, first, second], dim=1)])
    row_positions = torch.cat([positions, torch.cat([torch.arange(3), torch.arange(5), torch.arange(4)])[None]])
    with torch.no_grad():
        both = model(rows, position_ids=row_positions, use_cache=False).logits
    torch.testing.assert_close(both[1], torch.cat([alone[2], alone[0], alone[1]]), atol=1e-5, rtol=1e-5)
    # Packed training gets gradients through every sequence.
    model.train()
    model(packed, position_ids=positions, labels=packed, use_cache=False).loss.backward()


@pytest.mark.parametrize("stack", ["lstm", "hybrid"])
def test_checkpointed_training_under_cpu_bfloat16_autocast(stack):
    """The CPU's bf16 LSTM probe may first run inside a checkpointed layer: its recomputation must match."""
    from yuyan.modeling import modeling_yuyan

    modeling_yuyan._cpu_has_bfloat16_lstm.cache_clear()
    model = build(stack).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = random_ids(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)

"""The Yuyan decoder with its state as plain tensors: what ONNX (and any runtime without Python objects) can hold.

`model(input_ids, cache=DynamicCache(...))` keeps the state in a transformers `Cache` object. `StatefulDecoder`
computes the same function with the state spelled out, one pair of tensors per layer:

- an attention layer: its keys and values, `(batch, kv_heads, past_length, head_dim)` each;
- an LSTM layer: its `h` and `c`, `(batch, hidden)` each.

A call reads `input_ids` (a prompt, or one new token), their `position_ids`, an `attention_mask` over the past and
new tokens, and the state after the past tokens; it returns the next-token logits of the last position and the
state after the new tokens. Keys and values grow by the new tokens; an LSTM state keeps its size.

Padding: the attention layers never attend to a masked position. The LSTM layers read every position they are
given, so a batch whose prompts differ in length is read one prompt at a time (`FastGenerator` does so) and the
states are put side by side; after that every new token is real and one call serves the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StateTensor:
    """One tensor of the decoder state: its input and output names, the layer it belongs to and its shape, with
    `None` for the batch and the past length (the axes that vary)."""

    layer: int
    kind: str  # "key", "value", "h" or "c"
    shape: tuple[int | None, ...]

    @property
    def input_name(self) -> str:
        return f"past.{self.layer}.{self.kind}"

    @property
    def output_name(self) -> str:
        return f"present.{self.layer}.{self.kind}"

    @property
    def grows(self) -> bool:
        """Whether it gains a position per token read (keys and values) or keeps its size (an LSTM state)."""
        return self.kind in ("key", "value")


def state_layout(config) -> list[StateTensor]:
    """The state tensors of a model with this configuration, in the order the decoder takes and returns them."""
    layout = []
    for index, layer_type in enumerate(config.layer_types):
        if layer_type == "lstm":
            layout += [StateTensor(index, kind, (None, config.hidden_size)) for kind in ("h", "c")]
        else:
            shape = (None, config.num_key_value_heads, None, config.head_dim)
            layout += [StateTensor(index, kind, shape) for kind in ("key", "value")]
    return layout


def empty_state(config, batch_size: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """The state before any token: no keys or values, zero LSTM states."""
    return [
        torch.zeros([batch_size if axis is None and i == 0 else 0 if axis is None else axis
                     for i, axis in enumerate(tensor.shape)], dtype=dtype)
        for tensor in state_layout(config)
    ]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class StatefulDecoder(nn.Module):
    """`YuyanForCausalLM`'s next-token computation with the state as explicit tensors (see the module docstring).

    It shares the model's modules and weights (nothing is copied) and is meant for inference: dropout is not
    applied. `forward(input_ids, position_ids, attention_mask, *state)` returns `(logits, *new_state)`, with
    `logits` of shape `(batch, vocab)` for the last position, and the state in `state_layout(config)`'s order.
    """

    def __init__(self, model):
        super().__init__()
        self.causal_lm = model
        self.config = model.config
        self.layout = state_layout(model.config)
        backbone = model.model
        self.rotary_emb = backbone.rotary_emb
        self.groups = self.config.num_attention_heads // self.config.num_key_value_heads

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                *state: torch.Tensor):
        backbone = self.causal_lm.model
        hidden = backbone.embed_tokens(input_ids)
        rotary = self.rotary_emb(hidden, position_ids) if self.rotary_emb is not None else None
        mask = self._attention_bias(attention_mask, input_ids.shape[1], hidden.dtype) if rotary is not None else None
        new_state = []
        state_index = 0
        for layer in backbone.layers:
            normed = layer.input_layernorm(hidden)
            first, second = state[state_index], state[state_index + 1]
            state_index += 2
            if layer.layer_type == "lstm":
                mixed, first, second = self._lstm(layer.recurrent, normed, first, second)
            else:
                mixed, first, second = self._attention(layer.self_attn, normed, rotary, mask, first, second)
            new_state += [first, second]
            hidden = hidden + mixed
            if layer.mlp is not None:
                hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        last = backbone.norm(hidden[:, -1])
        return (self.causal_lm.lm_head(last), *new_state)

    def _attention_bias(self, attention_mask: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
        """(batch, 1, length, past + length): 0 where a new position may look, the dtype's minimum elsewhere (a
        masked or later key). `attention_mask` (batch, past + length) marks the real tokens with 1."""
        total = attention_mask.shape[1]
        keys = torch.arange(total, device=attention_mask.device)
        queries = torch.arange(length, device=attention_mask.device) + (total - length)
        allowed = (keys[None, :] <= queries[:, None])[None, None] & attention_mask[:, None, None, :].bool()
        return torch.zeros((), dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)

    def _attention(self, attention, normed, rotary, mask, past_key, past_value):
        batch, length, _ = normed.shape
        config = self.config
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        # Queries and keys rotate together (one set of operators per layer rather than two: in a one-token step the
        # count of operators, not their arithmetic, sets the time).
        qkv = attention.qkv_proj(normed).view(batch, length, heads + 2 * kv_heads, config.head_dim).transpose(1, 2)
        query_key, value = qkv.split([heads + kv_heads, kv_heads], dim=1)
        cos, sin = (part.unsqueeze(1) for part in rotary)
        query, key = _rotate(query_key, cos, sin).split([heads, kv_heads], dim=1)
        key = torch.cat((past_key, key), dim=2)
        value = torch.cat((past_value, value), dim=2)
        # Written out rather than `F.scaled_dot_product_attention`: ONNX Runtime's CPU kernel of the ONNX Attention
        # operator it exports to measured slower than these few operators.
        if self.groups > 1:
            # Each key/value head serves `groups` query heads: fold those into the query's length axis, so that
            # one product per key/value head covers them (no copy of the keys and values).
            grouped = query.reshape(batch, kv_heads, self.groups * length, config.head_dim)
            scores = (grouped @ key.transpose(2, 3) * attention.scaling).view(batch, heads, length, -1) + mask
            weights = torch.softmax(scores, dim=-1).view(batch, kv_heads, self.groups * length, -1)
            output = (weights @ value).view(batch, heads, length, config.head_dim)
        else:
            scores = query @ key.transpose(2, 3) * attention.scaling + mask
            output = torch.softmax(scores, dim=-1) @ value
        output = output.transpose(1, 2).reshape(batch, length, heads * config.head_dim)
        return attention.o_proj(output), key, value

    @staticmethod
    def _lstm(recurrent, normed, h, c):
        output, (h, c) = recurrent.lstm(normed, (h.unsqueeze(0), c.unsqueeze(0)))
        return recurrent.out_proj(output), h[0], c[0]


def check_supported(model) -> None:
    """ValueError for a model the stateful decoder cannot compute: one with a custom rotary scaling that depends on
    the sequence length seen so far (its angles are not a fixed function of the position)."""
    rope_type = (model.config.rope_parameters or {}).get("rope_type", "default") if model.config.has_attention else None
    if rope_type == "dynamic":
        raise ValueError(
            "this model uses dynamic RoPE scaling, whose angles depend on the longest sequence seen so far; the fast "
            "decoder supports fixed rotary angles only ('default', 'linear', 'yarn', ...): use model.generate"
        )


__all__ = ["StateTensor", "StatefulDecoder", "check_supported", "empty_state", "state_layout"]

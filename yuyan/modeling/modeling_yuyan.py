"""Yuyan: a causal language model whose layers are, one by one, self-attention or an LSTM.

Every layer is pre-norm residual:  x + mixer(norm(x)), then  x + mlp(norm(x)),  where the mixer is causal
self-attention (RoPE, grouped-query, any of transformers' attention kernels) or an LSTM (`torch.nn.LSTM`, so the
fused oneDNN / cuDNN kernels run). Attention layers keep keys and values in the cache; LSTM layers keep their
(h, c) state in the same `transformers.Cache`, as a constant-size recurrent state.

This file imports only torch, transformers and its own configuration (and peft where installed, to register the
default LoRA targets): `save_pretrained` copies the two files beside the weights so that the folder loads with
`trust_remote_code=True` where `yuyan` is not installed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import (
    DYNAMIC_LAYER_TYPE_MAPPING,
    STATIC_LAYER_TYPE_MAPPING,
    Cache,
    DynamicCache,
    LinearAttentionCacheLayerMixin,
)
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import (
    GenericForQuestionAnswering,
    GenericForSequenceClassification,
    GenericForTokenClassification,
    GradientCheckpointingLayer,
)
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.utils import can_return_tuple, is_tracing
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_yuyan import YuyanConfig


# ----------------------------------------------------------------------------------------------------------------
# Cache layer for the LSTM state
# ----------------------------------------------------------------------------------------------------------------


class YuyanLSTMCacheLayer(LinearAttentionCacheLayerMixin):
    """Holds one LSTM layer's (h, c) as a single recurrent state of shape (batch, 2, hidden), and counts the tokens
    read into it.

    Its size does not depend on the sequence length, so an all-LSTM model generates in constant memory. It is a
    linear-attention cache layer in transformers' sense (the class `Cache` and the mask builders recognise those),
    but everything it does is its own: transformers' concrete recurrent layer has changed between minor releases.

    Rolling back, for assisted and prompt-lookup decoding: after `activate_past_recording()` the model hands over
    the state after each of the last positions it reads, and `crop(-n)` puts back the state from `n` tokens ago.
    """

    # Marks this layer for the model, which checks caches by this attribute rather than by class: a process may hold
    # two copies of this file (the installed package and a folder's remote code), each with its own class.
    holds_lstm_state = True
    is_croppable = True

    def __init__(self, **kwargs) -> None:
        # Keyword arguments meant for attention layers (max_cache_len, ...) do not apply to a recurrent state. The
        # attributes are set here rather than by the base class, whose constructor has changed between releases;
        # their names are the ones transformers' `Cache` reads (`has_previous_state`, `record_past`, ...).
        self.number_of_states = 1
        self.recurrent_states: dict[int, torch.Tensor | None] = {0: None}
        self.is_recurrent_states_initialized = {0: False}
        self.has_previous_state = {0: False}
        self.conv_states: dict[int, torch.Tensor | None] = {0: None}
        self.is_conv_states_initialized = {0: False}
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        # A tensor, changed in place, so that a compiled decode step neither specialises on nor recompiles for it.
        self.seen_tokens = torch.zeros((), dtype=torch.long)
        self.record_past = False
        self.recurrent_states_to_keep: int | None = None
        self.history: list[torch.Tensor] = []

    # -- the state ------------------------------------------------------------------------------------------------

    def read(self) -> torch.Tensor | None:
        """The state after the tokens read so far, or None before the first."""
        return self.recurrent_states[0] if self.has_previous_state[0] else None

    def positions_to_record(self, length: int) -> int:
        """How many of the next `length` positions must hand over their state: 0 unless recording."""
        if not self.record_past:
            return 0
        keep = self.recurrent_states_to_keep
        return length if not keep else min(length, keep)

    def store(self, state: torch.Tensor, new_tokens: int, trail: torch.Tensor | None = None) -> None:
        """Keep `state`, the state after `new_tokens` more tokens. While recording, `trail` (batch, m + 1, 2, hidden)
        holds the states after each of the last m positions, preceded by the state before them."""
        buffer = self.recurrent_states[0]
        if buffer is None or buffer.shape != state.shape or buffer.dtype != state.dtype:
            self.lazy_initialization(recurrent_states=state)
        # In place: a compiled decode step (static cache) reads the state from a fixed address.
        self.recurrent_states[0].copy_(state)
        self.seen_tokens.add_(new_tokens)
        self.has_previous_state[0] = True
        if self.record_past:
            if trail is None:
                raise ValueError("the cache is recording past states for rollback, but no trail of states was given")
            states = list(trail.unbind(1))
            recorded_whole_chunk = len(states) == new_tokens + 1
            self.history = self.history + states[1:] if recorded_whole_chunk and self.history else states

    def lazy_initialization(self, conv_states=None, recurrent_states=None, state_idx: int = 0, **kwargs) -> None:
        if recurrent_states is None:
            raise ValueError("an LSTM cache layer holds a recurrent state only")
        self.device, self.dtype = recurrent_states.device, recurrent_states.dtype
        self.recurrent_states[0] = torch.zeros_like(recurrent_states)
        self.is_recurrent_states_initialized[0] = True
        self.seen_tokens = self.seen_tokens.to(self.device)

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        """`Cache.update_recurrent_state`'s contract: `recurrent_states` is the state after one more token."""
        trail = None
        if self.record_past:
            previous = self.read()
            previous = torch.zeros_like(recurrent_states) if previous is None else previous
            trail = torch.stack((previous, recurrent_states), dim=1)
        self.store(recurrent_states, 1, trail)
        return self.recurrent_states[0]

    def update_conv_state(self, conv_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        raise NotImplementedError("an LSTM layer has no convolution state")

    def get_seq_length(self) -> torch.Tensor:
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def offload(self) -> None:
        if self.is_recurrent_states_initialized[0]:
            self.recurrent_states[0] = self.recurrent_states[0].to("cpu", non_blocking=True)

    def prefetch(self) -> None:
        if self.is_recurrent_states_initialized[0] and self.recurrent_states[0].device != self.device:
            self.recurrent_states[0] = self.recurrent_states[0].to(self.device, non_blocking=True)

    def reset(self) -> None:
        if self.is_recurrent_states_initialized[0]:
            self.recurrent_states[0].zero_()
        self.seen_tokens.zero_()
        self.has_previous_state[0] = False
        self.history = []

    # -- batch and beam bookkeeping ---------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        state = self.recurrent_states[0]
        return -1 if state is None else state.shape[0]

    def _select(self, pick: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self.is_recurrent_states_initialized[0]:
            self.recurrent_states[0] = pick(self.recurrent_states[0])
        self.history = [pick(state) for state in self.history]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select(lambda state: state.index_select(0, beam_idx.to(state.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._select(lambda state: state.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select(lambda state: state[indices, ...])

    # -- rolling back -----------------------------------------------------------------------------------------------

    @property
    def is_compileable(self) -> bool:
        # The state has a fixed shape and is updated in place; a recorded history is not.
        return not self.record_past

    def activate_past_recording(self, recurrent_states_to_keep: int | None = None, **kwargs) -> None:
        """From now on keep the states needed to roll back up to `recurrent_states_to_keep` tokens of one forward
        (every token of it when not given)."""
        self.record_past = True
        self.recurrent_states_to_keep = recurrent_states_to_keep
        self.history = []

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` tokens (transformers' convention: a count to remove is negative), putting
        back the state from before them; `crop(0)` only drops the recorded history."""
        if tokens_to_remove > 0:
            raise ValueError(
                f"crop({tokens_to_remove}): an LSTM state can only be rolled back by a number of tokens, given as a "
                "negative count (crop(-n) forgets the last n tokens)"
            )
        count = -tokens_to_remove
        if count == 0:
            self.history = []
            return
        if not self.record_past:
            raise RuntimeError(
                "an LSTM state cannot be rolled back unless the cache records its past: call "
                "`cache.activate_past_recording()` before the forward passes to be undone"
            )
        if count >= len(self.history):
            raise ValueError(
                f"cannot roll the LSTM state back by {count} tokens: only the last {max(len(self.history) - 1, 0)} "
                "were recorded (activate_past_recording(recurrent_states_to_keep=...) sets how many)"
            )
        self.recurrent_states[0].copy_(self.history[-1 - count])
        self.seen_tokens.sub_(count)
        self.history = []


# `DynamicCache(config=...)` and `StaticCache` build one cache layer per entry of `config.layer_types`.
DYNAMIC_LAYER_TYPE_MAPPING["lstm"] = YuyanLSTMCacheLayer
STATIC_LAYER_TYPE_MAPPING["lstm"] = YuyanLSTMCacheLayer


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


class YuyanRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 (bf16 loses too much in the mean of squares), scale in the input dtype.
        input_dtype = hidden_states.dtype
        if input_dtype == torch.float32 and self.weight.dtype == torch.float32:
            # One fused op instead of four: at decode time every small op costs microseconds of dispatch.
            return F.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self.variance_epsilon)
        normed = F.rms_norm(hidden_states.float(), (hidden_states.shape[-1],), eps=self.variance_epsilon)
        return self.weight * normed.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class YuyanRotaryEmbedding(nn.Module):
    """cos/sin tables of rotary position embeddings for the attention layers."""

    def __init__(self, config: YuyanConfig):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: YuyanConfig, **kwargs) -> tuple[torch.Tensor, float]:
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)
        return (angles.cos() * self.attention_scaling).to(x.dtype), (angles.sin() * self.attention_scaling).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim: int = 1):
    """Rotate queries and keys (batch, heads, seq, head_dim) by their positions' angles."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, dim) -> (batch, kv_heads * n_rep, seq, dim), each kv head shared by n_rep queries."""
    if n_rep == 1:
        return hidden_states
    batch, kv_heads, length, dim = hidden_states.shape
    expanded = hidden_states[:, :, None, :, :].expand(batch, kv_heads, n_rep, length, dim)
    return expanded.reshape(batch, kv_heads * n_rep, length, dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class YuyanAttention(nn.Module):
    """Causal self-attention with RoPE and grouped-query heads; q, k and v come from one fused projection."""

    def __init__(self, config: YuyanConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        # One matmul instead of three: at small widths the per-op overhead, not the FLOPs, dominates on a CPU.
        self.qkv_proj = nn.Linear(
            config.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim, bias=False
        )
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length = hidden_states.shape[:-1]
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_key_value_heads * self.head_dim
        query, key, value = self.qkv_proj(hidden_states).split([q_size, kv_size, kv_size], dim=-1)
        query = query.view(batch, length, -1, self.head_dim).transpose(1, 2)
        key = key.view(batch, length, -1, self.head_dim).transpose(1, 2)
        value = value.view(batch, length, -1, self.head_dim).transpose(1, 2)

        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = output.reshape(batch, length, -1).contiguous()
        return self.o_proj(output), weights


@functools.cache
def _cpu_has_bfloat16_lstm() -> bool:
    """Whether `nn.LSTM` runs under bfloat16 autocast on this CPU. Autocast sends it to oneDNN's bf16 LSTM, which
    needs AVX-512 BF16 or AMX; on an AVX2-only CPU (many AMD EPYCs, most laptops) the call raises instead of
    falling back. (An LSTM with bf16 weights, outside autocast, takes another route and runs everywhere.)"""
    lstm = nn.LSTM(8, 8, batch_first=True)
    try:
        # Without gradients: the first call may come inside a checkpointed layer, whose recomputation must save
        # exactly the tensors of the first pass (the probe runs once, then its answer is cached).
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 2, 8))
    except RuntimeError:
        return False
    return True


class YuyanLSTM(nn.Module):
    """An LSTM mixer: `torch.nn.LSTM` over the sequence, then a linear map back into the residual stream.

    The output projection maps the bounded LSTM output into the residual stream (as `o_proj` does for attention)
    and gives adapters such as LoRA a linear target inside every recurrent layer.

    Padding: a position whose `attention_mask` is 0 is never read into the state. Rows are re-packed so that
    their real tokens come first, run as a packed sequence, and put back; each row's final state is the state
    after its last real token, exactly what the row gives alone. Pad positions output zeros.
    """

    def __init__(self, config: YuyanConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.lstm = nn.LSTM(config.hidden_size, config.hidden_size, num_layers=1, batch_first=True)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        segments: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if segments is not None:
            return self.out_proj(self._run_segments(hidden_states, segments))
        layer_cache = cache.layers[self.layer_idx] if cache is not None else None
        previous = layer_cache.read() if layer_cache is not None else None
        if previous is not None and previous.shape[0] != hidden_states.shape[0]:
            raise ValueError(
                f"the cache holds an LSTM state for batch size {previous.shape[0]}, but the input has batch size "
                f"{hidden_states.shape[0]}; start a new cache for a new batch."
            )
        if previous is not None:
            previous = previous.to(hidden_states.dtype)
        mask = attention_mask.bool() if attention_mask is not None else None
        recorded = layer_cache.positions_to_record(hidden_states.shape[1]) if layer_cache is not None else 0
        trail = None
        if isinstance(hidden_states.shape[1], torch.SymInt):
            # Checked first so that no branch below compares the symbolic length with a number.
            output, state = self._scan_symbolic(hidden_states, mask, previous)
        elif recorded:
            output, state, trail = self._run_recording(hidden_states, mask, previous, recorded)
        elif hidden_states.shape[1] == 1 and mask is None:
            output, state = self._step(hidden_states, previous)
        elif mask is None:
            output, state = self._run(hidden_states, previous)
        elif is_tracing(hidden_states):
            output, state = self._scan_masked(hidden_states, mask, previous)
        else:
            output, state = self._run_masked(hidden_states, mask, previous)
        if layer_cache is not None:
            layer_cache.store(state, hidden_states.shape[1], trail)
        return self.out_proj(output)

    def _initial(self, previous: torch.Tensor | None, hidden_states: torch.Tensor) -> torch.Tensor:
        if previous is not None:
            return previous
        return hidden_states.new_zeros(hidden_states.shape[0], 2, self.hidden_size)

    def _cell(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One position through the layer's LSTM weights: a single fused cell call."""
        lstm = self.lstm
        return torch.lstm_cell(x, (h, c), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)

    def _step(self, hidden_states: torch.Tensor, previous: torch.Tensor | None):
        """One token: a single fused cell call, several times faster per step than `nn.LSTM` on one position."""
        h, c = self._initial(previous, hidden_states).unbind(1)
        h, c = self._cell(hidden_states[:, 0], h, c)
        return h.unsqueeze(1), torch.stack((h, c), dim=1)

    def _lstm(self, inputs, hx):
        """`self.lstm(inputs, hx)`; under bf16 autocast on a CPU without oneDNN's bf16 LSTM, run outside autocast
        in the weights' own dtype instead (float32 for a mixed-precision run), results handed back in bf16."""
        data = inputs.data if isinstance(inputs, nn.utils.rnn.PackedSequence) else inputs
        autocast = (data.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                    and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        if not autocast or _cpu_has_bfloat16_lstm():
            return self.lstm(inputs, hx)
        dtype = self.lstm.weight_ih_l0.dtype
        with torch.autocast("cpu", enabled=False):
            state = None if hx is None else tuple(part.to(dtype) for part in hx)
            output, (h, c) = self.lstm(inputs.to(dtype), state)
        return output.to(torch.bfloat16), (h.to(torch.bfloat16), c.to(torch.bfloat16))

    def _run(self, hidden_states: torch.Tensor, previous: torch.Tensor | None):
        hx = None
        if previous is not None:
            hx = (previous[:, 0].unsqueeze(0).contiguous(), previous[:, 1].unsqueeze(0).contiguous())
        output, (h, c) = self._lstm(hidden_states, hx)
        return output, torch.stack((h[0], c[0]), dim=1)

    def _run_masked(self, hidden_states: torch.Tensor, mask: torch.Tensor, previous: torch.Tensor | None):
        batch, length, width = hidden_states.shape
        lengths = mask.sum(dim=1)
        # Stable sort puts each row's real positions first, in their original order.
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        restore = torch.argsort(order, dim=1)
        packed_input = hidden_states.gather(1, order.unsqueeze(-1).expand(-1, -1, width))
        initial = self._initial(previous, hidden_states)
        hx = (initial[:, 0].unsqueeze(0).contiguous(), initial[:, 1].unsqueeze(0).contiguous())
        packed = nn.utils.rnn.pack_padded_sequence(
            packed_input, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        packed_output, (h, c) = self._lstm(packed, hx)
        output, _ = nn.utils.rnn.pad_packed_sequence(packed_output, batch_first=True, total_length=length)
        output = output.gather(1, restore.unsqueeze(-1).expand(-1, -1, width)) * mask.unsqueeze(-1).to(output.dtype)
        state = torch.stack((h[0], c[0]), dim=1)
        # A row with no real token in this chunk keeps the state it came in with.
        state = torch.where((lengths == 0).view(batch, 1, 1), initial, state)
        return output, state

    def _scan_masked(self, hidden_states: torch.Tensor, mask: torch.Tensor, previous: torch.Tensor | None):
        """`_run_masked` for tracers (`torch.export`, `torch.compile`, ONNX): packing sorts rows by their lengths,
        read back from the data, which a traced graph cannot do. Here one cell call per position, unrolled over
        the (static) length, and a pad position leaves the state as it was: the same result, traceable."""
        h, c = self._initial(previous, hidden_states).unbind(1)
        outputs = []
        for position in range(hidden_states.shape[1]):
            h, c, output = self._masked_cell(hidden_states[:, position], mask[:, position], h, c)
            outputs.append(output)
        return torch.stack(outputs, dim=1), torch.stack((h, c), dim=1)

    def _scan_symbolic(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, previous: torch.Tensor | None):
        """The sequence for a tracer that keeps the length symbolic (`torch.export` with a dynamic `Dim` on it):
        `nn.LSTM`'s traced form and `_scan_masked` both unroll one step per position, which fixes the length to
        the traced one. A scan operator keeps the loop in the graph, its trip count read from the input at run
        time. Each position as in `_scan_masked` (no mask: every position is real), so the result is
        `_run_masked`'s / `_run`'s."""
        batch, length, _ = hidden_states.shape
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=hidden_states.device)
        # The scan checks that the carry keeps its strides; `unbind` gives strided views.
        h, c = (part.contiguous() for part in self._initial(previous, hidden_states).unbind(1))

        def step(carry, position):
            h, c, output = self._masked_cell(*position, *carry)
            return (h, c), output

        (h, c), output = _scan_positions(step, (h, c), (hidden_states.movedim(1, 0), mask.movedim(1, 0)))
        return output.movedim(0, 1), torch.stack((h, c), dim=1)

    def _run_segments(self, hidden_states: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """Several sequences packed in each row (`segments`: the sequence index of each position, from 0 in each
        row): each starts from a zero state, as if it were alone. The sequences become the rows of one right-padded
        batch, run packed, and their outputs go back to where they came from."""
        batch, length, width = hidden_states.shape
        segments = segments.expand(batch, -1)  # position ids may be given once for the whole batch
        counts = segments[:, -1] + 1
        offsets = torch.cumsum(counts, 0) - counts
        ids = (segments + offsets[:, None]).reshape(-1)  # a global sequence index per position, in order
        lengths = torch.bincount(ids, minlength=int(counts.sum()))
        starts = torch.cumsum(lengths, 0) - lengths
        within = torch.arange(ids.shape[0], device=ids.device) - starts[ids]
        padded = hidden_states.new_zeros(lengths.shape[0], int(lengths.max()), width)
        padded = padded.index_put((ids, within), hidden_states.reshape(-1, width))
        real = torch.zeros(padded.shape[:2], dtype=torch.bool, device=padded.device)
        real[ids, within] = True
        output, _ = self._run_masked(padded, real, None)
        return output[ids, within].reshape(batch, length, width)

    def _run_recording(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, previous: torch.Tensor | None,
                       recorded: int):
        """The other paths' output and final state, and also the states after each of the last `recorded`
        positions, preceded by the state before them: what the cache needs to roll back (assisted decoding). The
        positions before those run as usual; the recorded ones one cell call each."""
        head = hidden_states.shape[1] - recorded
        outputs = []
        if head > 0:
            if mask is None:
                head_output, previous = self._run(hidden_states[:, :head], previous)
            else:
                head_output, previous = self._run_masked(hidden_states[:, :head], mask[:, :head], previous)
            outputs.append(head_output)
        h, c = self._initial(previous, hidden_states).unbind(1)
        trail = [torch.stack((h, c), dim=1)]
        for position in range(head, hidden_states.shape[1]):
            if mask is None:
                h, c = self._cell(hidden_states[:, position], h, c)
                output = h
            else:
                h, c, output = self._masked_cell(hidden_states[:, position], mask[:, position], h, c)
            outputs.append(output.unsqueeze(1))
            trail.append(torch.stack((h, c), dim=1))
        return torch.cat(outputs, dim=1), trail[-1], torch.stack(trail, dim=1)

    def _masked_cell(self, x: torch.Tensor, real: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """One position of a traced masked run: a pad position (`real` False) leaves (h, c) as it was and outputs
        zeros, as a packed sequence skips it."""
        new_h, new_c = self._cell(x, h, c)
        real = real.unsqueeze(-1)
        return torch.where(real, new_h, h), torch.where(real, new_c, c), new_h * real.to(new_h.dtype)


def _scan_positions(step: Callable, init, xs):
    """`step(carry, x) -> (carry, y)` over dim 0 of `xs`, traced as one loop whose trip count stays symbolic.

    torch has no public scan: this is `torch._higher_order_ops.scan.scan`, the one private torch API the traced
    LSTM relies on. (`torch.while_loop`, public, does not trace with gradients enabled, and collecting the
    outputs in it takes an in-place write that `ExportedProgram.run_decompositions` rejects.) Imported here,
    not at the top, so that the file still imports on a torch without it. Over dim 0 only: under torch 2.13's
    non-strict export, `scan(..., dim=1)` gives its stacked output the wrong length.
    """
    from torch._higher_order_ops.scan import scan

    return scan(step, init, xs, dim=0)


class YuyanMLP(nn.Module):
    """Gated MLP (SwiGLU with the default `silu`); gate and up projections fused into one matmul."""

    def __init__(self, config: YuyanConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


def recurrent_padding_mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """The LSTM layers' view of a 2-D padding mask: its last `length` columns (a mask covers the cached tokens too),
    or None where nothing is padding: no mask, a 4-D (custom) mask, a one-token step (a generated token is never
    padding), or an all-ones mask outside tracing (a traced graph must not depend on the data)."""
    if attention_mask is None or attention_mask.dim() != 2 or length == 1:
        return None
    if not is_tracing(attention_mask) and bool(attention_mask.all()):
        return None
    return attention_mask[:, -length:].contiguous()


def packed_sequence_indices(position_ids: torch.Tensor) -> torch.Tensor | None:
    """The sequence index of each position where a row packs several sequences (positions restart, or jump), from
    0 in each row; None where every row holds one sequence, or under tracing (a graph cannot branch on data)."""
    if is_tracing(position_ids) or position_ids.shape[-1] < 2:
        return None
    breaks = torch.diff(position_ids, dim=-1) != 1
    if not bool(breaks.any()):
        return None
    return torch.cat([torch.zeros_like(breaks[:, :1]), breaks], dim=-1).long().cumsum(-1)


class YuyanDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: YuyanConfig, layer_idx: int):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.input_layernorm = YuyanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if self.layer_type == "full_attention":
            self.self_attn = YuyanAttention(config, layer_idx)
        else:
            self.recurrent = YuyanLSTM(config, layer_idx)
        if config.intermediate_size > 0:
            self.post_attention_layernorm = YuyanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.mlp = YuyanMLP(config)
        else:
            self.mlp = None
        self.dropout = nn.Dropout(config.hidden_dropout)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        packed_segments: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        if self.layer_type == "full_attention":
            hidden_states, _ = self.self_attn(
                hidden_states, position_embeddings=position_embeddings, attention_mask=attention_mask, cache=cache,
                **kwargs,
            )
        else:
            hidden_states = self.recurrent(hidden_states, attention_mask=attention_mask, cache=cache,
                                           segments=packed_segments)
        # Dropout only where it does something: in eval mode it is still a module call per use, per token.
        dropout = self.dropout if self.training and self.dropout.p > 0 else None
        hidden_states = residual + (dropout(hidden_states) if dropout is not None else hidden_states)

        if self.mlp is not None:
            residual = hidden_states
            hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
            hidden_states = residual + (dropout(hidden_states) if dropout is not None else hidden_states)
        return hidden_states


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


class YuyanPreTrainedModel(PreTrainedModel):
    config: YuyanConfig
    config_class = YuyanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["YuyanDecoderLayer"]
    _skip_keys_device_placement = ["cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The forward is trace-clean (no data-dependent branch under tracing), so `generate` may compile the one-token
    # decode step with a static cache, and `torch.export` captures every stack.
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": YuyanDecoderLayer,
        "attentions": YuyanAttention,
    }

    def get_compiled_call(self, compile_config):
        """transformers' compiled decode step; with LSTM layers, compiled with Dynamo's RNN support switched on.

        Dynamo refuses to touch an `nn.LSTM` module unless `torch._dynamo.config.allow_rnn` is set, even where the
        code only reads its weights, as the one-token step does (`torch.lstm_cell`). The flag is set only around
        this model's compiled calls, where compilation (and any recompilation) happens, not process-wide.
        """
        compiled = super().get_compiled_call(compile_config)
        if not self.config.has_lstm:
            return compiled

        def call(*args, **kwargs):
            with torch._dynamo.config.patch(allow_rnn=True):
                return compiled(*args, **kwargs)

        return call

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.LSTM):
            std = self.config.initializer_range
            hidden = module.hidden_size
            init.normal_(module.weight_ih_l0, mean=0.0, std=std)
            # Orthogonal recurrence keeps the state's scale over long spans at initialisation. Each gate's square
            # block is its own orthogonal matrix; they are built whole and copied in once, so that a loaded
            # (already initialised) weight is left alone.
            if not getattr(module.weight_hh_l0, "_is_hf_initialized", False):
                blocks = [torch.nn.init.orthogonal_(torch.empty(hidden, hidden)) for _ in range(4)]
                init.copy_(module.weight_hh_l0, torch.cat(blocks, dim=0))
            # Forget-gate bias 1 (gate order i, f, g, o): remember by default (Jozefowicz et al., 2015).
            if not getattr(module.bias_ih_l0, "_is_hf_initialized", False):
                bias = torch.zeros(4 * hidden)
                bias[hidden : 2 * hidden] = 1.0
                init.copy_(module.bias_ih_l0, bias)
            init.zeros_(module.bias_hh_l0)
        else:
            super()._init_weights(module)


class YuyanModel(YuyanPreTrainedModel):
    """The Yuyan stack without a head: embeddings, layers, final norm."""

    def __init__(self, config: YuyanConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [YuyanDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = YuyanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.has_attention = config.has_attention
        self.has_lstm = config.has_lstm
        self.rotary_emb = YuyanRotaryEmbedding(config) if self.has_attention else None
        self.first_attention_layer = config.layer_types.index("full_attention") if self.has_attention else None
        self.gradient_checkpointing = False
        self.post_init()

    # Both former names of `cache` (transformers' attention models said `past_key_values`, its recurrent ones
    # `cache_params`) still work, with a deprecation warning; unhandled, they would vanish into **kwargs and the
    # model would silently run without its cache.
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @deprecate_kwarg("cache_params", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            self._check_vocabulary(input_ids)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)

        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if cache is not None and self.has_lstm:
            self._check_cache_layers(cache)

        hidden_states = inputs_embeds
        packed_positions = position_ids if attention_mask is None and cache is None else None
        # `generate` with a static cache hands over the masks already built, one per layer type (transformers'
        # `create_masks_for_generate`), so that a compiled decode step does not rebuild them.
        prepared = attention_mask if isinstance(attention_mask, dict) else None
        masks: dict[str, torch.Tensor | None] = {}
        position_embeddings = None
        if self.has_attention:
            if position_ids is None:
                # Counted on an attention layer: how a recurrent layer reports its length differs between releases.
                past_seen_tokens = cache.get_seq_length(self.first_attention_layer) if cache is not None else 0
                position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
                position_ids = position_ids.unsqueeze(0)
            if prepared is not None and "full_attention" in prepared:
                masks["full_attention"] = prepared["full_attention"]
            else:
                masks["full_attention"] = create_causal_mask(
                    config=self.config,
                    inputs_embeds=inputs_embeds,
                    attention_mask=attention_mask,
                    cache=cache,
                    position_ids=position_ids,
                )
            position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        if self.has_lstm:
            if prepared is not None:
                # A padding mask for the recurrent layers cannot be recovered from 4D attention masks.
                if "lstm" not in prepared:
                    raise ValueError("attention_mask given as a dict of per-layer-type masks lacks an 'lstm' entry")
                masks["lstm"] = prepared["lstm"]
            else:
                masks["lstm"] = recurrent_padding_mask(attention_mask, inputs_embeds.shape[1])

        if self.has_lstm and packed_positions is not None and packed_positions.dim() == 2:
            # Several sequences packed in a row, told apart by their positions restarting (what transformers'
            # padding-free collators hand over, with no mask): the attention mask keeps them apart, and the LSTM
            # layers must start each from a zero state too.
            kwargs["packed_segments"] = packed_sequence_indices(packed_positions)

        for layer_type, decoder_layer in zip(self.config.layer_types, self.layers):
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=masks[layer_type],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)

    def _check_vocabulary(self, input_ids: torch.Tensor) -> None:
        """A token id beyond the vocabulary (a tokenizer from another model) would fail deep inside the embedding;
        say what is wrong instead.

        Eager CPU calls only: reading the extremes back is a device synchronisation elsewhere, and a branch on
        data that `torch.export` / `torch.compile(fullgraph=True)` cannot trace (an exported or compiled graph
        has no Python left to raise from). It costs one `aminmax` reduction, a few microseconds per call.
        """
        if input_ids.device.type != "cpu" or input_ids.numel() == 0 or is_tracing(input_ids):
            return
        vocab_size = self.embed_tokens.num_embeddings  # follows resize_token_embeddings
        smallest, largest = (int(v) for v in torch.aminmax(input_ids))
        if largest >= vocab_size or smallest < 0:
            raise ValueError(
                f"input_ids holds token id {largest if largest >= vocab_size else smallest}, outside this "
                f"model's vocabulary [0, {vocab_size}): is the tokenizer the model's own?"
            )

    def _check_cache_layers(self, cache: Cache) -> None:
        for layer_idx, layer_type in enumerate(self.config.layer_types):
            if layer_type != "lstm":
                continue
            if layer_idx >= len(cache.layers) or not getattr(cache.layers[layer_idx], "holds_lstm_state", False):
                raise ValueError(
                    f"layer {layer_idx} is an LSTM layer, but the cache given has no recurrent state for it; "
                    "build the cache with `DynamicCache(config=model.config)`."
                )


class YuyanForCausalLM(YuyanPreTrainedModel, GenerationMixin):
    """Yuyan with a language-modelling head: P(w_t | w_<t) over the vocabulary."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # No `_tp_plan`: the backbone has no tensor-parallel plan (the fused qkv projection and the LSTM have no
    # sharding rule), and a plan for the head alone would both claim TP support and shard a tied head apart from
    # its (replicated) embedding.
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: YuyanConfig):
        super().__init__(config)
        self.model = YuyanModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @deprecate_kwarg("cache_params", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets for the language-modelling loss, aligned with `input_ids` (the shift happens inside); -100 is
            ignored.
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Compute logits only for the last `logits_to_keep` positions (0: all), or for the given indices.

        Example:

        ```python
        >>> from yuyan import YuyanConfig, YuyanForCausalLM
        >>> model = YuyanForCausalLM(YuyanConfig.from_preset("tiny-lstm"))
        >>> out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, do_sample=False)
        ```
        """
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def _accept_cache_params(forward: Callable) -> Callable:
    """A generic head's `forward` that also takes the deprecated `cache_params`. The generic heads pass `cache=`
    to the backbone explicitly, so a `cache_params` left in **kwargs would reach it beside `cache=None` and the
    given cache would be dropped; renaming it here, as the backbone does, hands it on."""
    return deprecate_kwarg("cache_params", "5.40.0", new_name="cache")(forward)


def _build_backbone(head: PreTrainedModel, config: YuyanConfig) -> None:
    """The generic heads build their backbone through AutoModel; build it directly so remote code needs no lookup."""
    YuyanPreTrainedModel.__init__(head, config)
    head.model = YuyanModel(config)


class YuyanForSequenceClassification(GenericForSequenceClassification, YuyanPreTrainedModel):
    """Classification from the hidden state of each row's last real token (`config.classifier_pooling="last"`, as
    transformers' decoder heads read a sequence), or from the average of its real tokens' states (`"mean"`)."""

    def __init__(self, config: YuyanConfig):
        _build_backbone(self, config)
        self.num_labels = config.num_labels
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # as the generic head's forward
    @_accept_cache_params
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        if self.config.classifier_pooling == "last":
            return GenericForSequenceClassification.forward(
                self, input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache, **kwargs
            )
        reference = input_ids if input_ids is not None else inputs_embeds
        # The real tokens: the attention mask's, else the ones that are not padding (as the "last" head finds them).
        if attention_mask is not None and attention_mask.dim() == 2:
            real = attention_mask.bool()
        elif input_ids is not None and self.config.pad_token_id is not None:
            real = input_ids != self.config.pad_token_id
        else:
            real = torch.ones(reference.shape[:2], dtype=torch.bool, device=reference.device)
        # With a cache the mask also covers the tokens read by earlier calls; the mean is over this call's.
        real = real[:, -reference.shape[1]:]
        outputs: BaseModelOutputWithPast = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs
        )
        hidden_states = outputs.last_hidden_state
        weights = real.to(hidden_states.dtype)
        pooled = (hidden_states * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp(min=1.0)
        pooled_logits = self.score(pooled)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=pooled_logits, labels=labels, pooled_logits=pooled_logits,
                                      config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled_logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class YuyanForTokenClassification(GenericForTokenClassification, YuyanPreTrainedModel):
    """A label per token (tagging)."""

    def __init__(self, config: YuyanConfig):
        _build_backbone(self, config)
        self.num_labels = config.num_labels
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(config.hidden_dropout if dropout is None else dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    forward = _accept_cache_params(GenericForTokenClassification.forward)


class YuyanForQuestionAnswering(GenericForQuestionAnswering, YuyanPreTrainedModel):
    """Extractive question answering: start and end logits per token."""

    def __init__(self, config: YuyanConfig):
        _build_backbone(self, config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    forward = _accept_cache_params(GenericForQuestionAnswering.forward)


# The linear layers LoRA adapts by default: attention's fused q/k/v and output projections, the LSTM's output
# projection (nn.LSTM itself is one fused kernel that LoRA cannot wrap) and the MLP's projections.
LORA_TARGET_MODULES = ("qkv_proj", "o_proj", "out_proj", "gate_up_proj", "down_proj")

# peft finds LoRA's default targets only by `model_type` in a dict it owns (nothing on the model or its config is
# read), so `LoraConfig()` without `target_modules` works only once Yuyan's entry is added. It is added here because
# a folder loaded with `trust_remote_code` runs this file and not the package. peft stays optional: transformers'
# check of a remote file's imports skips those in a `try`.
try:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as _PEFT_LORA_TARGETS
except Exception:  # not installed, or a peft that does not import with this transformers
    pass
else:
    _PEFT_LORA_TARGETS.setdefault(YuyanConfig.model_type, list(LORA_TARGET_MODULES))

__all__ = [
    "YuyanPreTrainedModel",
    "YuyanModel",
    "YuyanForCausalLM",
    "YuyanForSequenceClassification",
    "YuyanForTokenClassification",
    "YuyanForQuestionAnswering",
    "YuyanLSTMCacheLayer",
]

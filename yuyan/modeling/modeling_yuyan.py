"""Yuyan: a causal language model whose layers are, one by one, self-attention or an LSTM.

Every layer is pre-norm residual:  x + mixer(norm(x)), then  x + mlp(norm(x)),  where the mixer is causal
self-attention (RoPE, grouped-query, any of transformers' attention kernels) or an LSTM (`torch.nn.LSTM`, so the
fused oneDNN / cuDNN kernels run). Attention layers keep keys and values in the cache; LSTM layers keep their
(h, c) state in the same `transformers.Cache`, as a constant-size recurrent state.

This file imports only torch, transformers and its own configuration: `save_pretrained` copies the two files
beside the weights so that the folder loads with `trust_remote_code=True` where `yuyan` is not installed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import contextmanager

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
    LinearAttentionLayer,
)
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask
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


class YuyanLSTMCacheLayer(LinearAttentionLayer):
    """Holds one LSTM layer's (h, c) as a single recurrent state of shape (batch, 2, hidden).

    Its size does not depend on the sequence length, so an all-LSTM model generates in constant memory. It reuses
    transformers' linear-attention cache layer (beam reordering, offloading, reset) and adds the bookkeeping that
    layer leaves to conv states: a stored recurrent state *is* the previous state.
    """

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        if self.is_recurrent_states_initialized[state_idx] and (
            self.recurrent_states[state_idx].shape != recurrent_states.shape
            or self.recurrent_states[state_idx].dtype != recurrent_states.dtype
        ):
            # A new batch size (e.g. the cache reused for another prompt batch): start a fresh buffer.
            self.is_recurrent_states_initialized[state_idx] = False
        if self.device is None:
            self.device, self.dtype = recurrent_states.device, recurrent_states.dtype
        state = super().update_recurrent_state(recurrent_states, state_idx)
        self.has_previous_state[state_idx] = True
        return state

    @property
    def batch_size(self) -> int:
        state = self.recurrent_states[0]
        return -1 if state is None else state.shape[0]

    def batch_repeat_interleave(self, repeats: int) -> None:
        for i in range(self.number_of_states):
            if self.is_recurrent_states_initialized[i]:
                self.recurrent_states[i] = self.recurrent_states[i].repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for i in range(self.number_of_states):
            if self.is_recurrent_states_initialized[i]:
                self.recurrent_states[i] = self.recurrent_states[i][indices, ...]


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
        with torch.autocast("cpu", dtype=torch.bfloat16):
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
        **kwargs,
    ) -> torch.Tensor:
        previous = cache.get_recurrent_state(self.layer_idx) if cache is not None else None
        if previous is not None and previous.shape[0] != hidden_states.shape[0]:
            raise ValueError(
                f"the cache holds an LSTM state for batch size {previous.shape[0]}, but the input has batch size "
                f"{hidden_states.shape[0]}; start a new cache for a new batch."
            )
        if previous is not None:
            previous = previous.to(hidden_states.dtype)
        if isinstance(hidden_states.shape[1], torch.SymInt):
            # Checked first so that no branch below compares the symbolic length with a number.
            mask = attention_mask.bool() if attention_mask is not None else None
            output, state = self._scan_symbolic(hidden_states, mask, previous)
        elif hidden_states.shape[1] == 1 and attention_mask is None:
            output, state = self._step(hidden_states, previous)
        elif attention_mask is None:
            output, state = self._run(hidden_states, previous)
        elif is_tracing(hidden_states):
            output, state = self._scan_masked(hidden_states, attention_mask.bool(), previous)
        else:
            output, state = self._run_masked(hidden_states, attention_mask.bool(), previous)
        if cache is not None:
            cache.update_recurrent_state(state, self.layer_idx)
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
            hidden_states = self.recurrent(hidden_states, attention_mask=attention_mask, cache=cache)
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


class YuyanCheckpointMismatchError(ValueError, RuntimeError):
    """A checkpoint whose tensors do not fit the model. A `ValueError` (the message says what is wrong), and also
    the `RuntimeError` that transformers raises for mismatched shapes, so code written against transformers'
    contract (`except RuntimeError`) still catches it."""


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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with a clearer error for a checkpoint whose shapes do not fit.

        As transformers promises, weights the checkpoint lacks (a new layer, a new head, a checkpoint loaded in
        stages) are initialised and named in the load report that transformers logs, and in the `missing_keys` of
        `output_loading_info=True`. Weights whose shapes differ from the config stop the load, as in
        transformers, with a `YuyanCheckpointMismatchError` (a `ValueError` and a `RuntimeError`) saying what is
        wrong; `ignore_mismatched_sizes=True` re-initialises them instead.
        """
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            raise YuyanCheckpointMismatchError(
                f"the checkpoint at {pretrained_model_name_or_path} has tensors whose shapes do not fit this "
                "configuration (the load report above lists them, checkpoint vs model): is it a checkpoint of "
                "another size, or the wrong config? Pass ignore_mismatched_sizes=True to re-initialise them."
            ) from None

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; with the code copied for remote loading, every head is listed in
        `auto_map`, so a saved language model also loads as a classifier, tagger or QA model with
        `trust_remote_code=True`."""
        if getattr(type(self), "_auto_class", None) is not None:
            module = self.__class__.__module__.rsplit(".", 1)[-1]
            heads = {auto: f"{module}.{name}" for auto, name in AUTO_CLASS_NAMES.items()}
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **heads}
        return super().save_pretrained(save_directory, *args, **kwargs)

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

    @property
    def _is_stateful(self) -> bool:
        # An LSTM state cannot be rolled back to a prefix, which assisted generation needs.
        return self.config.has_lstm

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
        # `generate` with a static cache hands over the masks already built, one per layer type (transformers'
        # `create_masks_for_generate`), so that a compiled decode step does not rebuild them.
        prepared = attention_mask if isinstance(attention_mask, dict) else None
        masks: dict[str, torch.Tensor | None] = {}
        position_embeddings = None
        if self.has_attention:
            if position_ids is None:
                past_seen_tokens = cache.get_seq_length() if cache is not None else 0
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
                masks["lstm"] = create_recurrent_attention_mask(
                    config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache
                )

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
            if layer_idx >= len(cache.layers) or not isinstance(cache.layers[layer_idx], LinearAttentionCacheLayerMixin):
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


    # Below this many new tokens the two weight copies of `decode_layout` cost more than the faster steps win back
    # (measured at d 256, batch 1: 1.28x slower at 8 tokens, even at ~30, 0.78x the time at 128).
    DECODE_LAYOUT_MIN_NEW_TOKENS = 32

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate` (every strategy, streaming, beams), with the weights in `decode_layout`
        when the call asks for at least `DECODE_LAYOUT_MIN_NEW_TOKENS` new tokens."""
        config = kwargs.get("generation_config") or self.generation_config
        new_tokens = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
        if new_tokens is None or new_tokens < self.DECODE_LAYOUT_MIN_NEW_TOKENS:
            return super().generate(*args, **kwargs)
        with self.decode_layout():
            return super().generate(*args, **kwargs)

    @contextmanager
    def decode_layout(self):
        """Within this block, each projection weight is stored transposed in memory, for one-token decoding.

        A decode step multiplies one row per sequence by every weight. `F.linear(x, W)` computes `x @ W.T`, and
        the CPU BLAS streams a batch-1 product ~1.3-1.7x faster when `W.T` is the contiguous one (measured at
        d 256 with the weights out of cache). Only the strides change: shapes, values, parameter objects and
        tying stay, results are identical. The layout is undone on exit, so that nothing outside `generate`
        (saving, which needs contiguous tensors; optimisers; adapters) ever sees it; the two copies cost a few
        milliseconds per call. Off the CPU, or while training, it does nothing.
        """
        changed = []
        # The copies are made outside inference mode even when `generate` is called inside it: a parameter
        # holding an inference tensor could never be trained again.
        if not self.training and self.device.type == "cpu":
            with torch.inference_mode(False), torch.no_grad():
                for weight in self._projection_weights():
                    weight.data = weight.data.t().contiguous().t()
                    changed.append(weight)
        try:
            yield self
        finally:
            with torch.inference_mode(False), torch.no_grad():
                for weight in changed:
                    weight.data = weight.data.contiguous()

    def _projection_weights(self) -> list[nn.Parameter]:
        """The contiguous 2-D float weights that decoding multiplies by: linear layers (the head included) and the
        LSTM matrices, each once."""
        found: dict[int, nn.Parameter] = {}
        for module in self.modules():
            if isinstance(module, nn.Linear):
                names = ("weight",)
            elif isinstance(module, nn.LSTM):
                names = tuple(name for name in module._flat_weights_names if name.startswith("weight"))
            else:
                continue
            for name in names:
                weight = getattr(module, name)
                if (
                    type(weight) is nn.Parameter  # not a distributed or quantised tensor subclass
                    and weight.dim() == 2
                    and weight.dtype.is_floating_point
                    and weight.is_contiguous()
                    and min(weight.shape) > 1
                ):
                    found[id(weight)] = weight
        return list(found.values())


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
    transformers' decoder heads read a sequence), or from the average of its real tokens' states (`"mean"`). With
    `config.classifier_reading="once_eos"` the model reads `text <eos>`, with `"twice"` `text <eos> text` and pools
    the second reading only."""

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
        reread = self.config.classifier_reading != "once"
        if self.config.classifier_pooling == "last" and not reread:
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
        if reread:
            if cache is not None or position_ids is not None:
                raise ValueError(f"classifier_reading={self.config.classifier_reading!r} builds its own sequence and "
                                 "positions: call the model without cache or position_ids")
            input_ids, inputs_embeds, real, pooled_positions = self._reread(input_ids, inputs_embeds, real)
            attention_mask, use_cache = real.long(), False
        else:
            # With a cache the mask also covers the tokens read by earlier calls; the mean is over this call's.
            real = real[:, -reference.shape[1]:]
            pooled_positions = real
        outputs: BaseModelOutputWithPast = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs
        )
        hidden_states = outputs.last_hidden_state
        if self.config.classifier_pooling == "mean":
            weights = pooled_positions.to(hidden_states.dtype)
            pooled = (hidden_states * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp(min=1.0)
        else:  # the last pooled position of each row (the re-read rows are right-padded)
            last = (pooled_positions.cumsum(1) == pooled_positions.sum(1, keepdim=True)).int().argmax(1)
            pooled = hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]
        pooled_logits = self.score(pooled)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=pooled_logits, labels=labels, pooled_logits=pooled_logits,
                                      config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled_logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _reread(self, input_ids, inputs_embeds, real):
        """Each row laid out as `config.classifier_reading` says (`text <eos>`, or `text <eos> text`), right-padded,
        whatever the input's padding side. Returns the new input ids or embeddings, the mask of real tokens and that
        of the pooled ones (the last copy of the text, and the closing end-of-text token)."""
        eos = self.config.eos_token_id
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        copies, closed = self.config.classifier_layout
        lengths = real.sum(1, keepdim=True)
        # A copy of the text takes `lengths + 1` positions with the end-of-text token after it; the last one's token
        # is there only when the reading is closed.
        used = copies * (lengths + 1) - (0 if closed else 1)
        width = int(used.max().item()) if real.numel() else 1
        positions = torch.arange(width, device=real.device).unsqueeze(0)
        copy, offset = positions // (lengths + 1), positions % (lengths + 1)
        read = positions < used
        is_eos = read & (offset == lengths)
        pooled = read & (copy == copies - 1)
        # The row's real tokens in order, first: a stable sort puts the padding (True) after them.
        order = torch.sort((~real).to(torch.int8), dim=1, stable=True).indices
        source = order.gather(1, offset.clamp(0, max(real.shape[1] - 1, 0)))
        if input_ids is not None:
            laid_out = input_ids.gather(1, source).masked_fill(is_eos, eos)
            pad = self.config.pad_token_id if self.config.pad_token_id is not None else eos
            return laid_out.masked_fill(~read, pad), None, read, pooled
        laid_out = inputs_embeds.gather(1, source.unsqueeze(-1).expand(-1, -1, inputs_embeds.shape[-1]))
        eos_embedding = self.get_input_embeddings()(torch.tensor(eos, device=laid_out.device)).to(laid_out.dtype)
        laid_out = torch.where(is_eos.unsqueeze(-1), eos_embedding, laid_out)
        return None, laid_out * read.unsqueeze(-1).to(laid_out.dtype), read, pooled


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


# Auto class -> model class, for `auto_map` in saved configs (the package registers the same pairs).
AUTO_CLASS_NAMES = {
    "AutoModel": "YuyanModel",
    "AutoModelForCausalLM": "YuyanForCausalLM",
    "AutoModelForSequenceClassification": "YuyanForSequenceClassification",
    "AutoModelForTokenClassification": "YuyanForTokenClassification",
    "AutoModelForQuestionAnswering": "YuyanForQuestionAnswering",
}

__all__ = [
    "YuyanPreTrainedModel",
    "YuyanModel",
    "YuyanForCausalLM",
    "YuyanForSequenceClassification",
    "YuyanForTokenClassification",
    "YuyanForQuestionAnswering",
    "YuyanLSTMCacheLayer",
    "YuyanCheckpointMismatchError",
]

"""Yuyan model configuration.

This file imports only `transformers` (and its own dependencies): `save_pretrained` copies it beside the weights
so that a machine without `yuyan` installed can load the model with `trust_remote_code=True`.
"""

from __future__ import annotations

import copy

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters


LAYER_TYPES = ("full_attention", "lstm")
CLASSIFIER_POOLINGS = ("last", "mean")
# The Auto classes a saved folder's code serves, written to config.json's `auto_map`: with `trust_remote_code=True`
# a saved language model also loads as a classifier, a tagger or a question-answering model.
AUTO_MAP = {
    "AutoConfig": "configuration_yuyan.YuyanConfig",
    "AutoModel": "modeling_yuyan.YuyanModel",
    "AutoModelForCausalLM": "modeling_yuyan.YuyanForCausalLM",
    "AutoModelForSequenceClassification": "modeling_yuyan.YuyanForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_yuyan.YuyanForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_yuyan.YuyanForQuestionAnswering",
}

# Named architectures. Sizes count tied embeddings once; `yuyan info` prints the exact figures.
_ALTERNATING = "alternating"  # hybrid stacks: lstm, attention, lstm, attention, ...
_SIZES = {
    # ~1M parameters: fast enough for unit tests and the demo.
    "tiny": dict(
        vocab_size=8192, hidden_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=256, max_position_embeddings=1024,
    ),
    # ~10M parameters: the benchmark size (d=256).
    "small": dict(
        vocab_size=16384, hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=688, max_position_embeddings=2048,
    ),
    # ~100M parameters: a GPU-sized model.
    "base": dict(
        vocab_size=32768, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
        intermediate_size=2048, max_position_embeddings=4096,
    ),
}


def _stack(kind: str, num_layers: int) -> list[str]:
    if kind == "attention":
        return ["full_attention"] * num_layers
    if kind == "lstm":
        return ["lstm"] * num_layers
    # Recurrent layers first in each pair: the LSTM carries order, the attention above it looks back exactly.
    return ["lstm" if i % 2 == 0 else "full_attention" for i in range(num_layers)]


def _build_presets() -> dict[str, dict]:
    presets = {}
    for size, dims in _SIZES.items():
        for kind in ("attention", "lstm", "hybrid"):
            presets[f"{size}-{kind}"] = dict(dims, mixer_types=_stack(kind, dims["num_hidden_layers"]))
    # The classic recurrent language model (Zaremba et al. style, small): one LSTM layer of 128 units over
    # 128-dimensional embeddings, a 10k vocabulary and a separate (untied) softmax matrix. No MLP.
    presets["seed-lstm"] = dict(
        vocab_size=10000, hidden_size=128, num_hidden_layers=1, mixer_types=["lstm"], num_attention_heads=1,
        num_key_value_heads=1, intermediate_size=0, max_position_embeddings=4096, tie_word_embeddings=False,
    )
    return presets


PRESETS: dict[str, dict] = _build_presets()


@strict
class YuyanConfig(PreTrainedConfig):
    r"""
    Configuration of a Yuyan model: a stack of pre-norm residual layers whose mixer is chosen layer by layer,
    causal self-attention (`"full_attention"`) or an LSTM (`"lstm"`), each followed by a gated MLP.

    Args:
        vocab_size: size of the token vocabulary.
        hidden_size: width of the residual stream (and of every LSTM's hidden state).
        num_hidden_layers: number of layers.
        mixer_types: one entry per layer, `"full_attention"` or `"lstm"`; all attention when omitted. Also readable
            and settable as `layer_types` (the constructor takes either name), the attribute transformers' caches
            read to build one cache layer per layer.
        num_attention_heads: query heads of the attention layers.
        num_key_value_heads: key/value heads (grouped-query attention); defaults to `num_attention_heads`.
        head_dim: width of one head; defaults to `hidden_size // num_attention_heads`.
        intermediate_size: width of the gated MLP; 0 builds layers without an MLP.
        hidden_act: activation of the MLP gate.
        max_position_embeddings: longest sequence the attention layers are built for.
        rope_parameters: RoPE settings in transformers' convention, e.g. `{"rope_type": "default", "rope_theta": 10000.0}`.
        rms_norm_eps: epsilon of the RMS norms.
        attention_dropout: dropout on attention probabilities (training only).
        hidden_dropout: dropout on each mixer's and MLP's output before the residual add (training only).
        initializer_range: standard deviation of the normal initialisation of linear and embedding weights.
        tie_word_embeddings: share the input embedding with the output projection.
        classifier_pooling: how `YuyanForSequenceClassification` reads a sequence: `"last"`, the hidden state of
            its last real token (transformers' decoder heads), or `"mean"`, the average over its real tokens.

    Example:

    ```python
    >>> from yuyan import YuyanConfig, YuyanForCausalLM
    >>> config = YuyanConfig.from_preset("tiny-hybrid")
    >>> config.mixer_types
    ['lstm', 'full_attention', 'lstm', 'full_attention']
    >>> config.has_lstm, config.has_attention
    (True, True)
    >>> model = YuyanForCausalLM(config)
    ```
    """

    model_type = "yuyan"
    keys_to_ignore_at_inference = ["cache"]
    # The per-layer mixer is stored as `mixer_types`, not under transformers' reserved `layer_types`: a program that
    # reads config.json without Yuyan's code (AutoTokenizer, with yuyan not imported or not installed) builds a
    # generic config, and that validates `layer_types` against transformers' own list, which has no "lstm".
    # `layer_types` stays an alias, because DynamicCache / StaticCache read it to pick each layer's cache layer.
    attribute_map = {"layer_types": "mixer_types"}
    default_theta = 10000.0

    vocab_size: int = 8192
    hidden_size: int = 256
    num_hidden_layers: int = 4
    mixer_types: list[str] | None = None
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int = 688
    hidden_act: str = "silu"
    max_position_embeddings: int = 1024
    rope_parameters: RopeParameters | dict | None = None
    rms_norm_eps: float = 1e-6
    attention_dropout: float | int = 0.0
    hidden_dropout: float | int = 0.0
    initializer_range: float = 0.02
    # The 5.x base config no longer declares these; an undeclared `tie_word_embeddings` would silently untie.
    tie_word_embeddings: bool = True
    classifier_pooling: str = "last"
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        # `layer_types` (the constructor's former name, and the key of config.json files written before 0.2).
        legacy = kwargs.pop("layer_types", None)
        if legacy is not None:
            if self.mixer_types is not None and list(self.mixer_types) != list(legacy):
                raise ValueError(
                    f"mixer_types={self.mixer_types} and layer_types={legacy} disagree: give one of them "
                    "(layer_types is another name for mixer_types)."
                )
            self.mixer_types = legacy
        if self.mixer_types is None:
            self.mixer_types = ["full_attention"] * self.num_hidden_layers
        else:
            self.mixer_types = list(self.mixer_types)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads and self.num_attention_heads > 0:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}: choose a head count that divides hidden_size, or set head_dim."
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        super().__post_init__(**kwargs)
        # Every head, also where the folder's config.json (written before they were all listed) names fewer.
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        # @strict runs the validate_* methods too, but wraps their errors in its own exception type; running them
        # here first gives users the plain ValueError that transformers configs raise.
        self.validate_layer_type()
        self.validate_architecture()
        self.validate_token_ids()

    # --- validation (run at the end of __post_init__, and again by @strict) -------------------------------------------------

    def validate_architecture(self):
        """Every size must be usable, and the attention shapes must fit together."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} is not allowed: it must be a positive integer.")
        if self.intermediate_size < 0:
            raise ValueError(
                f"intermediate_size={self.intermediate_size} is not allowed: it must be a positive integer, "
                "or 0 for layers without an MLP."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_key_value_heads={self.num_key_value_heads} does not divide num_attention_heads="
                f"{self.num_attention_heads}: grouped-query attention needs heads to be a multiple of kv heads."
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} is not allowed: rotary embeddings need an even head_dim.")
        for name in ("attention_dropout", "hidden_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value} is not allowed: it must be in [0, 1).")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps={self.rms_norm_eps} is not allowed: it must be positive.")
        if not 0.0 <= self.initializer_range <= 1.0:
            raise ValueError(f"initializer_range={self.initializer_range} is not allowed: it must be in [0, 1].")
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"classifier_pooling={self.classifier_pooling!r} is unknown; allowed: "
                             f"{list(CLASSIFIER_POOLINGS)}.")
        from transformers.activations import ACT2FN

        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act={self.hidden_act!r} is unknown; allowed: {sorted(ACT2FN)}.")

    def validate_layer_type(self):
        """transformers' own check rejects `"lstm"`; Yuyan allows exactly `"full_attention"` and `"lstm"`."""
        if not isinstance(self.mixer_types, (list, tuple)) or not all(isinstance(t, str) for t in self.mixer_types):
            raise ValueError(
                f"mixer_types={self.mixer_types!r} is not allowed: give a list of layer types, each one of "
                f"{list(LAYER_TYPES)}."
            )
        unknown = list(dict.fromkeys(t for t in self.mixer_types if t not in LAYER_TYPES))
        if unknown:
            raise ValueError(
                f"mixer_types (layer_types)={self.mixer_types} has unknown entries {unknown}; "
                f"allowed: {list(LAYER_TYPES)}."
            )
        if len(self.mixer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.mixer_types)} entries but num_hidden_layers={self.num_hidden_layers}: "
                "give one layer type per layer."
            )

    def validate_token_ids(self):
        for name in ("pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is not allowed: it must be in [0, vocab_size={self.vocab_size}).")
        eos = self.eos_token_id if isinstance(self.eos_token_id, list) else [self.eos_token_id]
        for value in eos:
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"eos_token_id={self.eos_token_id} is not allowed: ids must be in [0, vocab_size={self.vocab_size})."
                )

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "YuyanConfig":
        """Refuse the configuration of another model type instead of warning and building a half-Yuyan."""
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(
                f"this configuration is for a {model_type!r} model, not a Yuyan model (model_type {cls.model_type!r})."
            )
        return super().from_dict(config_dict, **kwargs)

    # --- conveniences --------------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "YuyanConfig":
        """A named architecture (`tiny|small|base` + `-attention|-lstm|-hybrid`, or `seed-lstm`), with overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; allowed: {sorted(PRESETS)}.")
        values = copy.deepcopy(PRESETS[name])
        if "layer_types" in overrides:
            overrides["mixer_types"] = overrides.pop("layer_types")
        if "num_hidden_layers" in overrides and "mixer_types" not in overrides:
            # Keep the preset's kind (attention / lstm / hybrid) at the new depth.
            overrides["mixer_types"] = _stack(name.split("-")[-1], overrides["num_hidden_layers"])
        values.update(overrides)
        return cls(**values)

    @property
    def has_attention(self) -> bool:
        """Whether any layer is self-attention (so the model has positions and a key/value cache)."""
        return "full_attention" in self.mixer_types

    @property
    def has_lstm(self) -> bool:
        """Whether any layer is an LSTM (so the cache carries recurrent state, which cannot be rolled back)."""
        return "lstm" in self.mixer_types

    @property
    def lstm_layers(self) -> list[int]:
        """Indices of the LSTM layers."""
        return [i for i, t in enumerate(self.mixer_types) if t == "lstm"]

    @property
    def num_attention_layers(self) -> int:
        return sum(t == "full_attention" for t in self.mixer_types)

    def stack_summary(self) -> str:
        """`4 x full_attention`, or the layer types spelled out for a mixed stack."""
        if len(set(self.mixer_types)) == 1:
            return f"{self.num_hidden_layers} x {self.mixer_types[0]}"
        return ", ".join(self.mixer_types)

    def estimated_num_parameters(self) -> int:
        """Parameter count from the config alone (no model built); equals `model.num_parameters()`."""
        d = self.hidden_size
        total = self.vocab_size * d + d  # embedding + final norm
        if not self.tie_word_embeddings:
            total += self.vocab_size * d
        attention = d * (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim
        attention += self.num_attention_heads * self.head_dim * d
        lstm = 4 * d * (2 * d) + 2 * 4 * d + d * d  # input and recurrent weights, two biases, out_proj
        mlp = 3 * d * self.intermediate_size + d if self.intermediate_size else 0
        for layer_type in self.mixer_types:
            total += d + mlp + (attention if layer_type == "full_attention" else lstm)
        return total


__all__ = ["YuyanConfig", "PRESETS", "LAYER_TYPES"]

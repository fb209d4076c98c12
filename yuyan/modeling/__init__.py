"""The Yuyan model: configuration and the single modeling file."""

from .configuration_yuyan import LAYER_TYPES, PRESETS, YuyanConfig
from .modeling_yuyan import (
    YuyanForCausalLM,
    YuyanForQuestionAnswering,
    YuyanForSequenceClassification,
    YuyanForTokenClassification,
    YuyanModel,
    YuyanPreTrainedModel,
)

__all__ = [
    "LAYER_TYPES",
    "PRESETS",
    "YuyanConfig",
    "YuyanPreTrainedModel",
    "YuyanModel",
    "YuyanForCausalLM",
    "YuyanForSequenceClassification",
    "YuyanForTokenClassification",
    "YuyanForQuestionAnswering",
]

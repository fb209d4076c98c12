"""The Yuyan model: configuration and the single modeling file."""

from .configuration_yuyan import AUTO_MAP, CLASSIFIER_POOLINGS, LAYER_TYPES, PRESETS, YuyanConfig
from .modeling_yuyan import (
    LORA_TARGET_MODULES,
    YuyanForCausalLM,
    YuyanForQuestionAnswering,
    YuyanForSequenceClassification,
    YuyanForTokenClassification,
    YuyanModel,
    YuyanPreTrainedModel,
)

__all__ = [
    "CLASSIFIER_POOLINGS",
    "AUTO_MAP",
    "LAYER_TYPES",
    "LORA_TARGET_MODULES",
    "PRESETS",
    "YuyanConfig",
    "YuyanPreTrainedModel",
    "YuyanModel",
    "YuyanForCausalLM",
    "YuyanForSequenceClassification",
    "YuyanForTokenClassification",
    "YuyanForQuestionAnswering",
]

"""The Yuyan model: configuration and the single modeling file."""

from .configuration_yuyan import CLASSIFIER_POOLINGS, CLASSIFIER_READINGS, LAYER_TYPES, PRESETS, YuyanConfig
from .modeling_yuyan import (
    YuyanForCausalLM,
    YuyanForQuestionAnswering,
    YuyanForSequenceClassification,
    YuyanForTokenClassification,
    YuyanModel,
    YuyanPreTrainedModel,
)

# The linear layers LoRA adapts by default: attention's fused q/k/v and output projections, the LSTM's output
# projection (nn.LSTM itself is one fused kernel that LoRA cannot wrap) and the MLP's projections. `import yuyan`
# registers them with peft, and `yuyan finetune --lora` uses them.
LORA_TARGET_MODULES = ("qkv_proj", "o_proj", "out_proj", "gate_up_proj", "down_proj")

__all__ = [
    "CLASSIFIER_POOLINGS",
    "CLASSIFIER_READINGS",
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

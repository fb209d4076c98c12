"""Yuyan (语言): build your own small language model — attention, LSTM or a hybrid — as a transformers model.

Importing `yuyan` registers the model with transformers' Auto classes, so a saved Yuyan folder loads with
`AutoModelForCausalLM.from_pretrained(path)` (no `trust_remote_code` needed while `yuyan` is imported).
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .modeling import (
    PRESETS,
    YuyanConfig,
    YuyanForCausalLM,
    YuyanForQuestionAnswering,
    YuyanForSequenceClassification,
    YuyanForTokenClassification,
    YuyanModel,
    YuyanPreTrainedModel,
)

__version__ = "0.1.0"

_AUTO_CLASSES = {
    AutoModel: YuyanModel,
    AutoModelForCausalLM: YuyanForCausalLM,
    AutoModelForSequenceClassification: YuyanForSequenceClassification,
    AutoModelForTokenClassification: YuyanForTokenClassification,
    AutoModelForQuestionAnswering: YuyanForQuestionAnswering,
}

AutoConfig.register(YuyanConfig.model_type, YuyanConfig, exist_ok=True)
# `register_for_auto_class` makes `save_pretrained` write `auto_map` and copy the configuration and modeling files,
# so the folder also loads with `trust_remote_code=True` where yuyan is not installed.
YuyanConfig.register_for_auto_class()
for _auto_class, _model_class in _AUTO_CLASSES.items():
    _auto_class.register(YuyanConfig, _model_class, exist_ok=True)
    _model_class.register_for_auto_class(_auto_class.__name__)

__all__ = [
    "__version__",
    "PRESETS",
    "YuyanConfig",
    "YuyanPreTrainedModel",
    "YuyanModel",
    "YuyanForCausalLM",
    "YuyanForSequenceClassification",
    "YuyanForTokenClassification",
    "YuyanForQuestionAnswering",
]

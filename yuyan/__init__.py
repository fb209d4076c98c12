"""Yuyan (语言): build your own small language model — attention, LSTM or a hybrid — as a transformers model.

Importing `yuyan` registers the model with transformers' Auto classes, so a saved Yuyan folder loads with
`AutoModelForCausalLM.from_pretrained(path)` (no `trust_remote_code` needed while `yuyan` is imported).
"""

import transformers

from .modeling import (
    AUTO_MAP,
    PRESETS,
    YuyanConfig,
    YuyanForCausalLM,
    YuyanForQuestionAnswering,
    YuyanForSequenceClassification,
    YuyanForTokenClassification,
    YuyanModel,
    YuyanPreTrainedModel,
)
from .modeling import modeling_yuyan as _modeling

__version__ = "0.1.0"

transformers.AutoConfig.register(YuyanConfig.model_type, YuyanConfig, exist_ok=True)
# `register_for_auto_class` makes `save_pretrained` write `auto_map` and copy the configuration and modeling files,
# so the folder also loads with `trust_remote_code=True` where yuyan is not installed.
YuyanConfig.register_for_auto_class()
for _auto_name, _reference in AUTO_MAP.items():
    if _auto_name == "AutoConfig":
        continue
    _model_class = getattr(_modeling, _reference.rpartition(".")[2])
    getattr(transformers, _auto_name).register(YuyanConfig, _model_class, exist_ok=True)
    _model_class.register_for_auto_class(_auto_name)

# transformers 5 removed `pipeline("question-answering")`; Yuyan registers its own so fine-tuned QA models work.
from .pipelines import register_pipelines as _register_pipelines  # noqa: E402

_register_pipelines()

from .fast import FastGenerator  # noqa: E402


__all__ = [
    "__version__",
    "PRESETS",
    "FastGenerator",
    "YuyanConfig",
    "YuyanPreTrainedModel",
    "YuyanModel",
    "YuyanForCausalLM",
    "YuyanForSequenceClassification",
    "YuyanForTokenClassification",
    "YuyanForQuestionAnswering",
]

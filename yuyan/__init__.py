"""Yuyan (语言): build your own small language model — attention, LSTM or a hybrid — as a transformers model.

Importing `yuyan` registers the model with transformers' Auto classes, so a saved Yuyan folder loads with
`AutoModelForCausalLM.from_pretrained(path)` (no `trust_remote_code` needed while `yuyan` is imported).
"""

import transformers

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
from .modeling import LORA_TARGET_MODULES as _LORA_TARGET_MODULES
from .modeling import modeling_yuyan as _modeling

__version__ = "0.1.0"

transformers.AutoConfig.register(YuyanConfig.model_type, YuyanConfig, exist_ok=True)
# `register_for_auto_class` makes `save_pretrained` write `auto_map` and copy the configuration and modeling files,
# so the folder also loads with `trust_remote_code=True` where yuyan is not installed.
YuyanConfig.register_for_auto_class()
for _auto_name, _class_name in _modeling.AUTO_CLASS_NAMES.items():
    _model_class = getattr(_modeling, _class_name)
    getattr(transformers, _auto_name).register(YuyanConfig, _model_class, exist_ok=True)
    _model_class.register_for_auto_class(_auto_name)

# transformers 5 removed `pipeline("question-answering")`; Yuyan registers its own so fine-tuned QA models work.
from .pipelines import register_pipelines as _register_pipelines  # noqa: E402

_register_pipelines()


def _register_peft_defaults() -> None:
    """Tell peft which modules LoRA adapts in a Yuyan model, so `LoraConfig()` without `target_modules` works.

    peft looks the default targets up by `model_type` in a dict it owns (and has no public API to extend); Llama's
    entry is there, ours is added. Skipped where peft is not installed.
    """
    try:
        from peft.utils import constants
    except Exception:  # not installed, or a peft that does not import with this transformers: nothing to register
        return
    mapping = getattr(constants, "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING", None)
    if isinstance(mapping, dict):
        mapping.setdefault(YuyanConfig.model_type, list(_LORA_TARGET_MODULES))


_register_peft_defaults()

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

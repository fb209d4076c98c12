"""The internals of other libraries that Yuyan relies on, in one list.

An internal is anything a library does not promise to keep: a name under an underscore, a module-level registry,
a helper that lives in a non-public module, or the exact way one of its classes calls ours. A minor release may
change any of them (transformers 5.25 changed how a cache reports the length of a recurrent layer), so each one
Yuyan uses is listed here with what Yuyan needs from it and a check of exactly that. `tests/test_internals.py` runs
every check on the installed releases: a release that breaks one fails CI with the entry's message, instead of
handing users a silently wrong answer. Where a public API does the job, Yuyan uses it and it is not listed.

`python -m yuyan.internals` runs the checks and prints one line per entry.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Internal:
    name: str  # the object, as `package.module.attribute`
    used_by: str  # where Yuyan uses it
    needs: str  # what Yuyan needs from it: the message when the check fails
    check: Callable[[], None]  # raises (AssertionError or any error) when the installed release breaks the need

    def failure(self) -> str | None:
        """What changed, in one message naming the internal, where Yuyan uses it and what it needs; None if the
        check passes."""
        try:
            self.check()
        except Exception as error:  # any failure is the release having changed what Yuyan relies on
            return (f"{self.name} (used by {self.used_by}) changed: Yuyan needs that {self.needs}. "
                    f"The check failed with {type(error).__name__}: {error}")
        return None


def _resolve(dotted: str):
    module_name, _, attribute = dotted.rpartition(".")
    while module_name:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module_name, _, parent = module_name.rpartition(".")
            attribute = f"{parent}.{attribute}"
            continue
        value = module
        for part in attribute.split("."):
            value = getattr(value, part)
        return value
    raise ImportError(dotted)


def _exists(dotted: str) -> Callable[[], None]:
    return lambda: _resolve(dotted)


def _tiny_config(layer_types: list[str]):
    from .modeling import YuyanConfig

    return YuyanConfig(vocab_size=32, hidden_size=8, num_hidden_layers=len(layer_types), layer_types=layer_types,
                       num_attention_heads=2, num_key_value_heads=1, intermediate_size=8)


def _lstm_cache_layer_class():
    from .modeling.modeling_yuyan import YuyanLSTMCacheLayer

    return YuyanLSTMCacheLayer


# -- checks that need more than the name --------------------------------------------------------------------------


def _check_cache_registries() -> None:
    from transformers import DynamicCache, StaticCache

    config = _tiny_config(["lstm", "full_attention"])
    for cache in (DynamicCache(config=config), StaticCache(config=config, max_cache_len=4)):
        layer = cache.layers[0]
        assert getattr(layer, "holds_lstm_state", False), (
            f"{type(cache).__name__}(config=...) built a {type(layer).__name__} for an 'lstm' layer")


def _check_recurrent_layers_are_linear() -> None:
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=_tiny_config(["lstm", "full_attention"]))
    assert list(cache.is_linear) == [True, False], f"Cache.is_linear gave {list(cache.is_linear)}"
    cache.layers[0].store(torch.zeros(1, 2, 8), 1)
    assert cache.has_previous_state(0) is True


def _check_rollback_is_delegated() -> None:
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=_tiny_config(["lstm"]))
    layer = cache.layers[0]
    cache.activate_past_recording()
    assert layer.record_past, "Cache.activate_past_recording() did not reach the layer"
    first, second = torch.zeros(1, 2, 8), torch.ones(1, 2, 8)
    layer.store(first, 1, torch.stack((first, first), dim=1))
    layer.store(second, 1, torch.stack((first, second), dim=1))
    assert cache.is_croppable, "Cache.is_croppable is False for a recording LSTM cache"
    cache.crop(-1)
    assert torch.equal(layer.read(), first), "Cache.crop(-1) did not reach the layer"


def _check_attention_implementation_attribute() -> None:
    from .modeling import YuyanForCausalLM

    model = YuyanForCausalLM(_tiny_config(["full_attention"]))
    assert model.config._attn_implementation in ("sdpa", "eager"), model.config._attn_implementation


def _check_init_weights_is_called() -> None:
    import torch

    from .modeling import YuyanForCausalLM

    model = YuyanForCausalLM(_tiny_config(["lstm"]))
    lstm = model.model.layers[0].recurrent.lstm
    forget_gate = lstm.bias_ih_l0[lstm.hidden_size : 2 * lstm.hidden_size]
    assert torch.all(forget_gate == 1.0), "_init_weights was not applied to the LSTM (forget-gate bias is not 1)"


def _check_model_class_flags() -> None:
    from transformers import PreTrainedModel

    for flag in _MODEL_CLASS_FLAGS:
        assert hasattr(PreTrainedModel, flag), f"PreTrainedModel no longer declares {flag}"


def _check_scan() -> None:
    import torch
    from torch._higher_order_ops.scan import scan

    carry, outputs = scan(lambda total, x: (total + x, total + x), torch.zeros(2), torch.ones(3, 2), dim=0)
    assert torch.equal(carry, torch.full((2,), 3.0)) and outputs.shape == (3, 2), (carry, outputs.shape)


def _check_optimizer_hook_attributes() -> None:
    import torch

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for name in _OPTIMIZER_HOOK_ATTRIBUTES:
        assert hasattr(optimizer, name), f"torch.optim.Optimizer instances no longer have {name}"


def _check_muon_init_group() -> None:
    import torch

    muon = getattr(torch.optim, "Muon", None)
    if muon is not None:  # without Muon, optimizer="muon" is refused with its own message
        assert callable(getattr(muon, "_init_group", None)), "torch.optim.Muon has no _init_group"


def _check_lora_target_registry() -> None:
    try:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping
    except ImportError:
        return  # peft is optional at run time; without it there is nothing to register
    assert isinstance(mapping, dict), "peft.utils.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING is not a dict"
    from .modeling import YuyanConfig

    assert YuyanConfig.model_type in mapping, "loading the model file did not add Yuyan's entry"


def _check_remote_code_imports() -> None:
    from transformers.dynamic_module_utils import get_imports

    from .modeling import modeling_yuyan

    needed = set(get_imports(modeling_yuyan.__file__)) - set(sys.stdlib_module_names)
    assert needed <= {"torch", "transformers"}, (
        f"a saved folder's model file would require {sorted(needed - {'torch', 'transformers'})} to be installed")


# Class attributes that transformers reads off a model class to decide what it supports.
_MODEL_CLASS_FLAGS = (
    "_supports_sdpa", "_supports_flash_attn", "_supports_flex_attn", "_supports_attention_backend",
    "_can_compile_fullgraph", "_can_record_outputs", "_no_split_modules", "_skip_keys_device_placement",
    "_tied_weights_keys", "_pp_plan", "_init_weights",
)
_OPTIMIZER_HOOK_ATTRIBUTES = (
    "_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks", "_zero_grad_profile_name",
)
_MODEL = "yuyan/modeling/modeling_yuyan.py"

INTERNALS: list[Internal] = [
    Internal("transformers.cache_utils.DYNAMIC_LAYER_TYPE_MAPPING", _MODEL,
             "DynamicCache(config=...) and StaticCache(config=...) build each layer's cache from these registries, "
             "keyed by config.layer_types; the model file adds 'lstm' -> YuyanLSTMCacheLayer",
             _check_cache_registries),
    Internal("transformers.cache_utils.STATIC_LAYER_TYPE_MAPPING", _MODEL, "as DYNAMIC_LAYER_TYPE_MAPPING",
             _exists("transformers.cache_utils.STATIC_LAYER_TYPE_MAPPING")),
    Internal("transformers.cache_utils.LinearAttentionCacheLayerMixin", _MODEL,
             "the base of YuyanLSTMCacheLayer: Cache.is_linear and the mask builders recognise recurrent layers by "
             "it (so attention masks are sized from an attention layer), and Cache.has_previous_state reads its "
             "has_previous_state dict", _check_recurrent_layers_are_linear),
    Internal("transformers.cache_utils.Cache.activate_past_recording / crop", _MODEL,
             "assisted and prompt-lookup decoding call cache.activate_past_recording() and then cache.crop(-n); "
             "both must reach YuyanLSTMCacheLayer, which sets and reads the attribute record_past",
             _check_rollback_is_delegated),
    Internal("transformers.masking_utils.create_causal_mask", _MODEL,
             "builds the attention layers' mask from the 2-D padding mask and the cache",
             _exists("transformers.masking_utils.create_causal_mask")),
    Internal("transformers.modeling_utils.slice_logits_to_keep", _MODEL, "logits_to_keep in the causal LM head",
             _exists("transformers.modeling_utils.slice_logits_to_keep")),
    Internal("transformers.utils.generic.merge_with_config_defaults", _MODEL,
             "fills use_cache and the output flags from the config in YuyanModel.forward",
             _exists("transformers.utils.generic.merge_with_config_defaults")),
    Internal("transformers.utils.output_capturing.capture_outputs", _MODEL,
             "collects hidden states and attentions through _can_record_outputs",
             _exists("transformers.utils.output_capturing.capture_outputs")),
    Internal("transformers.utils.deprecation.deprecate_kwarg", _MODEL,
             "accepts the former names of `cache` (past_key_values, cache_params) with a warning",
             _exists("transformers.utils.deprecation.deprecate_kwarg")),
    Internal("transformers.modeling_layers.GenericForSequenceClassification (and ...TokenClassification, "
             "...QuestionAnswering)", _MODEL, "the task heads' forward",
             _exists("transformers.modeling_layers.GenericForQuestionAnswering")),
    Internal("transformers.configuration_utils.PreTrainedConfig._attn_implementation", _MODEL,
             "the attention kernel chosen at load time (sdpa, eager, flash, ...) that the attention layer dispatches "
             "on", _check_attention_implementation_attribute),
    Internal("transformers.PreTrainedModel._init_weights", _MODEL,
             "called per module when weights are initialised (not when loaded): the LSTM's orthogonal recurrence "
             "and forget-gate bias 1", _check_init_weights_is_called),
    Internal("transformers.PreTrainedModel capability flags (" + ", ".join(_MODEL_CLASS_FLAGS[:-1]) + ")", _MODEL,
             "read by transformers to decide attention kernels, compilation, device maps, tying and output "
             "capture", _check_model_class_flags),
    Internal("transformers.PreTrainedModel.get_compiled_call", _MODEL,
             "generate's compiled decode step; overridden to switch on torch._dynamo.config.allow_rnn around it",
             _exists("transformers.PreTrainedModel.get_compiled_call")),
    Internal("torch._dynamo.config.allow_rnn", _MODEL,
             "Dynamo compiles through an nn.LSTM module only with this flag set",
             lambda: _resolve("torch._dynamo.config").allow_rnn),
    Internal("torch._higher_order_ops.scan.scan", _MODEL,
             "a traced loop whose trip count stays symbolic: torch.export with a dynamic sequence length runs the "
             "LSTM through it (torch has no public scan)", _check_scan),
    Internal("torch.optim.Optimizer hook attributes (" + ", ".join(_OPTIMIZER_HOOK_ATTRIBUTES) + ")",
             "yuyan/training/pretrain/optimizers.py (CombinedOptimizer)",
             "an optimizer built without Optimizer.__init__ must set the attributes that step/state_dict hooks read",
             _check_optimizer_hook_attributes),
    Internal("torch.optim.Muon._init_group", "yuyan/training/pretrain/optimizers.py (CpuMuon)",
             "collects a group's parameters, gradients and momentum buffers for the float32 Newton-Schulz step",
             _check_muon_init_group),
    Internal("huggingface_hub.utils._paths.DEFAULT_IGNORE_PATTERNS", "yuyan/hub.py (files_to_upload)",
             "the files upload_folder leaves out by default (.git/, .cache/huggingface/), so that the list of files "
             "Yuyan reports is the list it uploads",
             _exists("huggingface_hub.utils._paths.DEFAULT_IGNORE_PATTERNS")),
    Internal("peft.utils.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING", _MODEL,
             "peft looks LoRA's default targets up by model_type in this dict; the model file adds Yuyan's, so "
             "LoraConfig() needs no target_modules, with or without the package installed",
             _check_lora_target_registry),
    Internal("transformers.dynamic_module_utils.get_imports", _MODEL,
             "the imports a remote-code file requires skip those inside a `try`, so the model file's guarded peft "
             "import leaves peft optional for a folder loaded with trust_remote_code",
             _check_remote_code_imports),
]


@functools.cache
def all_recurrent_cache_has_a_length() -> bool:
    """A capability of the installed transformers, measured rather than read off its version number: whether a cache
    of recurrent layers only can report its length. transformers 5.24 raises instead, so there an all-LSTM model
    cannot be the *assistant* model of assisted decoding (as the main model it can)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=_tiny_config(["lstm"]))
    try:
        cache.get_seq_length()
    except ValueError:
        return False
    return True


def failures() -> list[str]:
    """One message per internal whose check fails on the installed releases."""
    return [message for message in map(Internal.failure, INTERNALS) if message is not None]


if __name__ == "__main__":
    broken = failures()
    for internal in INTERNALS:
        print(f"{'CHANGED' if internal.failure() else 'ok':8} {internal.name}")
    raise SystemExit(1 if broken else 0)

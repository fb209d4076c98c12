"""Conversion between Yuyan and Llama checkpoints (`yuyan export`).

An attention-only Yuyan model computes the same function as `LlamaForCausalLM`: pre-norm RMSNorm layers, rotary
grouped-query attention, a gated MLP, a final norm and an optionally tied head. Only the storage differs: Yuyan fuses
q/k/v into `qkv_proj` and gate/up into `gate_up_proj` (one matmul each, which pays off on a CPU). `export_to_llama`
splits them back and writes a plain transformers Llama folder, which every runtime that reads Llama checkpoints can
serve without Yuyan's code. `import_from_llama` goes the other way, optionally turning some layers into LSTM layers.

An LSTM layer has no Llama equivalent, and neither has a layer without an MLP (`intermediate_size=0`): those models
are refused with the reason. Yuyan's `hidden_dropout` has no Llama field either; it acts only in training, so the
exported model gives the same outputs at inference.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from yuyan.files import check_output_folder, publish_folder, staging_dir

# Files that make up a saved tokenizer (whichever the tokenizer wrote); copied byte for byte.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
GENERATION_CONFIG = "generation_config.json"

# Fields whose meaning and name are the same in both configurations.
_SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_parameters",
    "attention_dropout",
    "initializer_range",
    "tie_word_embeddings",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)


# ----------------------------------------------------------------------------------------------------------------
# Output folders: never clobbered by accident, never left half-written
# ----------------------------------------------------------------------------------------------------------------


def _check_output(output_dir: Path, overwrite: bool) -> None:
    check_output_folder(output_dir, overwrite, "pass --overwrite (overwrite=True) to replace it")


def _write_model_folder(model, source_dir: Path, output_dir: Path, overwrite: bool) -> list[str]:
    """Save `model` with the source folder's tokenizer and generation config into a staging folder, then move it
    into place: the output appears whole or not at all. Returns the names of the files copied."""
    with staging_dir(output_dir.parent, prefix=f".{output_dir.name}.tmp-") as staging:
        model.save_pretrained(staging)
        copied = _copy_tokenizer_and_generation_config(source_dir, staging)
        _check_output(output_dir, overwrite)  # again: something may have appeared while we converted
        publish_folder(staging, output_dir)
    return copied


def _copy_tokenizer_and_generation_config(source: Path, target: Path) -> list[str]:
    copied = []
    for name in (*TOKENIZER_FILES, GENERATION_CONFIG):
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
            copied.append(name)
    return copied


# ----------------------------------------------------------------------------------------------------------------
# Yuyan -> Llama
# ----------------------------------------------------------------------------------------------------------------


def llama_config_from_yuyan(config):
    """The `LlamaConfig` of a Yuyan configuration, or a ValueError saying why Llama cannot express it."""
    from transformers import LlamaConfig

    if config.has_lstm:
        raise ValueError(
            f"layers {config.lstm_layers} are LSTM layers (mixer_types={config.mixer_types}): Llama has no recurrent "
            "layer, so only an attention-only Yuyan model can be exported to Llama"
        )
    if config.intermediate_size == 0:
        raise ValueError(
            "this model's layers have no MLP (intermediate_size=0), which Llama cannot express: every Llama layer "
            "has a gated MLP"
        )
    values = {name: getattr(config, name) for name in _SHARED_FIELDS}
    values["rope_parameters"] = dict(config.rope_parameters)
    return LlamaConfig(**values, attention_bias=False, mlp_bias=False, use_cache=config.use_cache)


def llama_state_dict_from_yuyan(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Yuyan's tensors under Llama's names, the fused projections split (views, no copy)."""
    q_size = config.num_attention_heads * config.head_dim
    kv_size = config.num_key_value_heads * config.head_dim
    converted = {}
    for name, tensor in state_dict.items():
        if name.endswith("self_attn.qkv_proj.weight"):
            prefix = name[: -len("qkv_proj.weight")]
            q, k, v = tensor.split([q_size, kv_size, kv_size], dim=0)
            converted.update({prefix + "q_proj.weight": q, prefix + "k_proj.weight": k, prefix + "v_proj.weight": v})
        elif name.endswith("mlp.gate_up_proj.weight"):
            prefix = name[: -len("gate_up_proj.weight")]
            gate, up = tensor.chunk(2, dim=0)  # YuyanMLP: the first half gates
            converted.update({prefix + "gate_proj.weight": gate, prefix + "up_proj.weight": up})
        else:
            converted[name] = tensor
    return converted


def export_to_llama(model_dir: str | Path, output_dir: str | Path, overwrite: bool = False) -> dict:
    """Write the attention-only Yuyan model in `model_dir` as a transformers Llama folder in `output_dir`.

    The folder loads with `LlamaForCausalLM.from_pretrained(output_dir)` (no remote code) and gives the same logits;
    the tokenizer files and generation config are copied beside it. Written in a temporary folder and renamed into
    place; a non-empty `output_dir` is replaced only with `overwrite=True`. Returns a summary (what was written).
    """
    from transformers import GenerationConfig, LlamaForCausalLM

    from yuyan.modeling import YuyanConfig, YuyanForCausalLM

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: give a saved Yuyan model folder")
    _check_output(output_dir, overwrite)
    config = YuyanConfig.from_pretrained(model_dir)
    llama_config = llama_config_from_yuyan(config)  # refuse before loading any weight

    model = YuyanForCausalLM.from_pretrained(model_dir)
    dtype = next(model.parameters()).dtype
    llama_config.dtype = dtype
    llama = LlamaForCausalLM(llama_config).to(dtype)
    # strict: every Llama tensor must come from the Yuyan checkpoint, and nothing may be left over.
    llama.load_state_dict(llama_state_dict_from_yuyan(model.state_dict(), config), strict=True)
    if (model_dir / GENERATION_CONFIG).is_file():
        llama.generation_config = GenerationConfig.from_pretrained(model_dir)

    copied = _write_model_folder(llama, model_dir, output_dir, overwrite)
    return {
        "output": str(output_dir),
        "format": "llama",
        "layers": config.num_hidden_layers,
        "parameters": llama.num_parameters(),
        "copied": copied,
    }


# ----------------------------------------------------------------------------------------------------------------
# Llama -> Yuyan
# ----------------------------------------------------------------------------------------------------------------


def yuyan_config_from_llama(llama_config, mixer_types: Sequence[str] | None = None):
    """The `YuyanConfig` of a Llama configuration (all attention unless `mixer_types` says otherwise)."""
    from yuyan.modeling import YuyanConfig

    if llama_config.model_type != "llama":
        raise ValueError(f"this is a {llama_config.model_type!r} checkpoint; only 'llama' checkpoints are imported")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(llama_config, flag, False):
            raise ValueError(f"the Llama checkpoint has {flag}=True; Yuyan's projections have no bias")
    if (getattr(llama_config, "pretraining_tp", 1) or 1) != 1:
        raise ValueError(f"pretraining_tp={llama_config.pretraining_tp} is not supported; only 1 is")
    values = {name: getattr(llama_config, name) for name in _SHARED_FIELDS}
    values["rope_parameters"] = dict(llama_config.rope_parameters)
    if values["head_dim"] is None:
        values["head_dim"] = llama_config.hidden_size // llama_config.num_attention_heads
    if mixer_types is not None:
        mixer_types = list(mixer_types)
        if len(mixer_types) != llama_config.num_hidden_layers:
            raise ValueError(
                f"layer types {mixer_types} give {len(mixer_types)} layers, but the Llama model has "
                f"{llama_config.num_hidden_layers}: give one type per layer"
            )
    return YuyanConfig(**values, mixer_types=mixer_types, use_cache=llama_config.use_cache)


def yuyan_state_dict_from_llama(state_dict: dict[str, torch.Tensor], config) -> tuple[dict, list[str]]:
    """Llama's tensors under Yuyan's names, projections fused; the attention tensors of layers that become LSTM
    layers are left out and returned by name."""
    converted, dropped = {}, []
    lstm_prefixes = tuple(f"model.layers.{i}.self_attn." for i in config.lstm_layers)
    for name, tensor in state_dict.items():
        if name.startswith(lstm_prefixes):
            dropped.append(name)
            continue
        if name.endswith("self_attn.q_proj.weight"):
            prefix = name[: -len("q_proj.weight")]
            parts = [state_dict[prefix + part + "_proj.weight"] for part in "qkv"]
            converted[prefix + "qkv_proj.weight"] = torch.cat(parts, dim=0)
        elif name.endswith("mlp.gate_proj.weight"):
            prefix = name[: -len("gate_proj.weight")]
            up = state_dict[prefix + "up_proj.weight"]
            converted[prefix + "gate_up_proj.weight"] = torch.cat([tensor, up], dim=0)
        elif name.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight", "mlp.up_proj.weight")):
            continue  # fused above
        else:
            converted[name] = tensor
    return converted, dropped


def import_from_llama(
    llama_dir: str | Path,
    output_dir: str | Path,
    mixer_types: Sequence[str] | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> dict:
    """Write the Llama checkpoint in `llama_dir` as a Yuyan model folder in `output_dir`.

    With `mixer_types` (one `"full_attention"` or `"lstm"` per layer) the chosen layers become LSTM layers: their
    attention weights are dropped and the new LSTM weights get Yuyan's initialisation (seeded by `seed`); the
    returned summary lists both. Without it, the Yuyan model gives the same logits as the Llama one.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from yuyan.modeling import YuyanForCausalLM

    llama_dir, output_dir = Path(llama_dir), Path(output_dir)
    if not (llama_dir / "config.json").is_file():
        raise FileNotFoundError(f"{llama_dir} has no config.json: give a saved Llama model folder")
    _check_output(output_dir, overwrite)
    try:
        llama_config = LlamaConfig.from_pretrained(llama_dir)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{llama_dir} does not hold a Llama configuration: {error}") from None
    config = yuyan_config_from_llama(llama_config, mixer_types)

    llama = LlamaForCausalLM.from_pretrained(llama_dir)
    dtype = next(llama.parameters()).dtype
    state_dict, dropped = yuyan_state_dict_from_llama(llama.state_dict(), config)
    torch.manual_seed(seed)
    model = YuyanForCausalLM(config).to(dtype)
    result = model.load_state_dict(state_dict, strict=False)
    initialised = sorted(result.missing_keys)
    expected_new = tuple(f"model.layers.{i}.recurrent." for i in config.lstm_layers)
    unexplained = [k for k in initialised if not k.startswith(expected_new) and k != "lm_head.weight"]
    if result.unexpected_keys or unexplained:
        raise ValueError(
            f"the Llama checkpoint does not map onto Yuyan's layout (left over: {sorted(result.unexpected_keys)}, "
            f"missing: {unexplained})"
        )
    model.generation_config = (
        GenerationConfig.from_pretrained(llama_dir) if (llama_dir / GENERATION_CONFIG).is_file()
        else GenerationConfig.from_model_config(config)
    )

    copied = _write_model_folder(model, llama_dir, output_dir, overwrite)
    return {
        "output": str(output_dir),
        "format": "yuyan",
        "mixer_types": list(config.mixer_types),
        "initialised": [k for k in initialised if k != "lm_head.weight"],
        "dropped": sorted(dropped),
        "copied": copied,
    }

"""An attention-only Yuyan model as one GGUF file for llama.cpp (`yuyan export --format gguf`).

llama.cpp runs such a model as its "llama" architecture: the weights (the fused projections split, the query and
key rows reordered for llama.cpp's rotary layout), the hyper-parameters and the tokenizer go into a single file,
written with the `gguf` package. What llama.cpp cannot run the same way is refused with the reason before anything
is written:

- LSTM layers (llama.cpp's recurrent architectures are RWKV and Mamba, which compute something else) and layers
  without an MLP (every llama.cpp "llama" layer has one);
- an MLP activation other than SiLU, and RoPE scaling (only plain RoPE is written);
- a tokenizer llama.cpp would cut differently: llama.cpp reads no regular expression from the file, it picks one of
  its built-in pre-tokenizers by the name in `tokenizer.ggml.pre`, so the tokenizer's expressions must be exactly
  one of those (`yuyan.tokenization.PRE_TOKENIZERS`, entries with a `llama_cpp` name). Yuyan's own expression has
  no llama.cpp counterpart; `yuyan tokenizer train --pre-tokenizer qwen2` trains one that has.

llama.cpp does not normalise text, while Yuyan's tokenizer applies NFC first: text already in NFC (nearly all
text; not, for example, decomposed accents) gets the same ids in both.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from yuyan.export import llama_state_dict_from_yuyan
from yuyan.files import check_output_file, replacing_file

GGUF_DTYPES = ("f32", "f16", "q8_0")
DEFAULT_GGUF_DTYPE = "f16"
_ALLOW_OVERWRITE = "pass --overwrite (overwrite=True) to replace it"
_MAKE_A_TOKENIZER = (
    "train a tokenizer llama.cpp reproduces with `yuyan tokenizer train --pre-tokenizer qwen2 --data ... --output "
    "TOKENIZER` and pretrain the model with it (`yuyan pretrain --tokenizer TOKENIZER ...`)"
)

# Llama's tensor names (after `llama_state_dict_from_yuyan`) -> llama.cpp's.
_GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")


# ----------------------------------------------------------------------------------------------------------------
# What llama.cpp can run
# ----------------------------------------------------------------------------------------------------------------


def check_gguf_config(config) -> None:
    """ValueError saying why llama.cpp's "llama" architecture cannot compute this Yuyan configuration, if it cannot."""
    if config.has_lstm:
        raise ValueError(
            f"layers {config.lstm_layers} are LSTM layers (mixer_types={config.mixer_types}): llama.cpp has no LSTM "
            "layer (its recurrent architectures are RWKV and Mamba, which compute something else), so only an "
            "attention-only Yuyan model exports to GGUF; deploy this one as its model folder or with torch.export"
        )
    if config.intermediate_size == 0:
        raise ValueError(
            "this model's layers have no MLP (intermediate_size=0), which llama.cpp's llama architecture cannot "
            "express: every one of its layers has a gated MLP"
        )
    if config.hidden_act not in ("silu", "swish"):
        raise ValueError(
            f"hidden_act={config.hidden_act!r}: llama.cpp's llama architecture gates its MLP with SiLU only, so only "
            "models with hidden_act 'silu' export to GGUF"
        )
    rope_type = (config.rope_parameters or {}).get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(
            f"rope_type={rope_type!r}: only plain RoPE (rope_type 'default') is written to GGUF; this model's RoPE "
            "scaling has no exported form"
        )


def _tokenizer_json(model_dir: Path) -> dict:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ValueError(
            f"{model_dir} has no tokenizer.json: a GGUF file carries the tokenizer, and only a byte-level BPE "
            f"tokenizer saved as tokenizer.json can be written; {_MAKE_A_TOKENIZER}"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def llama_cpp_pre_tokenizer(model_dir: str | os.PathLike) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for the tokenizer saved in `model_dir`, or a ValueError saying why llama.cpp
    would tokenize text differently (and which command makes a tokenizer it reproduces)."""
    from yuyan.tokenization import PRE_TOKENIZERS, pre_tokenizer_of

    model_dir = Path(model_dir)
    data = _tokenizer_json(model_dir)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(
            f"the tokenizer in {model_dir} is a {model.get('type')} tokenizer; llama.cpp reads byte-level BPE "
            f"tokenizers only (a word-level vocabulary has no GGUF form); {_MAKE_A_TOKENIZER}"
        )
    # Options of the BPE model that change ids and that llama.cpp's byte-level BPE (for these pre-tokenizers) lacks.
    for option in ("byte_fallback", "ignore_merges", "dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option) not in (None, False, ""):
            raise ValueError(
                f"the tokenizer in {model_dir} sets {option}={model.get(option)!r}, which llama.cpp's BPE does not "
                f"apply; {_MAKE_A_TOKENIZER}"
            )
    normalizer = data.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise ValueError(
            f"the tokenizer in {model_dir} normalises text with {_describe(normalizer)}, which llama.cpp does not "
            "apply (it reads text as it is; a leading space added by add_leading_space is one such step); export "
            f"the model with a tokenizer that only applies NFC, or {_MAKE_A_TOKENIZER}"
        )
    decoder = data.get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        raise ValueError(f"the tokenizer in {model_dir} is not byte-level (decoder {_describe(decoder)}); "
                         f"{_MAKE_A_TOKENIZER}")
    name = pre_tokenizer_of(json.dumps(data))
    if name is None:
        raise ValueError(
            f"the tokenizer in {model_dir} cuts text with its own regular expressions, which none of llama.cpp's "
            f"built-in pre-tokenizers reproduces, so llama.cpp would give other token ids; {_MAKE_A_TOKENIZER}"
        )
    choice = PRE_TOKENIZERS[name]
    if choice.llama_cpp is None:
        reproducible = sorted(c.name for c in PRE_TOKENIZERS.values() if c.llama_cpp)
        raise ValueError(
            f"the tokenizer in {model_dir} uses the {name!r} pre-tokenizer ({choice.summary}): llama.cpp picks its "
            "pre-tokenizer from a fixed list and none of them cuts text this way (none keeps a number's space on its "
            f"first digit: ' 2' '0' '2' '4'), so it would give other token ids. The ones it reproduces: {reproducible}; {_MAKE_A_TOKENIZER}"
        )
    return choice.llama_cpp


def _describe(step: dict) -> str:
    kind = step.get("type", "?")
    if kind == "Sequence":
        parts = step.get("normalizers") or step.get("decoders") or []
        return "a sequence of " + ", ".join(part.get("type", "?") for part in parts)
    return kind


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------


def rotary_rows_to_interleaved(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder the rows of a query or key projection from transformers' rotary layout to llama.cpp's.

    transformers rotates dimension i of a head with dimension i + head_dim/2 (`rotate_half`); llama.cpp's llama
    architecture rotates neighbours, 2i with 2i + 1. Moving row i to 2i and row i + head_dim/2 to 2i + 1 in every
    head makes llama.cpp rotate the same pairs by the same angles, so attention scores are unchanged."""
    rows, columns = weight.shape
    half = rows // num_heads // 2
    return weight.reshape(num_heads, 2, half, columns).transpose(1, 2).reshape(rows, columns)


def gguf_tensors(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The model's tensors under llama.cpp's names, in float32, queries and keys reordered for its rotary layout;
    no output matrix when the head is tied (llama.cpp then uses the embedding)."""
    tensors = {}
    for name, tensor in llama_state_dict_from_yuyan(state_dict, config).items():
        tensor = tensor.detach().to(torch.float32)
        if name in _GLOBAL_TENSORS:
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue
            tensors[_GLOBAL_TENSORS[name]] = tensor
            continue
        match = _LAYER_NAME.fullmatch(name)
        if match is None or match.group(2) not in _LAYER_TENSORS:
            raise ValueError(f"the checkpoint holds {name}, which has no place in llama.cpp's llama architecture")
        layer, part = match.groups()
        if part == "self_attn.q_proj.weight":
            tensor = rotary_rows_to_interleaved(tensor, config.num_attention_heads)
        elif part == "self_attn.k_proj.weight":
            tensor = rotary_rows_to_interleaved(tensor, config.num_key_value_heads)
        tensors[f"blk.{layer}.{_LAYER_TENSORS[part]}"] = tensor
    return tensors


def _stored(name: str, tensor: torch.Tensor, dtype: str):
    """(array, raw GGML type or None) as written for `dtype`: norms stay float32 (llama.cpp computes them in
    float32 whatever the file type); matrices become f16 or Q8_0 (Q8_0 quantises blocks of 32 along a row, so a
    matrix whose rows are not a multiple of 32 long is written in f16)."""
    import gguf

    array = tensor.contiguous().numpy()
    if dtype == "f32" or array.ndim == 1:
        return array.astype(np.float32), None
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
    if dtype == "q8_0" and array.shape[-1] % block == 0:
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return array.astype(np.float16), None


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------

# transformers' `{% generation %}` block marks the assistant's tokens for training masks; other Jinja engines
# (llama.cpp's, Jinja2 in llama-cpp-python) do not know the tag. An `if true` block renders the same, whitespace
# control included.
_GENERATION_TAG = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")


def portable_chat_template(template: str) -> str:
    """`template` with transformers' `{% generation %}` blocks turned into plain blocks other engines render."""
    return _GENERATION_TAG.sub(
        lambda m: "{%" + m.group(1) + (" endif " if m.group(2) else " if true ") + m.group(3) + "%}", template
    )


def _tokenizer_metadata(tokenizer, data: dict, vocab_size: int) -> dict:
    """Everything llama.cpp's "gpt2" (byte-level BPE) tokenizer reads: tokens and their types, merges, special ids,
    whether bos/eos are added, the chat template."""
    import gguf

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ValueError(
            f"the tokenizer has ids up to {max(vocab.values())} but the model only {vocab_size} embeddings: they do "
            "not belong together"
        )
    added = {token["id"]: token for token in data.get("added_tokens", [])}
    by_id = {index: token for token, index in vocab.items()}
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            # Embedding rows the tokenizer never produces (a vocabulary padded to a round size).
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if added[index].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in data["model"].get("merges", [])]

    # What encoding adds around a text, read from the tokenizer's behaviour rather than from its settings.
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    add_bos = len(full) > len(plain) and full[0] == tokenizer.bos_token_id and full[1:1 + len(plain)] == plain
    add_eos = (len(full) > len(plain) and full[-1] == tokenizer.eos_token_id
               and full[len(full) - 1 - len(plain):-1] == plain)
    if len(full) - len(plain) != add_bos + add_eos:
        raise ValueError(
            f"the tokenizer turns 'a' into {full} (without special tokens {plain}): it adds tokens other than bos and "
            "eos, which llama.cpp would not add"
        )
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "unk": tokenizer.unk_token_id,
        "add_bos": bool(add_bos),
        "add_eos": bool(add_eos),
        "chat_template": portable_chat_template(template) if isinstance(template, str) else None,
    }


# ----------------------------------------------------------------------------------------------------------------
# The file
# ----------------------------------------------------------------------------------------------------------------


def export_to_gguf(
    model_dir: str | os.PathLike,
    output: str | os.PathLike,
    dtype: str = DEFAULT_GGUF_DTYPE,
    overwrite: bool = False,
) -> dict:
    """Write the attention-only Yuyan model in `model_dir`, with its tokenizer, as one GGUF file at `output`.

    `dtype` is how matrices are stored: "f32" (exactly the model's float32 weights), "f16" or "q8_0" (8-bit
    blocks, a quarter of f32's size); norms stay float32. Every refusal (see the module docstring) comes before
    anything is written; the file is written beside `output` under a temporary name and renamed into place, and an
    existing `output` is replaced only with `overwrite=True`. Returns a summary of what was written.
    """
    from transformers import PreTrainedTokenizerFast

    from yuyan import YuyanConfig, YuyanForCausalLM

    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not a GGUF type Yuyan writes; allowed: {list(GGUF_DTYPES)}")
    model_dir, output = Path(model_dir), Path(output)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: give a saved Yuyan model folder")
    check_output_file(output, overwrite, _ALLOW_OVERWRITE)
    try:
        import gguf
    except ImportError:
        raise ValueError("writing GGUF needs the gguf package: pip install gguf (or pip install -e '.[gguf]')") from None

    # Every refusal before any weight is read.
    config = YuyanConfig.from_pretrained(model_dir)
    check_gguf_config(config)
    pre = llama_cpp_pre_tokenizer(model_dir)
    data = _tokenizer_json(model_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    vocab = _tokenizer_metadata(tokenizer, data, config.vocab_size)

    model = YuyanForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tensors = gguf_tensors(model.state_dict(), config)
    del model

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    check_output_file(output, overwrite, _ALLOW_OVERWRITE)  # again: something may have appeared meanwhile
    with replacing_file(output) as temporary:
        writer = gguf.GGUFWriter(temporary, "llama")
        try:
            writer.add_name(model_dir.resolve().name)
            writer.add_file_type(file_type)
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            writer.add_vocab_size(config.vocab_size)
            writer.add_context_length(config.max_position_embeddings)
            writer.add_embedding_length(config.hidden_size)
            writer.add_block_count(config.num_hidden_layers)
            writer.add_feed_forward_length(config.intermediate_size)
            writer.add_head_count(config.num_attention_heads)
            writer.add_head_count_kv(config.num_key_value_heads)
            # Written always: llama.cpp derives a head's width from hidden_size / heads when these are missing.
            writer.add_key_length(config.head_dim)
            writer.add_value_length(config.head_dim)
            writer.add_rope_dimension_count(config.head_dim)
            writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
            writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))

            writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
            writer.add_tokenizer_pre(pre)
            writer.add_token_list(vocab["tokens"])
            writer.add_token_types(vocab["types"])
            writer.add_token_merges(vocab["merges"])
            for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                             ("pad", writer.add_pad_token_id), ("unk", writer.add_unk_token_id)):
                if vocab[key] is not None:
                    add(vocab[key])
            writer.add_add_bos_token(vocab["add_bos"])
            writer.add_add_eos_token(vocab["add_eos"])
            if vocab["chat_template"] is not None:
                writer.add_chat_template(vocab["chat_template"])

            for name, tensor in tensors.items():
                array, raw_dtype = _stored(name, tensor, dtype)
                writer.add_tensor(name, array, raw_dtype=raw_dtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return {
        "output": str(output),
        "format": "gguf",
        "dtype": dtype,
        "pre_tokenizer": pre,
        "layers": config.num_hidden_layers,
        "tensors": len(tensors),
        "parameters": sum(t.numel() for t in tensors.values()),
        "bytes": output.stat().st_size,
        "chat_template": vocab["chat_template"] is not None,
    }


__all__ = [
    "DEFAULT_GGUF_DTYPE",
    "GGUF_DTYPES",
    "check_gguf_config",
    "export_to_gguf",
    "gguf_tensors",
    "llama_cpp_pre_tokenizer",
    "portable_chat_template",
    "rotary_rows_to_interleaved",
]

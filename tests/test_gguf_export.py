"""`yuyan export --format gguf`: an attention-only Yuyan model and its tokenizer as one GGUF file.

The fast tests read the file back with the `gguf` package (hyper-parameters, tokenizer, tensors, storage types) and
check every refusal happens before anything is written. The slow ones run the file in real llama.cpp (through
llama-cpp-python): the same token ids as the transformers tokenizer, the same greedy tokens as `model.generate` in
f32, the same top-1 predictions in f16 and q8_0, and no warning from llama.cpp when it loads the file.
"""

from __future__ import annotations

import contextlib
import ctypes
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from run_helpers import paragraphs
from yuyan import YuyanConfig, YuyanForCausalLM
from yuyan.cli import main
from yuyan.modeling.modeling_yuyan import YuyanRotaryEmbedding, apply_rotary_pos_emb
from yuyan.tokenization import add_leading_space, train_tokenizer, train_word_tokenizer

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[gguf]')")

from yuyan.gguf_export import (  # noqa: E402  (needs gguf)
    DEFAULT_GGUF_DTYPE,
    GGUF_DTYPES,
    export_to_gguf,
    portable_chat_template,
    rotary_rows_to_interleaved,
)

# English, Chinese, both mixed, code and emoji, plus the edge cases of whitespace, special tokens and contractions.
TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog. It's 2024, and they'll see: DON'T  stop!",
    "chinese": "我们今天去公园玩，好吗？我不知道他在哪里。日本語のテキストです。ラーメン！",
    "mixed": "Python的库很好用，version 3.11 发布于2022年10月24日。(见 https://python.org)",
    "code": "def f(x):\n\tif x > 0:\n        return [x ** 2, {'a': 1}]  # square\r\n\n\n    return None\n",
    "emoji": "family 👨‍👩‍👧‍👦, flags 🇨🇳🇺🇸, skin 👍🏽, heart ❤️, keycap 1️⃣ 😶‍🌫️🦙🦙",
    "whitespace": "   spaced   out \n\n  \t end  ",
    "special": "<|endoftext|><|user|>\nhi there<|endoftext|><|assistant|>\n",
}
CORPUS = [*paragraphs(150, seed=0), *TEXTS.values(),
          "我们今天一起去公园里面散步，然后回家吃饭。\n", "import os\nfor i in range(10):\n    print(i)\n"]


def small_config(tokenizer, **overrides) -> YuyanConfig:
    values = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=96, max_position_embeddings=512,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    values.update(overrides)
    return YuyanConfig(**values)


def save_model(folder, tokenizer, **overrides) -> YuyanForCausalLM:
    torch.manual_seed(0)
    model = YuyanForCausalLM(small_config(tokenizer, **overrides)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS * 3, vocab_size=400, show_progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("gguf") / "model"
    save_model(folder, tokenizer, initializer_range=0.2)
    return folder


def read(path) -> tuple[dict, dict]:
    """(metadata fields by key, tensors by name) of a GGUF file."""
    reader = gguf.GGUFReader(path)
    return reader.fields, {tensor.name: tensor for tensor in reader.tensors}


def value(fields, key):
    return fields[key].contents()


# --------------------------------------------------------------------------------------------------------------
# The file


def neighbour_rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """llama.cpp's rotary embedding for the llama architecture: dimensions 2i and 2i + 1 of each head rotate
    together by position * base^(-2i / head_dim). x: (heads, positions, head_dim)."""
    dim = x.shape[-1]
    angles = positions[:, None].float() * base ** (-torch.arange(0, dim, 2).float() / dim)
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([even * angles.cos() - odd * angles.sin(), even * angles.sin() + odd * angles.cos()], -1)
    return rotated.flatten(-2)


def test_reordered_query_and_key_rows_give_llama_cpp_the_same_attention_scores():
    heads, kv_heads, head_dim, width = 4, 2, 8, 16
    config = YuyanConfig(hidden_size=width, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         head_dim=head_dim, num_hidden_layers=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    torch.manual_seed(0)
    q_weight, k_weight = torch.randn(heads * head_dim, width), torch.randn(kv_heads * head_dim, width)
    x = torch.randn(5, width)
    positions = torch.arange(5)

    # transformers' way: project, then rotate dimension i with i + head_dim / 2.
    cos, sin = YuyanRotaryEmbedding(config)(x, positions[None])
    q = (x @ q_weight.T).view(5, heads, head_dim).transpose(0, 1)[None]
    k = (x @ k_weight.T).view(5, kv_heads, head_dim).transpose(0, 1)[None]
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    expected = q[0] @ k[0].repeat_interleave(heads // kv_heads, 0).transpose(1, 2)

    # llama.cpp's way, with the reordered rows.
    q2 = (x @ rotary_rows_to_interleaved(q_weight, heads).T).view(5, heads, head_dim).transpose(0, 1)
    k2 = (x @ rotary_rows_to_interleaved(k_weight, kv_heads).T).view(5, kv_heads, head_dim).transpose(0, 1)
    q2, k2 = neighbour_rope(q2, positions, 500.0), neighbour_rope(k2, positions, 500.0)
    scores = q2 @ k2.repeat_interleave(heads // kv_heads, 0).transpose(1, 2)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(rotary_rows_to_interleaved(q_weight, heads), q_weight)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_the_file_holds_the_hyper_parameters_the_tokenizer_and_the_weights(tmp_path, tokenizer, tied):
    model = save_model(tmp_path / "model", tokenizer, tie_word_embeddings=tied, head_dim=24, rms_norm_eps=1e-5,
                       rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    summary = export_to_gguf(tmp_path / "model", tmp_path / "model.gguf", dtype="f32")
    assert summary["pre_tokenizer"] == "qwen2" and summary["dtype"] == "f32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.gguf"]  # no temporary file left
    fields, tensors = read(tmp_path / "model.gguf")

    assert value(fields, "general.architecture") == "llama"
    assert value(fields, "general.file_type") == gguf.LlamaFileType.ALL_F32
    expected = {
        "llama.context_length": 512, "llama.embedding_length": 64, "llama.block_count": 2,
        "llama.feed_forward_length": 96, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "llama.attention.key_length": 24, "llama.attention.value_length": 24, "llama.rope.dimension_count": 24,
        "llama.vocab_size": len(tokenizer),
    }
    assert {key: value(fields, key) for key in expected} == expected
    assert value(fields, "llama.rope.freq_base") == pytest.approx(500.0)
    assert value(fields, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)

    assert value(fields, "tokenizer.ggml.model") == "gpt2" and value(fields, "tokenizer.ggml.pre") == "qwen2"
    tokens = value(fields, "tokenizer.ggml.tokens")
    assert tokens == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    types = value(fields, "tokenizer.ggml.token_type")
    assert types[:5] == [gguf.TokenType.CONTROL] * 5 and set(types[5:]) == {gguf.TokenType.NORMAL}
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert value(fields, "tokenizer.ggml.merges") == [" ".join(pair) for pair in merges]
    assert (value(fields, "tokenizer.ggml.bos_token_id"), value(fields, "tokenizer.ggml.eos_token_id"),
            value(fields, "tokenizer.ggml.padding_token_id")) == (0, 0, 1)
    assert "tokenizer.ggml.unknown_token_id" not in fields  # byte-level BPE has no unknown token
    assert value(fields, "tokenizer.ggml.add_bos_token") is False
    assert value(fields, "tokenizer.ggml.add_eos_token") is False
    template = value(fields, "tokenizer.chat_template")
    assert "{%- generation" not in template and template == portable_chat_template(tokenizer.chat_template)

    names = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{part}.weight" for i in range(2) for part in
        ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    }
    # A tied head has no output matrix: llama.cpp then multiplies by the embedding.
    assert set(tensors) == names | (set() if tied else {"output.weight"})

    def stored(name):  # GGUF lists dimensions innermost first; the array holds them as numpy does
        return torch.from_numpy(np.array(tensors[name].data)).reshape(tuple(reversed(tensors[name].shape.tolist())))

    state = model.state_dict()
    torch.testing.assert_close(stored("token_embd.weight"), state["model.embed_tokens.weight"], atol=0, rtol=0)
    q, k, v = state["model.layers.1.self_attn.qkv_proj.weight"].split([4 * 24, 2 * 24, 2 * 24])
    torch.testing.assert_close(stored("blk.1.attn_q.weight"), rotary_rows_to_interleaved(q, 4), atol=0, rtol=0)
    torch.testing.assert_close(stored("blk.1.attn_k.weight"), rotary_rows_to_interleaved(k, 2), atol=0, rtol=0)
    torch.testing.assert_close(stored("blk.1.attn_v.weight"), v, atol=0, rtol=0)
    gate, up = state["model.layers.0.mlp.gate_up_proj.weight"].chunk(2)
    torch.testing.assert_close(stored("blk.0.ffn_gate.weight"), gate, atol=0, rtol=0)
    torch.testing.assert_close(stored("blk.0.ffn_up.weight"), up, atol=0, rtol=0)
    if not tied:
        torch.testing.assert_close(stored("output.weight"), state["lm_head.weight"], atol=0, rtol=0)


def test_storage_types(tmp_path, tokenizer):
    save_model(tmp_path / "model", tokenizer, intermediate_size=48)  # ffn_down's rows (48 long) fit no Q8_0 block
    types = {}
    for dtype in GGUF_DTYPES:
        summary = export_to_gguf(tmp_path / "model", tmp_path / f"{dtype}.gguf", dtype=dtype)
        fields, tensors = read(tmp_path / f"{dtype}.gguf")
        types[dtype] = {name: gguf.GGMLQuantizationType(t.tensor_type).name for name, t in tensors.items()}
        assert value(fields, "general.file_type") == {"f32": 0, "f16": 1, "q8_0": 7}[dtype]
        assert summary["bytes"] == (tmp_path / f"{dtype}.gguf").stat().st_size
    assert set(types["f32"].values()) == {"F32"}
    # Norms stay float32 whatever the file type.
    assert types["f16"]["output_norm.weight"] == types["q8_0"]["blk.0.attn_norm.weight"] == "F32"
    assert types["f16"]["blk.0.attn_q.weight"] == types["f16"]["token_embd.weight"] == "F16"
    assert types["q8_0"]["blk.0.attn_q.weight"] == types["q8_0"]["token_embd.weight"] == "Q8_0"
    assert types["q8_0"]["blk.0.ffn_down.weight"] == "F16"
    sizes = [(tmp_path / f"{dtype}.gguf").stat().st_size for dtype in GGUF_DTYPES]
    assert sizes[0] > sizes[1] > sizes[2]


def test_embedding_rows_beyond_the_tokenizer_are_unused_tokens(tmp_path, tokenizer):
    # A vocabulary padded to a round size: llama.cpp needs one token per embedding row.
    save_model(tmp_path / "model", tokenizer, vocab_size=len(tokenizer) + 3)
    export_to_gguf(tmp_path / "model", tmp_path / "model.gguf")
    fields, _ = read(tmp_path / "model.gguf")
    tokens, types = value(fields, "tokenizer.ggml.tokens"), value(fields, "tokenizer.ggml.token_type")
    count = len(tokenizer)
    assert len(tokens) == len(types) == value(fields, "llama.vocab_size") == count + 3
    assert tokens[count:] == [f"[PAD{i}]" for i in range(count, count + 3)]
    assert types[count:] == [gguf.TokenType.UNUSED] * 3


def test_the_chat_template_renders_the_same_without_transformers_extensions(tokenizer):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    # How llama-cpp-python (and most Jinja runtimes) render it: plain Jinja, blocks trimmed.
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = environment.from_string(portable_chat_template(tokenizer.chat_template))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "2 + 2?"}]
    rendered = template.render(messages=messages, add_generation_prompt=True, bos_token=tokenizer.bos_token,
                               eos_token=tokenizer.eos_token, raise_exception=raise_exception)
    assert rendered == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "{%- generation -%}" in tokenizer.chat_template  # the tag the rendering above did without
    assert portable_chat_template("a{%- generation -%}b{% endgeneration %}c") == "a{%- if true -%}b{% endif %}c"


# --------------------------------------------------------------------------------------------------------------
# Refusals: before anything is written


def _refuses(tmp_path, message, dtype="f16"):
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match=message):
        export_to_gguf(tmp_path / "model", tmp_path / "out.gguf", dtype=dtype)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(("overrides", "message"), [
    ({"layer_types": ["lstm", "full_attention"]}, r"layers \[0\] are LSTM layers .* llama.cpp has no LSTM layer "
                                                  r"\(its recurrent architectures are RWKV and Mamba"),
    ({"layer_types": ["lstm", "lstm"]}, r"layers \[0, 1\] are LSTM layers"),
    ({"intermediate_size": 0}, r"no MLP \(intermediate_size=0\)"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu': llama.cpp's llama architecture gates its MLP with SiLU only"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
     "rope_type='linear': only plain RoPE"),
])
def test_what_llama_cpp_cannot_run_is_refused(tmp_path, tokenizer, overrides, message):
    save_model(tmp_path / "model", tokenizer, **overrides)
    _refuses(tmp_path, message)


def test_a_tokenizer_llama_cpp_would_cut_differently_is_refused_with_the_command_that_makes_one(tmp_path):
    yuyan = train_tokenizer(CORPUS, vocab_size=300, show_progress=False, pre_tokenizer="yuyan")
    save_model(tmp_path / "model", yuyan)
    _refuses(tmp_path, r"uses the 'yuyan' pre-tokenizer .* none of them cuts text this way .* reproduces: "
                       r"\['qwen2', 'qwen35'\]; train a tokenizer llama.cpp reproduces with "
                       r"`yuyan tokenizer train --pre-tokenizer qwen2")


def test_a_tokenizer_with_its_own_expression_is_refused(tmp_path, tokenizer):
    save_model(tmp_path / "model", tokenizer)
    path = tmp_path / "model" / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|\W+"
    path.write_text(json.dumps(data), encoding="utf-8")
    _refuses(tmp_path, "its own regular expressions, which none of llama.cpp's built-in pre-tokenizers reproduces")


def test_a_word_level_or_leading_space_tokenizer_is_refused(tmp_path, tokenizer):
    words = train_word_tokenizer(CORPUS)
    save_model(tmp_path / "model", words)
    _refuses(tmp_path, "is a WordLevel tokenizer; llama.cpp reads byte-level BPE tokenizers only")

    spaced = add_leading_space(train_tokenizer(CORPUS, vocab_size=300, show_progress=False))
    save_model(tmp_path / "model", spaced)
    _refuses(tmp_path, "normalises text with a sequence of NFC, Prepend, Replace, which llama.cpp does not apply")


def test_a_tokenizer_bigger_than_the_embedding_is_refused(tmp_path, tokenizer):
    save_model(tmp_path / "model", tokenizer, vocab_size=300)
    _refuses(tmp_path, f"ids up to {len(tokenizer) - 1} but the model only 300 embeddings")


def test_arguments_and_outputs(tmp_path, model_dir, capsys):
    with pytest.raises(ValueError, match=r"dtype='q4_0' is not a GGUF type Yuyan writes; allowed: \['f32', 'f16', 'q8_0'\]"):
        export_to_gguf(model_dir, tmp_path / "x.gguf", dtype="q4_0")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        export_to_gguf(tmp_path, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="is a folder"):
        export_to_gguf(model_dir, tmp_path)
    (tmp_path / "x.gguf").write_bytes(b"mine")
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        export_to_gguf(model_dir, tmp_path / "x.gguf")
    assert (tmp_path / "x.gguf").read_bytes() == b"mine"

    output = tmp_path / "x.gguf"
    assert main(["export", "--format", "gguf", "--model", str(model_dir), "--output", str(output),
                 "--overwrite", "--dtype", "q8_0"]) == 0
    printed = capsys.readouterr().out
    assert "wrote a GGUF file (q8_0, 2 layers" in printed and "pre-tokenizer qwen2" in printed
    assert value(read(output)[0], "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert main(["export", "--format", "gguf", "--model", str(model_dir), "--output", str(tmp_path / "d.gguf")]) == 0
    assert value(read(tmp_path / "d.gguf")[0], "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert main(["export", "--format", "llama", "--model", str(model_dir), "--output", str(tmp_path / "l"),
                 "--dtype", "f16"]) == 2
    assert "--dtype applies to --format gguf only" in capsys.readouterr().err

    from yuyan.cli import export as cli_export

    assert (cli_export.GGUF_DTYPES, cli_export.DEFAULT_GGUF_DTYPE) == (GGUF_DTYPES, DEFAULT_GGUF_DTYPE)


# --------------------------------------------------------------------------------------------------------------
# In real llama.cpp


@pytest.fixture(scope="module")
def llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama-cpp-python is not installed (pip install llama-cpp-python; .ci/run installs it)")
    return llama_cpp


@contextlib.contextmanager
def llama_cpp_log(llama_cpp):
    """Everything llama.cpp logs inside the block, as (level, text): ggml's log levels (1 debug, 2 info, 3 warning,
    4 error, 5 the continuation of the line before), whatever llama-cpp-python's verbosity is."""
    records = []

    @llama_cpp.llama_log_callback
    def record(level, text, user_data):
        records.append((level, text.decode("utf-8", errors="replace")))

    llama_cpp.llama_log_set(record, ctypes.c_void_p(0))
    try:
        yield records
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def warnings_in(records) -> list[str]:
    found, level = [], 0
    for record_level, text in records:
        level = level if record_level == 5 else record_level
        if level in (3, 4) and text.strip():
            found.append(text.strip())
    return found


@contextlib.contextmanager
def llama(llama_cpp, path, repack: bool = True, **kwargs):
    """A llama.cpp model on one thread (a tiny model gains nothing from two, and loses much when another job holds
    the second core: llama.cpp's threads wait for each other spinning), closed after the block.

    `repack=False` keeps quantised weights in plain CPU buffers, as `llama-cli --no-repack` does. Otherwise llama.cpp
    repacks them for the CPU's matrix units where it can, and on CPUs with Intel AMX the AMX matrix multiply of
    llama-cpp-python 0.3.36 crashed the process on every q8_0 file tried, llama.cpp's own quantiser's included."""
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def plain_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    if not repack:
        llama_cpp.llama_cpp.llama_model_default_params = plain_buffers
    try:
        model = llama_cpp.Llama(str(path), n_threads=1, n_threads_batch=1, verbose=False, **kwargs)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = defaults
    try:
        yield model
    finally:
        model.close()


@pytest.mark.slow
@pytest.mark.parametrize("pre_tokenizer", ["qwen2", "qwen35"])
def test_llama_cpp_tokenizes_exactly_like_the_transformers_tokenizer(tmp_path, llama_cpp, pre_tokenizer):
    tokenizer = train_tokenizer(CORPUS * 3, vocab_size=400, show_progress=False, pre_tokenizer=pre_tokenizer)
    save_model(tmp_path / "model", tokenizer, vocab_size=len(tokenizer) + 8)  # with unused rows, as padded models
    export_to_gguf(tmp_path / "model", tmp_path / "model.gguf")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "model")
    # The whole model is loaded, not only its vocabulary (vocab_only): then llama.cpp reads every part of the file,
    # and its context matches the model's (with vocab_only it would warn that 512 exceeds a training length of 0).
    with llama_cpp_log(llama_cpp) as log, llama(llama_cpp, tmp_path / "model.gguf", n_ctx=512) as vocab:
        assert warnings_in(log) == []
        assert f"tokenizer.ggml.pre str              = {pre_tokenizer}" in "".join(text for _, text in log)
        for name, text in TEXTS.items():
            expected = reloaded(text)["input_ids"]
            assert len(expected) > 5, name
            assert vocab.tokenize(text.encode(), add_bos=False, special=True) == expected, name
        # The file says no bos is added, as the transformers tokenizer adds none.
        assert vocab.tokenize(b"hi", add_bos=True, special=True) == reloaded("hi")["input_ids"]
        # Decoding gives the text back (special tokens spelled out).
        ids = reloaded(TEXTS["mixed"])["input_ids"]
        assert vocab.detokenize(ids).decode() == TEXTS["mixed"]
        # The chat template in the file, rendered the way llama-cpp-python renders it, gives transformers' ids.
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        messages = [{"role": "user", "content": "你好, how are you?"}, {"role": "assistant", "content": "Fine."},
                    {"role": "user", "content": "2 + 2?"}]
        formatter = Jinja2ChatFormatter(vocab.metadata["tokenizer.chat_template"], eos_token=reloaded.eos_token,
                                        bos_token=reloaded.bos_token, add_generation_prompt=True)
        prompt = formatter(messages=messages).prompt
        assert vocab.tokenize(prompt.encode(), add_bos=False, special=True) == reloaded.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, tokenizer, one_thread):
    """A model trained for a few steps on the corpus, so that its predictions are peaked as a real model's are
    (a random model's near-ties would make quantised top-1 agreement a matter of luck)."""
    torch.manual_seed(0)
    ids = torch.tensor(tokenizer("\n\n".join(CORPUS * 3))["input_ids"])
    model = YuyanForCausalLM(small_config(tokenizer, intermediate_size=128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        starts = torch.randint(0, len(ids) - 65, (8,))
        batch = torch.stack([ids[start:start + 65] for start in starts])
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("trained") / "model"
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def held_out_ids(tokenizer, length: int) -> list[int]:
    ids = tokenizer("\n\n".join(paragraphs(40, seed=7)))["input_ids"][:length]
    assert len(ids) == length
    return ids


@pytest.mark.slow
def test_f32_in_llama_cpp_generates_the_same_greedy_tokens(tmp_path, llama_cpp, model_dir, tokenizer, one_thread):
    # Random weights, large enough to give varied, well-separated predictions (a briefly trained model repeats
    # one word).
    model = YuyanForCausalLM.from_pretrained(model_dir).eval()
    export_to_gguf(model_dir, tmp_path / "model.gguf", dtype="f32")
    prompt = held_out_ids(tokenizer, 12)
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=64, min_new_tokens=64, do_sample=False,
                              eos_token_id=None, pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
    # llama.cpp keeps keys and values in f16 unless told otherwise; an f32 cache makes the whole computation f32.
    with llama_cpp_log(llama_cpp) as log, llama(llama_cpp, tmp_path / "model.gguf", n_ctx=512, logits_all=True,
                                                 type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) as run:
        assert warnings_in(log) == []
        run.eval(prompt)
        with torch.no_grad():
            reference = model(torch.tensor([prompt])).logits[0].numpy()
        np.testing.assert_allclose(run.scores[:len(prompt)], reference, atol=1e-3, rtol=0)
        generated = []
        for _ in range(64):
            token = int(np.argmax(run.scores[run.n_tokens - 1]))
            generated.append(token)
            run.eval([token])
    assert generated == expected
    assert len(set(expected)) > 10  # the comparison covers more than a repeated token


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "least"), [("f16", 0.98), ("q8_0", 0.95)])
def test_f16_and_q8_0_in_llama_cpp_predict_the_same_next_tokens(tmp_path, llama_cpp, trained_dir, tokenizer,
                                                                  dtype, least):
    model = YuyanForCausalLM.from_pretrained(trained_dir).eval()
    export_to_gguf(trained_dir, tmp_path / "model.gguf", dtype=dtype)
    ids = held_out_ids(tokenizer, 257)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0, :256].argmax(-1).numpy()
    # A context longer than the model's (512) is the one thing llama.cpp should warn about here: seeing that
    # warning shows the log is captured at all.
    with llama_cpp_log(llama_cpp) as log, llama(llama_cpp, tmp_path / "model.gguf", repack=False, n_ctx=1024,
                                                 logits_all=True) as run:
        run.eval(ids)
        predicted = run.scores[:256].argmax(-1)
    warned = warnings_in(log)
    assert warned and all("n_ctx_train (512)" in warning for warning in warned), warned
    agreement = float((predicted == expected).mean())
    assert agreement >= least, f"{dtype}: top-1 agreement {agreement:.3f} over 256 positions"


@pytest.mark.slow
def test_a_model_made_by_the_commands_runs_in_llama_cpp(tmp_path, llama_cpp):
    """The whole path with default settings: `yuyan tokenizer train`, `yuyan pretrain` (a tiny attention model),
    `yuyan export --format gguf`; llama.cpp loads the file without a warning, tokenizes as the saved tokenizer and
    continues greedily as `generate` does."""
    from run_helpers import run_cli

    text = "".join(paragraph + "\n\n" for paragraph in paragraphs(80, seed=3))
    (tmp_path / "train.txt").write_text(text)
    tokenizer = run_cli(["tokenizer", "train", "--data", str(tmp_path / "train.txt"), "--vocab-size", "300",
                         "--output", str(tmp_path / "tokenizer")])
    assert tokenizer.returncode == 0, tokenizer.stderr[-2000:]
    pretrain = run_cli([
        "pretrain", "--config", "tiny-attention", "--set", "hidden_size=32", "--set", "num_hidden_layers=2",
        "--set", "intermediate_size=48", "--set", "max_position_embeddings=256", "--data", str(tmp_path / "train.txt"),
        "--tokenizer", str(tmp_path / "tokenizer"), "--block-size", "32", "--batch-size", "4", "--max-steps", "20",
        "--output", str(tmp_path / "run"),
    ])
    assert pretrain.returncode == 0, pretrain.stderr[-2000:]
    assert main(["export", "--format", "gguf", "--dtype", "f32", "--model", str(tmp_path / "run"),
                 "--output", str(tmp_path / "run.gguf")]) in (0, None)

    model = YuyanForCausalLM.from_pretrained(tmp_path / "run").eval()
    saved = AutoTokenizer.from_pretrained(tmp_path / "run")
    sample = "the quiet bridge 2024, 雨 under a grey sky 🌧 near x = [1, 2]"
    prompt = saved("the old stone bridge", add_special_tokens=False)["input_ids"]
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24, do_sample=False,
                              eos_token_id=None, pad_token_id=saved.pad_token_id)[0, len(prompt):].tolist()
    with llama_cpp_log(llama_cpp) as log, llama(llama_cpp, tmp_path / "run.gguf", n_ctx=256, logits_all=True,
                                                 type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) as run:
        assert warnings_in(log) == []
        assert run.tokenize(sample.encode(), add_bos=False, special=False) == saved(
            sample, add_special_tokens=False)["input_ids"]
        run.eval(prompt)
        generated = []
        for _ in range(24):
            token = int(np.argmax(run.scores[run.n_tokens - 1]))
            generated.append(token)
            run.eval([token])
    assert generated == expected

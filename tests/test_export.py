"""`yuyan export`: an attention-only Yuyan model becomes a plain transformers Llama folder with the same logits
(loaded with no remote code, where yuyan cannot be imported), and a Llama checkpoint becomes a Yuyan model, all
attention (same logits) or with some layers swapped for new LSTM layers."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

from model_helpers import random_ids, run_without_yuyan, tiny_config
from yuyan import YuyanForCausalLM
from yuyan.cli import main
from yuyan.export import export_to_llama, import_from_llama


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from run_helpers import train_tiny_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    train_tiny_tokenizer(folder)
    return folder


def save_yuyan(folder, tokenizer_dir, stack="attention", **overrides):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = YuyanForCausalLM(tiny_config(stack, vocab_size=len(tokenizer), **overrides)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    GenerationConfig(max_new_tokens=17, do_sample=False, eos_token_id=1, pad_token_id=0).save_pretrained(folder)
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_export_to_llama_gives_the_same_logits(tmp_path, tokenizer_dir, tied):
    model = save_yuyan(tmp_path / "yuyan", tokenizer_dir, tie_word_embeddings=tied,
                       rope_parameters={"rope_type": "default", "rope_theta": 500.0}, rms_norm_eps=1e-5,
                       hidden_act="gelu")
    code = main(["export", "--format", "llama", "--model", str(tmp_path / "yuyan"),
                 "--output", str(tmp_path / "llama")])
    assert code == 0
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    assert not list((tmp_path / "llama").glob("*.py"))
    llama = LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    assert (llama.config.num_key_value_heads, llama.config.head_dim, llama.config.tie_word_embeddings) == (2, 8, tied)
    ids = random_ids(2, 9)
    torch.testing.assert_close(logits(llama, ids), logits(model, ids), atol=1e-5, rtol=1e-5)
    assert llama.generation_config.max_new_tokens == 17
    exported_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llama")
    original = AutoTokenizer.from_pretrained(tmp_path / "yuyan")
    assert exported_tokenizer("the cat sat on a mat").input_ids == original("the cat sat on a mat").input_ids
    assert llama.generate(ids[:1], max_new_tokens=5).tolist() == model.generate(ids[:1], max_new_tokens=5).tolist()


@pytest.mark.slow
def test_exported_folder_loads_where_yuyan_cannot_be_imported(tmp_path, tokenizer_dir):
    model = save_yuyan(tmp_path / "yuyan", tokenizer_dir)
    export_to_llama(tmp_path / "yuyan", tmp_path / "llama")
    ids = random_ids(1, 6)
    torch.save(ids, tmp_path / "ids.pt")
    result = run_without_yuyan(f"""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "llama")!r}).eval()
        assert type(model).__name__ == "LlamaForCausalLM", type(model)
        AutoTokenizer.from_pretrained({str(tmp_path / "llama")!r})
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / "ids.pt")!r})).logits, {str(tmp_path / "out.pt")!r})
        """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), logits(model, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("stack", "overrides", "message"), [
    ("hybrid", {}, r"layers \[0, 2\] are LSTM layers"),
    ("lstm", {}, r"layers \[0, 1, 2\] are LSTM layers"),
    ("attention", {"intermediate_size": 0}, "no MLP"),
])
def test_what_llama_cannot_express_is_refused(tmp_path, tokenizer_dir, capsys, stack, overrides, message):
    save_yuyan(tmp_path / "yuyan", tokenizer_dir, stack=stack, **overrides)
    with pytest.raises(ValueError, match=message):
        export_to_llama(tmp_path / "yuyan", tmp_path / "llama")
    assert not (tmp_path / "llama").exists() and [p.name for p in tmp_path.iterdir()] == ["yuyan"]
    assert main(["export", "--format", "llama", "--model", str(tmp_path / "yuyan"),
                 "--output", str(tmp_path / "llama")]) == 2
    assert "LSTM" in capsys.readouterr().err or stack == "attention"


def test_a_non_empty_output_is_kept_unless_overwrite(tmp_path, tokenizer_dir):
    save_yuyan(tmp_path / "yuyan", tokenizer_dir)
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        export_to_llama(tmp_path / "yuyan", tmp_path / "llama")
    assert [p.name for p in (tmp_path / "llama").iterdir()] == ["notes.txt"]
    export_to_llama(tmp_path / "yuyan", tmp_path / "llama", overwrite=True)
    assert not (tmp_path / "llama" / "notes.txt").exists() and (tmp_path / "llama" / "model.safetensors").exists()
    # No staging or replaced folder is left beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama", "yuyan"]


def save_llama(folder, tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(1)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
        pad_token_id=1, initializer_range=0.2,
    )).eval()
    llama.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return llama


def test_a_llama_checkpoint_becomes_a_yuyan_model_with_the_same_logits(tmp_path, tokenizer_dir):
    llama = save_llama(tmp_path / "llama", tokenizer_dir)
    code = main(["export", "--from", "llama", "--model", str(tmp_path / "llama"), "--output", str(tmp_path / "yuyan")])
    assert code == 0
    model = YuyanForCausalLM.from_pretrained(tmp_path / "yuyan").eval()
    assert model.config.mixer_types == ["full_attention"] * 4 and model.config.num_key_value_heads == 1
    ids = random_ids(2, 9)
    torch.testing.assert_close(logits(model, ids), logits(llama, ids), atol=1e-5, rtol=1e-5)
    assert (tmp_path / "yuyan" / "tokenizer.json").read_bytes() == (tmp_path / "llama" / "tokenizer.json").read_bytes()
    # And back: the round trip is exact.
    export_to_llama(tmp_path / "yuyan", tmp_path / "again")
    torch.testing.assert_close(logits(LlamaForCausalLM.from_pretrained(tmp_path / "again").eval(), ids),
                               logits(llama, ids), atol=0, rtol=0)


def test_importing_llama_with_some_layers_turned_into_lstm(tmp_path, tokenizer_dir, capsys):
    llama = save_llama(tmp_path / "llama", tokenizer_dir)
    code = main(["export", "--from", "llama", "--model", str(tmp_path / "llama"), "--output", str(tmp_path / "yuyan"),
                 "--layer-types", "lstm,full_attention", "lstm", "full_attention"])
    assert code == 0
    out = capsys.readouterr().out
    assert "newly initialised" in out and "model.layers.0.recurrent" in out
    model = YuyanForCausalLM.from_pretrained(tmp_path / "yuyan").eval()
    assert model.config.mixer_types == ["lstm", "full_attention", "lstm", "full_attention"]
    llama_weights = llama.state_dict()
    ours = model.state_dict()
    # Kept: the attention layers (fused), every MLP and norm, embeddings and head.
    q, k, v = (llama_weights[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    torch.testing.assert_close(ours["model.layers.1.self_attn.qkv_proj.weight"], torch.cat([q, k, v]))
    down = "model.layers.0.mlp.down_proj.weight"
    torch.testing.assert_close(ours[down], llama_weights[down])
    torch.testing.assert_close(ours["lm_head.weight"], llama_weights["lm_head.weight"])
    # New: LSTM weights with Yuyan's initialisation (forget-gate bias 1).
    lstm = model.model.layers[2].recurrent.lstm
    assert torch.all(lstm.bias_ih_l0[32:64] == 1.0)
    assert model.generate(random_ids(1, 4), max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_import_refuses_what_yuyan_cannot_express(tmp_path, tokenizer_dir):
    save_llama(tmp_path / "llama", tokenizer_dir)
    with pytest.raises(ValueError, match="give one type per layer"):
        import_from_llama(tmp_path / "llama", tmp_path / "out", mixer_types=["lstm"])
    with pytest.raises(ValueError, match=r"unknown entries \['gru'\]"):
        import_from_llama(tmp_path / "llama", tmp_path / "out", mixer_types=["gru"] * 4)
    LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=8, num_hidden_layers=1,
                                 num_attention_heads=2, attention_bias=True)).save_pretrained(tmp_path / "biased")
    with pytest.raises(ValueError, match="attention_bias=True"):
        import_from_llama(tmp_path / "biased", tmp_path / "out")
    assert not (tmp_path / "out").exists()

"""`yuyan.loading.load_model_and_tokenizer`, the one loader behind `yuyan generate` and `yuyan eval`."""

from __future__ import annotations

import json

import huggingface_hub
import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

from model_helpers import tiny_config
from yuyan import YuyanForCausalLM, YuyanForSequenceClassification, loading
from yuyan.loading import load_model_and_tokenizer, resolve_model_folder
from yuyan.tokenization import train_tokenizer

TEXTS = [f"the {word} sat on the mat near the {other}." for word in "cat dog fox bird".split()
         for other in "door tree wall".split()]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(texts=TEXTS, vocab_size=300, output_dir=folder, show_progress=False)
    return folder


def _save(model, folder, tokenizer_dir=None):
    model.save_pretrained(folder)
    if tokenizer_dir is not None:
        for item in tokenizer_dir.iterdir():
            (folder / item.name).write_bytes(item.read_bytes())
    return folder


@pytest.fixture(scope="module")
def yuyan_dir(tmp_path_factory, tokenizer_dir):
    torch.manual_seed(0)
    model = YuyanForCausalLM(tiny_config("hybrid", vocab_size=300))
    return _save(model, tmp_path_factory.mktemp("yuyan"), tokenizer_dir)


def test_loads_a_folder_in_eval_mode_on_the_device_and_dtype(yuyan_dir):
    model, tokenizer = load_model_and_tokenizer(yuyan_dir, dtype="bfloat16", device="cpu")
    assert isinstance(model, YuyanForCausalLM) and not model.training
    assert next(model.parameters()).dtype == torch.bfloat16 and model.device.type == "cpu"
    assert tokenizer("the cat")["input_ids"]
    model, _ = load_model_and_tokenizer(str(yuyan_dir), dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_on_a_cpu_without_native_bfloat16_warns(yuyan_dir, monkeypatch, recwarn, native):
    monkeypatch.setattr(loading, "cpu_has_native_bfloat16", lambda: native)
    model, _ = load_model_and_tokenizer(yuyan_dir, dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16  # a warning, not a refusal
    load_model_and_tokenizer(yuyan_dir, dtype="float32", device="cpu")
    warned = [w for w in recwarn if "CPU without native bfloat16" in str(w.message)]
    assert len(warned) == (0 if native else 1)


def test_model_class_loads_another_head(yuyan_dir):
    # The causal LM folder has no classification head: transformers initialises one, the loader passes it on.
    model, _ = load_model_and_tokenizer(yuyan_dir, device="cpu", model_class=AutoModelForSequenceClassification)
    assert isinstance(model, YuyanForSequenceClassification)


def test_other_causal_lms_load_unless_yuyan_only(tmp_path, tokenizer_dir):
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    folder = _save(llama, tmp_path / "llama", tokenizer_dir)
    model, _ = load_model_and_tokenizer(folder, device="cpu")
    assert isinstance(model, LlamaForCausalLM)
    with pytest.raises(ValueError, match="is not a Yuyan model .model_type 'llama'"):
        load_model_and_tokenizer(folder, yuyan_only=True)


def test_folder_problems_are_one_line_errors_before_loading(tmp_path, yuyan_dir):
    with pytest.raises(FileNotFoundError, match="model folder not found: .* does not exist"):
        load_model_and_tokenizer(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_and_tokenizer("./missing-model")  # a path, not a Hub id: never looked up online
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file, not a model folder"):
        load_model_and_tokenizer(a_file)
    with pytest.raises(ValueError, match="no config.json"):
        load_model_and_tokenizer(tmp_path)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "yuyan"}), encoding="utf-8")
    with pytest.raises(ValueError, match="holds no model weights"):
        load_model_and_tokenizer(no_weights)
    no_tokenizer = _save(YuyanForCausalLM(tiny_config("lstm", vocab_size=300)), tmp_path / "no-tokenizer")
    with pytest.raises(ValueError, match="has no tokenizer"):
        load_model_and_tokenizer(no_tokenizer)
    with pytest.raises(ValueError, match="unknown dtype 'float8'; choose from float32, bfloat16"):
        load_model_and_tokenizer(yuyan_dir, dtype="float8")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        load_model_and_tokenizer(yuyan_dir, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model_and_tokenizer(yuyan_dir, device="cuda")


def test_a_hub_id_that_cannot_be_fetched_is_an_oserror(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert resolve_model_folder("yuyan-nobody/no-such-model") is None  # a Hub id, not a local path
    with pytest.raises(OSError, match="Hugging Face Hub could not provide it"):
        load_model_and_tokenizer("yuyan-nobody/no-such-model")

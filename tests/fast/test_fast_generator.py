"""`yuyan.FastGenerator` and the stateful ONNX decoder: the tokens of `model.generate` on every stack (greedy, padded
batches, seeded sampling, stopping at eos), the on-disk cache of the preparation, the exported folder in plain
onnxruntime, and clear refusals of what the fast path does not do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from model_helpers import EOS, PAD, generation_model, random_ids  # noqa: E402

from yuyan import FastGenerator  # noqa: E402
from yuyan.fast.decoder import StatefulDecoder, empty_state  # noqa: E402

# Every layout the decoder tells apart: attention only, LSTM only, and a hybrid with either mixer first.
LAYOUTS = {
    "attention": ["full_attention"] * 2,
    "lstm": ["lstm"] * 2,
    "lstm_first": ["lstm", "full_attention", "lstm"],
    "attention_first": ["full_attention", "lstm"],
}

pytestmark = [pytest.mark.usefixtures("one_thread")]


def layout_model(name: str):
    return generation_model("attention", num_hidden_layers=len(LAYOUTS[name]), layer_types=LAYOUTS[name])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fast-cache")


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def pair(request, cache_dir, one_thread):
    """(model, its FastGenerator), one per layout; the export is paid once per module."""
    model = layout_model(request.param)
    return model, FastGenerator(model, cache_dir=cache_dir, threads=1)


def padded_batch():
    ids = random_ids(3, 9, seed=1)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, PAD), mask


# -- the decoder's function --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_stateful_decoder_gives_the_model_logits_in_chunks(name):
    model = layout_model(name)
    decoder = StatefulDecoder(model)
    ids = random_ids(2, 11)
    with torch.no_grad():
        expected = model(ids).logits
        state = empty_state(model.config, 2)
        start = 0
        for end in (4, 5, 11):  # a prompt, one token, then a chunk
            positions = torch.arange(start, end).expand(2, -1)
            logits, *state = decoder(ids[:, start:end], positions, torch.ones(2, end, dtype=torch.long), *state)
            torch.testing.assert_close(logits, expected[:, end - 1], rtol=1e-4, atol=1e-5)
            start = end
    grows = [tensor.shape[2] for tensor, spec in zip(state, decoder.layout) if spec.grows]
    fixed = [tuple(tensor.shape) for tensor, spec in zip(state, decoder.layout) if not spec.grows]
    assert all(length == 11 for length in grows)
    assert all(shape == (2, model.config.hidden_size) for shape in fixed)


# -- same tokens as generate -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_greedy_tokens_equal_generate(pair):
    model, fast = pair
    ids = random_ids(1, 7)
    expected = model.generate(ids, max_new_tokens=24, do_sample=False)
    assert torch.equal(fast.generate(ids, max_new_tokens=24), expected)


@pytest.mark.slow
def test_left_padded_batch_equals_generate(pair):
    model, fast = pair
    ids, mask = padded_batch()
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    assert torch.equal(fast.generate(ids, attention_mask=mask, max_new_tokens=16), expected)


@pytest.mark.slow
def test_seeded_sampling_draws_the_same_random_stream(pair):
    model, fast = pair
    ids, mask = padded_batch()
    options = dict(max_new_tokens=20, do_sample=True, temperature=0.7, top_k=12, top_p=0.9)
    torch.manual_seed(3)
    expected = model.generate(ids, attention_mask=mask, **options)
    torch.manual_seed(3)
    assert torch.equal(fast.generate(ids, attention_mask=mask, **options), expected)
    # Without the same seed the draws differ: the comparison above is not trivially true.
    torch.manual_seed(4)
    assert not torch.equal(fast.generate(ids, attention_mask=mask, **options), expected)


@pytest.mark.slow
def test_long_prompt_is_read_in_chunks(pair, monkeypatch):
    import yuyan.fast.generator as generator

    model, fast = pair
    monkeypatch.setattr(generator, "PROMPT_CHUNK", 5)  # a 23-token prompt: five calls
    ids = random_ids(2, 23, seed=2)
    expected = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(fast.generate(ids, max_new_tokens=8), expected)


@pytest.mark.slow
def test_eos_ends_rows_and_min_new_tokens_holds_it_back(cache_dir):
    model = layout_model("lstm_first")
    ids, mask = padded_batch()
    # Make eos the token the model picks at some step of some row, so that stopping really happens.
    free = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)[:, ids.shape[1]:]
    eos = int(free[1, 5])
    model.generation_config.eos_token_id = eos
    fast = FastGenerator(model, cache_dir=cache_dir, threads=1)
    for min_new in (0, 8):
        expected = model.generate(ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=min_new,
                                  do_sample=False, pad_token_id=PAD)
        got = fast.generate(ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=min_new, pad_token_id=PAD)
        assert torch.equal(got, expected)
    assert (got[:, ids.shape[1]:] == eos).any() or got.shape[1] < ids.shape[1] + 12


@pytest.mark.slow
def test_streamer_receives_the_prompt_then_each_token(pair):
    model, fast = pair

    class Collect:
        def __init__(self):
            self.parts, self.ended = [], False

        def put(self, value):
            self.parts.append(value.clone())

        def end(self):
            self.ended = True

    streamer = Collect()
    ids = random_ids(1, 5)
    out = fast.generate(ids, max_new_tokens=6, streamer=streamer)
    assert streamer.ended and torch.equal(streamer.parts[0], ids)
    assert torch.equal(torch.cat([part.view(-1) for part in streamer.parts[1:]]), out[0, 5:])


# -- the preparation and its cache -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_preparation_is_cached_by_weights(tmp_path):
    model = layout_model("lstm_first").train()
    first = FastGenerator(model, cache_dir=tmp_path, threads=1)
    assert model.training  # exporting leaves the caller's model in the mode it was in
    model.eval()
    again = FastGenerator(model, cache_dir=tmp_path, threads=1)
    assert not first.preparation.from_cache and again.preparation.from_cache
    assert again.preparation.path == first.preparation.path
    assert again.preparation.seconds < first.preparation.seconds
    assert "from the cache" in again.preparation.describe()
    with torch.no_grad():
        model.lm_head.weight[3] += 1.0  # tied: the embedding changes too
    changed = FastGenerator(model, cache_dir=tmp_path, threads=1)
    assert not changed.preparation.from_cache and changed.preparation.path != first.preparation.path
    ids = random_ids(1, 6)
    assert torch.equal(changed.generate(ids, max_new_tokens=10), model.generate(ids, max_new_tokens=10,
                                                                                 do_sample=False))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [first.preparation.path.name, changed.preparation.path.name])  # no staging folder left behind


def test_cache_location_follows_yuyan_cache(monkeypatch, tmp_path):
    from yuyan.fast.generator import _cache_root

    monkeypatch.setenv("YUYAN_CACHE", str(tmp_path))
    assert _cache_root(None) == tmp_path / "fast"
    assert _cache_root(tmp_path / "mine") == tmp_path / "mine"


# -- the exported artefact ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_thread):
    """`yuyan export --format onnx` of a saved hybrid folder (with a generation config), run in-process."""
    from yuyan.cli import main

    root = tmp_path_factory.mktemp("onnx-export")
    model = layout_model("lstm_first")
    model.save_pretrained(root / "model")
    main(["export", "--format", "onnx", "--model", str(root / "model"), "--output", str(root / "onnx")])
    return model, root / "onnx"


@pytest.mark.slow
def test_export_folder_decodes_in_plain_onnxruntime(exported):
    """What a host outside Python does: read decoder.json, feed the state back, pick the argmax."""
    model, folder = exported
    assert {"model.onnx", "decoder.json", "generation_config.json"} <= {p.name for p in folder.iterdir()}
    description = json.loads((folder / "decoder.json").read_text())
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == description["inputs"]
    assert [o.name for o in session.get_outputs()] == description["outputs"]

    ids = random_ids(2, 6).numpy()
    state = {}
    for entry in description["state"]:
        shape = [2 if axis == "batch" else 0 if axis == "past" else axis for axis in entry["shape"]]
        state[entry["input"]] = np.zeros(shape, np.float32)
    tokens, positions = ids, np.broadcast_to(np.arange(6), (2, 6))
    generated, total = [], 6
    for _ in range(20):
        outputs = session.run(None, {"input_ids": tokens, "position_ids": np.ascontiguousarray(positions),
                                     "attention_mask": np.ones((2, total), np.int64), **state})
        logits = outputs[0]
        for entry, value in zip(description["state"], outputs[1:]):
            state[entry["input"]] = value
        tokens = logits.argmax(-1)[:, None].astype(np.int64)
        generated.append(tokens)
        positions = np.full((2, 1), total)
        total += 1
    expected = model.generate(torch.from_numpy(ids), max_new_tokens=20, do_sample=False)[:, 6:]
    assert np.array_equal(np.concatenate(generated, axis=1), expected.numpy())


@pytest.mark.slow
def test_fast_generator_runs_an_export_folder(exported):
    model, folder = exported
    fast = FastGenerator(folder, threads=1)
    assert fast.preparation.path == folder
    ids, mask = padded_batch()
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    assert torch.equal(fast.generate(ids, attention_mask=mask, max_new_tokens=10), expected)


@pytest.mark.slow
def test_exported_lstm_output_takes_the_short_path(tmp_path):
    """Each LSTM operator's sequence output reaches the graph through Squeeze and Transpose only (the exporter's
    run-time reshape chain is rewritten); that this graph computes the model's function is what the decoding tests
    above check."""
    import onnx

    from yuyan.fast.onnx import export_decoder

    path = export_decoder(layout_model("lstm_first"), tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    lstms = [node for node in graph.node if node.op_type == "LSTM"]
    assert len(lstms) == 2
    for lstm in lstms:
        users = [node.op_type for node in graph.node if lstm.output[0] in node.input]
        assert users == ["Squeeze"]
    assert not any(node.op_type == "Shape" and node.input[0] in {l.output[0] for l in lstms} for node in graph.node)


def test_export_refuses_a_folder_that_is_not_a_model(tmp_path):
    from yuyan.fast.onnx import export_onnx

    with pytest.raises(FileNotFoundError, match="config.json"):
        export_onnx(tmp_path, tmp_path / "out")


# -- what the fast path does not do ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_refusals_point_to_generate(pair):
    model, fast = pair
    ids = random_ids(1, 4)
    with pytest.raises(ValueError, match=r"beam search.*model\.generate"):
        fast.generate(ids, num_beams=4)
    with pytest.raises(ValueError, match=r"repetition_penalty.*model\.generate"):
        fast.generate(ids, repetition_penalty=1.3)
    with pytest.raises(ValueError, match="vocabulary"):
        fast.generate(torch.tensor([[model.config.vocab_size]]))
    with pytest.raises(ValueError, match="no real token"):
        fast.generate(ids, attention_mask=torch.zeros_like(ids))
    config = model.generation_config
    config.no_repeat_ngram_size = 2
    try:
        with pytest.raises(ValueError, match=r"no_repeat_ngram_size=2.*model\.generate"):
            fast.generate(ids)
    finally:
        config.no_repeat_ngram_size = None


def test_a_model_of_another_kind_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2))
    with pytest.raises(ValueError, match="Yuyan causal language models"):
        FastGenerator(llama)


def test_dynamic_rope_is_refused():
    model = generation_model("attention", rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                                                           "factor": 2.0})
    with pytest.raises(ValueError, match="dynamic RoPE"):
        FastGenerator(model)

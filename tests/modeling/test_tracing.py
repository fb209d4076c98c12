"""Export and compilation: `torch.export`, `torch.compile(fullgraph=True)`, ONNX, and the static cache in `generate`.

Compilation is slow on a small CPU, so the compile tests use Dynamo with the `eager` backend where what is checked
is that the whole graph is captured (any graph break fails `fullgraph=True`); one test runs the real (inductor)
backend on the attention stack's forward.
"""

from __future__ import annotations

import pytest
import torch
from transformers import CompileConfig, StaticCache

from model_helpers import STACKS, VOCAB, generation_model, random_ids

ALL_STACKS = sorted(STACKS)


class LogitsOnly(torch.nn.Module):
    """The language model as an exported graph sees it: ids and mask in, logits out (no cache object)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def compile_config(backend: str = "eager") -> CompileConfig:
    config = CompileConfig(fullgraph=True, dynamic=False, backend=backend, mode="default")
    # transformers compiles automatically on accelerators only; this flag asks for it on the CPU too.
    config._compile_all_devices = True
    return config


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_torch_export_gives_the_eager_logits(stack, one_thread):
    model = generation_model(stack)
    ids = random_ids(2, 7)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        program = torch.export.export(
            model, args=(), kwargs={"input_ids": ids, "attention_mask": mask, "use_cache": False}, strict=False
        )
        exported = program.module()(input_ids=ids, attention_mask=mask, use_cache=False)
    torch.testing.assert_close(exported.logits, expected)
    # The graph is not specialised to the ids or the mask it was traced with: left padding gives the eager logits.
    other = random_ids(2, 7, seed=5)
    padded = mask.clone()
    padded[0, :3] = 0
    with torch.no_grad():
        torch.testing.assert_close(
            program.module()(input_ids=other, attention_mask=padded, use_cache=False).logits,
            model(input_ids=other, attention_mask=padded, use_cache=False).logits,
        )


@pytest.mark.parametrize("stack", ALL_STACKS)
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "padded-mask"])
def test_torch_export_with_dynamic_batch_and_length_gives_the_eager_logits(stack, masked, one_thread):
    """One program, traced at batch 2 and length 7, runs other batch sizes and lengths: LSTM layers must not
    unroll their loop over the traced length (that fails export with 'Constraints violated')."""
    model = LogitsOnly(generation_model(stack))
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    ids = random_ids(2, 7)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    args, dynamic_shapes = ((ids, mask), ({0: batch, 1: length},) * 2) if masked else ((ids,), ({0: batch, 1: length},))
    with torch.no_grad():
        program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=False)
    for rows, positions, padding in ((3, 3, (2, 0, 1)), (2, 11, (0, 6)), (2, 7, (3, 0))):
        other = random_ids(rows, positions, seed=positions)
        if masked:
            mask = torch.ones_like(other)
            for row, pads in enumerate(padding):
                mask[row, :pads] = 0  # left padding
            inputs = (other, mask)
        else:
            inputs = (other,)
        with torch.no_grad():
            expected = model(*inputs)
            exported = program.module()(*inputs)
        assert exported.shape == (rows, positions, VOCAB)
        torch.testing.assert_close(exported, expected, rtol=1e-5, atol=1e-5)


def test_out_of_vocabulary_ids_still_raise_in_eager_mode():
    model = generation_model("lstm")
    for bad in (VOCAB, -1):
        ids = random_ids(1, 4)
        ids[0, 2] = bad
        with pytest.raises(ValueError, match=f"token id {bad}, outside this model's vocabulary"):
            model(input_ids=ids)


@pytest.mark.slow
def test_attention_forward_compiles_with_fullgraph(one_thread):
    model = generation_model("attention")
    ids = random_ids(2, 6)
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
        torch.testing.assert_close(compiled(input_ids=ids, use_cache=False).logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("stack", ALL_STACKS)
def test_generate_compiles_the_one_token_decode_step(stack, one_thread):
    """transformers' automatic compilation (static cache + compile config) captures the decode step whole."""
    model = generation_model(stack)
    prompt = random_ids(2, 5)
    expected = model.generate(prompt, max_new_tokens=6, do_sample=False)
    torch._dynamo.reset()
    compiled = model.generate(
        prompt, max_new_tokens=6, do_sample=False, cache_implementation="static", compile_config=compile_config()
    )
    assert hasattr(model, "_compiled_call"), "generate did not take its compiled path"
    torch.testing.assert_close(compiled, expected)


@pytest.mark.parametrize("stack", ALL_STACKS)
@pytest.mark.parametrize(
    "settings",
    [dict(do_sample=False), dict(do_sample=True, top_k=10), dict(num_beams=3, do_sample=False)],
    ids=["greedy", "sample", "beam"],
)
def test_static_cache_generates_what_the_dynamic_cache_does(stack, settings, one_thread):
    model = generation_model(stack)
    prompt = random_ids(2, 6)
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0  # left padding
    outputs = []
    for cache_implementation in ("dynamic", "static"):
        torch.manual_seed(3)
        outputs.append(
            model.generate(
                prompt, attention_mask=mask, max_new_tokens=8, cache_implementation=cache_implementation, **settings
            )
        )
    torch.testing.assert_close(outputs[1], outputs[0])


@pytest.mark.slow
def test_attention_stack_exports_to_onnx_and_runs_in_onnxruntime(tmp_path, one_thread):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")

    model = generation_model("attention")
    ids = random_ids(2, 7)
    mask = torch.ones_like(ids)
    path = tmp_path / "yuyan.onnx"
    torch.onnx.export(
        LogitsOnly(model), (ids, mask), str(path), dynamo=True, input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = random_ids(2, 7, seed=9)
    (logits,) = session.run(None, {"input_ids": other.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        expected = model(input_ids=other, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-4, atol=1e-4)

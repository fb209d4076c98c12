"""The stateful ONNX decoder: `yuyan export --format onnx`, and running it in ONNX Runtime.

The exported graph is `StatefulDecoder` (yuyan/fast/decoder.py): inputs `input_ids`, `position_ids`,
`attention_mask` and the state after the past tokens (`past.{layer}.key` / `.value` for an attention layer,
`past.{layer}.h` / `.c` for an LSTM layer); outputs `logits` (the last position's, `(batch, vocab)`) and the state
after the new tokens (`present.{layer}.*`). The batch and the sequence lengths are dynamic: one graph reads a prompt
of any length and then one token at a time. An LSTM layer is ONNX's own `LSTM` operator.

An export folder holds `model.onnx`, `decoder.json` (the state layout and the special tokens: everything a host
needs to drive the graph), and the model's tokenizer and generation config when the source folder has them.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from yuyan.fast.decoder import StatefulDecoder, check_supported, state_layout

ONNX_FILE = "model.onnx"
DECODER_FILE = "decoder.json"
# The format of decoder.json and of the graph's inputs and outputs; a host checks it before driving the graph.
DECODER_FORMAT = 1
# 23: each RMS norm is one operator (RMSNormalization) instead of six.
OPSET = 23


def import_onnx_package(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"the ONNX decoder needs the `{module}` package: pip install 'yuyan[onnx]' (onnx, onnxscript, onnxruntime)"
        ) from None


def decoder_description(config) -> dict:
    """What decoder.json says: the graph's inputs and outputs, the state layout and the model's dimensions."""
    layout = state_layout(config)
    return {
        "format": DECODER_FORMAT,
        "inputs": ["input_ids", "position_ids", "attention_mask", *(t.input_name for t in layout)],
        "outputs": ["logits", *(t.output_name for t in layout)],
        "state": [
            {"input": t.input_name, "output": t.output_name, "layer": t.layer, "kind": t.kind,
             "shape": ["batch" if i == 0 else ("past" if axis is None else axis) for i, axis in enumerate(t.shape)]}
            for t in layout
        ],
        "layer_types": list(config.layer_types),
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "notes": (
            "logits are the last position's. attention_mask covers past and new tokens (1: real); it masks the "
            "attention layers only: LSTM layers read every position given, so feed prompts of different lengths "
            "one at a time. Start from zero LSTM states and keys/values with 0 past positions."
        ),
    }


def export_decoder(model, path: str | os.PathLike) -> Path:
    """Write `model`'s stateful decoder as an ONNX file at `path` (float32; a model in another dtype is exported
    from a float32 copy). Returns the path."""
    import_onnx_package("onnx")
    import_onnx_package("onnxscript")
    check_supported(model)
    weight = next(model.parameters())
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        # The graph is float32 and traced on the CPU, whatever the model was loaded as.
        model = copy.deepcopy(model).to("cpu", torch.float32)
    config = model.config
    decoder = StatefulDecoder(model)
    layout = state_layout(config)

    batch, length, past = 2, 3, 4  # distinct sizes, so that the tracer cannot confuse the axes
    example_state = []
    for tensor in layout:
        shape = [batch] + [past if axis is None else axis for axis in tensor.shape[1:]]
        example_state.append(torch.zeros(shape))
    example = (
        torch.zeros(batch, length, dtype=torch.long),
        torch.arange(past, past + length).expand(batch, -1).contiguous(),
        torch.ones(batch, past + length, dtype=torch.long),
        *example_state,
    )
    auto = torch.export.Dim.AUTO
    dynamic = [{0: auto, 1: auto}, {0: auto, 1: auto}, {0: auto, 1: auto}]
    # `forward(*state)`: torch.export sees the state as one (variadic) argument.
    dynamic.append(tuple({0: auto, 2: auto} if tensor.grows else {0: auto} for tensor in layout))
    description = decoder_description(config)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    training = model.training
    model.eval()  # traced without dropout; the caller's model gets its mode back below
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                decoder, example, dynamic_shapes=tuple(dynamic), input_names=description["inputs"],
                output_names=description["outputs"], opset_version=OPSET, dynamo=True, verbose=False,
                external_data=False, optimize=True,
            )
    finally:
        model.train(training)
    _name_axes(program.model, description)
    program.save(str(temporary), external_data=False)
    _simplify_lstm_outputs(temporary)
    os.replace(temporary, path)
    return path


def _simplify_lstm_outputs(path: Path) -> None:
    """Rewrite how each LSTM operator's output reaches the rest of the graph, in fewer operators.

    ONNX's LSTM returns (sequence, directions, batch, hidden); the exporter turns that into (batch, sequence,
    hidden) with a transpose, a reshape to a shape computed at run time (about eight small operators) and another
    transpose. With one direction, dropping the directions axis and swapping the first two is the same tensor:
    two operators. In a one-token step every operator costs microseconds, and this is a tenth of an LSTM model's
    step. Where the pattern is not the expected one the graph is left as it was."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name: str, op_type: str):
        users = [node for node in consumers.get(name, []) if node.op_type != "Shape"]
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    replaced, added = set(), []
    for index, node in enumerate(graph.node):
        if node.op_type != "LSTM" or any(a.name == "direction" and a.s != b"forward" for a in node.attribute):
            continue
        first = only_consumer(node.output[0], "Transpose")
        reshape = first and only_consumer(first.output[0], "Reshape")
        last = reshape and only_consumer(reshape.output[0], "Transpose")
        if not (first and last and list(first.attribute[0].ints) == [0, 2, 1, 3]
                and list(last.attribute[0].ints) == [1, 0, 2]):
            continue
        axes = f"{node.output[0]}__directions_axis"
        graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), axes))
        squeezed = f"{node.output[0]}__one_direction"
        added.append((index, [
            helper.make_node("Squeeze", [node.output[0], axes], [squeezed]),
            helper.make_node("Transpose", [squeezed], [last.output[0]], perm=[1, 0, 2]),
        ]))
        replaced.update(id(n) for n in (first, reshape, last))
    if not added:
        return
    nodes = [node for node in graph.node if id(node) not in replaced]
    for index, new in reversed(added):
        position = next(i for i, n in enumerate(nodes) if n is graph.node[index]) + 1
        nodes[position:position] = new
    # Drop what only fed the removed operators (the run-time shape computation).
    outputs = {value.name for value in graph.output}
    while True:
        used = {name for node in nodes for name in node.input} | outputs
        kept = [node for node in nodes if any(name in used for name in node.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))


def _name_axes(ir_model, description: dict) -> None:
    """Give every input's and output's varying axes one name each (batch, sequence, past, total). The tracer
    names them after its own symbols and may write a traced size for an axis it could not follow (an LSTM's
    output length); a host would then warn on every call."""
    names = {"input_ids": ("batch", "sequence"), "position_ids": ("batch", "sequence"),
             "attention_mask": ("batch", "total"), "logits": ("batch", description["vocab_size"])}
    for entry in description["state"]:
        shape = tuple("total" if axis == "past" else axis for axis in entry["shape"])
        names[entry["input"]] = tuple("past" if axis == "past" else axis for axis in entry["shape"])
        names[entry["output"]] = shape
    import onnx_ir as ir

    for value in (*ir_model.graph.inputs, *ir_model.graph.outputs):
        if value.name in names:
            value.shape = ir.Shape(list(names[value.name]))


def write_decoder_folder(model, folder: Path) -> None:
    """The two files every decoder folder holds, the graph and its description (decoder.json), written into
    `folder` (a staging folder that the caller renames into place)."""
    from yuyan.files import write_json_atomic

    export_decoder(model, folder / ONNX_FILE)
    write_json_atomic(folder / DECODER_FILE, decoder_description(model.config))


def export_onnx(model_dir: str | os.PathLike, output_dir: str | os.PathLike, overwrite: bool = False) -> dict:
    """`yuyan export --format onnx`: the model folder's stateful decoder, decoder.json, tokenizer and generation
    config, written into a staging folder and renamed into place as a whole."""
    from yuyan.export import _copy_tokenizer_and_generation_config
    from yuyan.files import check_output_folder, publish_folder, staging_dir
    from yuyan.loading import load_pretrained
    from yuyan.modeling import YuyanForCausalLM

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: give a saved Yuyan model folder")
    check_output_folder(output_dir, overwrite, "pass --overwrite (overwrite=True) to replace it")
    model = load_pretrained(YuyanForCausalLM, model_dir)
    with staging_dir(output_dir.parent, prefix=f".{output_dir.name}.tmp-") as staging:
        write_decoder_folder(model, staging)
        copied = _copy_tokenizer_and_generation_config(model_dir, staging)
        check_output_folder(output_dir, overwrite, "pass --overwrite (overwrite=True) to replace it")
        publish_folder(staging, output_dir)
    return {"output": str(output_dir), "format": "onnx", "layer_types": list(model.config.layer_types),
            "copied": copied, "size": (output_dir / ONNX_FILE).stat().st_size}


class OnnxDecoder:
    """An ONNX Runtime session over an exported decoder.

    `start(batch)` gives the empty state; `step(input_ids, position_ids, attention_mask, state)` returns the
    last position's logits and the new state, all NumPy arrays. Plain `session.run` with NumPy arrays measured as
    fast or faster per token than I/O binding, with the state kept as ONNX Runtime values or written into
    preallocated buffers, at batch 1 and 8 and after 8,192 tokens.
    """

    def __init__(self, folder: str | os.PathLike, threads: int | None = None):
        ort = import_onnx_package("onnxruntime")
        folder = Path(folder)
        description = json.loads((folder / DECODER_FILE).read_text(encoding="utf-8"))
        if description.get("format") != DECODER_FORMAT:
            raise ValueError(
                f"{folder / DECODER_FILE} describes decoder format {description.get('format')!r}; this Yuyan reads "
                f"format {DECODER_FORMAT}: export the model again"
            )
        self.description = description
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        self.state_inputs = [entry["input"] for entry in description["state"]]

    def start(self, batch_size: int) -> list[np.ndarray]:
        state = []
        for entry in self.description["state"]:
            shape = [batch_size if axis == "batch" else 0 if axis == "past" else axis for axis in entry["shape"]]
            state.append(np.zeros(shape, dtype=np.float32))
        return state

    def step(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray,
             state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
        }
        feed.update(zip(self.state_inputs, state))
        logits, *state = self.session.run(None, feed)
        return logits, state


__all__ = ["DECODER_FILE", "ONNX_FILE", "OnnxDecoder", "decoder_description", "export_decoder", "export_onnx"]

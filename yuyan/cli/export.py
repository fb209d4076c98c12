"""`yuyan export`: a Yuyan model to a plain transformers Llama folder, one GGUF file for llama.cpp or a stateful ONNX
decoder, or a Llama one to Yuyan (`yuyan.export`, `yuyan.gguf_export`, `yuyan.fast.onnx`)."""

from __future__ import annotations

import argparse

# Kept here too (the parser is built without importing the library): tests check it equals the library's.
GGUF_DTYPES = ("f32", "f16", "q8_0")
DEFAULT_GGUF_DTYPE = "f16"


def build(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help)
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--format", choices=["llama", "gguf", "onnx"],
                           help="write the Yuyan model in --model in this format: llama (a transformers Llama "
                                "folder, attention models), gguf (one file for llama.cpp and Ollama, attention "
                                "models) or onnx (a stateful decoder for ONNX Runtime, every stack)")
    direction.add_argument("--from", dest="source_format", choices=["llama"],
                           help="read --model in this format and write a Yuyan model")
    parser.add_argument("--model", required=True, help="the model folder to convert")
    parser.add_argument("--output", required=True,
                        help="the folder to write (must be empty, or --overwrite); with --format gguf, the file")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder or an output file")
    parser.add_argument("--dtype", choices=GGUF_DTYPES, default=None,
                        help=f"with --format gguf: how matrices are stored (default {DEFAULT_GGUF_DTYPE}); norms stay "
                             "f32; q8_0 is 8-bit blocks, about a quarter of f32's size")
    parser.add_argument("--layer-types", nargs="+", default=None, metavar="TYPE",
                        help="with --from llama: one of full_attention|lstm per layer (comma- or space-separated); "
                             "lstm layers get new, initialised weights")
    parser.add_argument("--seed", type=int, default=0, help="with --from llama: seed of the new LSTM weights")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> None:
    if args.layer_types is not None and args.source_format != "llama":
        raise ValueError("--layer-types applies to --from llama only")
    if args.dtype is not None and args.format != "gguf":
        raise ValueError("--dtype applies to --format gguf only")

    if args.format == "gguf":
        from yuyan.gguf_export import export_to_gguf

        summary = export_to_gguf(args.model, args.output, dtype=args.dtype or DEFAULT_GGUF_DTYPE,
                                 overwrite=args.overwrite)
        print(f"wrote a GGUF file ({summary['dtype']}, {summary['layers']} layers, "
              f"{summary['parameters'] / 1e6:.2f}M parameters, {summary['bytes'] / 1e6:.1f} MB, pre-tokenizer "
              f"{summary['pre_tokenizer']}) to {summary['output']}; run it with llama-cli -m {summary['output']}")
        return

    if args.format == "onnx":
        from yuyan.fast.onnx import export_onnx

        summary = export_onnx(args.model, args.output, overwrite=args.overwrite)
        print(f"wrote a stateful ONNX decoder ({', '.join(summary['layer_types'])}; {summary['size'] / 2**20:.1f} MiB) "
              f"to {summary['output']}; its inputs, outputs and state are described in "
              f"{summary['output']}/decoder.json")
        return

    from yuyan.export import export_to_llama, import_from_llama

    if args.format == "llama":
        summary = export_to_llama(args.model, args.output, overwrite=args.overwrite)
        print(f"wrote a Llama model ({summary['layers']} layers, {summary['parameters'] / 1e6:.2f}M parameters) to "
              f"{summary['output']}; load it with LlamaForCausalLM.from_pretrained({summary['output']!r})")
        return
    mixer_types = None
    if args.layer_types is not None:
        mixer_types = [t for item in args.layer_types for t in item.split(",") if t]
    summary = import_from_llama(args.model, args.output, mixer_types=mixer_types, overwrite=args.overwrite,
                                seed=args.seed)
    print(f"wrote a Yuyan model (layers: {', '.join(summary['mixer_types'])}) to {summary['output']}")
    if summary["initialised"]:
        print(f"  newly initialised (train before use): {len(summary['initialised'])} tensors, e.g. "
              f"{', '.join(summary['initialised'][:4])}")
        print(f"  dropped Llama attention tensors: {len(summary['dropped'])}")

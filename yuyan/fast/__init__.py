"""The fast decoding path: a stateful decoder (the state as explicit tensors), its ONNX export, and `FastGenerator`,
which drives it in ONNX Runtime. See docs/generation.md#fast-decoding."""

from yuyan.fast.generator import FastGenerator, Preparation

__all__ = ["FastGenerator", "Preparation"]

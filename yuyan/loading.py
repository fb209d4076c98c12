"""One way to load a saved model for use: a folder or a Hub id -> `(model, tokenizer)`, on a device, in a dtype.

```python
>>> from yuyan.loading import load_model_and_tokenizer
>>> model, tokenizer = load_model_and_tokenizer("runs/demo", dtype="bfloat16", device="cpu")
```

Used by `yuyan generate`, `yuyan eval` and the library functions behind them. A local folder is checked before
anything is loaded, so that a wrong path gives a one-line reason instead of a transformers traceback:

- `FileNotFoundError`: the folder does not exist (or a name that is a path, not a Hub id, points nowhere);
- `ValueError`: a file instead of a folder, no config.json, not a Yuyan model (with `yuyan_only`), no weights, no
  tokenizer, an unknown dtype or device, or a folder transformers cannot load;
- `OSError`: a Hub id the Hub cannot provide (offline, private or misspelt).

`load_finetuned(folder)` loads what `yuyan finetune` wrote: the task's model, or its LoRA adapter on the base model.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

from yuyan.errors import one_line
from yuyan.records import RUN_FILE, read_run
from yuyan.tasks import config_labels, get_task

DTYPES = ("float32", "bfloat16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def looks_local(name: str) -> bool:
    """A path rather than a Hub id (`name` or `owner/name`)."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
    )


def has_weights(folder: str | os.PathLike) -> bool:
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    names = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
    return any(os.path.isfile(os.path.join(folder, name)) for name in names)


@contextlib.contextmanager
def quiet_transformers():
    """No progress bars or info logs from transformers while loading: a command's stderr stays readable."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hub_verbosity = hub_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    # huggingface_hub logs every retry of an unreachable Hub as a warning.
    hub_logging.set_verbosity(hub_logging.CRITICAL)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hub_logging.set_verbosity(hub_verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_model_folder(
    name_or_path: str | os.PathLike, *, yuyan_only: bool = False, need_tokenizer: bool = True
) -> str | None:
    """The expanded local folder to load from, or None for a Hub id; raises for a folder that cannot be loaded.
    `need_tokenizer=False` for callers that take the tokenizer from elsewhere (`yuyan finetune --tokenizer`)."""
    name = str(name_or_path)
    folder = os.path.expanduser(name)
    if not os.path.exists(folder):
        if looks_local(name) or isinstance(name_or_path, os.PathLike):
            raise FileNotFoundError(f"model folder not found: {name} does not exist")
        return None
    if not os.path.isdir(folder):
        raise ValueError(f"{name} is a file, not a model folder")
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        if os.path.isfile(os.path.join(folder, "adapter_config.json")):
            raise ValueError(
                f"{name} holds a LoRA adapter, not a model (no config.json): use its base model, or a merged model "
                "(yuyan finetune --merge)"
            )
        raise ValueError(f"{name} is not a saved model folder (no config.json)")
    if yuyan_only:
        from yuyan.modeling.configuration_yuyan import YuyanConfig

        try:
            with open(config_file, encoding="utf-8") as handle:
                model_type = json.load(handle).get("model_type")
        except (ValueError, OSError, AttributeError) as error:
            raise ValueError(f"cannot read {config_file}: {error}") from None
        if model_type != YuyanConfig.model_type:
            raise ValueError(
                f"{name} is not a Yuyan model (model_type {model_type!r}, expected {YuyanConfig.model_type!r})"
            )
    if not has_weights(folder):
        raise ValueError(
            f"{name} holds no model weights (model.safetensors or pytorch_model.bin): "
            "is it the model folder that `yuyan pretrain` wrote?"
        )
    if need_tokenizer and not any(os.path.isfile(os.path.join(folder, file)) for file in TOKENIZER_FILES):
        raise ValueError(f"{name} has no tokenizer (no tokenizer.json or tokenizer_config.json); save one with the model")
    return folder


def resolve_device(device=None):
    """A `torch.device`: the one given (checked), else CUDA when available, else the CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}: {one_line(error)}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return target


def resolve_dtype(dtype):
    """None (the checkpoint's own), a name from `DTYPES`, or a `torch.dtype`."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU runs oneDNN's bfloat16 kernels natively (AVX-512 or AMX), as torch itself decides; on an
    AVX2-only CPU bf16 matmuls are emulated, many times slower than float32 (BENCHMARKS.md, "A CPU without
    native bfloat16")."""
    import torch

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return True if check is None else bool(check())


class YuyanCheckpointMismatchError(ValueError, RuntimeError):
    """A checkpoint whose tensors do not fit the model. A `ValueError` (the message says what is wrong), and also
    the `RuntimeError` that transformers raises for mismatched shapes, so code written against transformers'
    contract (`except RuntimeError`) still catches it."""


def load_pretrained(model_class, source, **kwargs):
    """`model_class.from_pretrained(source, **kwargs)`, with a clear error for a checkpoint whose shapes do not fit.

    As transformers promises, weights the checkpoint lacks (a new layer, a new head) are initialised and named in
    the load report that transformers logs. Weights whose shapes differ from the config stop the load, as in
    transformers, here with a `YuyanCheckpointMismatchError` saying what is wrong; `ignore_mismatched_sizes=True`
    re-initialises them instead.
    """
    try:
        return model_class.from_pretrained(source, **kwargs)
    except RuntimeError as error:
        if "ignore_mismatched_sizes" not in str(error):
            raise
        raise YuyanCheckpointMismatchError(
            f"the checkpoint at {source} has tensors whose shapes do not fit this configuration (the load report "
            "above lists them, checkpoint vs model): is it a checkpoint of another size, or the wrong config? Pass "
            "ignore_mismatched_sizes=True to re-initialise them."
        ) from None


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike,
    *,
    dtype=None,
    device=None,
    model_class=None,
    yuyan_only: bool = False,
):
    """Load `(model, tokenizer)` from a saved model folder or a Hub id, in eval mode on `device`.

    Args:
        name_or_path: a folder (`yuyan pretrain` / `yuyan finetune` / `save_pretrained` output) or a Hub id.
        dtype: "float32", "bfloat16", a `torch.dtype`, or None for the checkpoint's own.
        device: a torch device; None: CUDA when available, else the CPU.
        model_class: the Auto class to load with (default `AutoModelForCausalLM`; a task's class for fine-tuned
            folders).
        yuyan_only: refuse a folder whose config.json is not a Yuyan model's.

    Raises: see the module docstring.
    """
    folder = resolve_model_folder(name_or_path, yuyan_only=yuyan_only)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    import torch

    if torch_dtype == torch.bfloat16 and target.type == "cpu" and not cpu_has_native_bfloat16():
        warnings.warn("bfloat16 weights on a CPU without native bfloat16 (no AVX-512 / AMX): its bf16 matmuls are "
                      "emulated, many times slower than float32 here; float32 is the fast choice on this CPU.",
                      stacklevel=2)

    # The Auto classes know Yuyan already: importing this module ran yuyan/__init__.py, which registers them.
    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class
    from transformers import AutoTokenizer

    source = folder if folder is not None else str(name_or_path)
    kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = load_pretrained(model_class, source, **kwargs)
    except (OSError, ValueError) as error:
        if folder is not None:
            raise ValueError(f"cannot load the model in {name_or_path}: {one_line(error)}") from None
        raise OSError(
            f"{name_or_path} is not a local model folder, and the Hugging Face Hub could not provide it "
            f"(offline, private or misspelt?): {one_line(error)}"
        ) from None
    return model.to(target).eval(), tokenizer


def load_finetuned(folder: str | os.PathLike, **kwargs):
    """The model a fine-tuning run saved in `folder`: a full model loads with its Auto class; a LoRA adapter is
    put on its base model, with the task head configured from run.json (label names), as a `PeftModel`."""
    folder = Path(folder)
    run_folder = next((p for p in (folder, folder.parent) if (p / RUN_FILE).is_file()), None)
    if run_folder is None:
        raise FileNotFoundError(f"{folder} has no run.json: not a fine-tuning output")
    run = read_run(run_folder, finetuning=True)
    task = get_task(run.task)
    if (folder / "config.json").is_file():
        return load_pretrained(task.model_class, folder, **kwargs)
    adapter_config = folder / "adapter_config.json"
    if not adapter_config.is_file():
        raise FileNotFoundError(f"{folder} holds neither a model (config.json) nor an adapter (adapter_config.json)")
    from peft import PeftModel

    base = json.loads(adapter_config.read_text(encoding="utf-8"))["base_model_name_or_path"]
    labels = run.data.get("labels")
    updates = config_labels(labels) if labels and task.has_labels else {}
    model = load_pretrained(task.model_class, base, **updates, **kwargs)
    if task.name == "question-answering":
        model.config.question_answering = {"max_seq_length": run.data["max_seq_length"],
                                           "doc_stride": run.data["doc_stride"]}
    return PeftModel.from_pretrained(model, str(folder))

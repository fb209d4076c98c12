"""Evaluate a causal language model on raw text: token perplexity, bits per byte and word-level perplexity.

```python
>>> from yuyan.training.evaluation import evaluate_files
>>> result = evaluate_files("my-model", ["wikitext-2/test.txt"], block_size=512, stride=256)
>>> result["perplexity"], result["bits_per_byte"], result["word_perplexity"]
```

The command line does the same: `yuyan eval --model my-model --data wikitext-2/test.txt --json result.json`.

How the text is scored
----------------------
The text is tokenised as one stream (no special tokens added) into ids `x_1 .. x_N`, and the tokenizer's end-of-text
token `x_0` (eos, or bos where there is no eos) is put in front as the context of the first token: in training,
documents follow an end-of-text token, so the first token is scored as the start of a document. Every one of the `N`
tokens is scored exactly once, by sliding windows over `x_0 .. x_N`:

- the first window is `x_0 .. x_{T-1}` (T = `block_size`, or the whole sequence if it is shorter) and scores
  `x_1 .. x_{T-1}`;
- each next window ends `stride` tokens later and scores only the tokens not scored before (the last `stride`
  tokens of the window, fewer in the last window), with at least `T - stride` tokens of context;
- the last window ends at `x_N` and is moved back so that it too is `T` tokens long (its few tokens get the full
  context instead of a shorter window). Up to that last window this is the strided evaluation of the transformers
  perplexity guide; all windows have the same length, so they batch without padding.

The NLL of a token is `-log softmax(logits)[target]`, computed in float32 whatever the model's dtype. Then:

- `perplexity = exp(nll / tokens)` (tokens = N, the predicted tokens);
- `bits_per_byte = nll / ln 2 / bytes`, bytes = UTF-8 bytes of the text as read (before the tokenizer's NFC
  normalisation), so it compares across tokenizers;
- `word_perplexity = exp(nll / words)`, words counted by `count_words` the way the WikiText papers count them.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from yuyan.loading import load_model_and_tokenizer, resolve_model_folder

DEFAULT_MAX_BLOCK_SIZE = 1024
DEFAULT_BATCH_SIZE = 8


# ----------------------------------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------------------------------


def count_words(text: str) -> int:
    """Words as the WikiText papers count them: whitespace-separated words plus one end-of-line per line.

    - words: `len(text.split())`, i.e. maximal runs of non-whitespace characters (Python's `str.split()`; the
      same as summing `len(line.split())` over the lines);
    - lines: the text is cut on "\\n" only; every line counts, empty or blank ones included, and each "\\n" ends
      one line. A last line without a final "\\n" counts too if it is non-empty; the empty string after a final
      "\\n" is not a line. So `count("\\n") + (0 if text == "" or text.endswith("\\n") else 1)`, which is the
      number of lines Python yields when iterating over the file, each of which the WikiText word-level
      benchmarks score as `line.split() + ["<eos>"]`.

    On the (tokenised) WikiText-2 files this gives the published counts: 217,646 words for valid.txt and
    245,569 for test.txt. Only "\n" ends a line ("\r", form feeds and Unicode line separators only separate words),
    and a text made of several files is counted as the joined text.
    """
    if not text:
        return 0
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    return len(text.split()) + lines


# ----------------------------------------------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------------------------------------------


def sliding_windows(length: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows over a sequence of `length` positions (context token at 0, targets at 1 .. length-1).

    Returns `(begin, end, first_target)` triples: the window holds positions `begin .. end-1` and scores the
    targets `first_target .. end-1` (each predicted from the position before it, inside the window). The target
    ranges are disjoint, in order and cover `1 .. length-1` exactly; every window has `min(block_size, length)`
    positions. See the module docstring.
    """
    if length < 2:
        raise ValueError(f"need at least one token to score after the context token, got a sequence of {length}")
    _check_window_args(block_size, stride)
    size = min(block_size, length)
    windows = [(0, size, 1)]
    end = size
    while end < length:
        new_end = min(end + stride, length)
        windows.append((new_end - size, new_end, end))
        end = new_end
    return windows


def _check_window_args(block_size: Any, stride: Any) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an integer >= 2 (one context token and one target), got {block_size!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride < block_size:
        raise ValueError(
            f"stride must be an integer from 1 to block_size - 1 = {block_size - 1}, got {stride!r} "
            "(each window needs context for its first scored token)"
        )


def default_block_size(model) -> int:
    """The model's `max_position_embeddings`, capped at 1024 (1024 if the config has none)."""
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if not max_positions:
        return DEFAULT_MAX_BLOCK_SIZE
    return min(int(max_positions), DEFAULT_MAX_BLOCK_SIZE)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


def _safe_exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def _context_token_id(tokenizer) -> int:
    for name in ("eos_token_id", "bos_token_id"):
        token_id = getattr(tokenizer, name, None)
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither an eos nor a bos token to use as the context of the first token")


def tokenize_text(tokenizer, text: str) -> list[int]:
    """The ids of `text` tokenised as one stream, with no special tokens added."""
    # verbose=False: no "sequence longer than model_max_length" warning, the windows take care of the length.
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def evaluate_text(
    model,
    tokenizer,
    text: str,
    *,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    show_progress: bool = True,
    return_token_nll: bool = False,
) -> dict[str, Any]:
    """Score every token of `text` with `model` (a causal LM) and return the metrics.

    Args:
        model: a causal language model (e.g. `YuyanForCausalLM`); it is run on its own device and dtype, in eval
            mode and without gradients (its training mode is restored afterwards).
        tokenizer: the model's tokenizer.
        text: the text, scored as one stream (see the module docstring).
        block_size: window length in tokens; default `default_block_size(model)` (max_position_embeddings, at
            most 1024). Longer than `max_position_embeddings` is allowed (with a warning).
        stride: how far each window moves (1 .. block_size - 1); default `block_size // 2`.
        batch_size: windows per forward pass.
        show_progress: show a tqdm progress bar over the windows.
        return_token_nll: also return `token_nll`, the NLL of each token (a float32 tensor of length `tokens`).

    Returns:
        A dict: `nll` (total, nats), `tokens`, `bytes`, `words`, `loss` (nll / tokens), `perplexity`,
        `bits_per_byte`, `word_perplexity`, and the settings `block_size`, `stride`, `batch_size`, `windows`,
        `dtype`.

    Raises:
        ValueError: empty text, bad settings, a tokenizer without eos/bos, or ids outside the model's vocabulary.
    """
    block_size, stride = _window_settings(model, text, block_size, stride, batch_size)
    ids = tokenize_text(tokenizer, text)
    if not ids:
        raise ValueError("the text gives no tokens: nothing to evaluate")
    sequence = _scored_sequence(model, tokenizer, ids)
    windows = sliding_windows(len(sequence), block_size, stride)
    token_nll = torch.full((len(ids),), math.nan, dtype=torch.float32) if return_token_nll else None
    total_nll, scored = _score_windows(model, sequence, windows, batch_size, token_nll, show_progress)
    if scored != len(ids):  # cannot happen: sliding_windows covers every target once
        raise RuntimeError(f"scored {scored} tokens out of {len(ids)}")

    num_bytes = len(text.encode("utf-8"))
    words = count_words(text)
    result: dict[str, Any] = {
        "nll": total_nll,
        "tokens": len(ids),
        "bytes": num_bytes,
        "words": words,
        "loss": total_nll / len(ids),
        "perplexity": _safe_exp(total_nll / len(ids)),
        "bits_per_byte": total_nll / math.log(2) / num_bytes,
        "word_perplexity": _safe_exp(total_nll / words),
        "block_size": block_size,
        "stride": stride,
        "batch_size": batch_size,
        "windows": len(windows),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    if token_nll is not None:
        result["token_nll"] = token_nll
    return result


def _window_settings(model, text: Any, block_size: int | None, stride: int | None, batch_size: Any) -> tuple[int, int]:
    """The checked `(block_size, stride)`, defaults filled in; the other arguments checked too."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    if not text:
        raise ValueError("the text is empty: nothing to evaluate")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if block_size is None:
        block_size = default_block_size(model)
    if stride is None:
        stride = max(1, block_size // 2) if isinstance(block_size, int) else block_size
    _check_window_args(block_size, stride)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and block_size > max_positions:
        warnings.warn(
            f"block_size {block_size} is longer than the model's max_position_embeddings ({max_positions})",
            stacklevel=3,
        )
    return block_size, stride


def _scored_sequence(model, tokenizer, ids: list[int]) -> torch.Tensor:
    """The end-of-text context token followed by the text's ids, checked against the model's vocabulary."""
    sequence = torch.tensor([_context_token_id(tokenizer), *ids], dtype=torch.long)
    vocab_size = getattr(model.config, "vocab_size", None)
    if vocab_size is not None and int(sequence.max()) >= vocab_size:
        raise ValueError(
            f"the tokenizer gives id {int(sequence.max())}, but the model's vocabulary has {vocab_size} entries: "
            "the tokenizer does not belong to this model"
        )
    return sequence


def _score_windows(model, sequence: torch.Tensor, windows, batch_size: int, token_nll: torch.Tensor | None,
                   show_progress: bool) -> tuple[float, int]:
    """(total NLL, tokens scored) over the windows, `batch_size` at a time; fills `token_nll` when given."""
    from tqdm.auto import tqdm

    total_nll = 0.0
    scored = 0
    was_training = model.training
    model.eval()
    progress = tqdm(total=len(windows), desc="evaluating", unit="window", disable=not show_progress)
    try:
        with torch.inference_mode():
            for start in range(0, len(windows), batch_size):
                batch = windows[start:start + batch_size]
                inputs = torch.stack([sequence[begin:end] for begin, end, _ in batch]).to(model.device)
                counts = [end - first for _, end, first in batch]
                keep = max(counts) + 1  # the logits at the last `keep` positions; the very last one is unused
                logits = model(input_ids=inputs, use_cache=False, logits_to_keep=keep).logits
                for row, ((_, end, first), count) in enumerate(zip(batch, counts)):
                    row_logits = logits[row, keep - 1 - count:keep - 1].float()
                    targets = inputs[row, -count:]
                    nll = torch.nn.functional.cross_entropy(row_logits, targets, reduction="none")
                    total_nll += float(nll.double().sum())
                    scored += count
                    if token_nll is not None:
                        token_nll[first - 1:end - 1] = nll.cpu()
                progress.update(len(batch))
    finally:
        progress.close()
        model.train(was_training)
    return total_nll, scored


# ----------------------------------------------------------------------------------------------------------------
# Files and saved models
# ----------------------------------------------------------------------------------------------------------------


def read_texts(files: Sequence[str | os.PathLike]) -> str:
    """The files, each read whole as UTF-8, joined as they are (nothing added between them), in order."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if not files:
        raise ValueError("no data files given")
    parts = []
    for file in files:
        path = Path(file)
        if not path.exists():
            raise FileNotFoundError(f"data file not found: {path}")
        if not path.is_file():
            raise ValueError(f"not a file: {path}")
        try:
            parts.append(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    return "".join(parts)


def evaluate_files(
    model_or_dir,
    files: Sequence[str | os.PathLike],
    *,
    tokenizer=None,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dtype: str | torch.dtype = "float32",
    device=None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a model on the text of `files` (read whole as UTF-8, joined as they are, in order).

    `model_or_dir` is a saved Yuyan model folder (loaded by `yuyan.loading.load_model_and_tokenizer` with `dtype`
    and `device`) or a model object, in which case `tokenizer` is required and `dtype` / `device` are ignored. The result is that of
    `evaluate_text`, plus `files` and, for a folder, `model`.
    """
    is_folder = isinstance(model_or_dir, (str, os.PathLike))
    if not is_folder and tokenizer is None:
        raise ValueError("a tokenizer is required when a model object is given")
    if block_size is not None and stride is not None:
        _check_window_args(block_size, stride)  # fail before the (slow) loading
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if is_folder:
        # A missing or incomplete model folder is reported before a problem with the data; a name that is not a
        # local folder is not looked up on the Hub.
        if resolve_model_folder(model_or_dir, yuyan_only=True) is None:
            raise FileNotFoundError(f"model folder not found: {model_or_dir} does not exist")
    text = read_texts(files)
    if not text:
        raise ValueError(f"the data files are empty: {', '.join(str(f) for f in files)}")
    if is_folder:
        model, loaded_tokenizer = load_model_and_tokenizer(model_or_dir, dtype=dtype, device=device, yuyan_only=True)
        tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        model_name = str(model_or_dir)
    else:
        model, model_name = model_or_dir, None
    result = evaluate_text(
        model, tokenizer, text, block_size=block_size, stride=stride, batch_size=batch_size, show_progress=show_progress
    )
    result["files"] = [str(f) for f in files]
    if model_name is not None:
        result["model"] = model_name
    return result

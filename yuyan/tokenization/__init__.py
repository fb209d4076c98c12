"""Training and loading Yuyan tokenizers: byte-level BPE (the default) or word-level (`train_word_tokenizer`).

Train one from files, globs, a `datasets` dataset or any iterable of texts, and get a
`transformers.PreTrainedTokenizerFast` back; the saved folder loads with `AutoTokenizer.from_pretrained(path)`
where `yuyan` is not installed:

```python
>>> from yuyan.tokenization import train_tokenizer, special_token_ids
>>> tokenizer = train_tokenizer(files=["corpus/*.txt", "qa.jsonl"], vocab_size=8192, output_dir="my-tokenizer")
>>> special_token_ids(tokenizer)
{'bos_token_id': 0, 'eos_token_id': 0, 'pad_token_id': 1}
```

The command line does the same: `yuyan tokenizer train --data 'corpus/*.txt' --vocab-size 8192 --output my-tokenizer`.

The tokenizer reads its corpus with the streaming readers of `yuyan.corpus` (`iter_texts`, `iter_dataset_texts`),
as pretraining and fine-tuning do. Names are imported lazily, so `import yuyan.tokenization` does not load
`tokenizers` or `transformers`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # yuyan.tokenization.bpe
    "ASSISTANT": "bpe",
    "BUILTIN_SPECIAL_TOKENS": "bpe",
    "CorpusStats": "bpe",
    "DEFAULT_CHAT_TEMPLATE": "bpe",
    "DEFAULT_PRE_TOKENIZER": "bpe",
    "ENDOFTEXT": "bpe",
    "PAD": "bpe",
    "PRE_TOKENIZERS": "bpe",
    "PreTokenizer": "bpe",
    "ROLE_TOKENS": "bpe",
    "SPLIT_PATTERN": "bpe",
    "SYSTEM": "bpe",
    "USER": "bpe",
    "add_leading_space": "bpe",
    "build_backend_tokenizer": "bpe",
    "pre_tokenizer_choice": "bpe",
    "pre_tokenizer_of": "bpe",
    "save_tokenizer": "bpe",
    "special_token_ids": "bpe",
    "special_tokens_list": "bpe",
    "train_tokenizer": "bpe",
    "wrap_tokenizer": "bpe",
    # yuyan.tokenization.word
    "build_word_backend_tokenizer": "word",
    "train_word_tokenizer": "word",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

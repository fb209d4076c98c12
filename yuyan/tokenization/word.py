"""A word-level tokenizer: the classic language-modelling setup (Zaremba et al., the WikiText benchmarks, the
`seed-lstm` model), where the vocabulary is a list of whole words and every other word is one unknown token.

Pipeline (a `tokenizers` `WordLevel` model, wrapped like the BPE tokenizer in `PreTrainedTokenizerFast`):

- no normaliser: the text is taken as it is (WikiText is already tokenised: punctuation split off, numbers as
  `@,@` / `@.@`, rare words as `<unk>`), so the vocabulary counts exactly the words of the file;
- pre-tokeniser: a word is a run of non-whitespace characters, and each "\\n" is a token of its own (the line end,
  WikiText's `<eos>`); other whitespace only separates words;
- model: the `vocab_size` most frequent words, or all words seen `min_frequency` times; every other word becomes
  `<unk>` (WikiText's own unknown-word token, so its `<unk>` and an unseen word are the same token);
- decoding joins tokens with spaces (the spacing of the original text is not kept; "\\n" comes back as a line end
  between spaces).

The special tokens are the BPE tokenizer's (`<|endoftext|>` 0 as bos/eos/document separator, `<|pad|>` 1, the chat
roles 2-4), then `<unk>` 5, so pretraining, evaluation and generation take either tokenizer unchanged. Scored with
`yuyan eval`, a text gives one token per whitespace word plus one per line end: the WikiText word count, so token
perplexity and word perplexity are the same number.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .bpe import (
    BUILTIN_SPECIAL_TOKENS,
    DEFAULT_MODEL_MAX_LENGTH,
    _check_output_dir,
    _check_wrapper_args,
    _fit,
    _open_corpus,
    save_tokenizer,
    special_tokens_list,
    wrap_tokenizer,
)

UNK = "<unk>"
LINE_END = "\n"
# A word is what `str.split()` calls one; "\n" is cut out first, as its own token.
WORD_SPLIT_PATTERN = r"[^\S\n]+"


def build_word_backend_tokenizer():
    """An untrained `tokenizers.Tokenizer` with the word-level pre-tokeniser (WordLevel model, empty)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LINE_END), behavior="isolated"),
            pre_tokenizers.Split(Regex(WORD_SPLIT_PATTERN), behavior="removed"),
        ]
    )
    return tokenizer


def _train_word(
    texts: Iterable[Any] | None = None,
    *,
    files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    text_column: str = "text",
    txt_split: str = "line",
    separator: str | None = None,
    vocab_size: int | None = None,
    min_frequency: int = 1,
    special_tokens: Iterable[str] = (),
    max_texts: int | None = None,
    max_bytes: int | None = None,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    padding_side: str = "right",
    chat_template: str | None = None,
    output_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    show_progress: bool | None = None,
):
    from tokenizers import AddedToken, trainers

    all_special = special_tokens_list([UNK, *special_tokens])
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise ValueError(f"vocab_size must be an integer or None (every word), not {vocab_size!r}")
        if vocab_size < len(all_special) + 2:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: the {len(all_special)} special tokens, the line end and at "
                f"least one word need {len(all_special) + 2}"
            )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be a positive integer, not {min_frequency!r}")
    _check_wrapper_args(model_max_length, padding_side)
    if output_dir is not None:
        _check_output_dir(Path(output_dir), overwrite)
    corpus, stats = _open_corpus(texts, files, text_column, txt_split, separator, max_texts, max_bytes)

    backend = build_word_backend_tokenizer()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size if vocab_size is not None else 2**31 - 1,
        min_frequency=min_frequency,
        special_tokens=[AddedToken(token, special=True, normalized=False) for token in all_special],
        show_progress=sys.stderr.isatty() if show_progress is None else bool(show_progress),
    )
    # The special strings, `<unk>` included, are cut out of the texts before counting: a word the trainer counts
    # that is also a special token gets a second id, and the vocabulary a hole (tokenizers 0.22).
    _fit(backend, trainer, corpus, stats, all_special, max_texts)
    if LINE_END not in backend.get_vocab():
        # A corpus without line ends (one-line records) still gets the token, so that any text encodes the same
        # way. An added token that is not special: decoding with skip_special_tokens keeps it.
        backend.add_tokens([AddedToken(LINE_END, normalized=False, special=False)])

    tokenizer = wrap_tokenizer(
        backend,
        extra_special_tokens=all_special[len(BUILTIN_SPECIAL_TOKENS):],
        model_max_length=model_max_length,
        padding_side=padding_side,
        chat_template=chat_template,
        unk_token=UNK,
    )
    if output_dir is not None:
        save_tokenizer(tokenizer, output_dir, overwrite=overwrite)
    return tokenizer, stats


def train_word_tokenizer(
    texts: Iterable[Any] | None = None,
    *,
    files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    text_column: str = "text",
    txt_split: str = "line",
    separator: str | None = None,
    vocab_size: int | None = None,
    min_frequency: int = 1,
    special_tokens: Iterable[str] = (),
    max_texts: int | None = None,
    max_bytes: int | None = None,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    padding_side: str = "right",
    chat_template: str | None = None,
    output_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    show_progress: bool | None = None,
):
    """Train a word-level tokenizer and return it as a `transformers.PreTrainedTokenizerFast`.

    The corpus arguments are those of `train_tokenizer` (`texts` or `files`, `text_column`, `txt_split`,
    `separator`, `max_texts`, `max_bytes`).

    Args:
        vocab_size: keep the `vocab_size` most frequent words (special tokens and the line end included in the
            count); None (the default) keeps every word seen `min_frequency` times.
        min_frequency: a word must occur this often to get its own token (1: every word of the corpus).
        special_tokens: extra special tokens, after `<|endoftext|>` `<|pad|>` `<|system|>` `<|user|>`
            `<|assistant|>` `<unk>` (ids 0-5).
        chat_template: None by default (a word vocabulary has no chat use); `DEFAULT_CHAT_TEMPLATE` works too.

    On WikiText-2's training file with the defaults the vocabulary is 33,278 words and line end (`<unk>`
    included: the published WikiText-2 vocabulary, whose `<eos>` is the line end here) plus 5 special tokens.
    """
    tokenizer, _ = _train_word(
        texts, files=files, text_column=text_column, txt_split=txt_split, separator=separator, vocab_size=vocab_size,
        min_frequency=min_frequency, special_tokens=special_tokens, max_texts=max_texts, max_bytes=max_bytes,
        model_max_length=model_max_length, padding_side=padding_side, chat_template=chat_template,
        output_dir=output_dir, overwrite=overwrite, show_progress=show_progress,
    )
    return tokenizer


__all__ = ["LINE_END", "UNK", "build_word_backend_tokenizer", "train_word_tokenizer"]

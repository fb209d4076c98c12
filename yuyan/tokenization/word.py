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

from collections.abc import Iterable, Sequence
from typing import Any

from .bpe import TokenizerModel, train_tokenizer

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


def _check_word_vocab_size(vocab_size: Any, special_tokens: Sequence[str]) -> None:
    if vocab_size is None:
        return
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size must be an integer or None (every word), not {vocab_size!r}")
    if vocab_size < len(special_tokens) + 2:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the {len(special_tokens)} special tokens, the line end and at "
            f"least one word need {len(special_tokens) + 2}"
        )


def _word_trainer(vocab_size, min_frequency, special_tokens, show_progress, max_token_bytes):
    from tokenizers import trainers

    # The special strings, `<unk>` included, are cut out of the texts before counting (`_fit`): a word the
    # trainer counts that is also a special token gets a second id, and the vocabulary a hole (tokenizers 0.22).
    return trainers.WordLevelTrainer(
        vocab_size=vocab_size if vocab_size is not None else 2**31 - 1,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        show_progress=show_progress,
    )


def _add_line_end(backend) -> None:
    from tokenizers import AddedToken

    if LINE_END not in backend.get_vocab():
        # A corpus without line ends (one-line records) still gets the token, so that any text encodes the same
        # way. An added token that is not special: decoding with skip_special_tokens keeps it.
        backend.add_tokens([AddedToken(LINE_END, normalized=False, special=False)])


WORD_LEVEL = TokenizerModel(leading_special=(UNK,), check_vocab_size=_check_word_vocab_size,
                            build_backend=build_word_backend_tokenizer, build_trainer=_word_trainer,
                            after_fit=_add_line_end, unk_token=UNK)


def train_word_tokenizer(
    texts: Iterable[Any] | None = None,
    *,
    vocab_size: int | None = None,
    min_frequency: int = 1,
    chat_template: str | None = None,
    **options: Any,
):
    """Train a word-level tokenizer and return it as a `transformers.PreTrainedTokenizerFast`.

    Every other argument is that of `train_tokenizer` (the corpus: `texts` or `files`, `text_column`,
    `txt_split`, `separator`, `max_texts`, `max_bytes`; `special_tokens`, `model_max_length`, `padding_side`,
    `output_dir`, `overwrite`, `show_progress`, `return_stats`).

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
    return train_tokenizer(texts, vocab_size=vocab_size, min_frequency=min_frequency, chat_template=chat_template,
                           max_token_bytes=None, model=WORD_LEVEL, **options)



__all__ = ["LINE_END", "UNK", "build_word_backend_tokenizer", "train_word_tokenizer"]

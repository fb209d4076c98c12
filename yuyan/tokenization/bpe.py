"""Train, wrap and save Yuyan's byte-level BPE tokenizer.

The tokenizer is a plain `tokenizers` pipeline wrapped in `transformers.PreTrainedTokenizerFast`, so a saved folder
loads with `AutoTokenizer.from_pretrained(path)` on a machine where `yuyan` is not installed.

Pipeline:

- normaliser: Unicode NFC;
- pre-tokeniser: regular expressions cut the text into pieces (one of `PRE_TOKENIZERS`: by default Qwen2's, which
  llama.cpp reproduces; or Yuyan's own `SPLIT_PATTERN`, explained below), then `ByteLevel(use_regex=False)` maps
  each piece's UTF-8 bytes onto 256 printable characters;
- model: BPE over those bytes, whose alphabet always holds all 256 bytes, so every string is encodable;
- decoder: `ByteLevel`, the exact inverse of the byte mapping.

Hence `decode(encode(s)) == unicodedata.normalize("NFC", s)` for every string `s` (lossless up to NFC), as long as
special tokens are not skipped on decoding. ("Every string" means valid Unicode: a Python string holding a lone
surrogate cannot be encoded as UTF-8 and is refused by `tokenizers`.) One caveat: the NFC is the one `tokenizers`
computes, whose Unicode tables are older than recent Pythons'; about 50 combining marks of rare scripts added in
Unicode 10-14 (e.g. U+0D3B, U+1ACA) are then not reordered the way `unicodedata` would. The round trip is exactly
`tokenizer.backend_tokenizer.normalizer.normalize_str(s)` in every case. A text that contains a special token's
literal string (e.g. `"<|endoftext|>"`) is encoded with that special token, as in GPT-2; decoding gives the same
string back.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yuyan.files import check_output_folder, move_into, publish_folder, staging_dir

_ALLOW_OVERWRITE = "pass --overwrite (overwrite=True) to replace its tokenizer files"

ENDOFTEXT = "<|endoftext|>"
"""Document separator: the end-of-text token, used as both bos and eos."""
PAD = "<|pad|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
BUILTIN_SPECIAL_TOKENS = (ENDOFTEXT, PAD, SYSTEM, USER, ASSISTANT)
"""Always in the vocabulary, with ids 0-4 in this order; user extras follow from id 5."""
BYTE_ALPHABET_SIZE = 256

DEFAULT_VOCAB_SIZE = 8192
DEFAULT_MIN_FREQUENCY = 2
DEFAULT_MODEL_MAX_LENGTH = 2048
DEFAULT_MAX_TOKEN_BYTES = 24

# ---------------------------------------------------------------------------------------------------------------
# Yuyan's own pre-tokenisation (the "yuyan" pre-tokenizer, the default before the choice below existed). BPE never
# merges across the pieces this expression cuts, so it decides which tokens can exist.
# Alternatives are tried in order at each position (leftmost first match, Oniguruma syntax as used by `tokenizers`).
#
# CJK is Han (which includes 々 and 〇) plus hiragana and katakana, and the prolonged sound mark ー, which Unicode
# files under "Common". These scripts are written without spaces, so a run of them is the closest thing to a
# "word" the expression can see. A run is one piece, so BPE can merge inside it and learn words (我们, 什么时候); it
# ends at any punctuation mark, digit, space or non-CJK letter, so a sentence is never one piece: a clause at most,
# and never glued to the Latin word or number beside it ("Python的库" is "Python" + "的库"). The run length is not
# capped here (that would cut runs at arbitrary places); the trainer caps the token length instead
# (`max_token_bytes`), which keeps long phrases that repeat in the corpus from becoming single tokens.
#
# Measured alternative (docs/notes/tokenizer-experiments.md): letting a run keep one trailing mark (了。 吗？) helps sentences that end
# a message, but costs as much on line-per-sentence text, where "。\n" is the better token; it was left out.
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\x{30FC}"
_PIECES = (
    # English contractions ('s 't 'm 'd 'll 've 're), case-insensitive, split from their word as in GPT-2.
    r"'(?i:[sdmt]|ll|ve|re)",
    # A word in any other script, with one leading space (GPT-2's convention: " world" is one token) and its
    # combining marks (so Devanagari, Thai or decomposed accents stay inside their word).
    rf" ?[\p{{L}}\p{{M}}&&[^{_CJK}]]+",
    # A run of CJK characters, with one optional leading space.
    rf" ?[{_CJK}]+",
    # Digits one at a time (numbers are never merged: 2024 is 2 0 2 4), the first with its leading space.
    r" ?\p{N}",
    # Punctuation, symbols and emoji (ZWJ sequences, variation selectors and modifiers included), with a leading
    # space and any newlines right after ("。\n", ".\n" and "}\n" are common tokens in prose and code).
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",
    # Whitespace: newlines with the spaces before them; a run of spaces minus the last one (which goes to the next
    # word, as in GPT-2); trailing whitespace.
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
)
SPLIT_PATTERN = "|".join(_PIECES)


@dataclass(frozen=True)
class PreTokenizer:
    """One way to cut text into the pieces BPE merges within: regular expressions applied one after the other (each
    cuts the pieces the one before left, keeping both what it matched and what lies between), and the value of
    llama.cpp's `tokenizer.ggml.pre` whose built-in rules cut text the same way (None where llama.cpp has none)."""

    name: str
    patterns: tuple[str, ...]
    llama_cpp: str | None
    summary: str


# llama.cpp cannot read a regular expression from a GGUF file: it knows a fixed list of pre-tokenizers, named by
# `tokenizer.ggml.pre`, each implemented in its own code. A tokenizer runs there with the same ids only if its
# expressions are exactly one of those. The expressions below are the ones the corresponding Hugging Face tokenizers
# save (Qwen2's and Qwen3.5's tokenizer.json), which llama.cpp's "qwen2" and "qwen35" reproduce.
#
# Neither can express Yuyan's own expression: no llama.cpp pre-tokenizer gives a single digit its leading space
# (" 2" "0" "2" "4"), and those that keep digits single glue Han characters to a Latin word beside them
# ("Python的库" is one piece). The costs of each choice: BENCHMARKS.md, "Pre-tokenizers and llama.cpp".
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    choice.name: choice
    for choice in (
        PreTokenizer(
            "yuyan", (SPLIT_PATTERN,), None,
            "Yuyan's own: single digits with their space, CJK runs apart from Latin words and punctuation, combining "
            "marks inside words; llama.cpp cannot reproduce it",
        ),
        PreTokenizer(
            "qwen2",
            (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
            "qwen2",
            "Qwen2's: single digits, a word (CJK runs included) with one leading space or punctuation mark; "
            "llama.cpp tokenizer.ggml.pre=qwen2",
        ),
        PreTokenizer(
            "qwen35",
            (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
             r"|\s+(?!\S)|\s+",),
            "qwen35",
            "Qwen3.5's: qwen2 with combining marks kept inside words (Devanagari, Thai, decomposed accents); "
            "llama.cpp tokenizer.ggml.pre=qwen35",
        ),
    )
}
# The default is one llama.cpp reproduces, so that a model trained with default settings runs there. Against
# Yuyan's own expression it costs 0.5% more tokens on the benchmark's mix of held-out text (2.5% on WikiText-2,
# whose numbers lose the space Yuyan's expression kept on their first digit; 1.3% fewer on Python code): see
# BENCHMARKS.md. Tokenizers saved with another choice keep it: their expressions are in their tokenizer.json.
DEFAULT_PRE_TOKENIZER = "qwen2"

# Roles map to special tokens; every message ends with eos so that a generated answer ends with it too. The assistant
# part is wrapped in {% generation %} so `return_assistant_tokens_mask=True` can mask everything else in training.
DEFAULT_CHAT_TEMPLATE = (
    "{#- Yuyan chat format: <|endoftext|><|user|>\\n...<|endoftext|><|assistant|>\\n...<|endoftext|> -#}\n"
    "{{- bos_token -}}\n"
    "{%- for message in messages -%}\n"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}\n"
    "{{- raise_exception('Unknown chat role ' ~ message['role'] ~ ': the roles are system, user and assistant') -}}\n"
    "{%- endif -%}\n"
    "{%- if message['content'] is none -%}{%- set content = '' -%}\n"
    "{%- elif message['content'] is string -%}{%- set content = message['content'] -%}\n"
    "{%- else -%}{%- set content = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') -%}\n"
    "{%- endif -%}\n"
    "{{- '<|' ~ message['role'] ~ '|>\\n' -}}\n"
    "{%- if message['role'] == 'assistant' -%}\n"
    "{%- generation -%}{{- content ~ eos_token -}}{%- endgeneration -%}\n"
    "{%- else -%}{{- content ~ eos_token -}}{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}\n"
)

# Files that make up a saved tokenizer; `save_tokenizer(..., overwrite=True)` replaces exactly these in a folder.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
)


@dataclass
class CorpusStats:
    """What the trainer read: texts and UTF-8 bytes (after `max_texts` / `max_bytes`), and the training time."""

    texts: int = 0
    bytes: int = 0
    seconds: float = 0.0


def special_tokens_list(extra: Iterable[str] = ()) -> list[str]:
    """The built-in special tokens followed by the user's extras (duplicates dropped, order kept)."""
    tokens = list(BUILTIN_SPECIAL_TOKENS)
    for token in extra:
        if not isinstance(token, str) or not token.strip():
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
        if token != token.strip():
            raise ValueError(f"special token {token!r} has leading or trailing whitespace")
        if token not in tokens:
            tokens.append(token)
    return tokens


def pre_tokenizer_choice(name: Any) -> PreTokenizer:
    """The `PreTokenizer` called `name`, or a ValueError listing the choices."""
    if not isinstance(name, str) or name not in PRE_TOKENIZERS:
        raise ValueError(f"pre_tokenizer={name!r} is unknown; allowed: {sorted(PRE_TOKENIZERS)}")
    return PRE_TOKENIZERS[name]


def build_backend_tokenizer(pre_tokenizer: str = DEFAULT_PRE_TOKENIZER):
    """An untrained `tokenizers.Tokenizer` with Yuyan's normaliser and decoder, the pre-tokeniser named
    `pre_tokenizer` (one of `PRE_TOKENIZERS`) and an empty BPE model."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    choice = pre_tokenizer_choice(pre_tokenizer)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            *(pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in choice.patterns),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def pre_tokenizer_of(tokenizer) -> str | None:
    """The name in `PRE_TOKENIZERS` of the pre-tokeniser that `tokenizer` (a transformers fast tokenizer, a
    `tokenizers.Tokenizer` or the text of a tokenizer.json) applies, or None when it is none of them.

    Read from the saved pipeline itself (the Split expressions and the byte-level step), never from a name stored
    beside it, so a tokenizer saved before the choice existed is recognised by what it does."""
    if isinstance(tokenizer, str):
        data = json.loads(tokenizer)
    else:
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        data = json.loads(backend.to_str())
    steps = data.get("pre_tokenizer") or {}
    steps = steps.get("pretokenizers", [steps]) if steps.get("type") == "Sequence" else [steps]
    # The byte-level step must only map bytes (trim_offsets changes offsets, not ids).
    last = steps[-1] if steps else {}
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space") or last.get("use_regex"):
        return None
    patterns = []
    for step in steps[:-1]:
        if step.get("type") != "Split" or step.get("behavior") != "Isolated" or step.get("invert"):
            return None
        regex = (step.get("pattern") or {}).get("Regex")
        if regex is None:
            return None
        patterns.append(regex)
    for choice in PRE_TOKENIZERS.values():
        if tuple(patterns) == choice.patterns:
            return choice.name
    return None


# add_leading_space takes its space back from a text that already starts with whitespace: `\A` is the start of the
# text (`^` would also match after every newline and remove a space inside the text).
_SPACE_BEFORE_WHITESPACE = r"\A (?=\s)"


def add_leading_space(tokenizer):
    """Make `tokenizer` (a transformers fast tokenizer) read every text as if it started with a space, and return it.

    A byte-level BPE spells a word after a space (`Ġthe`) differently from the same word at the very start of a text
    (`t`, `he` when the training text had few line-initial words: every line of WikiText starts with a space). A
    model pretrained on such text has hardly seen the second spelling, and a classifier reads one in every text it
    is given. The space is added by the tokenizer's normaliser (SentencePiece's "dummy prefix"), so it is saved with
    the tokenizer and applies wherever it is loaded (pipelines included); offsets still point into the text as given.
    Text that starts with whitespace, and empty text, are left as they are. Calling it twice changes nothing.
    Decoding a whole encoded text gives it back with the space in front.
    """
    from tokenizers import Regex, normalizers

    backend = tokenizer.backend_tokenizer
    current = json.loads(backend.to_str()).get("normalizer")
    steps = (current or {}).get("normalizers", [current] if current else [])
    if any(step.get("type") == "Prepend" and step.get("prepend") == " " for step in steps):
        return tokenizer
    leading = [normalizers.Prepend(" "), normalizers.Replace(Regex(_SPACE_BEFORE_WHITESPACE), "")]
    first = [backend.normalizer] if backend.normalizer is not None else []
    backend.normalizer = normalizers.Sequence(first + leading)
    return tokenizer


def _check_vocab_size(vocab_size: Any, special_tokens: Sequence[str]) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size must be an integer, not {vocab_size!r}")
    minimum = BYTE_ALPHABET_SIZE + len(special_tokens)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the byte alphabet ({BYTE_ALPHABET_SIZE}) plus "
            f"{len(special_tokens)} special tokens need at least {minimum}"
        )


def _without_special_strings(texts: Iterable[str], special_tokens: Sequence[str]) -> Iterator[str]:
    """Cut special tokens' literal strings out of the training texts: at encoding time they match as special
    tokens, so merges learnt from them (like "<|" or "endoftext") would only waste vocabulary."""
    import re

    pattern = re.compile("|".join(re.escape(token) for token in sorted(special_tokens, key=len, reverse=True)))
    for text in texts:
        if pattern.search(text):
            for piece in pattern.split(text):
                if piece:
                    yield piece
        else:
            yield text


class _CountingIterator:
    def __init__(self, texts: Iterable[str], stats: CorpusStats):
        self._texts = iter(texts)
        self._stats = stats

    def __iter__(self):
        return self

    def __next__(self) -> str:
        text = next(self._texts)
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")
        self._stats.texts += 1
        self._stats.bytes += len(text.encode("utf-8"))
        return text


def _source_iterator(texts, files, text_column: str, txt_split: str, separator: str | None) -> tuple[Iterator[str], str]:
    from yuyan.corpus import iter_texts, texts_from_records

    if (texts is None) == (files is None):
        raise ValueError("pass exactly one of texts=... (an iterable of strings or a dataset) or files=... (paths or globs)")
    if files is not None:
        paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        stream = iter_texts(paths, text_column=text_column, txt_split=txt_split, separator=separator)
        shown = ", ".join(map(str, paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        return stream, shown
    return texts_from_records(texts, text_column), "the given texts"


def _open_corpus(texts, files, text_column, txt_split, separator, max_texts, max_bytes):
    """The corpus as one stream of texts (limited by `max_texts` / `max_bytes`) that counts what it yields into the
    returned `CorpusStats`. An empty corpus is reported here, before any training. Texts that are only whitespace
    before the first real one are dropped: with nothing else they would train a vocabulary of whitespace."""
    from yuyan.corpus import limit_texts

    stream, source = _source_iterator(texts, files, text_column, txt_split, separator)
    stream = limit_texts(stream, max_texts=max_texts, max_bytes=max_bytes)
    for first in stream:
        if first.strip():
            break
    else:
        raise ValueError(f"empty corpus: {source} hold no text (nothing but empty or whitespace-only texts)")
    stats = CorpusStats()
    return _CountingIterator(itertools.chain([first], stream), stats), stats


def _fit(backend, trainer, corpus, stats: CorpusStats, all_special: list[str], max_texts: int | None) -> None:
    """Train `backend` on the corpus with the special strings cut out, and record the time in `stats`."""
    start = time.perf_counter()
    # `length` only sizes the progress bar; with max_texts it is an upper bound, otherwise unknown.
    backend.train_from_iterator(_without_special_strings(corpus, all_special), trainer=trainer, length=max_texts)
    stats.seconds = time.perf_counter() - start


@dataclass(frozen=True)
class TokenizerModel:
    """What differs between the tokenizer models `train_tokenizer` fits: byte-level BPE (`BPE`, here) and
    word-level (`yuyan.tokenization.word.WORD_LEVEL`). Everything else (argument checks, the corpus, fitting,
    wrapping, saving) is one code path."""

    leading_special: tuple[str, ...]
    """Special tokens that come right after the built-in ones, before the caller's (word-level: `<unk>`)."""
    check_vocab_size: Callable[[Any, Sequence[str]], None]
    build_backend: Callable[..., Any]
    """() -> an untrained `tokenizers.Tokenizer`; (pre-tokenizer name) -> one where `default_pre_tokenizer` is set."""
    build_trainer: Callable[..., Any]
    """(vocab_size, min_frequency, special_tokens as AddedTokens, show_progress, max_token_bytes) -> trainer."""
    after_fit: Callable[[Any], None] | None = None
    unk_token: str | None = None
    default_pre_tokenizer: str | None = None
    """The `PRE_TOKENIZERS` entry used when the caller names none; None where the model's pre-tokeniser is fixed."""


def _bpe_trainer(vocab_size, min_frequency, special_tokens, show_progress, max_token_bytes):
    from tokenizers import pre_tokenizers, trainers

    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not: nothing is unknown
        show_progress=show_progress,
        max_token_length=max_token_bytes,  # ByteLevel maps one byte to one character, so this counts bytes
    )


BPE = TokenizerModel(leading_special=(), check_vocab_size=_check_vocab_size, build_backend=build_backend_tokenizer,
                     build_trainer=_bpe_trainer, default_pre_tokenizer=DEFAULT_PRE_TOKENIZER)


def train_tokenizer(
    texts: Iterable[Any] | None = None,
    *,
    files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    text_column: str = "text",
    txt_split: str = "line",
    separator: str | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_frequency: int = DEFAULT_MIN_FREQUENCY,
    special_tokens: Iterable[str] = (),
    max_texts: int | None = None,
    max_bytes: int | None = None,
    max_token_bytes: int | None = DEFAULT_MAX_TOKEN_BYTES,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    padding_side: str = "right",
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    pre_tokenizer: str | None = None,
    output_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    show_progress: bool | None = None,
    return_stats: bool = False,
    model: TokenizerModel = BPE,
):
    """Train a byte-level BPE tokenizer and return it as a `transformers.PreTrainedTokenizerFast`.

    The corpus is streamed (one text in memory at a time on the Python side), from exactly one of:

    - `texts`: an iterable of strings, of mappings holding `text_column` (dicts, rows), or a `datasets.Dataset` /
      `IterableDataset` (its `text_column` is read); see also `iter_dataset_texts`;
    - `files`: paths, directories or glob patterns, read by `iter_texts` (`text_column`, `txt_split`, `separator`).

    Args:
        vocab_size: size of the vocabulary, special tokens and the 256 byte tokens included; at least
            256 + the number of special tokens. A small corpus may give fewer tokens: then `len(tokenizer)` is less.
        min_frequency: a pair must occur this often to be merged.
        special_tokens: extra special tokens, given ids right after the built-in ones (`<|endoftext|>` 0,
            `<|pad|>` 1, `<|system|>` 2, `<|user|>` 3, `<|assistant|>` 4).
        max_texts, max_bytes: stop reading the corpus after this many texts / at least this many UTF-8 bytes.
        max_token_bytes: longest token the trainer may build, in UTF-8 bytes (24 = 8 Han characters); None for no limit.
        model_max_length: the longest sequence the model takes (saved; used by truncation).
        padding_side: "right" (training) or "left" (batched generation).
        chat_template: Jinja chat template; the default is `DEFAULT_CHAT_TEMPLATE`; None for none.
        pre_tokenizer: how text is cut into the pieces BPE merges within, a name in `PRE_TOKENIZERS`
            (default `DEFAULT_PRE_TOKENIZER`). "qwen2" and "qwen35" are the ones llama.cpp reproduces, which
            `yuyan export --format gguf` needs; the choice is saved in tokenizer.json as its expressions.
        output_dir: if given, the tokenizer is saved there (see `save_tokenizer`); nothing is written on failure.
        overwrite: allow `output_dir` to be a non-empty directory (its tokenizer files are replaced).
        show_progress: show the trainer's progress bars; by default only when stderr is a terminal.
        return_stats: return `(tokenizer, CorpusStats)`: what was read of the corpus, and the training time.
        model: the tokenizer model (`BPE`; `train_word_tokenizer` passes the word-level one).

    The tokenizer does not add bos/eos on its own (GPT-2 convention): put `tokenizer.eos_token` between
    documents when packing a corpus. `special_token_ids(tokenizer)` gives the ids for `YuyanConfig`.

    Raises:
        ValueError: an empty corpus, a vocabulary too small, bad arguments, unreadable or malformed input, or a
            non-empty `output_dir` without `overwrite`.
        FileNotFoundError: a path or pattern in `files` that matches nothing.
    """
    from tokenizers import AddedToken

    # Every argument is checked before the corpus is read, and the corpus is read before anything is written.
    all_special = special_tokens_list([*model.leading_special, *special_tokens])
    model.check_vocab_size(vocab_size, all_special)
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be a positive integer, not {min_frequency!r}")
    if max_token_bytes is not None and (not isinstance(max_token_bytes, int) or max_token_bytes < 4):
        raise ValueError(f"max_token_bytes must be an integer of at least 4 (one UTF-8 character), or None; not {max_token_bytes!r}")
    _check_wrapper_args(model_max_length, padding_side)
    if model.default_pre_tokenizer is None:
        if pre_tokenizer is not None:
            raise ValueError(f"pre_tokenizer={pre_tokenizer!r} applies to the byte-level BPE tokenizer only: this "
                             "tokenizer model cuts text its own way")
        backend_args = ()
    else:
        backend_args = (pre_tokenizer_choice(pre_tokenizer or model.default_pre_tokenizer).name,)
    if output_dir is not None:
        check_output_folder(output_dir, overwrite, _ALLOW_OVERWRITE)
    corpus, stats = _open_corpus(texts, files, text_column, txt_split, separator, max_texts, max_bytes)

    backend = model.build_backend(*backend_args)
    trainer = model.build_trainer(
        vocab_size, min_frequency, [AddedToken(token, special=True, normalized=False) for token in all_special],
        sys.stderr.isatty() if show_progress is None else bool(show_progress), max_token_bytes,
    )
    _fit(backend, trainer, corpus, stats, all_special, max_texts)
    if model.after_fit is not None:
        model.after_fit(backend)

    tokenizer = wrap_tokenizer(
        backend,
        extra_special_tokens=all_special[len(BUILTIN_SPECIAL_TOKENS):],
        model_max_length=model_max_length,
        padding_side=padding_side,
        chat_template=chat_template,
        unk_token=model.unk_token,
    )
    if output_dir is not None:
        save_tokenizer(tokenizer, output_dir, overwrite=overwrite)
    return (tokenizer, stats) if return_stats else tokenizer



def _check_wrapper_args(model_max_length: Any, padding_side: Any) -> None:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length < 1:
        raise ValueError(f"model_max_length must be a positive integer, not {model_max_length!r}")


def wrap_tokenizer(
    backend,
    *,
    extra_special_tokens: Sequence[str] = (),
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    padding_side: str = "right",
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    unk_token: str | None = None,
):
    """Wrap a trained `tokenizers.Tokenizer` (holding the built-in special tokens) as a `PreTrainedTokenizerFast`.
    `unk_token` names the model's unknown token where it has one (the word-level tokenizer; byte-level BPE has
    none: every string is encodable)."""
    from transformers import PreTrainedTokenizerFast

    _check_wrapper_args(model_max_length, padding_side)
    vocab = backend.get_vocab(with_added_tokens=True)
    missing = [token for token in (*BUILTIN_SPECIAL_TOKENS, *extra_special_tokens) if token not in vocab]
    if missing:
        raise ValueError(f"the tokenizer lacks the special tokens {missing}")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=ENDOFTEXT,
        eos_token=ENDOFTEXT,
        pad_token=PAD,
        unk_token=unk_token,
        extra_special_tokens=[SYSTEM, USER, ASSISTANT, *[t for t in extra_special_tokens if t != unk_token]],
        model_max_length=model_max_length,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        chat_template=chat_template,
    )


def special_token_ids(tokenizer) -> dict[str, int | None]:
    """`{"bos_token_id", "eos_token_id", "pad_token_id"}` of a tokenizer (or of a saved tokenizer folder), ready
    for `YuyanConfig(vocab_size=len(tokenizer), **special_token_ids(tokenizer))`."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def save_tokenizer(tokenizer, output_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save with `save_pretrained` into a temporary folder beside `output_dir`, then move it into place.

    `tokenizer_config.json` also gets `bos_token_id`, `eos_token_id` and `pad_token_id`, readable without
    transformers. If `output_dir` is missing or empty it is replaced by the new folder in one rename. A non-empty
    folder is refused unless `overwrite`; then its tokenizer files (`TOKENIZER_FILES`) are replaced one by one
    (`os.replace`), stale ones removed, and every other file in it (model weights, say) is left alone.
    """
    output_dir = Path(output_dir)
    check_output_folder(output_dir, overwrite, _ALLOW_OVERWRITE)
    with staging_dir(output_dir.parent, prefix=f".{output_dir.name}.") as staging:
        tokenizer.save_pretrained(str(staging))
        config_path = staging / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config.update(special_token_ids(tokenizer))
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if output_dir.is_dir() and any(output_dir.iterdir()):
            written = move_into(staging, output_dir)
            for name in TOKENIZER_FILES:
                if name not in written and (output_dir / name).is_file():
                    (output_dir / name).unlink()
        else:
            publish_folder(staging, output_dir)
    return output_dir


__all__ = [
    "ASSISTANT",
    "BUILTIN_SPECIAL_TOKENS",
    "CorpusStats",
    "DEFAULT_CHAT_TEMPLATE",
    "DEFAULT_PRE_TOKENIZER",
    "ENDOFTEXT",
    "PAD",
    "PRE_TOKENIZERS",
    "PreTokenizer",
    "ROLE_TOKENS",
    "SPLIT_PATTERN",
    "SYSTEM",
    "USER",
    "add_leading_space",
    "build_backend_tokenizer",
    "pre_tokenizer_choice",
    "pre_tokenizer_of",
    "save_tokenizer",
    "special_token_ids",
    "special_tokens_list",
    "train_tokenizer",
    "wrap_tokenizer",
]

"""Tests of yuyan.tokenization: lossless byte-level BPE, pre-tokenisation, readers, saving, CLI and bad input."""

from __future__ import annotations

import bz2
import functools
import gzip
import json
import os
import random
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yuyan import corpus as corpus_module
from yuyan.corpus import expand_paths, iter_dataset_texts, iter_file_texts, iter_texts, limit_texts
from yuyan.tokenization import (
    DEFAULT_PRE_TOKENIZER,
    ENDOFTEXT,
    PAD,
    PRE_TOKENIZERS,
    SPLIT_PATTERN,
    pre_tokenizer_of,
    save_tokenizer,
    special_token_ids,
    train_tokenizer,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data is not present beside the repository")

NAMED_CASES = {
    "empty": "",
    "english": "Hello, world! It's a test: don't PANIC, they'll see. The quick brown fox.",
    "simplified": "我们今天去公园玩，好吗？我不知道他在哪里。",
    "traditional": "我們今天去公園玩，好嗎？這是繁體中文的句子。",
    "japanese": "日本語のテキストです。カタカナとひらがな、漢字が混ざっています。ラーメン！",
    "korean": "안녕하세요, 세계!",
    "mixed": "Python的库很好用，version 3.11 发布于2022年10月24日。",
    "emoji_zwj": "family 👨‍👩‍👧‍👦, flags 🇨🇳🇺🇸, skin 👍🏽, heart ❤️, keycap 1️⃣",
    "combining": "e\u0301 a\u0308 n\u0303 \u1e9b\u0323 Zalgo: Z\u0351\u0352\u0353a\u0354l\u0355g\u0356o",
    "devanagari": "हिन्दी भाषा और संस्कृत",
    "whitespace_runs": "a  b   c    d\u00a0\u00a0e\u3000f\u2003g",
    "tabs": "\tcol1\tcol2\t\t\n\t\tindented",
    "crlf": "line one\r\nline two\r\n\r\nline four\rold mac",
    "newlines": "\n\n\npara\n\n\n\nend\n",
    "controls": "nul\x00bell\x07esc\x1b[0mdel\x7f\x85\u200b\u200e\ufeffbom",
    "digits": "0123456789 ٠١٢٣ ①② ½ 2024-01-01 3.14159",
    "special_literal": f"before{ENDOFTEXT}after {PAD} <|user|> <|not special|>",
    "leading_trailing_space": "   spaced out   ",
    "private_and_astral": "\ue000\U0001F600\U00020000\U0010FFFD",
    "long_han_run": "我" * 300,
}

MIXED_CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024 and they'll see.\n",
    "Numbers like 12345 and 3.14159 are split into digits.\n",
    "我们今天去公园玩，好吗？我们明天学习中文。\n",
    "我們今天去公園玩，好嗎？這是繁體中文。\n",
    "日本語のテキストです。カタカナとひらがな。\n",
    "Emoji 👨‍👩‍👧 and ❤️ and combining e\u0301.\n",
    "\tTabs\tand  spaces   and\r\nCRLF lines.\n",
]


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


@functools.lru_cache(maxsize=1)
def normalisation_mismatches() -> frozenset[str]:
    """Characters on which the NFC of `tokenizers` (Rust, older Unicode tables) and Python's `unicodedata` disagree:
    about 50 combining marks of rare scripts added in recent Unicode versions. Found by probing, once."""
    from tokenizers import normalizers

    backend = normalizers.NFC().normalize_str
    found = set()
    for code in range(0x300, 0x30000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        ch = chr(code)
        for probe in (ch, "a" + ch + "\u0300", "a\u0300" + ch, "a\u0316" + ch, unicodedata.normalize("NFD", ch)):
            if backend(probe) != nfc(probe):
                found.add(ch)
                break
    return frozenset(found)


def assert_lossless(tokenizer, text: str) -> None:
    """decode(encode(text)) is the NFC of text: exactly the backend's NFC, and Python's except on the few
    characters where the two Unicode versions disagree."""
    decoded = tokenizer.decode(tokenizer.encode(text))
    assert decoded == tokenizer.backend_tokenizer.normalizer.normalize_str(text)
    if decoded != nfc(text):
        assert set(text) & normalisation_mismatches(), (text, decoded)


@pytest.fixture(scope="module")
def mixed_tokenizer():
    corpus = MIXED_CORPUS * 30
    return train_tokenizer(corpus, vocab_size=600, special_tokens=["<|tool|>"], show_progress=False)


@pytest.fixture(scope="module")
def saved_tokenizer(mixed_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "tokenizer"
    save_tokenizer(mixed_tokenizer, path)
    return path


def synthetic_chinese(count: int, seed: int = 0) -> list[str]:
    words = ["我们", "今天", "学习", "中文", "喜欢", "朋友", "他们", "老师", "学生", "公园", "一起", "非常", "电脑", "时间"]
    punctuation = ["，", "。", "？", "！"]
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        clauses = ["".join(rng.choice(words) for _ in range(rng.randint(2, 6))) + rng.choice(punctuation) for _ in range(3)]
        texts.append("".join(clauses) + "\n")
    return texts


# --------------------------------------------------------------------------------------------------------------
# Lossless round trip


@pytest.mark.parametrize("name", sorted(NAMED_CASES))
def test_named_cases_round_trip(mixed_tokenizer, name):
    text = NAMED_CASES[name]
    ids = mixed_tokenizer.encode(text)
    assert mixed_tokenizer.decode(ids) == nfc(text)
    assert mixed_tokenizer.unk_token_id is None


def test_normalisation_is_nfc(mixed_tokenizer):
    decomposed = "Cafe\u0301 n\u0303"
    assert mixed_tokenizer.decode(mixed_tokenizer.encode(decomposed)) == "Café ñ"
    assert "ñ" == nfc("n\u0303")


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_round_trip_arbitrary_unicode(mixed_tokenizer, text):
    assert_lossless(mixed_tokenizer, text)


_INTERESTING = st.sampled_from(
    list("aZ 0\t\n\r\u00a0\u3000我們日ーカの、。，？!.'\"") + ["\u200d", "\ufe0f", "\u0301", "\u0308", "👨", "🏽", "\x00", "\x85", "'s", "'LL"]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_INTERESTING, st.characters(exclude_categories=["Cs"])), max_size=60).map("".join))
def test_round_trip_dense_mixed_scripts(mixed_tokenizer, text):
    assert_lossless(mixed_tokenizer, text)


def test_full_byte_alphabet_even_for_ascii_corpus():
    tokenizer = train_tokenizer(["only ascii here\n"] * 50, vocab_size=300, show_progress=False)
    vocab = tokenizer.get_vocab()
    assert len(vocab) >= 256 + 5
    for text in ("你好", "\U0001F600", "\x00\xff"):
        assert tokenizer.decode(tokenizer.encode(text)) == text


# --------------------------------------------------------------------------------------------------------------
# Pre-tokenisation


def pieces(text: str, pre_tokenizer: str = "yuyan") -> list[str]:
    """The pieces a pre-tokenizer cuts (before the byte-level step, so they read as text)."""
    from tokenizers import Regex, pre_tokenizers

    steps = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in PRE_TOKENIZERS[pre_tokenizer].patterns]
    return [piece for piece, _ in pre_tokenizers.Sequence(steps).pre_tokenize_str(text)]


def test_pre_tokenisation_english_like_gpt2():
    assert pieces("Hello world, it's DON'T  stop.") == ["Hello", " world", ",", " it", "'s", " DON", "'T", " ", " stop", "."]


def test_pre_tokenisation_digits_one_by_one():
    assert pieces("in 2024: 3.14") == ["in", " 2", "0", "2", "4", ":", " 3", ".", "1", "4"]


def test_pre_tokenisation_cjk_runs():
    assert pieces("我们今天去公园玩，好吗？Python的库很好用。\n") == [
        "我们今天去公园玩", "，", "好吗", "？", "Python", "的库很好用", "。\n"
    ]
    assert pieces("日本語のテキストです。ラーメン") == ["日本語のテキストです", "。", "ラーメン"]
    # A run ends at digits, spaces, Latin letters and punctuation; punctuation marks stay together.
    assert pieces("第3章 开始“你好”！！") == ["第", "3", "章", " 开始", "“", "你好", "”！！"]


def test_pre_tokenisation_whitespace_and_newlines():
    assert pieces("a  b\n\n  c.\nd\r\n") == ["a", " ", " b", "\n\n", " ", " c", ".\n", "d", "\r\n"]
    assert "".join(pieces(NAMED_CASES["controls"])) == NAMED_CASES["controls"]


# Every choice keeps digits single; only Yuyan's own expression keeps a number's space on its first digit.
@pytest.mark.parametrize("pre_tokenizer, spelled", [
    ("yuyan", ["2", "0", "2", "4", "Ġ1", "2", "3", "4", "5"]),
    ("qwen2", ["2", "0", "2", "4", "Ġ", "1", "2", "3", "4", "5"]),
    ("qwen35", ["2", "0", "2", "4", "Ġ", "1", "2", "3", "4", "5"]),
])
def test_digits_never_merged(pre_tokenizer, spelled):
    corpus = ["In 2024 the price was 12345 dollars, up from 2023.\n"] * 200
    tokenizer = train_tokenizer(corpus, vocab_size=400, show_progress=False, pre_tokenizer=pre_tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer.encode("2024 12345"))
    assert tokens == spelled
    assert not any(sum(ch.isdigit() for ch in token) > 1 for token in tokenizer.get_vocab())


def test_han_runs_merge_into_words_but_sentences_stay_split():
    long_sentence = "我们今天一起去公园里面散步然后回家吃饭。"
    corpus = synthetic_chinese(400) + [long_sentence + "\n"] * 300
    tokenizer = train_tokenizer(corpus, vocab_size=700, show_progress=False, pre_tokenizer="yuyan")
    for word in ("我们", "学习", "朋友"):
        assert len(tokenizer.encode(word)) == 1, word
    ids = tokenizer.encode(long_sentence)
    assert len(ids) > 1
    # The trainer caps tokens at 24 bytes (8 Han characters), so a repeated long sentence cannot be memorised whole.
    # (A byte-level token string has one character per byte.)
    assert all(len(token) <= 24 for token in tokenizer.convert_ids_to_tokens(ids))
    # Tokens never straddle a clause boundary: punctuation is never merged with Han characters.
    text = "我们喜欢学习中文，他们喜欢电脑。"
    tokens = [tokenizer.decode([i]) for i in tokenizer.encode(text)]
    assert any(len(token) >= 2 and all("\u4e00" <= ch <= "\u9fff" for ch in token) for token in tokens)
    assert "，" in tokens and "。" in tokens


def test_special_token_strings_are_not_merged_in_training():
    corpus = [f"story one{ENDOFTEXT}story two{ENDOFTEXT}\n"] * 200
    tokenizer = train_tokenizer(corpus, vocab_size=320, show_progress=False)
    learned = [token for token in tokenizer.get_vocab() if token not in tokenizer.all_special_tokens]
    assert not any("endoftext" in token or "<|" in token or "|>" in token for token in learned)
    assert tokenizer.encode(f"a{ENDOFTEXT}b")[1] == tokenizer.eos_token_id


def test_the_default_pre_tokenizer_is_one_llama_cpp_reproduces():
    choice = PRE_TOKENIZERS[DEFAULT_PRE_TOKENIZER]
    assert choice.llama_cpp is not None
    tokenizer = train_tokenizer(MIXED_CORPUS * 5, vocab_size=300, show_progress=False)
    assert pre_tokenizer_of(tokenizer) == DEFAULT_PRE_TOKENIZER
    # Qwen2's expression: a word takes one leading space or punctuation mark, Han characters join a Latin word, and
    # a number's space stays apart from its first digit.
    assert pieces("Python的库，好 2024", "qwen2") == ["Python的库", "，好", " ", "2", "0", "2", "4"]
    assert pieces("Python的库，好 2024", "yuyan") == ["Python", "的库", "，", "好", " 2", "0", "2", "4"]
    # qwen35 keeps combining marks inside their word, as Yuyan's own expression does; qwen2 cuts them out.
    assert pieces("हिन्दी", "qwen35") == pieces("हिन्दी", "yuyan") == ["हिन्दी"]
    assert len(pieces("हिन्दी", "qwen2")) > 1


# What a tokenizer saved before the pre-tokenizer choice existed holds: Yuyan's own expression and a byte-level step.
SAVED_BEFORE_THE_CHOICE = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ],
}


def test_yuyan_pre_tokenizer_saves_what_tokenizers_saved_before_the_choice(tmp_path):
    tokenizer = train_tokenizer(MIXED_CORPUS * 5, vocab_size=300, show_progress=False, pre_tokenizer="yuyan",
                                output_dir=tmp_path / "tokenizer")
    saved = json.loads((tmp_path / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    assert saved["pre_tokenizer"] == SAVED_BEFORE_THE_CHOICE
    assert pre_tokenizer_of(json.dumps(saved)) == "yuyan"
    # Loading reads the expressions from the file, whatever the default is now.
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    text = "in 2024: Python的库 it's"
    assert reloaded.encode(text) == tokenizer.encode(text)
    cut = [piece for piece, _ in reloaded.backend_tokenizer.pre_tokenizer.pre_tokenize_str("in 2024")]
    assert cut == ["in", "Ġ2", "0", "2", "4"]


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_each_pre_tokenizer_is_recognised_after_saving_and_round_trips(tmp_path, name):
    tokenizer = train_tokenizer(MIXED_CORPUS * 5, vocab_size=300, show_progress=False, pre_tokenizer=name,
                                output_dir=tmp_path / name)
    assert pre_tokenizer_of(tokenizer) == name
    assert pre_tokenizer_of((tmp_path / name / "tokenizer.json").read_text(encoding="utf-8")) == name
    for text in NAMED_CASES.values():
        assert_lossless(tokenizer, text)


def test_a_pre_tokenizer_yuyan_does_not_know_is_not_recognised():
    other = dict(SAVED_BEFORE_THE_CHOICE, pretokenizers=[
        {"type": "Split", "pattern": {"Regex": r"\w+|\W+"}, "behavior": "Isolated", "invert": False},
        SAVED_BEFORE_THE_CHOICE["pretokenizers"][1],
    ])
    assert pre_tokenizer_of(json.dumps({"pre_tokenizer": other})) is None
    gpt2_style = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert pre_tokenizer_of(json.dumps({"pre_tokenizer": gpt2_style})) is None
    assert pre_tokenizer_of(json.dumps({"pre_tokenizer": None})) is None


def test_pre_tokenizer_errors():
    with pytest.raises(ValueError, match=r"pre_tokenizer='gpt-2' is unknown; allowed: \['qwen2', 'qwen35', 'yuyan'\]"):
        train_tokenizer(["text"], pre_tokenizer="gpt-2")
    from yuyan.tokenization import train_word_tokenizer

    with pytest.raises(ValueError, match="applies to the byte-level BPE tokenizer only"):
        train_word_tokenizer(["some words"], pre_tokenizer="qwen2")


# --------------------------------------------------------------------------------------------------------------
# Special tokens, wrapper settings, chat template


def test_leading_space_spells_the_first_word_as_inside_a_text(tmp_path):
    """add_leading_space: a text is read as if it started with a space (WikiText-style training text has its words
    after spaces); text that starts with whitespace, spaces after a newline and empty text are left alone; offsets
    point into the text as given; a second call changes nothing; the saved tokenizer keeps it."""
    from transformers import AutoTokenizer

    from yuyan.tokenization import add_leading_space

    lines = [" the film is good .", " the cast is bad .", " a story about the sea ."] * 40
    plain = train_tokenizer(texts=lines, vocab_size=300)
    spaced = add_leading_space(train_tokenizer(texts=lines, vocab_size=300))
    assert plain.tokenize("the film")[0] != "Ġthe"  # the line-initial spelling pretraining never saw
    for text in ("the film is bad .", "\tthe film", " the film", "a\n  b the", "", "the\nthe"):
        expected = plain(text if text[:1].isspace() or not text else " " + text)["input_ids"]
        assert spaced(text)["input_ids"] == expected, text
    assert spaced.tokenize("the film") == ["Ġthe", "Ġfilm"]
    assert spaced("the film", return_offsets_mapping=True)["offset_mapping"] == [(0, 3), (3, 8)]
    before = spaced.backend_tokenizer.to_str()
    assert add_leading_space(spaced).backend_tokenizer.to_str() == before
    spaced.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).tokenize("the film") == ["Ġthe", "Ġfilm"]
    assert spaced.decode(spaced("the film")["input_ids"]) == " the film"


def test_special_token_ids_and_layout(mixed_tokenizer):
    assert special_token_ids(mixed_tokenizer) == {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}
    assert mixed_tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4, 5]) == [
        ENDOFTEXT, PAD, "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"
    ]
    assert set(mixed_tokenizer.all_special_tokens) == {ENDOFTEXT, PAD, "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"}
    assert mixed_tokenizer.decode(mixed_tokenizer.encode("a<|tool|>b"), skip_special_tokens=True) == "ab"
    # The tokenizer does not add bos/eos by itself.
    assert mixed_tokenizer("hi")["input_ids"] == mixed_tokenizer.encode("hi", add_special_tokens=False)


def test_special_token_ids_fit_yuyan_config(mixed_tokenizer, saved_tokenizer):
    from yuyan.modeling.configuration_yuyan import YuyanConfig

    config = YuyanConfig(vocab_size=len(mixed_tokenizer), **special_token_ids(mixed_tokenizer))
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 0, 1)
    saved = json.loads((saved_tokenizer / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert {key: saved[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")} == special_token_ids(saved_tokenizer)


def test_padding_side_and_max_length():
    corpus = MIXED_CORPUS * 10
    left = train_tokenizer(corpus, vocab_size=400, padding_side="left", model_max_length=16, show_progress=False)
    batch = left(["a", "a much longer text here"], padding=True)
    assert batch["input_ids"][0][0] == left.pad_token_id == 1
    assert batch["attention_mask"][0][0] == 0 and batch["attention_mask"][0][-1] == 1
    assert "token_type_ids" not in batch
    assert len(left("word " * 100, truncation=True)["input_ids"]) == 16
    left.padding_side = "right"
    assert left(["a", "a much longer text"], padding=True)["input_ids"][0][-1] == 1
    with pytest.raises(ValueError, match="padding_side"):
        train_tokenizer(corpus, vocab_size=400, padding_side="middle")


def test_chat_template(mixed_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": [{"type": "text", "text": "More"}]},
    ]
    text = mixed_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|endoftext|><|system|>\nBe brief.<|endoftext|><|user|>\n你好<|endoftext|>"
        "<|assistant|>\nHi!<|endoftext|><|user|>\nMore<|endoftext|><|assistant|>\n"
    )
    ids = mixed_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ids == mixed_tokenizer.encode(text)
    assert [i for i in ids if i in (2, 3, 4)] == [2, 3, 4, 3, 4]
    result = mixed_tokenizer.apply_chat_template(messages[:3], return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(result["input_ids"], result["assistant_masks"]) if m]
    assert mixed_tokenizer.decode(masked) == "Hi!<|endoftext|>"
    with pytest.raises(Exception, match="role"):
        mixed_tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_no_chat_template(tmp_path):
    tokenizer = train_tokenizer(MIXED_CORPUS, vocab_size=300, chat_template=None, output_dir=tmp_path / "t")
    assert tokenizer.chat_template is None
    assert not (tmp_path / "t" / "chat_template.jinja").exists()


# --------------------------------------------------------------------------------------------------------------
# Saving and loading elsewhere


@pytest.mark.slow
def test_loads_with_auto_tokenizer_without_yuyan(mixed_tokenizer, saved_tokenizer, tmp_path):
    assert {p.name for p in saved_tokenizer.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    cases = {name: text for name, text in NAMED_CASES.items()}
    (tmp_path / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    script = textwrap.dedent(
        """
        import json, sys
        sys.modules["yuyan"] = None  # any `import yuyan` now raises ImportError
        try:
            import yuyan
        except ImportError:
            pass
        else:
            raise SystemExit("yuyan is importable")
        from transformers import AutoTokenizer
        path, cases_path = sys.argv[1], sys.argv[2]
        tok = AutoTokenizer.from_pretrained(path)
        cases = json.load(open(cases_path, encoding="utf-8"))
        messages = [{"role": "user", "content": "hi"}]
        print(json.dumps({
            "class": type(tok).__name__,
            "ids": {name: tok.encode(text) for name, text in cases.items()},
            "decoded": {name: tok.decode(tok.encode(text)) for name, text in cases.items()},
            "special": [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.bos_token, tok.pad_token],
            "all_special": tok.all_special_tokens,
            "model_max_length": tok.model_max_length,
            "padding_side": tok.padding_side,
            "chat": tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
            "yuyan_loaded": any(name == "yuyan" or name.startswith("yuyan.") for name, m in sys.modules.items() if m is not None),
        }))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", script, str(saved_tokenizer), str(tmp_path / "cases.json")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["class"] in ("TokenizersBackend", "PreTrainedTokenizerFast")
    assert not report["yuyan_loaded"]
    assert report["special"] == [0, 0, 1, ENDOFTEXT, PAD]
    assert set(report["all_special"]) == set(mixed_tokenizer.all_special_tokens)
    assert report["model_max_length"] == 2048 and report["padding_side"] == "right"
    assert report["chat"] == "<|endoftext|><|user|>\nhi<|endoftext|><|assistant|>\n"
    for name, text in cases.items():
        assert report["ids"][name] == mixed_tokenizer.encode(text), name
        assert report["decoded"][name] == nfc(text), name


def test_tokenizer_json_works_with_tokenizers_alone(saved_tokenizer):
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(saved_tokenizer / "tokenizer.json"))
    for text in NAMED_CASES.values():
        assert backend.decode(backend.encode(text).ids, skip_special_tokens=False) == nfc(text)


def test_overwrite_replaces_only_tokenizer_files(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")
    (out / "merges.txt").write_text("stale")
    with pytest.raises(ValueError, match="not empty"):
        train_tokenizer(MIXED_CORPUS, vocab_size=300, output_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["merges.txt", "model.safetensors"]
    train_tokenizer(MIXED_CORPUS, vocab_size=300, output_dir=out, overwrite=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["chat_template.jinja", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_empty_existing_output_dir_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    train_tokenizer(MIXED_CORPUS, vocab_size=300, output_dir=out)
    assert (out / "tokenizer.json").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0o700


# --------------------------------------------------------------------------------------------------------------
# Bad input: a clear error and nothing written


def assert_nothing_written(output: Path) -> None:
    assert not output.exists()
    if output.parent.exists():
        assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]


def test_error_empty_corpus(tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": ""}\n{"text": "   "}\n\n')
    for kwargs in ({"files": [empty, blank]}, {"texts": []}, {"texts": ["", " \n", "\t"]}):
        with pytest.raises(ValueError, match="empty corpus"):
            train_tokenizer(vocab_size=300, output_dir=out, **kwargs)
        assert_nothing_written(out)


def test_error_vocab_too_small(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"vocab_size=260 is too small.*at least 261"):
        train_tokenizer(MIXED_CORPUS, vocab_size=260, output_dir=out)
    with pytest.raises(ValueError, match=r"at least 263"):
        train_tokenizer(MIXED_CORPUS, vocab_size=262, special_tokens=["<|a|>", "<|b|>"], output_dir=out)
    assert_nothing_written(out)
    tokenizer = train_tokenizer(MIXED_CORPUS, vocab_size=261)
    assert len(tokenizer) == 261


def test_error_missing_and_unreadable_files(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer(files=[tmp_path / "missing.txt"], vocab_size=300, output_dir=out)
    with pytest.raises(FileNotFoundError, match=r"\*\.nothing"):
        train_tokenizer(files=[str(tmp_path / "*.nothing")], vocab_size=300, output_dir=out)
    (tmp_path / "data.bin").write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match="unsupported file type"):
        train_tokenizer(files=[tmp_path / "data.bin"], vocab_size=300, output_dir=out)
    # Invalid UTF-8 deep inside a file: found while training, after many good lines.
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good line of text\n" * 20000 + b"broken \xff\xfe bytes\n")
    with pytest.raises(ValueError, match="bad.txt: not valid UTF-8"):
        train_tokenizer(files=[bad], vocab_size=300, output_dir=out)
    assert_nothing_written(out)
    if os.geteuid() != 0:  # root can read anything
        locked = tmp_path / "locked.txt"
        locked.write_text("secret")
        locked.chmod(0)
        with pytest.raises(ValueError, match="cannot read"):
            train_tokenizer(files=[locked], vocab_size=300, output_dir=out)
        assert_nothing_written(out)


def test_error_malformed_jsonl_and_missing_column(tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": broken\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: malformed JSON line"):
        train_tokenizer(files=[bad], vocab_size=300, output_dir=out)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"content": "x"}\n')
    with pytest.raises(ValueError, match=r"wrong.jsonl:1: no 'text' field \(fields: 'content'\)"):
        train_tokenizer(files=[wrong], vocab_size=300, output_dir=out)
    typed = tmp_path / "typed.jsonl"
    typed.write_text('{"text": 5}\n')
    with pytest.raises(ValueError, match="is a int, not a string"):
        train_tokenizer(files=[typed], vocab_size=300, output_dir=out)
    table = tmp_path / "table.csv"
    table.write_text("id,body\n1,hello\n")
    with pytest.raises(ValueError, match=r"no 'text' column in the header \(columns: 'id', 'body'\)"):
        train_tokenizer(files=[table], vocab_size=300, output_dir=out)
    pretty = tmp_path / "pretty.json"
    pretty.write_text('{\n  "data": []\n}\n')
    with pytest.raises(ValueError, match="expected a JSON array of objects or JSON Lines"):
        train_tokenizer(files=[pretty], vocab_size=300, output_dir=out)
    assert_nothing_written(out)


def test_error_arguments(tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        train_tokenizer(vocab_size=300)
    with pytest.raises(ValueError, match="exactly one of"):
        train_tokenizer(["x"], files=["y"], vocab_size=300)
    with pytest.raises(TypeError, match="single string"):
        train_tokenizer("not a list", vocab_size=300)
    with pytest.raises(ValueError, match="special tokens must be non-empty"):
        train_tokenizer(MIXED_CORPUS, vocab_size=300, special_tokens=[""])
    with pytest.raises(ValueError, match="min_frequency"):
        train_tokenizer(MIXED_CORPUS, vocab_size=300, min_frequency=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        train_tokenizer(MIXED_CORPUS, vocab_size=300, output_dir=tmp_path / "file")


# --------------------------------------------------------------------------------------------------------------
# Readers


def test_txt_modes(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_bytes("\ufeffline one\r\nline two\n\n\npara two\nstill two\n".encode("utf-8"))
    assert list(iter_file_texts(path)) == ["line one\r\n", "line two\n", "\n", "\n", "para two\n", "still two\n"]
    assert list(iter_file_texts(path, txt_split="paragraph")) == ["line one\r\nline two\n", "para two\nstill two\n"]
    assert list(iter_file_texts(path, txt_split="file")) == ["line one\r\nline two\n\n\npara two\nstill two\n"]
    stories = tmp_path / "stories.txt"
    stories.write_text(f"Once.\n{ENDOFTEXT}\nTwice upon.\n{ENDOFTEXT}\n  \n{ENDOFTEXT}tail")
    assert list(iter_file_texts(stories, separator=ENDOFTEXT)) == ["Once.", "Twice upon.", "tail"]
    with pytest.raises(ValueError, match="txt_split"):
        list(iter_file_texts(path, txt_split="sentence"))


def test_separator_split_across_read_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "_READ_CHUNK", 5)
    path = tmp_path / "s.txt"
    docs = ["alpha beta", "gamma", "delta epsilon zeta", "η"]
    path.write_text(ENDOFTEXT.join(docs))
    assert list(iter_file_texts(path, separator=ENDOFTEXT)) == docs


def test_structured_formats(tmp_path):
    rows = [{"text": "first 第一"}, {"text": None}, {"text": "second\nline"}, {"text": ""}, {"text": "third"}]
    expected = ["first 第一", "second\nline", "third"]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    (tmp_path / "b.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    (tmp_path / "c.json").write_text("\n".join(json.dumps(r) for r in rows))
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(json.dumps(r) for r in rows))
    with bz2.open(tmp_path / "e.txt.bz2", "wt", encoding="utf-8") as handle:
        handle.write("x\ny\n")
    import csv

    for name, delimiter in (("f.csv", ","), ("g.tsv", "\t")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "text"], delimiter=delimiter)
            writer.writeheader()
            for i, row in enumerate(rows):
                writer.writerow({"id": i, "text": row["text"] or ""})
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(5)), "text": [r["text"] for r in rows]}), tmp_path / "h.parquet")
    for name in ("a.jsonl", "b.json", "c.json", "d.jsonl.gz", "f.csv", "g.tsv", "h.parquet"):
        assert list(iter_file_texts(tmp_path / name)) == expected, name
    assert list(iter_file_texts(tmp_path / "e.txt.bz2")) == ["x\n", "y\n"]
    # Globs and directories expand to sorted supported files (the unsupported one is skipped).
    (tmp_path / "skip.bin").write_bytes(b"")
    assert [p.name for p in expand_paths([tmp_path])] == [
        "a.jsonl", "b.json", "c.json", "d.jsonl.gz", "e.txt.bz2", "f.csv", "g.tsv", "h.parquet"
    ]
    assert [p.name for p in expand_paths(str(tmp_path / "*.json"))] == ["b.json", "c.json"]
    assert list(iter_texts([tmp_path / "a.jsonl", str(tmp_path / "b.*")])) == expected * 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.text(max_size=30), max_size=12),
    numbers=st.lists(st.integers(-10**12, 10**12), min_size=12, max_size=12),
    indent=st.sampled_from([None, 0, 2]),
    chunk=st.integers(1, 40),
)
def test_json_array_streaming_parser(tmp_path_factory, texts, numbers, indent, chunk):
    path = tmp_path_factory.mktemp("json") / "rows.json"
    rows = [{"n": numbers[i], "text": text} for i, text in enumerate(texts)]
    path.write_text(json.dumps(rows, indent=indent, ensure_ascii=bool(chunk % 2)), encoding="utf-8")
    original = corpus_module._READ_CHUNK
    corpus_module._READ_CHUNK = chunk
    try:
        assert list(iter_file_texts(path)) == [text for text in texts if text]
    finally:
        corpus_module._READ_CHUNK = original


def test_limits_stop_reading():
    consumed = []

    def endless():
        n = 0
        while True:
            consumed.append(n)
            yield f"text {n}"
            n += 1

    assert list(limit_texts(endless(), max_texts=3)) == ["text 0", "text 1", "text 2"]
    assert len(consumed) == 3
    assert list(limit_texts(["aaaa", "bbbb", "cccc"], max_bytes=5)) == ["aaaa", "bbbb"]
    assert list(limit_texts(["aaaa", "bbbb"], max_bytes=4)) == ["aaaa"]
    with pytest.raises(ValueError, match="max_bytes"):
        list(limit_texts(["a"], max_bytes=0))


def test_max_texts_and_bytes_in_training(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("".join(f"line number {i} with words\n" for i in range(5000)))
    from yuyan.tokenization.bpe import train_tokenizer

    _, stats = train_tokenizer(files=[path], vocab_size=300, max_texts=100, return_stats=True)
    assert stats.texts == 100
    _, stats = train_tokenizer(files=[path], vocab_size=300, max_bytes=1000, return_stats=True)
    assert 1000 <= stats.bytes < 1100


def test_datasets_sources(tmp_path):
    import datasets

    folder = tmp_path / "local_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in MIXED_CORPUS))
    assert list(iter_dataset_texts(str(folder), text_column="body")) == MIXED_CORPUS
    assert list(iter_dataset_texts(str(folder), text_column="body", streaming=False, max_texts=2)) == MIXED_CORPUS[:2]
    with pytest.raises(ValueError, match="no 'text' column"):
        list(iter_dataset_texts(str(folder)))
    with pytest.raises(ValueError, match="could not load dataset.*split"):
        list(iter_dataset_texts(str(folder), split="test", text_column="body"))
    in_memory = datasets.Dataset.from_dict({"text": MIXED_CORPUS * 5, "id": list(range(35))})
    tokenizer = train_tokenizer(in_memory, vocab_size=300)
    assert tokenizer.decode(tokenizer.encode(MIXED_CORPUS[2])) == MIXED_CORPUS[2]
    saved = tmp_path / "saved_dataset"
    datasets.DatasetDict({"train": in_memory}).save_to_disk(str(saved))
    assert list(iter_dataset_texts(str(saved), max_texts=3)) == MIXED_CORPUS[:3]
    with pytest.raises(ValueError, match="DatasetDict"):
        train_tokenizer(datasets.DatasetDict({"train": in_memory}), vocab_size=300)


# --------------------------------------------------------------------------------------------------------------
# Command line


def test_cli_train_writes_loadable_folder(tmp_path, capsys):
    from transformers import AutoTokenizer

    from yuyan.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"content": t}, ensure_ascii=False) + "\n" for t in MIXED_CORPUS * 20))
    out = tmp_path / "tok"
    code = main([
        "tokenizer", "train", "--data", str(tmp_path / "*.jsonl"), "--text-column", "content", "--vocab-size", "500",
        "--output", str(out), "--special-tokens", "<|tool|>", "<|call|>", "--padding-side", "left",
        "--model-max-length", "512", "--max-bytes", "5K", "--no-progress",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    # 5 kB of text has fewer distinct pairs than the vocabulary asked for: the command says so.
    assert "asked for 500" in printed and "bos/eos <|endoftext|> = 0" in printed
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.padding_side == "left" and tokenizer.model_max_length == 512
    assert tokenizer.convert_ids_to_tokens([5, 6]) == ["<|tool|>", "<|call|>"]
    assert tokenizer.decode(tokenizer.encode(MIXED_CORPUS[3])) == MIXED_CORPUS[3]
    assert "Pre-tokenizer: qwen2; llama.cpp reproduces it (tokenizer.ggml.pre=qwen2)." in printed
    assert pre_tokenizer_of(tokenizer) == "qwen2"


def test_cli_pre_tokenizer_choice(tmp_path, capsys):
    from yuyan.cli import main

    (tmp_path / "corpus.txt").write_text("".join(MIXED_CORPUS * 5))
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--data", str(tmp_path / "corpus.txt"), "--vocab-size", "300",
                 "--pre-tokenizer", "yuyan", "--output", str(out)]) == 0
    assert "llama.cpp cannot reproduce it, so models trained with it do not export to GGUF" in capsys.readouterr().out
    assert pre_tokenizer_of((out / "tokenizer.json").read_text(encoding="utf-8")) == "yuyan"


def test_cli_dataset_source(tmp_path, capsys):
    from yuyan.cli import main

    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in MIXED_CORPUS))
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--dataset", str(folder), "--vocab-size", "300", "--output", str(out)]) == 0
    assert "from dataset" in capsys.readouterr().out
    assert (out / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{missing}", "--vocab-size", "300"], "no such file"),
        (["--data", "{empty}", "--vocab-size", "300"], "empty corpus"),
        (["--data", "{good}", "--vocab-size", "100"], "too small"),
        (["--data", "{bad_json}", "--vocab-size", "300"], "malformed JSON line"),
        (["--vocab-size", "300"], "exactly one of --data"),
        (["--data", "{good}", "--model", "word", "--pre-tokenizer", "qwen2"], "applies to --model bpe only"),
    ],
)
def test_cli_errors_write_nothing(tmp_path, capsys, args, message):
    from yuyan.cli import main

    files = {"missing": tmp_path / "missing.txt", "empty": tmp_path / "empty.txt", "good": tmp_path / "good.txt",
             "bad_json": tmp_path / "bad.jsonl"}
    files["empty"].write_text("\n\n")
    files["good"].write_text("some text\n")
    files["bad_json"].write_text("{oops\n")
    out = tmp_path / "out" / "tok"
    code = main(["tokenizer", "train", *[a.format(**files) for a in args], "--output", str(out)])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("yuyan tokenizer: error:") and message in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_cli_size_parser():
    from yuyan.cli.types import parse_size

    assert parse_size("500") == 500
    assert parse_size("200K") == 200_000
    assert parse_size("1.5M") == 1_500_000
    assert parse_size("64MiB") == 64 * 1024**2
    assert parse_size("2gb") == 2_000_000_000


# --------------------------------------------------------------------------------------------------------------
# On the shared data (skipped when ../shared/data is absent)


@needs_shared
def test_tatoeba_chinese_words_and_round_trip():
    path = SHARED_DATA / "tatoeba-cmn-eng" / "cmn.txt"
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    chinese = [line.split("\t")[1] + "\n" for line in lines if line.count("\t") >= 2]
    train, held_out = chinese[::2][:8000], chinese[1::2][:2000]
    tokenizer = train_tokenizer(train, vocab_size=3000, show_progress=False)
    for word in ("我们", "什么", "知道", "汤姆"):
        assert len(tokenizer.encode(word)) == 1, word
    sentence = "我以为我们发现了绝妙的藏身之处，但警察找到了我们。"
    assert len(tokenizer.encode(sentence)) >= 8
    for text in held_out[:500]:
        assert tokenizer.decode(tokenizer.encode(text)) == nfc(text)


@needs_shared
def test_round_trip_on_shared_files(mixed_tokenizer):
    xquad = json.loads((SHARED_DATA / "xquad" / "xquad.zh.json").read_text(encoding="utf-8"))
    contexts = [p["context"] for article in xquad["data"][:5] for p in article["paragraphs"]]
    english = list(iter_texts(SHARED_DATA / "wikitext-2" / "valid.txt", max_texts=300))
    for text in contexts + english:
        assert mixed_tokenizer.decode(mixed_tokenizer.encode(text)) == nfc(text)


# ---------------------------------------------------------------------------------------------------------------
# Word-level tokenizer
# ---------------------------------------------------------------------------------------------------------------

WORD_CORPUS = [
    " = Cats = \n",
    " the cat sat on the mat . \n",
    " the dog sat on the <unk> . \n",
    " a cat and a dog , the end . \n",
]


def test_word_tokenizer_vocabulary_and_unknown_words():
    from yuyan.tokenization import train_word_tokenizer

    tokenizer = train_word_tokenizer(WORD_CORPUS)
    words = {word for text in WORD_CORPUS for word in text.split()}
    # Every word once (the corpus's own "<unk>" is the unknown token), the line end, the 5 built-in tokens.
    assert len(tokenizer) == len(words | {"<unk>"}) + 1 + 5
    assert tokenizer.convert_ids_to_tokens(list(range(6))) == [ENDOFTEXT, PAD, "<|system|>", "<|user|>", "<|assistant|>", "<unk>"]
    assert (tokenizer.unk_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (5, 0, 1)
    assert sorted(tokenizer.get_vocab().values()) == list(range(len(tokenizer))), "ids must be dense"

    ids = tokenizer(" the zebra sat\n\non  the <unk>\r\n", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["the", "<unk>", "sat", "\n", "\n", "on", "the", "<unk>", "\n"]
    assert tokenizer.decode(ids) == "the <unk> sat \n \n on the <unk> \n"

    # The most frequent words only: "the" (5 times) stays, the words seen once go.
    small = train_word_tokenizer(WORD_CORPUS, vocab_size=10)
    assert len(small) == 10 and "the" in small.get_vocab() and "mat" not in small.get_vocab()
    frequent = train_word_tokenizer(WORD_CORPUS, min_frequency=2)
    assert set(frequent.get_vocab()) - {ENDOFTEXT, PAD, "<|system|>", "<|user|>", "<|assistant|>", "<unk>"} == {
        "the", "cat", "dog", "sat", "on", "a", ".", "=", "\n"}


def test_word_tokenizer_without_line_ends_still_has_one():
    from yuyan.tokenization import train_word_tokenizer

    tokenizer = train_word_tokenizer(["one two", "two three"])
    ids = tokenizer("two\nfour", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["two", "\n", "<unk>"]
    assert "\n" in tokenizer.decode(ids, skip_special_tokens=True)


def test_word_tokenizer_saves_and_loads_with_auto_tokenizer(tmp_path, capsys):
    from transformers import AutoTokenizer

    from yuyan.cli import main

    (tmp_path / "train.txt").write_text("".join(WORD_CORPUS), encoding="utf-8")
    assert main(["tokenizer", "train", "--model", "word", "--data", str(tmp_path / "train.txt"),
                 "--output", str(tmp_path / "tok")]) == 0
    assert "unknown words: <unk> = 5" in capsys.readouterr().out
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.unk_token == "<unk>" and loaded.eos_token == ENDOFTEXT
    text = " the cat sat on a zebra . \n"
    assert loaded.convert_ids_to_tokens(loaded(text, add_special_tokens=False)["input_ids"]) == [
        "the", "cat", "sat", "on", "a", "<unk>", ".", "\n"]


def test_word_tokenizer_errors(tmp_path):
    from yuyan.tokenization import train_word_tokenizer

    with pytest.raises(ValueError, match="vocab_size=7 is too small"):
        train_word_tokenizer(WORD_CORPUS, vocab_size=7)
    with pytest.raises(ValueError, match="min_frequency"):
        train_word_tokenizer(WORD_CORPUS, min_frequency=0)
    with pytest.raises(ValueError, match="empty corpus"):
        train_word_tokenizer([" \n", ""])


@pytest.mark.slow
@needs_shared
def test_word_tokenizer_on_wikitext2_matches_the_published_vocabulary_and_word_counts():
    from yuyan.tokenization import train_word_tokenizer
    from yuyan.training.evaluation import count_words, tokenize_text

    folder = SHARED_DATA / "wikitext-2"
    tokenizer = train_word_tokenizer(files=[folder / "train.txt"])
    # 33,278: WikiText-2's vocabulary (its <unk> and <eos>, here the line end, included); plus the 5 built-ins.
    assert len(tokenizer) - 5 == 33_278
    for split, words in (("valid", 217_646), ("test", 245_569)):
        text = (folder / f"{split}.txt").read_text(encoding="utf-8")
        # One token per word and line end: token perplexity is word perplexity.
        assert len(tokenize_text(tokenizer, text)) == count_words(text) == words

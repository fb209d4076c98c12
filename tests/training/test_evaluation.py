"""Tests of yuyan.training.evaluation: strided NLL, perplexity / bits per byte / word perplexity, word counts, CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from model_helpers import tiny_config
from yuyan import YuyanForCausalLM, cli
from yuyan.tokenization import train_tokenizer
from yuyan.training.evaluation import (
    count_words,
    evaluate_files,
    evaluate_text,
    read_texts,
    sliding_windows,
    tokenize_text,
)

WIKITEXT2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "wikitext-2"

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "A language model assigns a probability to every sequence of tokens.",
    "Perplexity is the exponential of the average negative log-likelihood per token.",
    "Bits per byte divide the total negative log-likelihood by ln 2 and by the number of bytes.",
    "语言模型 给 每个 句子 一个 概率。我们 今天 去 学校 了。",
    "Numbers such as 2024 and 3.14159 are split into digits.",
] * 12

SAMPLE = (
    " = Evaluation = \n \n The quick brown fox jumps over the lazy dog . \n"
    "Perplexity is exp of the mean NLL ; 语言模型 给 句子 概率。\n\n  tail line without newline"
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300, show_progress=False)


def make_model(tokenizer, stack="hybrid", **overrides):
    torch.manual_seed(0)
    values = dict(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = tiny_config(stack, **{**values, **overrides})
    return YuyanForCausalLM(config).eval()


def token_nll_direct(model, sequence: list[int]) -> torch.Tensor:
    """NLL of sequence[1:], each token given everything before it, from one plain forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0].double()
    log_probs = logits.log_softmax(-1)
    targets = torch.tensor(sequence[1:])
    return -log_probs[:-1].gather(1, targets[:, None])[:, 0]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("model")
    make_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# NLL
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["attention", "lstm", "hybrid"])
def test_one_window_equals_direct_computation(tokenizer, stack):
    model = make_model(tokenizer, stack)
    ids = tokenize_text(tokenizer, SAMPLE)
    assert 16 < len(ids) < 127
    result = evaluate_text(model, tokenizer, SAMPLE, show_progress=False, return_token_nll=True)
    direct = token_nll_direct(model, [tokenizer.eos_token_id, *ids])
    assert result["windows"] == 1 and result["block_size"] == 128
    assert result["tokens"] == len(ids) == len(result["token_nll"])
    assert result["nll"] == pytest.approx(float(direct.sum()), rel=1e-5)
    torch.testing.assert_close(result["token_nll"].double(), direct, rtol=1e-4, atol=1e-5)


def test_windows_cover_every_target_once():
    for length in [2, 3, 9, 16, 17, 24, 25, 100, 101]:
        for block, stride in [(16, 8), (16, 15), (16, 1), (2, 1), (5, 3)]:
            windows = sliding_windows(length, block, stride)
            targets = [t for _, end, first in windows for t in range(first, end)]
            assert targets == list(range(1, length))
            for begin, end, first in windows:
                assert end - begin == min(block, length)
                assert begin < first < end
                assert first - begin >= min(block, length) - stride or begin == 0


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["attention", "hybrid"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_strided_equals_manual_windows(tokenizer, stack, batch_size):
    model = make_model(tokenizer, stack)
    ids = tokenize_text(tokenizer, SAMPLE)
    sequence = [tokenizer.eos_token_id, *ids]
    block, stride = 16, 8
    result = evaluate_text(
        model, tokenizer, SAMPLE, block_size=block, stride=stride, batch_size=batch_size, show_progress=False,
        return_token_nll=True,
    )
    # Manual: windows of `block` tokens ending 8 tokens apart, the last one ending at the last token; each window
    # scores the tokens after the previous window's end, from its own forward pass.
    expected = torch.full((len(ids),), math.nan, dtype=torch.float64)
    previous_end, count, windows = 1, 0, 0
    while previous_end < len(sequence):
        end = block if windows == 0 else min(previous_end + stride, len(sequence))
        begin = max(0, end - block)
        window_nll = token_nll_direct(model, sequence[begin:end])  # NLL of positions begin+1 .. end-1
        for position in range(previous_end, end):
            assert math.isnan(expected[position - 1])  # scored once
            expected[position - 1] = window_nll[position - begin - 1]
            count += 1
        previous_end, windows = end, windows + 1
    assert count == len(ids) == result["tokens"]
    assert result["windows"] == windows > 3
    assert not torch.isnan(result["token_nll"]).any()
    torch.testing.assert_close(result["token_nll"].double(), expected, rtol=1e-4, atol=1e-5)
    assert result["nll"] == pytest.approx(float(expected.sum()), rel=1e-5)
    # Windows with little context score differently from one pass over everything: the windows really are used.
    full = token_nll_direct(model, sequence)
    assert not torch.allclose(full, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_metrics_follow_from_nll_and_counts(tokenizer):
    model = make_model(tokenizer, "lstm")
    result = evaluate_text(model, tokenizer, SAMPLE, block_size=16, stride=4, batch_size=4, show_progress=False)
    nll = result["nll"]
    assert result["bytes"] == len(SAMPLE.encode("utf-8"))
    assert result["words"] == count_words(SAMPLE) == 29 + 6
    assert result["loss"] == pytest.approx(nll / result["tokens"])
    assert result["perplexity"] == pytest.approx(math.exp(nll / result["tokens"]))
    assert result["bits_per_byte"] == pytest.approx(nll / math.log(2) / result["bytes"])
    assert result["word_perplexity"] == pytest.approx(math.exp(nll / result["words"]))
    assert (result["block_size"], result["stride"], result["batch_size"]) == (16, 4, 4)
    # A random model over a vocabulary of V tokens is near uniform: perplexity of the order of V.
    assert 0.2 * len(tokenizer) < result["perplexity"] < 5 * len(tokenizer)


def test_word_level_tokenizer_makes_token_perplexity_the_word_perplexity():
    from yuyan.tokenization import train_word_tokenizer

    text = SAMPLE + "\n"  # every line ends: one token per whitespace word and per line, as count_words counts
    tokenizer = train_word_tokenizer([text, *CORPUS])
    result = evaluate_text(make_model(tokenizer, "lstm"), tokenizer, text, block_size=16, stride=4, show_progress=False)
    assert result["tokens"] == result["words"] == count_words(text)
    assert result["word_perplexity"] == pytest.approx(result["perplexity"])


def test_default_stride_and_training_mode_restored(tokenizer):
    model = make_model(tokenizer, "attention", max_position_embeddings=24).train()
    with pytest.warns(UserWarning, match="max_position_embeddings"):
        evaluate_text(model, tokenizer, "short text", block_size=32, show_progress=False)
    result = evaluate_text(model, tokenizer, SAMPLE, show_progress=False)
    assert (result["block_size"], result["stride"]) == (24, 12)
    assert model.training


# ----------------------------------------------------------------------------------------------------------------
# Word counts
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, words",
    [
        ("", 0),
        ("\n", 1),                       # one empty line
        ("\n\n", 2),
        ("a", 2),                        # last line without "\n" counts
        ("a\n", 2),                      # the empty string after the final "\n" is not a line
        ("a b\nc", 5),
        (" \n \n", 2),                   # blank lines count
        ("a  b\t c \n\n d e\n", 5 + 3),
        ("x\r\ny", 2 + 2),               # "\r" is whitespace, not a line end
        ("语言 模型\n", 3),
    ],
)
def test_count_words_rule(text, words):
    assert count_words(text) == words


@pytest.mark.skipif(not WIKITEXT2.is_dir(), reason="shared WikiText-2 data not available")
@pytest.mark.parametrize("split, words", [("valid", 217_646), ("test", 245_569)])
def test_wikitext2_word_counts(split, words):
    assert count_words(read_texts([WIKITEXT2 / f"{split}.txt"])) == words


# ----------------------------------------------------------------------------------------------------------------
# Files, folders and errors
# ----------------------------------------------------------------------------------------------------------------


def test_files_are_joined_as_they_are(tmp_path, tokenizer, saved_model):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("no newline at the end", encoding="utf-8")
    second.write_text(" 接着 second file\n", encoding="utf-8")
    text = read_texts([first, second])
    assert text == "no newline at the end 接着 second file\n"
    from_files = evaluate_files(saved_model, [first, second], block_size=8, stride=3, show_progress=False)
    from_text = evaluate_text(make_model(tokenizer), tokenizer, text, block_size=8, stride=3, show_progress=False)
    assert from_files["nll"] == pytest.approx(from_text["nll"], rel=1e-5)
    assert from_files["files"] == [str(first), str(second)] and from_files["model"] == str(saved_model)
    assert from_files["words"] == 8 + 1


def test_errors(tmp_path, tokenizer, saved_model):
    model = make_model(tokenizer)
    with pytest.raises(ValueError, match="empty"):
        evaluate_text(model, tokenizer, "")
    for kwargs, match in [
        (dict(block_size=16, stride=16), "stride"),
        (dict(block_size=1), "block_size"),
        (dict(block_size=8, stride=0), "stride"),
        (dict(batch_size=0), "batch_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            evaluate_text(model, tokenizer, "some text", show_progress=False, **kwargs)
    small = make_model(tokenizer, vocab_size=64)
    with pytest.raises(ValueError, match="vocabulary"):
        evaluate_text(small, tokenizer, "The quick brown fox", show_progress=False)

    data = tmp_path / "data.txt"
    data.write_text("some text\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        evaluate_files(tmp_path / "missing", [data])
    with pytest.raises(ValueError, match="no config.json"):
        evaluate_files(tmp_path, [data])
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}), encoding="utf-8")
    with pytest.raises(ValueError, match="not a Yuyan model"):
        evaluate_files(other, [data])
    no_tokenizer = tmp_path / "no-tokenizer"
    make_model(tokenizer).save_pretrained(no_tokenizer)
    with pytest.raises(ValueError, match="no tokenizer"):
        evaluate_files(no_tokenizer, [data])

    with pytest.raises(FileNotFoundError, match="data file not found"):
        evaluate_files(saved_model, [tmp_path / "nope.txt"])
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        evaluate_files(saved_model, [empty])
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"ok \xff\xfe bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        evaluate_files(saved_model, [binary])
    with pytest.raises(ValueError, match="not a file"):
        evaluate_files(saved_model, [tmp_path])
    with pytest.raises(ValueError, match="tokenizer is required"):
        evaluate_files(model, [data])


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def build_parser():
    return cli.build_parser({"eval"})


def test_cli_prints_table_and_writes_json(tmp_path, capsys, saved_model):
    data = tmp_path / "data.txt"
    data.write_text(SAMPLE, encoding="utf-8")
    out = tmp_path / "results" / "eval.json"
    args = build_parser().parse_args([
        "eval", "--model", str(saved_model), "--data", str(data), "--block-size", "16", "--stride", "8",
        "--batch-size", "2", "--json", str(out),
    ])
    args.handler(args)
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "bits per byte" in printed and "word perplexity" in printed
    result = json.loads(out.read_text(encoding="utf-8"))
    assert (result["block_size"], result["stride"], result["batch_size"], result["dtype"]) == (16, 8, 2, "float32")
    assert result["words"] == count_words(SAMPLE) and result["bytes"] == len(SAMPLE.encode("utf-8"))
    assert result["perplexity"] == pytest.approx(math.exp(result["nll"] / result["tokens"]))
    assert result["files"] == [str(data)] and result["model"] == str(saved_model)

    args = build_parser().parse_args(["eval", "--model", str(saved_model), "--data", str(data), "--dtype", "bfloat16"])
    args.handler(args)
    assert "bfloat16" in capsys.readouterr().out


def test_cli_errors_exit_2(tmp_path, capsys, saved_model):
    parser = build_parser()
    data = tmp_path / "data.txt"
    data.write_text("text\n", encoding="utf-8")
    # The same handling as yuyan.cli.main: ValueError / FileNotFoundError -> one line, exit 2.
    for argv in (
        ["eval", "--model", str(tmp_path / "missing"), "--data", str(data)],
        ["eval", "--model", str(saved_model), "--data", str(data), "--block-size", "8", "--stride", "8"],
    ):
        args = parser.parse_args(argv)
        with pytest.raises((ValueError, FileNotFoundError)):
            args.handler(args)
    assert cli.main(["eval", "--model", str(tmp_path / "missing"), "--data", str(data)]) == 2
    assert "model folder not found" in capsys.readouterr().err

"""`yuyan generate`: every strategy, stop strings, batching, streaming, chat, and the one-line errors."""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import huggingface_hub.constants  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from yuyan import YuyanConfig, YuyanForCausalLM  # noqa: E402
from yuyan.cli import main  # noqa: E402

MAX_POSITIONS = 64
PROMPTS = ["the cat", "a small dog runs near the", "the lazy", "the old red horse sees"]


def corpus(count: int = 400, seed: int = 0) -> list[str]:
    """A few KB of templated English: a model trained on it for a moment writes words, spaces and full stops."""
    rng = random.Random(seed)
    adjectives = "small quick brown lazy old red".split()
    nouns = "cat dog fox bird horse river".split()
    verbs = "sees jumps over runs past sits near finds".split()
    return [
        f"the {rng.choice(adjectives)} {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(adjectives)} "
        f"{rng.choice(nouns)}." for _ in range(count)
    ]


def make_model_folder(folder, layer_types: list[str], train_steps: int) -> None:
    from yuyan.tokenization import train_tokenizer

    texts = corpus()
    tokenizer = train_tokenizer(texts=texts, vocab_size=300, output_dir=folder, show_progress=False)
    torch.manual_seed(0)
    model = YuyanForCausalLM(YuyanConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=len(layer_types), layer_types=layer_types,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, initializer_range=0.2,
    ))
    # A few optimizer steps, so that completions are words (and contain the stop strings the tests look for)
    # rather than random bytes.
    ids = tokenizer(" ".join(texts), verbose=False)["input_ids"]
    data = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(train_steps):
        batch = data[torch.randint(0, len(data), (16,), generator=generator)]
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder)


# Every test here runs on one torch thread (the `one_thread` fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("generate")
    make_model_folder(root / "hybrid", ["lstm", "full_attention"], train_steps=80)
    make_model_folder(root / "lstm", ["lstm", "lstm"], train_steps=0)
    return {"hybrid": str(root / "hybrid"), "lstm": str(root / "lstm")}


@pytest.fixture(scope="module")
def hybrid(folders):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folders["hybrid"]).eval(), AutoTokenizer.from_pretrained(
        folders["hybrid"])


def run_cli(argv: list[str], capsys, stdin: str | None = None, monkeypatch=None):
    """Run `yuyan generate ARGV` in-process through `yuyan.cli.main`: (exit code, stdout, stderr)."""
    capsys.readouterr()
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        code = main(["generate", *argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def reference(model, tokenizer, prompt: str, **settings) -> list[str]:
    inputs = tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        sequences = model.generate(**inputs, **settings)
    return [tokenizer.decode(row[inputs["input_ids"].shape[1]:], skip_special_tokens=True) for row in sequences]


def split_blocks(out: str) -> list[str]:
    """The completions of a multi-completion run, without their `=== ... ===` headers."""
    parts = re.split(r"^=== .* ===\n", out, flags=re.M)
    assert parts[0] == ""
    return [part[:-1] for part in parts[1:]]  # each block ends with print's newline


def test_greedy_output_equals_model_generate(folders, hybrid, capsys):
    code, out, err = run_cli(["--model", folders["hybrid"], "--prompt", "the cat", "--max-new-tokens", "20",
                              "--strategy", "greedy"], capsys)
    assert code == 0, err
    expected = reference(*hybrid, "the cat", max_new_tokens=20, do_sample=False)[0]
    assert len(expected.split()) >= 4
    assert out == expected + "\n"
    assert re.search(r"generated \d+ tokens in [\d.]+ s \([\d.]+ tokens/s\)", err)
    assert "constant" not in err  # the hybrid's attention cache grows


def test_seed_makes_sampling_reproducible(folders, capsys):
    base = ["--model", folders["hybrid"], "--prompt", "the", "--max-new-tokens", "30", "--strategy", "sample",
            "--temperature", "1.5"]
    first = run_cli([*base, "--seed", "1"], capsys)
    second = run_cli([*base, "--seed", "1"], capsys)
    other = run_cli([*base, "--seed", "2"], capsys)
    assert first[0] == second[0] == other[0] == 0
    assert first[1] == second[1]
    assert first[1] != other[1]


def test_beam_search_prints_the_requested_sequences(folders, hybrid, capsys):
    code, out, err = run_cli(["--model", folders["hybrid"], "--prompt", "the cat", "--max-new-tokens", "10",
                              "--strategy", "beam", "--num-return-sequences", "3"], capsys)
    assert code == 0, err
    blocks = split_blocks(out)
    assert len(blocks) == 3 and len(set(blocks)) == 3
    # --strategy beam means 4 beams unless --num-beams says otherwise
    assert blocks == reference(*hybrid, "the cat", max_new_tokens=10, num_beams=4, num_return_sequences=3,
                               do_sample=False)


def test_batched_file_equals_one_by_one_and_writes_jsonl(folders, tmp_path, capsys):
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(PROMPTS) + "\n\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"
    code, out, err = run_cli(["--model", folders["hybrid"], "--prompt-file", str(prompt_file), "--max-new-tokens",
                              "12", "--batch-size", "4", "--output", str(output)], capsys)
    assert code == 0, err
    assert out == ""
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [row["prompt"] for row in rows] == PROMPTS
    for row in rows:
        assert {"prompt", "completion", "prompt_tokens", "completion_tokens", "tokens_per_second"} <= set(row)
        assert 0 < row["completion_tokens"] <= 12 and row["prompt_tokens"] > 0 and row["tokens_per_second"] > 0
    one_by_one = []
    for prompt in PROMPTS:
        code, out, err = run_cli(["--model", folders["hybrid"], "--prompt", prompt, "--max-new-tokens", "12"], capsys)
        assert code == 0, err
        one_by_one.append(out[:-1])
    assert [row["completion"] for row in rows] == one_by_one
    # The same batch printed: one block per prompt, in order.
    code, out, err = run_cli(["--model", folders["hybrid"], "--prompt-file", str(prompt_file), "--max-new-tokens",
                              "12"], capsys)
    assert split_blocks(out) == one_by_one


def test_prompts_from_standard_input(folders, capsys, monkeypatch):
    code, out, err = run_cli(["--model", folders["hybrid"], "--max-new-tokens", "8"], capsys,
                             stdin="\n".join(PROMPTS[:2]) + "\n", monkeypatch=monkeypatch)
    assert code == 0, err
    assert len(split_blocks(out)) == 2


def test_stop_cuts_at_the_stop_string(folders, tmp_path, capsys):
    base = ["--model", folders["hybrid"], "--prompt", "the old", "--max-new-tokens", "40"]
    code, full, err = run_cli(base, capsys)
    assert code == 0, err
    full = full[:-1]
    stop = full.split()[3]  # a word from the middle of the completion
    expected = full[: full.find(stop)]
    code, out, err = run_cli([*base, "--stop", stop, "unlikely-stop"], capsys)
    assert code == 0, err
    assert out == expected + "\n" and stop not in out
    # Generation itself stopped there (transformers' stop_strings), not only the printed text.
    output = tmp_path / "stop.jsonl"
    run_cli([*base, "--stop", stop, "--output", str(output)], capsys)
    (row,) = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert row["completion"] == expected and row["completion_tokens"] < 40
    # Streaming holds back what could be a stop string: same text.
    code, streamed, err = run_cli([*base, "--stop", stop, "--stream"], capsys)
    assert streamed == out


def test_streaming_prints_the_same_text(folders, capsys):
    base = ["--model", folders["hybrid"], "--max-new-tokens", "25"]
    for prompts in (["--prompt", "the quick"], ["--prompt", "the", "--prompt", "a lazy"]):
        code, plain, err = run_cli([*base, *prompts, "--no-stream"], capsys)
        assert code == 0, err
        code, streamed, err = run_cli([*base, *prompts, "--stream"], capsys)
        assert code == 0, err
        assert streamed == plain
    code, out, err = run_cli([*base, "--prompt", "the", "--stream", "--strategy", "beam"], capsys)
    assert code == 2 and "beam" in err and len(err.strip().splitlines()) == 1


def test_lstm_model_reports_constant_memory(folders, capsys):
    code, out, err = run_cli(["--model", folders["lstm"], "--prompt", "the", "--max-new-tokens", "30",
                              "--strategy", "beam", "--num-beams", "2"], capsys)
    assert code == 0, err
    assert re.search(r"recurrent state stayed at [\d.]+ \w+ for all 30 forward passes \(constant", err), err
    # No attention layer: no position limit, so a long prompt is fine.
    long_prompt = " ".join(["the small cat"] * 40)
    code, out, err = run_cli(["--model", folders["lstm"], "--prompt", long_prompt, "--max-new-tokens", "3"], capsys)
    assert code == 0, err


def test_dtype_flag(folders, capsys):
    code, out, err = run_cli(["--model", folders["hybrid"], "--prompt", "the", "--max-new-tokens", "5",
                              "--dtype", "bfloat16"], capsys)
    assert code == 0, err
    assert out.strip()


def test_chat_keeps_the_conversation(folders, hybrid, capsys, monkeypatch):
    model, tokenizer = hybrid
    code, out, err = run_cli(["--model", folders["hybrid"], "--chat", "--max-new-tokens", "10"], capsys,
                             stdin="the cat\n\nthe dog\n/exit\nnever read\n", monkeypatch=monkeypatch)
    assert code == 0, err
    replies = out.splitlines()
    assert len(replies) == 2
    messages = []
    for user, reply in zip(["the cat", "the dog"], replies):
        messages.append({"role": "user", "content": user})
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            sequence = model.generate(**ids, max_new_tokens=10, do_sample=False)[0]
        assert reply == tokenizer.decode(sequence[ids["input_ids"].shape[1]:], skip_special_tokens=True)
        messages.append({"role": "assistant", "content": reply})


def test_long_prompt_is_an_error_unless_truncate(folders, capsys):
    long_prompt = " ".join(["the small cat sees the dog."] * 20)
    base = ["--model", folders["hybrid"], "--prompt", long_prompt, "--max-new-tokens", "10"]
    code, out, err = run_cli(base, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert f"longer than the model's {MAX_POSITIONS} positions" in err and "--truncate" in err
    code, out, err = run_cli([*base, "--truncate"], capsys)
    assert code == 0, err
    assert out.strip() and f"-> {MAX_POSITIONS - 10} tokens" in err


def _no_weights_folder(tmp_path):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    return str(folder)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "does not exist"),
        ("no-weights", "holds no model weights"),
        ("hub", "Hugging Face Hub could not provide it"),
        ("strategy", "invalid choice: 'fastest'"),
        ("greedy-sequences", "num_return_sequences"),
        ("no-model", "--model"),
        ("bad-count", "--max-new-tokens must be at least 1"),
    ],
)
def test_errors_are_one_line(case, expected, folders, tmp_path, capsys, monkeypatch):
    # Offline whatever the environment says: an unreachable Hub otherwise costs a minute of retries.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = {"missing": str(tmp_path / "nowhere"), "no-weights": _no_weights_folder(tmp_path),
             "hub": "yuyan-nobody/no-such-model"}.get(case, folders["hybrid"])
    argv = ["--model", model, "--prompt", "the"]
    if case == "strategy":
        argv += ["--strategy", "fastest"]
    elif case == "greedy-sequences":
        argv += ["--strategy", "greedy", "--num-return-sequences", "3"]
    elif case == "no-model":
        argv = ["--prompt", "the"]
    elif case == "bad-count":
        argv += ["--max-new-tokens", "0"]
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("yuyan generate: error: ") and expected in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_through_the_yuyan_command(folders, tmp_path):
    """A real `yuyan generate` process: the error is one line on stderr and the exit status 2."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    long_prompt = " ".join(["the small cat sees the dog."] * 20)
    result = subprocess.run(
        [sys.executable, "-m", "yuyan.cli", "generate", "--model", folders["hybrid"], "--prompt", long_prompt],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("yuyan generate: error: prompt 1 is ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_fast_gives_the_same_completions_and_refuses_beams(folders, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("YUYAN_CACHE", str(tmp_path / "cache"))
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    base = ["--model", folders["hybrid"], "--prompt-file", str(prompt_file), "--max-new-tokens", "16",
            "--batch-size", "4", "--strategy", "greedy"]
    plain = run_cli(base, capsys)
    first = run_cli([*base, "--fast"], capsys)
    again = run_cli([*base, "--fast"], capsys)
    assert plain[0] == first[0] == again[0] == 0, first[2]
    assert first[1] == plain[1] == again[1]  # left-padded batches of different lengths, same text
    assert "exported (once" in first[2] and "loaded from the cache" in again[2]

    code, out, err = run_cli(["--model", folders["hybrid"], "--prompt", "the", "--fast", "--strategy", "beam"], capsys)
    assert code != 0 and "--fast does greedy decoding and sampling" in err and "Traceback" not in err

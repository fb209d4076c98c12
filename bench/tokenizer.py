"""Benchmark: Yuyan's tokenizer against a plain `tokenizers.ByteLevelBPETokenizer` on the same English + Chinese data.

    python bench/tokenizer.py            # vocabularies of 8192, 16384 and 32768, with variants (about 3 minutes on 2 cores)
    python bench/tokenizer.py --quick    # 8192 only, no variants
    python bench/tokenizer.py --pre-tokenizers --vocab-sizes 8192 32768   # the pre-tokenizer choices (about 1 minute)

Data (../shared/data, read-only):
- training: WikiText-2 train (English, one text per line) + the Chinese side of tatoeba-cmn-eng and the contexts of
  XQuAD zh, minus the held-out parts below;
- held out: WikiText-2 test (English); every 10th tatoeba sentence and every 5th XQuAD article (all its paragraphs,
  so no paragraph of a held-out article was seen in training) (Chinese); the first 4000 lines of the TinyStories
  validation sample (English prose with few digits, out of domain). The held-out Tatoeba sentences are measured
  twice: as lines of the file (each ends in a newline) and bare (as they would end a chat message).

Yuyan's rows use its own pre-tokenizer (`--pre-tokenizer yuyan`, the default before the choice existed; the
variants change one piece of it), so they compare with earlier runs. Both tokenizers see the same texts in the same
order. The baseline is `ByteLevelBPETokenizer()` trained with
`train_from_iterator(texts, vocab_size=V)` and all other defaults (GPT-2's pre-tokenisation regex, min_frequency 2,
no special tokens, no normalisation). Measured:
- training time (wall clock, texts already in memory);
- batched encode throughput: `encode_batch` of the `tokenizers` backends on the held-out WikiText-2 and Chinese
  texts, median of N runs taken in turns (baseline, Yuyan, baseline, ...), in MB of UTF-8 input per second;
- bytes per token on held-out text: UTF-8 bytes / tokens, higher is better (each text is encoded on its own, as
  it appears in its file: a line, a sentence with its newline, or a paragraph).

`--pre-tokenizers` compares instead the pre-tokenizers `yuyan tokenizer train --pre-tokenizer` offers (Yuyan's own
expression and the ones llama.cpp reproduces), each training a Yuyan tokenizer on the texts above plus Python code:
- (a) for each llama.cpp pre-tokenizer written out here (its Hugging Face expressions), the share of held-out lines
  it cuts into exactly the pieces Yuyan's expression cuts;
- (b) bytes per token on held-out English, Chinese, code and emoji text, and the change in the number of tokens
  against Yuyan's expression; with them deepseek-v3's expressions, which llama.cpp reproduces too but Yuyan does
  not offer (they group digits in threes, where every Yuyan choice keeps digits single).
Code is the top-level modules of the running Python's standard library (every 5th file held out); emoji text is
made here (no corpus of it is available offline): held-out TinyStories lines and Tatoeba sentences with one to three
emoji sequences (ZWJ families, skin tones, flags, keycaps, variation selectors) put between words or at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import sysconfig
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tokenizers
import transformers
from tokenizers import ByteLevelBPETokenizer

from yuyan.tokenization import bpe, train_tokenizer
from yuyan.corpus import iter_file_texts

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BASELINE = "ByteLevelBPETokenizer (defaults)"
COLUMNS = {
    "en_wikitext": "en WikiText-2",
    "en_stories": "en TinyStories",
    "zh_tatoeba": "zh Tatoeba lines",
    "zh_tatoeba_bare": "zh Tatoeba, no newline",
    "zh_xquad": "zh XQuAD",
    "zh_all": "zh all",
}


def load_corpora(data_dir: Path) -> dict[str, list[str]]:
    english_train = list(iter_file_texts(data_dir / "wikitext-2" / "train.txt"))
    english_test = list(iter_file_texts(data_dir / "wikitext-2" / "test.txt"))
    stories = list(iter_file_texts(data_dir / "tinystories" / "validation_sample.txt"))[:4000]

    tatoeba_train, tatoeba_test = [], []
    for index, line in enumerate(iter_file_texts(data_dir / "tatoeba-cmn-eng" / "cmn.txt")):
        columns = line.split("\t")
        if len(columns) < 2 or not columns[1].strip():
            continue
        (tatoeba_test if index % 10 == 0 else tatoeba_train).append(columns[1] + "\n")

    xquad_train, xquad_test = [], []
    articles = json.loads((data_dir / "xquad" / "xquad.zh.json").read_text(encoding="utf-8"))["data"]
    for index, article in enumerate(articles):
        for paragraph in article["paragraphs"]:
            (xquad_test if index % 5 == 0 else xquad_train).append(paragraph["context"] + "\n")

    return {
        "train": english_train + tatoeba_train + xquad_train,
        "en_wikitext": english_test,
        "en_stories": stories,
        "zh_tatoeba": tatoeba_test,
        "zh_xquad": xquad_test,
    }


# llama.cpp pre-tokenizers (tokenizer.ggml.pre) written as the expressions of the Hugging Face tokenizers they
# mirror, each a sequence of Split steps; only for measuring. The ones Yuyan can train are in bpe.PRE_TOKENIZERS.
_LLAMA_CPP_ONLY = {
    "gpt-2": (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",),
    "llama-bpe": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "deepseek-v3": (
        r"\p{N}{1,3}",
        "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
        r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
        r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
}
EMOJI = [
    "😀", "😂", "🤣", "😊", "😍", "🙏", "👍", "👍🏽", "👏🏻", "🎉", "❤️", "💔", "🔥", "✨", "✅", "❌", "⭐", "🚀",
    "🦙", "🐼", "🍜", "☕", "⚽", "🇨🇳", "🇺🇸", "🇯🇵", "👨\u200d👩\u200d👧\u200d👦", "👩\u200d💻", "🏳️\u200d🌈",
    "😶\u200d🌫️", "1️⃣", "#️⃣",
]


def load_code(every: int = 5, max_train_bytes: int = 2_000_000) -> tuple[list[str], list[str]]:
    """Python source: the standard library's top-level modules, one text per file; every `every`-th file is held
    out, the rest train (up to `max_train_bytes`)."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    train, test, size = [], [], 0
    for index, path in enumerate(files):
        text = path.read_text(encoding="utf-8", errors="replace")
        if index % every == 0:
            test.append(text)
        elif size < max_train_bytes:
            train.append(text)
            size += len(text.encode("utf-8"))
    return train, test


def with_emoji(texts: list[str], seed: int = 0) -> list[str]:
    """Each text with one to three emoji sequences, between words or at its end (before a final newline)."""
    rng = random.Random(seed)
    result = []
    for text in texts:
        body, end = (text[:-1], "\n") if text.endswith("\n") else (text, "")
        for _ in range(rng.randint(1, 3)):
            emoji = rng.choice(EMOJI)
            spaces = [i for i, ch in enumerate(body) if ch == " "]
            if spaces and rng.random() < 0.5:
                at = rng.choice(spaces)
                body = body[:at] + " " + emoji + body[at:]
            else:
                body = body + rng.choice(["", " "]) + emoji
        result.append(body + end)
    return result


def split_pieces(patterns: tuple[str, ...]):
    """A function giving the pieces a sequence of Split steps (isolated, as saved tokenizers use them) cuts."""
    from tokenizers import Regex, pre_tokenizers

    splitter = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(p), behavior="isolated") for p in patterns])
    return lambda text: [piece for piece, _ in splitter.pre_tokenize_str(text)]


def nbytes(texts: list[str]) -> int:
    return sum(len(text.encode("utf-8")) for text in texts)


def bytes_per_token(backend, texts: list[str]) -> float:
    tokens = sum(len(encoding.ids) for encoding in backend.encode_batch(texts))
    return nbytes(texts) / tokens


def throughput(backends: dict, texts: list[str], repeats: int) -> dict[str, float]:
    """MB/s of `encode_batch` over `texts` for each backend: the median of `repeats` runs, taken in turns."""
    size = nbytes(texts)
    times = {name: [] for name in backends}
    for _ in range(repeats):
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.encode_batch(texts)
            times[name].append(time.perf_counter() - start)
    return {name: size / statistics.median(values) / 1e6 for name, values in times.items()}


@contextlib.contextmanager
def bench_pre_tokenizer(name: str, patterns: tuple[str, ...]):
    """Make `patterns` trainable as `train_tokenizer(pre_tokenizer=name)` for the length of the block (a variant
    measured here that Yuyan does not offer); a name Yuyan offers is used as it is."""
    if name in bpe.PRE_TOKENIZERS:
        yield name
        return
    bpe.PRE_TOKENIZERS[name] = bpe.PreTokenizer(name, patterns, None, "measured in bench/tokenizer.py")
    try:
        yield name
    finally:
        del bpe.PRE_TOKENIZERS[name]


def variant_pattern(**replace: str) -> str:
    """SPLIT_PATTERN with its "digits" or "cjk" alternative replaced."""
    pieces = list(bpe._PIECES)
    expected = {"digits": r" ?\p{N}", "cjk": rf" ?[{bpe._CJK}]+"}
    for key, new in replace.items():
        index = pieces.index(expected[key])
        pieces[index] = new
    return "|".join(pieces)


def compare_pre_tokenizers(corpora: dict[str, list[str]], vocab_sizes: list[int], args) -> None:
    """(a) which llama.cpp pre-tokenizers cut text as Yuyan's expression does; (b) what each trainable choice costs."""
    code_train, code_test = load_code()
    held_out = {
        "en WikiText-2": corpora["en_wikitext"],
        "en TinyStories": corpora["en_stories"],
        "zh all": corpora["zh_tatoeba"] + corpora["zh_xquad"],
        "code (Python)": code_test,
        "emoji (en + zh)": with_emoji(corpora["en_stories"][:1000] + corpora["zh_tatoeba"][:1000]),
    }
    train = corpora["train"] + code_train
    print(f"training: {len(train):,} texts, {nbytes(train) / 1e6:.2f} MB (code {nbytes(code_train) / 1e6:.2f} MB); "
          + ", ".join(f"{name} {nbytes(texts) / 1e6:.3f} MB" for name, texts in held_out.items()), file=sys.stderr)

    # Compared line by line: a whole source file is almost never cut identically, a line often is.
    lines = {key: [line for text in texts for line in text.splitlines(keepends=True)] for key, texts in held_out.items()}
    yuyan_pieces = split_pieces(bpe.PRE_TOKENIZERS["yuyan"].patterns)
    candidates = {c.llama_cpp: c.patterns for c in bpe.PRE_TOKENIZERS.values() if c.llama_cpp} | _LLAMA_CPP_ONLY
    same = {}
    for name, patterns in candidates.items():
        pieces = split_pieces(patterns)
        same[name] = {key: sum(pieces(line) == yuyan_pieces(line) for line in texts) / len(texts)
                      for key, texts in lines.items()}
        print(f"split like Yuyan, {name}: {json.dumps(same[name])}", file=sys.stderr, flush=True)

    rows = []
    choices = {name: c.patterns for name, c in bpe.PRE_TOKENIZERS.items()} | {"deepseek-v3": _LLAMA_CPP_ONLY["deepseek-v3"]}
    for vocab_size in vocab_sizes:
        for name, patterns in choices.items():
            with bench_pre_tokenizer(name, patterns):
                backend, size, seconds = train_yuyan(train, vocab_size, pre_tokenizer=name)
            tokens = {key: sum(len(e.ids) for e in backend.encode_batch(texts)) for key, texts in held_out.items()}
            row = {"pre_tokenizer": name, "vocab_size": vocab_size, "actual_vocab": size, "train_s": seconds,
                   "tokens": tokens, "bytes": {key: nbytes(texts) for key, texts in held_out.items()}}
            rows.append(row)
            print(f"{name} {vocab_size}: {json.dumps(row)}", file=sys.stderr, flush=True)

    env = environment()
    print(f"tokenizers {env['tokenizers']}, transformers {env['transformers']}, Python {env['python']}, "
          f"{env['cpus']} CPU cores\n")
    print("(a) Held-out lines cut into exactly the pieces of Yuyan's expression, per llama.cpp pre-tokenizer:\n")
    print("| tokenizer.ggml.pre | " + " | ".join(held_out) + " |\n|---|" + "---:|" * len(held_out))
    for name, shares in same.items():
        print(f"| {name} | " + " | ".join(f"{100 * shares[key]:.1f}%" for key in held_out) + " |")
    print("\n(b) Bytes per token on held-out text (higher is better); in brackets, the change in the number of "
          "tokens against Yuyan's expression at the same vocabulary size (lower is better).\n")
    print("| pre-tokenizer | llama.cpp | vocab | " + " | ".join(held_out) + " | all |\n|---|---|---:|"
          + "---:|" * (len(held_out) + 1))
    for row in rows:
        base = next(r for r in rows if r["pre_tokenizer"] == "yuyan" and r["vocab_size"] == row["vocab_size"])
        cells = []
        for key in [*held_out, "all"]:
            count = sum(row["tokens"].values()) if key == "all" else row["tokens"][key]
            size = sum(row["bytes"].values()) if key == "all" else row["bytes"][key]
            base_count = sum(base["tokens"].values()) if key == "all" else base["tokens"][key]
            change = "" if row is base else f" ({(count / base_count - 1) * 100:+.1f}%)"
            cells.append(f"{size / count:.3f}{change}")
        choice = bpe.PRE_TOKENIZERS.get(row["pre_tokenizer"])
        compatible = row["pre_tokenizer"] if choice is None else (choice.llama_cpp or "no")
        print(f"| {row['pre_tokenizer']} | {compatible} | {row['vocab_size']:,} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"same_split": same, "rows": rows, "environment": env}, indent=2) + "\n")


def train_yuyan(texts: list[str], vocab_size: int, **kwargs):
    start = time.perf_counter()
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, show_progress=False, **kwargs)
    return tokenizer.backend_tokenizer, len(tokenizer), time.perf_counter() - start


def train_baseline(texts: list[str], vocab_size: int):
    start = time.perf_counter()
    baseline = ByteLevelBPETokenizer()
    baseline.train_from_iterator(texts, vocab_size=vocab_size, show_progress=False)
    return baseline._tokenizer, baseline.get_vocab_size(), time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--repeats", type=int, default=5, help="encode runs per tokenizer (median taken)")
    parser.add_argument("--quick", action="store_true", help="8192 only, no variants")
    parser.add_argument("--no-variants", action="store_true", help="only Yuyan and the baseline")
    parser.add_argument("--pre-tokenizers", action="store_true",
                        help="compare the pre-tokenizer choices instead (default vocabulary: 8192)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab_sizes, args.no_variants = [8192], True
    if not args.data_dir.is_dir():
        sys.exit(f"no data at {args.data_dir} (pass --data-dir)")

    corpora = load_corpora(args.data_dir)
    if args.pre_tokenizers:
        explicit = "--vocab-sizes" in (argv if argv is not None else sys.argv)
        compare_pre_tokenizers(corpora, args.vocab_sizes if explicit else [8192], args)
        return
    held_out = {name: texts for name, texts in corpora.items() if name != "train"}
    # The same sentences without their newline, as they would end a chat message: sentence-final tokens differ.
    held_out["zh_tatoeba_bare"] = [text.rstrip("\n") for text in held_out["zh_tatoeba"]]
    held_out["zh_all"] = held_out["zh_tatoeba"] + held_out["zh_xquad"]
    encode_texts = held_out["en_wikitext"] + held_out["zh_all"]
    print(
        f"training: {len(corpora['train']):,} texts, {nbytes(corpora['train']) / 1e6:.2f} MB; held out: "
        + ", ".join(f"{name} {nbytes(texts) / 1e6:.3f} MB" for name, texts in held_out.items()),
        file=sys.stderr,
    )

    variants = {"Yuyan": {}}
    if not args.no_variants:
        variants.update({
            "Yuyan, digit runs ( ?\\p{N}+)": {"pattern": variant_pattern(digits=r" ?\p{N}+")},
            "Yuyan + trailing mark on CJK runs": {"pattern": variant_pattern(cjk=r" ?[" + bpe._CJK + r"]+\p{Po}?")},
            "Yuyan, no token length cap": {"max_token_bytes": None},
        })

    rows = []
    for vocab_size in args.vocab_sizes:
        runs = [(BASELINE, {"baseline": True}), *variants.items()]
        backends = {}
        for name, options in runs:
            options = dict(options)
            if options.pop("baseline", False):
                backend, size, seconds = train_baseline(corpora["train"], vocab_size)
            else:
                # Yuyan's own expression, which the variants change one piece of.
                patterns = (options.pop("pattern", bpe.SPLIT_PATTERN),)
                pre_tokenizer = "yuyan" if patterns == bpe.PRE_TOKENIZERS["yuyan"].patterns else "variant"
                with bench_pre_tokenizer(pre_tokenizer, patterns) as name:
                    backend, size, seconds = train_yuyan(corpora["train"], vocab_size, pre_tokenizer=name, **options)
            backends[name] = backend
            row = {"tokenizer": name, "vocab_size": vocab_size, "actual_vocab": size, "train_s": seconds}
            row.update({f"bpt_{key}": bytes_per_token(backend, texts) for key, texts in held_out.items()})
            rows.append(row)
            print(f"{name} {vocab_size}: {json.dumps(row)}", file=sys.stderr, flush=True)
        # Throughput of the two main tokenizers, measured in alternation so both see the same machine load.
        speeds = throughput({name: backends[name] for name in (BASELINE, "Yuyan")}, encode_texts, args.repeats)
        for row in rows[-len(runs):]:
            if row["tokenizer"] in speeds:
                row["encode_mb_s"] = speeds[row["tokenizer"]]

    print_tables(rows, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "environment": environment()}, indent=2) + "\n")


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "tokenizers": tokenizers.__version__,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def print_tables(rows: list[dict], args) -> None:
    env = environment()
    print(f"tokenizers {env['tokenizers']}, transformers {env['transformers']}, Python {env['python']}, {env['cpus']} CPU cores\n")
    print(
        "Bytes per token on held-out text (higher is better; in brackets, the change from the baseline). Encode: "
        "`encode_batch` on the held-out WikiText-2 and Chinese texts, median MB/s.\n"
    )
    header = (
        "| tokenizer | vocab | train (s) | encode (MB/s) | " + " | ".join(COLUMNS.values()) + " |\n"
        + "|---|---:|---:|---:|" + "---:|" * len(COLUMNS)
    )
    baseline = {row["vocab_size"]: row for row in rows if row["tokenizer"] == BASELINE}

    def line(row: dict, relative: bool) -> str:
        base = baseline[row["vocab_size"]]
        cells = []
        for key in COLUMNS:
            value = row[f"bpt_{key}"]
            change = (value / base[f"bpt_{key}"] - 1) * 100
            cells.append(f"{value:.3f}" + (f" ({change:+.1f}%)" if relative and row is not base else ""))
        vocab = f"{row['vocab_size']:,}" + ("" if row["actual_vocab"] == row["vocab_size"] else f" ({row['actual_vocab']:,})")
        speed = f"{row['encode_mb_s']:.1f}" if "encode_mb_s" in row else "-"
        return f"| {row['tokenizer']} | {vocab} | {row['train_s']:.1f} | {speed} | " + " | ".join(cells) + " |"

    print(header)
    for row in rows:
        if row["tokenizer"] in ("Yuyan", BASELINE):
            print(line(row, relative=True))
    variants = [row for row in rows if row["tokenizer"] not in ("Yuyan", BASELINE)]
    if variants:
        print("\nVariants of Yuyan, one design choice changed (change relative to the baseline):\n")
        print(header)
        for row in variants:
            print(line(row, relative=True))


if __name__ == "__main__":
    main()

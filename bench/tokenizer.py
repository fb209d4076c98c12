"""Benchmark: Yuyan's tokenizer against a plain `tokenizers.ByteLevelBPETokenizer` on the same English + Chinese data.

    python bench/tokenizer.py            # vocabularies of 8192, 16384 and 32768, with variants (about 3 minutes on 2 cores)
    python bench/tokenizer.py --quick    # 8192 only, no variants

Data (../shared/data, read-only):
- training: WikiText-2 train (English, one text per line) + the Chinese side of tatoeba-cmn-eng and the contexts of
  XQuAD zh, minus the held-out parts below;
- held out: WikiText-2 test (English); every 10th tatoeba sentence and every 5th XQuAD article (all its paragraphs,
  so no paragraph of a held-out article was seen in training) (Chinese); the first 4000 lines of the TinyStories
  validation sample (English prose with few digits, out of domain). The held-out Tatoeba sentences are measured
  twice: as lines of the file (each ends in a newline) and bare (as they would end a chat message).

Both tokenizers see the same texts in the same order. The baseline is `ByteLevelBPETokenizer()` trained with
`train_from_iterator(texts, vocab_size=V)` and all other defaults (GPT-2's pre-tokenisation regex, min_frequency 2,
no special tokens, no normalisation). Measured:
- training time (wall clock, texts already in memory);
- batched encode throughput: `encode_batch` of the `tokenizers` backends on the held-out WikiText-2 and Chinese
  texts, median of N runs taken in turns (baseline, Yuyan, baseline, ...), in MB of UTF-8 input per second;
- bytes per token on held-out text: UTF-8 bytes / tokens, higher is better (each text is encoded on its own, as
  it appears in its file: a line, a sentence with its newline, or a paragraph).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
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
def split_pattern(pattern: str):
    """Train a Yuyan variant with another pre-tokenisation expression (variants only)."""
    original = bpe.SPLIT_PATTERN
    bpe.SPLIT_PATTERN = pattern
    try:
        yield
    finally:
        bpe.SPLIT_PATTERN = original


def variant_pattern(**replace: str) -> str:
    """SPLIT_PATTERN with its "digits" or "cjk" alternative replaced."""
    pieces = list(bpe._PIECES)
    expected = {"digits": r" ?\p{N}", "cjk": rf" ?[{bpe._CJK}]+"}
    for key, new in replace.items():
        index = pieces.index(expected[key])
        pieces[index] = new
    return "|".join(pieces)


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
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab_sizes, args.no_variants = [8192], True
    if not args.data_dir.is_dir():
        sys.exit(f"no data at {args.data_dir} (pass --data-dir)")

    corpora = load_corpora(args.data_dir)
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
                with split_pattern(options.pop("pattern", bpe.SPLIT_PATTERN)):
                    backend, size, seconds = train_yuyan(corpora["train"], vocab_size, **options)
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

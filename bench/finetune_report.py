"""Fine-tuning report: pretrained Yuyan models fine-tuned on four tasks, each beside a from-scratch twin.

For every model folder given (e.g. the `small` attention, LSTM and hybrid models of `bench/pretrain_budget.py`),
each task fine-tunes a fresh copy of the model with `yuyan.training.finetune.finetune` (the Trainer) and scores
it on held-out data. Every task is run twice with the same budget: from the pretrained model, and from a randomly
initialised model of the same config and tokenizer (`init` = scratch in the table). The pretrained row has to beat
the scratch row for pretraining to have paid.

| task    | data (`../shared/data`)                                | `--task`             | score                 |
|---------|--------------------------------------------------------|----------------------|-----------------------|
| SST-2   | `sst2/train.tsv` + `dev.tsv` → `sst2/test.tsv`         | classification       | accuracy              |
| XQuAD   | `xquad/xquad.en.json`, split by article (see below)    | question-answering   | F1 (SQuAD v1.1)       |
| SciTLDR | `scitldr/SciTLDR-A/train.jsonl` → `test.jsonl`         | text-generation      | ROUGE-L (all refs)    |
| Tatoeba | `tatoeba-cmn-eng/cmn.txt`, English → Chinese           | text-generation      | chrF                  |

- SST-2: `train.tsv` + `dev.tsv` are GLUE's 67,349 training examples. `--sst2-selection` (2,000) distinct
  sentences of them, drawn at random, are held out (with their repeats) for model selection: the Trainer scores
  them 8 times over the budget and keeps the best checkpoint. The kept model is scored once on `test.tsv` (= GLUE dev,
  872 sentences, where SST-2 accuracy is normally reported).
- XQuAD-en is a 1,190-question sample of the SQuAD v1.1 dev set and the only SQuAD data here (the official train
  set is not in shared/data): the last `--xquad-eval-articles` articles (default 10 of 48) are held out for
  scoring and the questions of the other articles are the training data. No context is in both.
- Tatoeba has no official split: every 10th pair (lines 10, 20, ...) is held out, the rest trains. A tokenizer
  trained on English only spells Chinese in UTF-8 bytes (about 3 tokens a character, shown in results.json):
  give `--tatoeba-model` a model pretrained with a tokenizer that has also seen the Tatoeba training split
  (OUTPUT/data/tatoeba-train.txt, written by `--prepare-only`); see BENCHMARKS.md, "XQuAD, SciTLDR and Tatoeba". Pretrained on
  English alone, such a model has never read its Chinese tokens: `--reset-unseen-tokens` redraws their embeddings
  first, and OUTPUT/data/tatoeba-unpaired.txt (the training sentences with no pair side by side) is text to
  pretrain on beside WikiText-2 (`bench/pretrain_budget.py --extra-train-text`).
- SciTLDR: the prompt is the abstract (its sentences joined), the completion the first TLDR; the score takes the
  best of each abstract's several TLDRs. `dev.jsonl` chose the decoding (greedy with no repeated 3-gram beat plain
  greedy for both inits there: docs/notes/finetuning-experiments.md); `test.jsonl` is scored once.
- Generation prompts are the plain text followed by a newline (no chat template); evaluation decodes greedily,
  SciTLDR's without a repeated 3-gram (`--no-repeat-ngram-size` sets it for every generation task).

Budget: each task has a fixed number of optimizer steps, batch size and learning rate (`BUDGETS`; linear warm-up
over 6% of the steps, then linear decay; weight decay 0.01), the same for both rows; `--max-steps`,
`--batch-size`, `--learning-rate` override them for every task, `--epochs` trains whole epochs instead. Before
starting, the expected time is printed (step times measured on the spot). `--max-train` / `--max-eval` take the
first N examples of each (shuffled, for SST-2) training / evaluation set, for a smoke run.

    python bench/finetune_report.py runs/small-attention runs/small-lstm runs/small-hybrid \\
        --tatoeba-model runs/small-lstm-enzh --threads 1
    python bench/finetune_report.py runs/tiny-hybrid --tasks sst2 --max-steps 600 --threads 1     # minutes
    python bench/finetune_report.py --prepare-only      # data files only (the tokenizer's Tatoeba text)
    python bench/finetune_report.py --write-bilingual-tokenizer runs/tokenizer-en-zh   # WikiText-2 + Tatoeba BPE
    python bench/finetune_report.py runs/small-* --estimate-only     # the expected time of a full report

On a CPU shared with other jobs, `--threads 1` can be many times faster than torch's default of one thread per
core: every operator's parallel region waits for a core that another process holds.

Writes OUTPUT/results.json (every metric of every run, with its wall-clock) and prints a Markdown table, one row
per fine-tuning run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

from yuyan.files import publish_folder, staging_dir, write_text_atomic
from yuyan.modeling.configuration_yuyan import CLASSIFIER_POOLINGS
from yuyan.tokenization.bpe import DEFAULT_VOCAB_SIZE

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TASKS = ("sst2", "xquad", "scitldr", "tatoeba")
COLUMNS = {"sst2": ("SST-2 accuracy", "accuracy"), "xquad": ("XQuAD-en F1", "f1"),
           "scitldr": ("SciTLDR ROUGE-L", "rougeL"), "tatoeba": ("Tatoeba en→zh chrF", "chrf")}
SST2_SIZE = 67_349  # GLUE SST-2 train = shared sst2/train.tsv + sst2/dev.tsv

# The fine-tuning budget of one row (pretrained and from scratch get the same): optimizer steps, batch size, peak
# learning rate, and for SST-2 how many times the selection slice is scored (evenly over the steps, and at the
# end; the best of those checkpoints is kept).
# `length` is a typical padded batch length (`grouped_length` with --group-by-length), only used to estimate the time
# before starting.
BUDGETS = {
    # 3e-4: the best of 1e-4, 3e-4 and 1e-3 for a small pretrained model (docs/notes/finetuning-experiments.md).
    "sst2": {"max_steps": 4000, "batch_size": 32, "learning_rate": 3e-4, "evaluations": 8, "length": 48,
             "grouped_length": 12},
    "xquad": {"max_steps": 300, "batch_size": 16, "learning_rate": 5e-4, "length": 384},
    "scitldr": {"max_steps": 500, "batch_size": 8, "learning_rate": 5e-4, "length": 384},
    "tatoeba": {"max_steps": 3000, "batch_size": 32, "learning_rate": 5e-4, "length": 40,
                "grouped_length": 24},
}
WARMUP_SHARE = 0.06  # linear warm-up over the first 6% of the steps, then linear decay to 0 (Trainer default)
WEIGHT_DECAY = 0.01


def _write_jsonl(path: Path, rows) -> Path:
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _tsv_rows(path: Path) -> list[tuple[str, str]]:
    """(sentence, label) rows of a GLUE-style TSV with a `sentence<TAB>label` header."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t")[:2] != ["sentence", "label"]:
        raise ValueError(f"{path}: expected a 'sentence<TAB>label' header")
    rows = []
    for number, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected 2 tab-separated fields, found {len(fields)}")
        rows.append((fields[0], fields[1]))
    return rows


def split_sst2(rows: list[tuple[str, str]], selection_size: int, seed: int):
    """(training rows, selection rows): `selection_size` distinct sentences drawn at random, with every row that
    repeats one of them (SST-2 has a few hundred repeated phrases), so no sentence is in both; both shuffled."""
    import random

    sentences = sorted({sentence for sentence, _ in rows})
    if not 0 < selection_size < len(sentences):
        raise ValueError(f"the selection slice must hold 1 to {len(sentences) - 1} sentences, not {selection_size}")
    generator = random.Random(seed)
    chosen = set(generator.sample(sentences, selection_size))
    train = [row for row in rows if row[0] not in chosen]
    selection = [row for row in rows if row[0] in chosen]
    generator.shuffle(train)  # so that --max-train takes a random sample, not the first file's first rows
    generator.shuffle(selection)
    return train, selection


def split_tatoeba(path: Path) -> tuple[list[dict], list[dict]]:
    """Tatoeba has no official split: every 10th pair (lines 10, 20, ...) is held out, the rest trains."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    pairs = [line.split("\t")[:2] for line in lines if line.count("\t") >= 1]
    train = [{"prompt": en, "completion": zh} for i, (en, zh) in enumerate(pairs, 1) if i % 10]
    evaluation = [{"prompt": en, "completion": zh} for i, (en, zh) in enumerate(pairs, 1) if not i % 10]
    return train, evaluation


def unpaired_tatoeba_lines(pairs: list[dict], seed: int) -> list[str]:
    """Every sentence of the pairs as its own line, English first, then Chinese, each side in its own shuffled
    order: monolingual text in both languages with no translation pair left side by side."""
    english = [row["prompt"] + "\n" for row in pairs]
    chinese = [row["completion"] + "\n" for row in pairs]
    random.Random(seed).shuffle(english)
    random.Random(seed + 1).shuffle(chinese)
    return english + chinese


def prepare_data(work: Path, eval_articles: int, selection_size: int = 2000, seed: int = 42,
                 data: Path = DATA) -> dict[str, dict]:
    """Data files (converted where needed) and finetune() options for each task; `test` is the scored file when
    it differs from the validation (model selection) file."""
    from yuyan.training.recipes.tables import squad_rows

    work.mkdir(parents=True, exist_ok=True)
    rows = _tsv_rows(data / "sst2" / "train.tsv") + _tsv_rows(data / "sst2" / "dev.tsv")
    sst2_train, sst2_selection = split_sst2(rows, selection_size, seed)

    def tsv(name: str, table) -> Path:
        return write_text_atomic(work / name, "sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in table))

    tasks = {
        "sst2": {
            "task": "classification",
            "train": tsv("sst2-train.tsv", sst2_train),
            "validation": tsv("sst2-selection.tsv", sst2_selection),
            "test": data / "sst2" / "test.tsv",
            "data_args": {"text_column": "sentence", "class_names": ["negative", "positive"]},
        },
        "scitldr": {
            "task": "text-generation",
            "train": data / "scitldr" / "SciTLDR-A" / "train.jsonl",
            "validation": data / "scitldr" / "SciTLDR-A" / "dev.jsonl",
            "test": data / "scitldr" / "SciTLDR-A" / "test.jsonl",
            # Chosen on dev.jsonl: both inits looped under plain greedy decoding
            # (docs/notes/finetuning-experiments.md).
            "data_args": {"prompt_column": "source", "completion_column": "target", "no_repeat_ngram_size": 3},
        },
    }
    squad = json.loads((data / "xquad" / "xquad.en.json").read_text(encoding="utf-8"))
    articles = squad["data"]
    held_out = max(1, min(eval_articles, len(articles) - 1))
    tasks["xquad"] = {
        "task": "question-answering",
        "train": _write_jsonl(work / "xquad-train.jsonl", squad_rows({"data": articles[:-held_out]})),
        "validation": _write_jsonl(work / "xquad-eval.jsonl", squad_rows({"data": articles[-held_out:]})),
        "data_args": {},
    }
    train, evaluation = split_tatoeba(data / "tatoeba-cmn-eng" / "cmn.txt")
    # The training split as plain text (English line, Chinese line) for `yuyan tokenizer train`.
    write_text_atomic(work / "tatoeba-train.txt", "".join(f"{row['prompt']}\n{row['completion']}\n" for row in train))
    # The same sentences unpaired, for pretraining on the task's own text (not its pairs): all English lines, then
    # all Chinese lines, each side shuffled on its own, so that no line sits beside its translation.
    write_text_atomic(work / "tatoeba-unpaired.txt", "".join(unpaired_tatoeba_lines(train, seed)))
    tasks["tatoeba"] = {
        "task": "text-generation",
        "train": _write_jsonl(work / "tatoeba-train.jsonl", train),
        "validation": _write_jsonl(work / "tatoeba-eval.jsonl", evaluation),
        "data_args": {"max_new_tokens": 32},
    }
    return tasks


def write_bilingual_tokenizer(output: Path, work: Path, pretraining_text: Path, vocab_size: int) -> Path:
    """A byte-level BPE trained on the pretraining text plus the Tatoeba training split (both sides), as
    `yuyan tokenizer train --data PRETRAINING_TEXT OUTPUT/data/tatoeba-train.txt` trains it."""
    from yuyan.tokenization import save_tokenizer, train_tokenizer

    tokenizer = train_tokenizer(files=[pretraining_text, work / "tatoeba-train.txt"], vocab_size=vocab_size,
                                show_progress=False)
    save_tokenizer(tokenizer, output, overwrite=True)
    return output


def stack_of(model: Path) -> str:
    config = json.loads((model / "config.json").read_text())
    kinds = set(config.get("mixer_types") or config["layer_types"])  # `layer_types` before 0.2
    return "lstm" if kinds == {"lstm"} else "attention" if "lstm" not in kinds else "hybrid"


def pretraining_files(model: Path) -> list[str]:
    """The text files `model` was pretrained on, as its run.json (yuyan pretrain) records them: the `--data` list
    of its training settings (`data.train` only describes it, several files joined by commas)."""
    run = json.loads((model / "run.json").read_text()) if (model / "run.json").is_file() else {}
    files = (run.get("training") or {}).get("data")
    if not files:
        raise ValueError(f"{model}/run.json does not name the pretraining text files: --reset-unseen-tokens needs "
                         "a model pretrained from text files by yuyan pretrain")
    return [files] if isinstance(files, str) else list(files)


def make_scratch_model(model: Path, output: Path, seed: int) -> Path:
    """A randomly initialised twin of `model`: the same config and tokenizer, fresh weights (seeded). It is the
    from-scratch row: what the fine-tuning budget alone reaches without pretraining."""
    import torch

    from yuyan.modeling import YuyanConfig, YuyanForCausalLM
    from yuyan.training.finetune import load_tokenizer

    config = YuyanConfig.from_pretrained(model)
    torch.manual_seed(seed)
    scratch = YuyanForCausalLM(config)
    with staging_dir(output.parent, prefix=f".{output.name}.tmp-") as staging:
        scratch.save_pretrained(staging)
        load_tokenizer(str(model)).save_pretrained(staging)
        publish_folder(staging, output)
    return output


def zh_tokens_per_character(model: Path, texts: list[str]) -> float:
    """Tokens per Chinese character: about 1 or less for a tokenizer that has seen Chinese, about 3 (UTF-8
    bytes) for one that has not."""
    from yuyan.training.finetune import load_tokenizer

    tokenizer = load_tokenizer(str(model))
    characters = sum(len(text) for text in texts)
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    return tokens / max(1, characters)


def seconds_per_step(model: Path, batch_size: int, length: int, language_model: bool, steps: int = 3) -> float:
    """Median time of a training step (forward, backward, AdamW) on random tokens of the given shape: the
    calibration behind the expected time printed before the report starts. Classification and QA heads are tiny,
    so they are timed without the vocabulary-sized output layer that generation trains."""
    import statistics

    import torch

    from yuyan.modeling import YuyanConfig, YuyanForCausalLM, YuyanModel

    config = YuyanConfig.from_pretrained(model)
    network = YuyanForCausalLM(config) if language_model else YuyanModel(config)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    tokens = torch.randint(0, config.vocab_size, (batch_size, length))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        if language_model:
            loss = network(input_ids=tokens, labels=tokens).loss
        else:
            loss = network(input_ids=tokens).last_hidden_state.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first step pays one-off allocation


def budget_of(name: str, args) -> dict:
    budget = dict(BUDGETS[name])
    for key in ("max_steps", "batch_size", "learning_rate"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    if args.group_by_length:  # the estimate reads `length`
        budget["length"] = budget.get("grouped_length", budget["length"])
    return budget


def training_arguments(name: str, budget: dict, args) -> dict:
    values = {"learning_rate": budget["learning_rate"], "per_device_train_batch_size": budget["batch_size"],
              "per_device_eval_batch_size": 64, "seed": args.seed, "weight_decay": WEIGHT_DECAY,
              "save_strategy": "no", "eval_strategy": "no", "disable_tqdm": True, "logging_steps": 100}
    if args.epochs is not None:  # the former budget: whole epochs
        values.update(num_train_epochs=args.epochs, warmup_steps=0)
    else:
        values.update(max_steps=budget["max_steps"], warmup_steps=int(WARMUP_SHARE * budget["max_steps"]))
    if args.group_by_length:
        # Batches of similar lengths (transformers' LengthGroupedSampler): SST-2's phrases average 10 tokens but a
        # random batch of 32 pads to about 33, and a recurrent layer pays for every padded step.
        values["train_sampling_strategy"] = "group_by_length"
    if name == "sst2":
        # Model selection on the held-out slice of the training data; test.tsv is scored once, at the end.
        every = max(1, budget["max_steps"] // budget["evaluations"]) if args.epochs is None else None
        strategy = {"eval_strategy": "steps", "save_strategy": "steps", "eval_steps": every, "save_steps": every} \
            if every else {"eval_strategy": "epoch", "save_strategy": "epoch"}
        values.update(strategy, load_best_model_at_end=True, metric_for_best_model="accuracy",
                      greater_is_better=True, save_total_limit=1)
    return values


def config_overrides(name: str, args) -> dict:
    """The model config fields a task's rows change (`yuyan finetune --config_overrides`)."""
    overrides = {}
    if args.dropout is not None:
        overrides["hidden_dropout"] = args.dropout
    if args.classifier_pooling is not None and name == "sst2":  # the one task with a classification head
        overrides["classifier_pooling"] = args.classifier_pooling
    return overrides


def task_data_args(spec: dict, args) -> dict:
    """finetune()'s data options for one task: the task's own (prepare_data), then what the command line sets."""
    data_args = {**spec["data_args"], "max_train_samples": args.max_train, "max_eval_samples": args.max_eval}
    if spec["task"] == "text-generation":
        data_args.setdefault("max_new_tokens", args.max_new_tokens)
        data_args["num_beams"] = args.num_beams
        if args.no_repeat_ngram_size is not None:
            data_args["no_repeat_ngram_size"] = args.no_repeat_ngram_size
    if args.max_seq_length:
        data_args["max_seq_length"] = args.max_seq_length
    return data_args


def _rows_table(results: list[dict]) -> list[str]:
    lines = ["| task | model | stack | init | score | train examples | steps | wall-clock |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for row in results:
        label, metric = COLUMNS[row["task"]]
        lines.append(f"| {label} | {Path(row['model']).name} | {row['stack']} | {row['init']} | "
                     f"{row['score']:.1f} | {row['train_examples']:,} | {row['steps']:,} | "
                     f"{row['seconds'] / 60:.1f} min |")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="pretrained Yuyan model folders")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--output", default=str(REPO / "runs" / "finetune-report"))
    parser.add_argument("--tatoeba-model", default=None,
                        help="run Tatoeba en→zh on this model (pretrained with a tokenizer that has seen Chinese) "
                        "instead of on each model given")
    parser.add_argument("--no-scratch", action="store_true", help="skip the from-scratch rows")
    parser.add_argument("--from-scratch", action="store_true", help=argparse.SUPPRESS)  # the default now
    parser.add_argument("--write-bilingual-tokenizer", type=Path, metavar="DIR",
                        help="train a tokenizer on --pretraining-text + the Tatoeba training split into DIR, then stop")
    parser.add_argument("--pretraining-text", type=Path, default=DATA / "wikitext-2" / "train.txt")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                        help="of the bilingual tokenizer (default: `yuyan tokenizer train`'s, as in "
                             "bench/pretrain_budget.py)")
    parser.add_argument("--scratch-only", action="store_true", help="only the from-scratch rows")
    parser.add_argument("--prepare-only", action="store_true",
                        help="write the data files (OUTPUT/data, with tatoeba-train.txt for the tokenizer) and stop")
    parser.add_argument("--estimate-only", action="store_true", help="print the runs and their expected time, and stop")
    parser.add_argument("--max-train", type=int, default=None, help="first N training examples per task")
    parser.add_argument("--max-eval", type=int, default=None, help="first N evaluation examples per task")
    parser.add_argument("--sst2-leading-space", action="store_true",
                        help="SST-2: read every sentence as if it started with a space, as each line of WikiText "
                        "does, so that its first word is spelled in the tokens pretraining saw (`Ġthe`, not `t` `he`; "
                        "yuyan finetune --leading-space)")
    parser.add_argument("--sst2-selection", type=int, default=2000,
                        help="SST-2 training sentences held out for model selection")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps per row (default: per task)")
    parser.add_argument("--epochs", type=float, default=None, help="whole epochs instead of the step budget")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: per task")
    parser.add_argument("--batch-size", type=int, default=None, help="default: per task")
    parser.add_argument("--patience", type=int, default=None,
                        help="SST-2: stop after this many selection scores without a gain (default: the whole budget)")
    parser.add_argument("--max-seq-length", type=int, default=None, help="default: each task's (256 / 384 / 512)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="generation length in evaluation")
    parser.add_argument("--num-beams", type=int, default=1, help="generation: beams in evaluation (1: greedy)")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None,
                        help="generation: never repeat an n-gram of this size in evaluation (0: off); default: "
                             "the task's (3 for SciTLDR, chosen on its dev set; off for Tatoeba)")
    parser.add_argument("--group-by-length", action="store_true",
                        help="batch training examples of similar length (less padding: about 3x fewer SST-2 steps "
                        "of computation)")
    parser.add_argument("--lora", action="store_true", help="LoRA adapters instead of full fine-tuning (merged)")
    parser.add_argument("--dropout", type=float, default=None,
                        help="hidden_dropout while fine-tuning (layers and head; default: the model's own, 0)")
    parser.add_argument("--classifier-pooling", choices=CLASSIFIER_POOLINGS, default=None,
                        help="SST-2: how the classifier reads a sentence, from its last token's state or the mean "
                        "of all its tokens' (default: the model's own, last)")
    parser.add_argument("--layer-lr-decay", type=float, default=None, metavar="D",
                        help="each layer below the head fine-tunes at D times the rate of the one above, the "
                        "embeddings lowest (yuyan finetune --layer-lr-decay; default: one rate for all)")
    parser.add_argument("--reset-unseen-tokens", action="store_true",
                        help="pretrained rows: tokens that never occur in the model's pretraining text (its run.json) "
                        "get fresh embeddings first (yuyan finetune --reset-unseen-tokens)")
    parser.add_argument("--xquad-eval-articles", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is far faster while other jobs share the cores)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    only_tatoeba = args.tatoeba_model and args.tasks == ["tatoeba"]
    if not args.models and not (args.prepare_only or args.write_bilingual_tokenizer or only_tatoeba):
        parser.error("give at least one model folder (or --prepare-only)")
    if args.no_scratch and args.scratch_only:
        parser.error("--no-scratch and --scratch-only exclude each other")
    if args.layer_lr_decay is not None and not 0.0 < args.layer_lr_decay <= 1.0:
        parser.error(f"--layer-lr-decay must be in (0, 1], not {args.layer_lr_decay}")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    import yuyan
    from yuyan.training.finetune import FinetuneArguments, finetune
    from yuyan.records import read_run

    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output)
    tasks = prepare_data(output / "data", args.xquad_eval_articles, args.sst2_selection, args.seed)
    if args.write_bilingual_tokenizer:
        write_bilingual_tokenizer(args.write_bilingual_tokenizer, output / "data", args.pretraining_text,
                                  args.vocab_size)
        print(f"bilingual tokenizer ({args.vocab_size:,} tokens) written to {args.write_bilingual_tokenizer}")
        return 0
    if args.prepare_only:
        print(f"data written to {output / 'data'} (Tatoeba training text: {output / 'data' / 'tatoeba-train.txt'})")
        return 0

    inits = ["pretrained", "scratch"]
    if args.no_scratch:
        inits = ["pretrained"]
    if args.scratch_only:
        inits = ["scratch"]
    plan = []  # (model, task)
    for name in args.tasks:
        models = [args.tatoeba_model] if name == "tatoeba" and args.tatoeba_model else args.models
        plan += [(Path(model), name) for model in models]

    # Expected time: calibrated steps on random tokens of each task's typical shape, plus the evaluations.
    expected = 0.0
    for model, name in plan:
        budget = budget_of(name, args)
        step = seconds_per_step(model, budget["batch_size"], budget["length"],
                                tasks[name]["task"] == "text-generation")
        steps = budget["max_steps"] if args.epochs is None else None
        if steps is None:
            expected = float("nan")
            break
        row = step * steps * 1.25  # + ~25% for evaluation, checkpoints and data preparation
        expected += len(inits) * row
        print(f"  {model.name} / {name}: {steps} steps of {budget['batch_size']} at {step:.2f} s, about "
              f"{row / 60:.1f} min a row", flush=True)
    estimate = "unknown with --epochs" if expected != expected else f"about {expected / 60:.1f} min"
    print(f"{len(plan) * len(inits)} fine-tuning runs; expected time {estimate} on this machine (step times "
          "measured now, +25% for evaluation; generation-heavy evaluation can add more)", flush=True)
    if args.estimate_only:
        return 0

    results: list[dict] = []
    for model, name in plan:
        spec = tasks[name]
        budget = budget_of(name, args)
        data_args = task_data_args(spec, args)
        callbacks = None
        if name == "sst2" and args.patience:
            callbacks = [transformers.EarlyStoppingCallback(early_stopping_patience=args.patience)]
        for init in inits:
            source = model if init == "pretrained" else make_scratch_model(
                model, output / "scratch" / model.name, args.seed)
            run_dir = output / model.name / init / name
            print(f"== {model} ({init}) / {name} ({spec['task']}) -> {run_dir}", flush=True)
            start = time.perf_counter()
            overrides = config_overrides(name, args)
            metrics = finetune(
                FinetuneArguments(
                    spec["task"], str(source), str(spec["train"]), str(spec["validation"]),
                    overwrite=True,
                    test_file=str(spec["test"]) if "test" in spec else None,
                    config_overrides=overrides or None,
                    reset_unseen_tokens=pretraining_files(model) if args.reset_unseen_tokens and init == "pretrained"
                    else None,
                    layer_lr_decay=args.layer_lr_decay,
                    leading_space=args.sst2_leading_space and name == "sst2",
                ),
                {**training_arguments(name, budget, args), "output_dir": run_dir},
                data_args=data_args,
                lora_args={"lora": True, "merge": True} if args.lora else None,
                callbacks=callbacks,
            )
            run = read_run(run_dir)  # metrics: the dict finetune returns
            scored = metrics.get("test_metrics") or metrics["metrics"]
            row = {"model": str(model), "stack": stack_of(model), "init": init, "task": name,
                   "score": scored[COLUMNS[name][1]], "seconds": time.perf_counter() - start,
                   "train_examples": run.data["train_examples"], "steps": run.training["steps"],
                   "metrics": metrics["metrics"], "test_metrics": metrics.get("test_metrics"),
                   "training": run.training}
            if "classifier_pooling" in overrides:
                row["classifier_pooling"] = overrides["classifier_pooling"]
            if args.layer_lr_decay is not None:
                row["layer_lr_decay"] = args.layer_lr_decay
            if args.sst2_leading_space and name == "sst2":
                row["leading_space"] = True
            if name == "tatoeba":
                row["zh_tokens_per_character"] = zh_tokens_per_character(
                    model, [example["completion"] for example in split_tatoeba(
                        DATA / "tatoeba-cmn-eng" / "cmn.txt")[1][:200]])
            results.append(row)
            print(json.dumps({key: row[key] for key in ("init", "task", "score", "seconds", "steps")}), flush=True)
            write_text_atomic(output / "results.json", json.dumps(results, indent=2) + "\n")

    print()
    print(f"yuyan {yuyan.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; "
          f"max train {args.max_train or 'all'}, max eval {args.max_eval or 'all'}"
          f"{', LoRA' if args.lora else ''}{', batches grouped by length' if args.group_by_length else ''}"
          f"{f', dropout {args.dropout:g}' if args.dropout is not None else ''}"
          f"{f', SST-2 pooling {args.classifier_pooling}' if args.classifier_pooling else ''}"
          f"{f', layer-wise rate decay {args.layer_lr_decay:g}' if args.layer_lr_decay is not None else ''}"
          f"{', SST-2 read after a leading space' if args.sst2_leading_space else ''}; "
          f"SST-2 scored on sst2/test.tsv (GLUE dev), the model chosen on {args.sst2_selection:,} held-out training "
          "sentences")
    print()
    print("\n".join(_rows_table(results)))
    print()
    print("command: python bench/finetune_report.py " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

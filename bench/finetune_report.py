"""Fine-tuning report: pretrained Yuyan models fine-tuned on four tasks, side by side.

For every model folder given (e.g. the `small` attention, LSTM and hybrid models of `bench/pretrain_budget.py`),
each task fine-tunes a fresh copy of the model with `yuyan.training.finetune.finetune` (the Trainer) and scores
it on held-out data:

| task    | data (`../shared/data`)                                | `--task`             | score                 |
|---------|--------------------------------------------------------|----------------------|-----------------------|
| SST-2   | `sst2/{train,dev}.tsv` → `sst2/test.tsv` (= GLUE dev)  | classification       | accuracy              |
| XQuAD   | `xquad/xquad.en.json`, split by article (see below)    | question-answering   | F1 (SQuAD v1.1)       |
| SciTLDR | `scitldr/SciTLDR-A/train.jsonl` → `dev.jsonl`          | text-generation      | ROUGE-L (all refs)    |
| Tatoeba | `tatoeba-cmn-eng/cmn.txt`, English → Chinese           | text-generation      | chrF                  |

- SST-2 trains on GLUE's whole training set (`train.tsv` + `dev.tsv` here, 67,349 sentences) less every
  `--sst2-select-every`-th sentence (default 20), which is held out to choose the best epoch (accuracy, evaluated
  after each epoch); the chosen model is scored on `test.tsv` (= GLUE dev, 872 sentences, where SST-2 accuracy is
  normally reported).
- `--from-scratch` adds, for each model, a row from a randomly initialised model of the same configuration and
  tokenizer, fine-tuned with the same budget: what pretraining buys.
- Tatoeba wants a tokenizer that has seen Chinese: `--write-bilingual-tokenizer DIR` trains a byte-level BPE on
  the pretraining text (`--pretraining-text`, default WikiText-2 train) plus both sides of the Tatoeba training
  split and exits; pretrain with it (`bench/pretrain_budget.py --tokenizer DIR`) before fine-tuning on Tatoeba.
- XQuAD-en is a 1,190-question sample of the SQuAD v1.1 dev set and the only SQuAD data here (the official train
  set is not in shared/data): the last `--xquad-eval-articles` articles (default 10 of 48) are held out for
  scoring and the questions of the other articles are the training data. No context is in both.
- Tatoeba has no official split: every 10th pair (lines 10, 20, ...) is held out, the rest trains.
- SciTLDR: the prompt is the abstract (its sentences joined), the completion the first TLDR; the score takes the
  best of the dev set's several TLDRs.
- Generation prompts are the plain text followed by a newline (no chat template); evaluation decodes greedily.

`--max-train` / `--max-eval` take the first N examples of each training / evaluation set, so a smoke run finishes
in minutes on two CPU cores; the numbers are then far from what the full sets give, so report the sizes with them.

    python bench/finetune_report.py runs/small-attention runs/small-lstm runs/small-hybrid
    python bench/finetune_report.py runs/small-* --max-train 200 --max-eval 50 --epochs 1     # minutes
    python bench/finetune_report.py runs/small-hybrid --tasks sst2 xquad
    python bench/finetune_report.py runs/small-lstm --from-scratch                              # + random-init rows
    python bench/finetune_report.py --write-bilingual-tokenizer runs/tokenizer-en-zh --vocab-size 16384

On a CPU shared with other jobs, `--threads 1` can be many times faster than torch's default of one thread per
core: every operator's parallel region waits for a core that another process holds.

Writes OUTPUT/results.json (every metric of every run) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TASKS = ("sst2", "xquad", "scitldr", "tatoeba")
COLUMNS = {"sst2": ("SST-2 test accuracy", "accuracy"), "xquad": ("XQuAD-en F1", "f1"),
           "scitldr": ("SciTLDR ROUGE-L", "rougeL"), "tatoeba": ("Tatoeba en→zh chrF", "chrf")}


def _write_jsonl(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def sst2_rows() -> list[str]:
    """GLUE's SST-2 training set: `train.tsv` and `dev.tsv` here, header dropped, in file order."""
    rows = []
    for name in ("train.tsv", "dev.tsv"):
        lines = (DATA / "sst2" / name).read_text(encoding="utf-8").splitlines()
        rows += [line for line in lines[1:] if line.strip()]
    return rows


def write_sst2_split(work: Path, select_every: int) -> None:
    """Every `select_every`-th training sentence held out for model selection, the rest to train on."""
    rows = sst2_rows()
    header = "sentence\tlabel\n"
    (work / "sst2-train.tsv").write_text(header + "".join(r + "\n" for i, r in enumerate(rows, 1) if i % select_every),
                                         encoding="utf-8")
    (work / "sst2-select.tsv").write_text(header + "".join(r + "\n" for i, r in enumerate(rows, 1)
                                                           if not i % select_every), encoding="utf-8")


def tatoeba_pairs() -> tuple[list[dict], list[dict]]:
    """(train, evaluation) English -> Chinese pairs: every 10th pair held out."""
    lines = (DATA / "tatoeba-cmn-eng" / "cmn.txt").read_text(encoding="utf-8-sig").splitlines()
    pairs = [line.split("\t")[:2] for line in lines if line.count("\t") >= 1]
    train = [{"prompt": en, "completion": zh} for i, (en, zh) in enumerate(pairs, 1) if i % 10]
    evaluation = [{"prompt": en, "completion": zh} for i, (en, zh) in enumerate(pairs, 1) if not i % 10]
    return train, evaluation


def prepare_data(work: Path, eval_articles: int, select_every: int = 20) -> dict[str, dict]:
    """Data files (converted where needed) and finetune() options for each task."""
    from yuyan.training.tasks.data import squad_rows

    work.mkdir(parents=True, exist_ok=True)
    write_sst2_split(work, select_every)
    tasks = {
        "sst2": {
            "task": "classification",
            "train": work / "sst2-train.tsv",
            "validation": work / "sst2-select.tsv",
            "test": DATA / "sst2" / "test.tsv",
            "data_args": {"text_column": "sentence", "class_names": ["negative", "positive"]},
        },
        "scitldr": {
            "task": "text-generation",
            "train": DATA / "scitldr" / "SciTLDR-A" / "train.jsonl",
            "validation": DATA / "scitldr" / "SciTLDR-A" / "dev.jsonl",
            "data_args": {"prompt_column": "source", "completion_column": "target"},
        },
    }
    squad = json.loads((DATA / "xquad" / "xquad.en.json").read_text(encoding="utf-8"))
    articles = squad["data"]
    held_out = max(1, min(eval_articles, len(articles) - 1))
    tasks["xquad"] = {
        "task": "question-answering",
        "train": _write_jsonl(work / "xquad-train.jsonl", squad_rows({"data": articles[:-held_out]})),
        "validation": _write_jsonl(work / "xquad-eval.jsonl", squad_rows({"data": articles[-held_out:]})),
        "data_args": {},
    }
    train, evaluation = tatoeba_pairs()
    tasks["tatoeba"] = {
        "task": "text-generation",
        "train": _write_jsonl(work / "tatoeba-train.jsonl", train),
        "validation": _write_jsonl(work / "tatoeba-eval.jsonl", evaluation),
        "data_args": {"max_new_tokens": 32},
    }
    return tasks


def classification_accuracy(folder: Path, test_file: Path, class_names: list[str], max_length: int = 256,
                            max_examples: int | None = None) -> float:
    """Accuracy (%) of a fine-tuned classifier on a sentence/label TSV, tokenised as fine-tuning tokenised."""
    import torch
    from transformers import AutoTokenizer

    from yuyan.training.finetune import load_finetuned

    model, tokenizer = load_finetuned(folder).eval(), AutoTokenizer.from_pretrained(folder)
    lines = test_file.read_text(encoding="utf-8").splitlines()[1:]
    rows = [line.rsplit("\t", 1) for line in lines if line.strip()][:max_examples]
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(rows), 32):
            batch = rows[start:start + 32]
            inputs = tokenizer([text for text, _ in batch], truncation=True, max_length=max_length, padding=True,
                               return_tensors="pt")
            predicted = model(**inputs).logits.argmax(-1).tolist()
            for index, (_, label) in zip(predicted, batch):
                correct += model.config.id2label[index] == class_names[int(label)]
    return 100.0 * correct / len(rows)


def from_scratch_copy(model: Path, root: Path, seed: int) -> Path:
    """A randomly initialised model with `model`'s configuration and tokenizer (the same size, no pretraining)."""
    import torch
    from transformers import AutoTokenizer

    from yuyan import YuyanConfig, YuyanForCausalLM

    folder = root / f"{model.name}-scratch"
    if not (folder / "config.json").exists():
        torch.manual_seed(seed)
        YuyanForCausalLM(YuyanConfig.from_pretrained(model)).save_pretrained(folder)
        AutoTokenizer.from_pretrained(model).save_pretrained(folder)
    return folder


def write_bilingual_tokenizer(output: Path, pretraining_text: Path, vocab_size: int) -> None:
    """A byte-level BPE trained on the pretraining text plus both sides of the Tatoeba training split."""
    from yuyan.tokenization import iter_texts, train_tokenizer

    train, _ = tatoeba_pairs()
    texts = (text for source in (iter_texts([pretraining_text], txt_split="paragraph"),
                                 (pair[side] for pair in train for side in ("prompt", "completion")))
             for text in source)
    train_tokenizer(texts, vocab_size=vocab_size, output_dir=output)
    print(f"bilingual tokenizer ({vocab_size} tokens) written to {output}")


def stack_of(model: Path) -> str:
    config = json.loads((model / "config.json").read_text())
    kinds = set(config.get("mixer_types") or config["layer_types"])  # `layer_types` before 0.2
    return "lstm" if kinds == {"lstm"} else "attention" if "lstm" not in kinds else "hybrid"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="pretrained Yuyan model folders")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--output", default=str(REPO / "runs" / "finetune-report"))
    parser.add_argument("--max-train", type=int, default=None, help="first N training examples per task")
    parser.add_argument("--max-eval", type=int, default=None, help="first N evaluation examples per task")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=None, help="default: each task's (256 / 384 / 512)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="generation length in evaluation")
    parser.add_argument("--lora", action="store_true", help="LoRA adapters instead of full fine-tuning (merged)")
    parser.add_argument("--xquad-eval-articles", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is far faster while other jobs share the cores)")
    parser.add_argument("--sst2-select-every", type=int, default=20,
                        help="hold out every N-th SST-2 training sentence to choose the best epoch")
    parser.add_argument("--from-scratch", action="store_true",
                        help="also fine-tune a randomly initialised model of the same size per model")
    parser.add_argument("--write-bilingual-tokenizer", type=Path, metavar="DIR",
                        help="train a BPE tokenizer on --pretraining-text + the Tatoeba training split, then exit")
    parser.add_argument("--pretraining-text", type=Path, default=DATA / "wikitext-2" / "train.txt")
    parser.add_argument("--vocab-size", type=int, default=16384, help="of the bilingual tokenizer")
    args = parser.parse_args(argv)
    if args.write_bilingual_tokenizer:
        write_bilingual_tokenizer(args.write_bilingual_tokenizer, args.pretraining_text, args.vocab_size)
        return 0
    if not args.models:
        parser.error("give at least one model folder")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    import yuyan
    from yuyan.training.finetune import finetune

    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output)
    tasks = prepare_data(output / "data", args.xquad_eval_articles, args.sst2_select_every)
    models = [Path(m) for m in args.models]
    if args.from_scratch:
        models = [m for model in models for m in (model, from_scratch_copy(model, output / "scratch", args.seed))]
    args.models = [str(m) for m in models]
    results = []
    for model in models:
        for name in args.tasks:
            spec = tasks[name]
            data_args = {**spec["data_args"], "max_train_samples": args.max_train, "max_eval_samples": args.max_eval}
            if spec["task"] == "text-generation":
                data_args.setdefault("max_new_tokens", args.max_new_tokens)
            if args.max_seq_length:
                data_args["max_seq_length"] = args.max_seq_length
            run_dir = output / model.name / name
            print(f"== {model} / {name} ({spec['task']}) -> {run_dir}", flush=True)
            start = time.perf_counter()
            training_args = {"learning_rate": args.learning_rate, "num_train_epochs": args.epochs,
                             "per_device_train_batch_size": args.batch_size, "per_device_eval_batch_size": 16,
                             "seed": args.seed, "save_strategy": "no", "eval_strategy": "no",
                             "disable_tqdm": True, "warmup_steps": 0}
            if "test" in spec:
                # Model selection on the held-out slice after every epoch; the best epoch is kept and tested.
                training_args.update(eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
                                     load_best_model_at_end=True, metric_for_best_model="accuracy")
            metrics = finetune(
                spec["task"], str(model), str(spec["train"]), str(spec["validation"]), run_dir,
                training_args=training_args,
                data_args=data_args,
                lora_args={"lora": True, "merge": True} if args.lora else None,
                overwrite=True,
            )
            scores = dict(metrics["metrics"])
            if "test" in spec:  # the fine-tuning metrics are the selection slice's; the score is the test set's
                scores = {f"selection_{key}": value for key, value in scores.items()}
                scores["accuracy"] = classification_accuracy(
                    run_dir, spec["test"], spec["data_args"]["class_names"], max_examples=args.max_eval)
            results.append({"model": str(model), "stack": stack_of(model), "task": name,
                            "from_scratch": model.name.endswith("-scratch"),
                            "seconds": time.perf_counter() - start, "metrics": scores})
            print(json.dumps(results[-1]["metrics"]), flush=True)
            (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    header = "| model | stack | " + " | ".join(COLUMNS[t][0] for t in args.tasks) + " |"
    print()
    print(f"yuyan {yuyan.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; max train "
          f"{args.max_train or 'all'}, max eval {args.max_eval or 'all'}, {args.epochs:g} epochs, learning rate "
          f"{args.learning_rate:g}{', LoRA' if args.lora else ''}")
    print()
    print(header)
    print("|---|---|" + "---:|" * len(args.tasks))
    for model in args.models:
        cells = []
        for name in args.tasks:
            found = [r for r in results if r["model"] == model and r["task"] == name]
            cells.append(f"{found[0]['metrics'][COLUMNS[name][1]]:.1f} ({found[0]['seconds'] / 60:.1f} min)"
                         if found else "-")
        print(f"| {Path(model).name} | {stack_of(Path(model))} | " + " | ".join(cells) + " |")
    print()
    print("command: python bench/finetune_report.py " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

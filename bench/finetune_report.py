"""Fine-tuning report: pretrained Yuyan models fine-tuned on four tasks, side by side.

For every model folder given (e.g. the `small` attention, LSTM and hybrid models of `bench/pretrain_budget.py`),
each task fine-tunes a fresh copy of the model with `yuyan.training.finetune.finetune` (the Trainer) and scores
it on held-out data:

| task    | data (`../shared/data`)                                | `--task`             | score                 |
|---------|--------------------------------------------------------|----------------------|-----------------------|
| SST-2   | `sst2/train.tsv` → `sst2/test.tsv` (= GLUE dev)        | classification       | accuracy              |
| XQuAD   | `xquad/xquad.en.json`, split by article (see below)    | question-answering   | F1 (SQuAD v1.1)       |
| SciTLDR | `scitldr/SciTLDR-A/train.jsonl` → `dev.jsonl`          | text-generation      | ROUGE-L (all refs)    |
| Tatoeba | `tatoeba-cmn-eng/cmn.txt`, English → Chinese           | text-generation      | chrF                  |

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
COLUMNS = {"sst2": ("SST-2 accuracy", "accuracy"), "xquad": ("XQuAD-en F1", "f1"),
           "scitldr": ("SciTLDR ROUGE-L", "rougeL"), "tatoeba": ("Tatoeba en→zh chrF", "chrf")}


def _write_jsonl(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def prepare_data(work: Path, eval_articles: int) -> dict[str, dict]:
    """Data files (converted where needed) and finetune() options for each task."""
    from yuyan.training.tasks.data import squad_rows

    work.mkdir(parents=True, exist_ok=True)
    tasks = {
        "sst2": {
            "task": "classification",
            "train": DATA / "sst2" / "train.tsv",
            "validation": DATA / "sst2" / "test.tsv",
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
    lines = (DATA / "tatoeba-cmn-eng" / "cmn.txt").read_text(encoding="utf-8-sig").splitlines()
    pairs = [line.split("\t")[:2] for line in lines if line.count("\t") >= 1]
    train = [{"prompt": en, "completion": zh} for i, (en, zh) in enumerate(pairs, 1) if i % 10]
    evaluation = [{"prompt": en, "completion": zh} for i, (en, zh) in enumerate(pairs, 1) if not i % 10]
    tasks["tatoeba"] = {
        "task": "text-generation",
        "train": _write_jsonl(work / "tatoeba-train.jsonl", train),
        "validation": _write_jsonl(work / "tatoeba-eval.jsonl", evaluation),
        "data_args": {"max_new_tokens": 32},
    }
    return tasks


def stack_of(model: Path) -> str:
    config = json.loads((model / "config.json").read_text())
    kinds = set(config.get("mixer_types") or config["layer_types"])  # `layer_types` before 0.2
    return "lstm" if kinds == {"lstm"} else "attention" if "lstm" not in kinds else "hybrid"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="pretrained Yuyan model folders")
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
    args = parser.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    import yuyan
    from yuyan.training.finetune import finetune

    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output)
    tasks = prepare_data(output / "data", args.xquad_eval_articles)
    results = []
    for model in map(Path, args.models):
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
            metrics = finetune(
                spec["task"], str(model), str(spec["train"]), str(spec["validation"]), run_dir,
                training_args={"learning_rate": args.learning_rate, "num_train_epochs": args.epochs,
                               "per_device_train_batch_size": args.batch_size, "per_device_eval_batch_size": 16,
                               "seed": args.seed, "save_strategy": "no", "eval_strategy": "no",
                               "disable_tqdm": True, "warmup_steps": 0},
                data_args=data_args,
                lora_args={"lora": True, "merge": True} if args.lora else None,
                overwrite=True,
            )
            results.append({"model": str(model), "stack": stack_of(model), "task": name,
                            "seconds": time.perf_counter() - start, "metrics": metrics["metrics"]})
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
            cells.append(f"{found[0]['metrics'][COLUMNS[name][1]]:.1f}" if found else "-")
        print(f"| {Path(model).name} | {stack_of(Path(model))} | " + " | ".join(cells) + " |")
    print()
    print("command: python bench/finetune_report.py " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Decode a fine-tuned text-generation folder's validation set again, with other decoding settings, without
retraining: the prompts, lengths and references are the ones its fine-tuning run scored (read from the folder's
run.json), so a row here compares directly with that run's score.

    python bench/rescore_generation.py runs/ft-scitldr-pre/hybrid/pretrained/scitldr --no-repeat-ngram-size 3

Prints ROUGE-L, chrF and BLEU (percent) per folder and, with --output, writes them with the predictions as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rescore(folder: Path, num_beams: int, no_repeat_ngram_size: int, max_new_tokens: int | None,
            batch_size: int, max_eval: int | None) -> dict:
    from transformers import AutoModelForCausalLM

    from yuyan.training.finetune import load_tokenizer
    from yuyan.training.tasks.data import load_table
    from yuyan.training.tasks.generation import (
        PromptFormat, as_references, evaluation_prompts, generate_completions, text_metrics,
    )

    run_file = folder / "run.json"
    if not run_file.is_file():
        raise SystemExit(f"{folder}: no run.json; give a folder written by `yuyan finetune --task text-generation`")
    run = json.loads(run_file.read_text(encoding="utf-8"))
    data = run.get("data") or {}
    if run.get("task") != "text-generation" or "prompt_column" not in data:
        raise SystemExit(f"{folder}: run.json is a {run.get('task')!r} run, not text-generation")

    tokenizer = load_tokenizer(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder)
    validation = load_table(data["validation_file"], (data.get("options") or {}).get("delimiter"))
    if max_eval is not None:
        validation = validation.select(range(min(max_eval, len(validation))))
    prompt_format = PromptFormat(tokenizer, data["chat_template"], data["system_prompt"],
                                 data["prompt_suffix"] if data["prompt_suffix"] is not None else "\n")
    new_tokens = max_new_tokens or data["max_new_tokens"]
    prompts = evaluation_prompts(prompt_format, validation[data["prompt_column"]], data["max_seq_length"], new_tokens)
    references = [as_references(value) for value in validation[data["completion_column"]]]
    start = time.perf_counter()
    predictions = generate_completions(model, tokenizer, prompts, new_tokens, batch_size, num_beams,
                                       no_repeat_ngram_size)
    seconds = time.perf_counter() - start
    return {"folder": str(folder), "num_beams": num_beams, "no_repeat_ngram_size": no_repeat_ngram_size,
            "max_new_tokens": new_tokens, "examples": len(predictions), "seconds": round(seconds, 1),
            "metrics": text_metrics(predictions, references), "predictions": predictions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="fine-tuned text-generation folders")
    parser.add_argument("--num-beams", type=int, default=1, help="1: greedy")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0,
                        help="never repeat an n-gram of this size (0: off); the prompt counts, as in generate")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-eval", type=int, default=None, help="first N validation examples")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None, help="write the scores and predictions here (JSON)")
    args = parser.parse_args(argv)
    if args.num_beams < 1 or args.no_repeat_ngram_size < 0:
        parser.error("--num-beams must be at least 1 and --no-repeat-ngram-size at least 0")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = []
    for folder in args.folders:
        row = rescore(folder, args.num_beams, args.no_repeat_ngram_size, args.max_new_tokens, args.batch_size,
                      args.max_eval)
        metrics = row["metrics"]
        print(f"{folder}: ROUGE-L {metrics['rougeL']:.1f}, chrF {metrics['chrf']:.1f}, BLEU {metrics['bleu']:.1f} "
              f"({row['examples']} examples, beams {args.num_beams}, no-repeat n-gram {args.no_repeat_ngram_size}, "
              f"{row['seconds'] / 60:.1f} min)", flush=True)
        results.append(row)
    if args.output:
        from yuyan.files import write_text_atomic

        write_text_atomic(args.output, json.dumps(results, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

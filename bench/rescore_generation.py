"""Decode a fine-tuned text-generation folder's validation set again, with other decoding settings, without
retraining: the prompts, lengths and references are the ones its fine-tuning run scored (read from the folder's
run.json), so a row here compares directly with that run's score.

    python bench/rescore_generation.py runs/ft-scitldr-pre/hybrid/pretrained/scitldr --no-repeat-ngram-size 3
    python bench/rescore_generation.py FOLDER --eval-file ../shared/data/scitldr/SciTLDR-A/test.jsonl   # another split

Prints ROUGE-L, chrF and BLEU (percent) per folder and, with --output, writes them with the predictions as JSON.
Given two folders scored on the same examples (e.g. the pretrained and the from-scratch twin), it also prints how
sure their ROUGE-L difference is: a paired bootstrap over the examples.
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
            batch_size: int, max_eval: int | None, eval_file: Path | None = None) -> dict:
    from transformers import AutoModelForCausalLM

    from yuyan.training.finetune import load_tokenizer
    from yuyan.training.recipes.generation import (
        PromptFormat, as_references, evaluation_prompts, generate_completions, rouge_l_scores, text_metrics,
    )
    from yuyan.training.recipes.tables import load_table

    run_file = folder / "run.json"
    if not run_file.is_file():
        raise SystemExit(f"{folder}: no run.json; give a folder written by `yuyan finetune --task text-generation`")
    run = json.loads(run_file.read_text(encoding="utf-8"))
    data = run.get("data") or {}
    if run.get("task") != "text-generation" or "prompt_column" not in data:
        raise SystemExit(f"{folder}: run.json is a {run.get('task')!r} run, not text-generation")

    tokenizer = load_tokenizer(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder)
    # Another split in the run's own format (e.g. the test file, once decoding was chosen on validation).
    scored_file = str(eval_file) if eval_file is not None else data["validation_file"]
    validation = load_table(scored_file, (data.get("options") or {}).get("delimiter"))
    missing = {data["prompt_column"], data["completion_column"]} - set(validation.column_names)
    if missing:
        raise SystemExit(f"{scored_file}: no column {', '.join(sorted(missing))} (the run's prompt and completion "
                         f"columns); it has {', '.join(validation.column_names)}")
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
    return {"folder": str(folder), "eval_file": scored_file, "num_beams": num_beams,
            "no_repeat_ngram_size": no_repeat_ngram_size, "max_new_tokens": new_tokens, "examples": len(predictions),
            "seconds": round(seconds, 1),
            "metrics": text_metrics(predictions, references), "rougeL_each": rouge_l_scores(predictions, references),
            "predictions": predictions}


def paired_bootstrap(first: list[float], second: list[float], resamples: int = 2000, seed: int = 0) -> dict:
    """How sure a difference in mean score is: examples are drawn with replacement (the same draw for both
    systems) `resamples` times; returns the observed mean difference first - second, its 95% interval over the
    draws, and the share of draws in which the first system's mean is higher."""
    import random

    if len(first) != len(second) or not first:
        raise ValueError(f"paired scores need the same examples: {len(first)} and {len(second)} scores")
    differences = [a - b for a, b in zip(first, second)]
    rng = random.Random(seed)
    n = len(differences)
    means = sorted(sum(differences[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return {"difference": sum(differences) / n, "low": means[int(0.025 * resamples)],
            "high": means[int(0.975 * resamples) - 1], "first_wins": sum(mean > 0 for mean in means) / resamples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="fine-tuned text-generation folders")
    parser.add_argument("--num-beams", type=int, default=1, help="1: greedy")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0,
                        help="never repeat an n-gram of this size (0: off); the prompt counts, as in generate")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-eval", type=int, default=None, help="first N examples of the scored file")
    parser.add_argument("--eval-file", type=Path, default=None,
                        help="score this file (same columns as the run's) instead of the run's validation file")
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
                      args.max_eval, args.eval_file)
        metrics = row["metrics"]
        print(f"{folder}: ROUGE-L {metrics['rougeL']:.1f}, chrF {metrics['chrf']:.1f}, BLEU {metrics['bleu']:.1f} "
              f"({row['examples']} examples of {row['eval_file']}, beams {args.num_beams}, no-repeat n-gram "
              f"{args.no_repeat_ngram_size}, {row['seconds'] / 60:.1f} min)", flush=True)
        results.append(row)
    if len(results) == 2:
        gap = paired_bootstrap(results[0]["rougeL_each"], results[1]["rougeL_each"])
        print(f"ROUGE-L, first minus second: {gap['difference']:+.2f} (95% paired bootstrap interval "
              f"{gap['low']:+.2f} to {gap['high']:+.2f}; the first ahead in {100 * gap['first_wins']:.1f}% of "
              f"draws)", flush=True)
        results[0]["paired_bootstrap_rougeL"] = gap
    if args.output:
        from yuyan.files import write_text_atomic

        write_text_atomic(args.output, json.dumps(results, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

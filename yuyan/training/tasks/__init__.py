"""Task recipes for `yuyan.training.finetune`: data loading, preprocessing, metrics and post-processing per task.

- `data`: CSV / TSV / JSON / JSONL / SQuAD v1.1 files → `datasets.Dataset`, column checks.
- `classification`: text (+ pair) → label; accuracy, macro-F1.
- `tagging`: words + tags → per-token labels (first sub-token labelled); entity F1 over BIO chunks.
- `question_answering`: SQuAD-style extractive QA: windows with a stride, n-best spans, SQuAD EM / F1, and the
  `question-answering` pipeline that transformers 5 no longer ships.
- `generation`: prompt → completion with the loss on the completion only; ROUGE-L / chrF / BLEU of greedy outputs.

Nothing here imports `datasets` at module level except `data`; `question_answering` imports only torch, numpy and
transformers, so `import yuyan` can register its pipeline cheaply.
"""

"""Training: pretraining from scratch and fine-tuning for a task, and what only training needs.

- `pretrain/`: `pretrain()` with Accelerate (arguments, optimizers, schedule, loop, run).
- `finetune`: `finetune()` with the transformers Trainer; `recipes/`: one recipe per task (data, metrics).
- `packing`: documents → tokenised, packed blocks; `evaluation`: perplexity, bits per byte, word-level perplexity.
- `distributed`: checks that stop every process together; `unseen_tokens`: fresh embeddings for tokens pretraining
  never read; `demo`: `yuyan demo`.

Nothing below this package imports it: the loader, the model cards, the pipelines and the text readers sit under it.
"""

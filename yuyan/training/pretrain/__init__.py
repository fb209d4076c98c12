"""Pretraining a Yuyan model from scratch with Accelerate: the same code on a laptop CPU, on many GPUs (DDP, FSDP)
or many nodes, chosen by `accelerate launch`, not by this file.

One run writes one output folder:

    OUTPUT/
      run.json                  the resolved model and training configuration (what `--resume` must match)
      checkpoints/step-0000200/ `accelerator.save_state`: model, optimizer, scheduler, RNG, + trainer_state.json
      logs/                     tracker output (`--report-to tensorboard`)
      config.json, model.safetensors, generation_config.json, tokenizer files, modeling code   (at the end)
      metrics.json              final evaluation, loss history, throughput
      README.md                 the model card

Checkpoints are written to a temporary folder and renamed into place, so a kill at any moment leaves the last
complete one; `--resume` continues from it exactly: weights, optimizer, schedule, RNG and data position.

One job per module:

    arguments.py    PretrainArguments, ModelSettings: the settings, resolved from YAML / preset / flags
    optimizers.py   AdamW, Muon + AdamW (CombinedOptimizer), CpuMuon
    schedule.py     the learning-rate plan and the budgets (steps, tokens, time) that fix its length
    loop.py         PretrainLoop (fit, time budget, logging, evaluation, checkpoints, resume), the output folder,
                    save_final
    run.py          pretrain(): the setup steps, then the loop
"""

from __future__ import annotations

from yuyan.training.pretrain.arguments import ModelSettings, PretrainArguments, parse_overrides, resolve_config
from yuyan.training.pretrain.optimizers import CombinedOptimizer, make_optimizer
from yuyan.training.pretrain.run import pretrain

__all__ = [
    "CombinedOptimizer",
    "ModelSettings",
    "PretrainArguments",
    "make_optimizer",
    "parse_overrides",
    "pretrain",
    "resolve_config",
]

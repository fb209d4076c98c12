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
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
import accelerate
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast, set_seed
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from yuyan.corpus import TextSource, load_documents
from yuyan.files import move_into, publish_folder, staging_dir, write_json_atomic
from yuyan.loading import cpu_has_native_bfloat16
from yuyan.modeling import PRESETS, YuyanConfig, YuyanForCausalLM
from yuyan.records import METRICS_FILE, RUN_FILE, PretrainMetrics, PretrainRun, metrics_from_dict, read_run
from yuyan.training.distributed import main_process_first, on_every_process, on_main_process
from yuyan.training.packing import split_validation, tokenize_and_pack

STATE_FILE = "trainer_state.json"
CHECKPOINTS = "checkpoints"
# A time budget fixes the run's step count from the measured step time: the first steps after a (re)start are
# left out (allocation, kernel warm-up), then at least TIME_MEASURE_STEPS steps and TIME_MEASURE_SECONDS (or
# TIME_MEASURE_SHARE of a short budget) are timed. The plan uses TIME_BUDGET_USE of the budget: checkpoint writes
# are not timed in advance, and the schedule should end before the clock does rather than be cut short by it.
# A machine's speed drifts over a long run (other work, heat), so after each TIME_REPLAN_SHARE of the planned run
# the step time is measured again over every training step since the first plan (evaluations are counted as the
# first plan counted them), and the end moves when it would move by more than TIME_REPLAN_TOLERANCE of the run.
TIME_MEASURE_SKIP_STEPS = 2
TIME_MEASURE_STEPS = 10
TIME_MEASURE_SECONDS = 5.0
TIME_MEASURE_SHARE = 0.02
TIME_BUDGET_USE = 0.98
TIME_REPLAN_SHARE = 0.1
TIME_REPLAN_TOLERANCE = 0.01


@dataclass
class PretrainArguments:
    """Everything a pretraining run needs besides the model architecture. Each field is a command-line flag."""

    output: str = field(default="runs/yuyan", metadata={"help": "output folder"})
    # data
    data: list[str] = field(default_factory=list, metadata={"help": "training files or globs (txt/jsonl/json/csv/parquet)"})
    validation_data: list[str] = field(default_factory=list, metadata={"help": "validation files or globs"})
    dataset: str | None = field(default=None, metadata={"help": "a `datasets` dataset name (Hub) or local folder"})
    dataset_config: str | None = field(default=None, metadata={"help": "the dataset's configuration name"})
    split: str = field(default="train", metadata={"help": "the dataset split to train on"})
    validation_split: str | None = field(default=None, metadata={"help": "the dataset split to validate on"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    txt_split: str = field(default="paragraph", metadata={"help": "a document of a .txt file: paragraph (blank-line separated) | line | file (the whole file as one stream, blank lines kept, as WikiText is scored)"})
    streaming: bool = field(default=False, metadata={"help": "stream the data (corpora larger than memory)"})
    validation_fraction: float = field(default=0.02, metadata={"help": "share of documents held out when no validation data is given"})
    num_proc: int | None = field(default=None, metadata={"help": "processes for tokenisation (datasets.map)"})
    # tokenizer
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder; without it one is trained on the data"})
    # batches and budget
    block_size: int = field(default=256, metadata={"help": "tokens per training sequence"})
    batch_size: int = field(default=16, metadata={"help": "sequences per device per micro-batch"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps (default: one epoch, without any budget)"})
    max_tokens: int | None = field(default=None, metadata={"help": "stop after this many training tokens"})
    max_minutes: float | None = field(default=None, metadata={"help": "training time: as many epochs as fit, the schedule ending with the budget (the first budget reached ends the run)"})
    # optimisation
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_learning_rate_ratio: float = field(default=0.1, metadata={"help": "final learning rate as a share of the peak"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw | muon (torch.optim.Muon on the 2-D hidden weights, AdamW on embeddings, head, norms, biases)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (not on norms, biases, embeddings)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: none)"})
    mixed_precision: str = field(default="no", metadata={"help": "no | bf16 | fp16 (bf16 is the fast path on CPUs with AMX)"})
    seed: int = field(default=42, metadata={"help": "seed of weights, data order and dropout"})
    # evaluation, logging, checkpoints
    eval_steps: int = field(default=200, metadata={"help": "evaluate every N steps"})
    eval_batches: int | None = field(default=50, metadata={"help": "batches per periodic evaluation (the final one uses all)"})
    logging_steps: int = field(default=10, metadata={"help": "log every N steps"})
    save_steps: int = field(default=500, metadata={"help": "checkpoint every N steps"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept (the newest)"})
    report_to: str = field(default="none", metadata={"help": "trackers for Accelerate: none | tensorboard | wandb | ..."})
    resume: str | None = field(default=None, metadata={"help": "resume: 'latest' or a checkpoint folder"})
    overwrite: bool = field(default=False, metadata={"help": "replace an output folder that holds another run"})
    peak_tflops: float | None = field(default=None, metadata={"help": "device peak for MFU (default: measured matmul peak)"})

    def validate(self) -> None:
        positive = ["block_size", "batch_size", "gradient_accumulation_steps", "eval_steps", "logging_steps", "save_steps"]
        for name in positive + ["max_steps", "max_tokens", "save_total_limit"]:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name}={value!r} is not allowed: it must be a positive integer.")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes={self.max_minutes} is not allowed: it must be positive.")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer={self.optimizer!r} is unknown; allowed: adamw, muon.")
        if self.optimizer == "muon" and not hasattr(torch.optim, "Muon"):
            raise ValueError(f"optimizer='muon' needs torch.optim.Muon, which torch {torch.__version__} lacks; use adamw.")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is unknown; allowed: no, bf16, fp16.")
        if self.learning_rate <= 0 or not 0 <= self.min_learning_rate_ratio <= 1:
            raise ValueError("learning_rate must be positive and min_learning_rate_ratio in [0, 1].")
        if self.data and self.dataset:
            raise ValueError("give either --data files or --dataset, not both.")
        if self.txt_split not in ("paragraph", "line", "file"):
            raise ValueError(f"txt_split={self.txt_split!r} is unknown; allowed: paragraph, line, file.")
        if self.streaming and not (self.max_steps or self.max_tokens or self.max_minutes):
            raise ValueError("a streaming run needs a budget: --max-steps, --max-tokens or --max-minutes.")


# -------------------------------------------------------------------------------------------------------------
# Configuration: YAML files and presets, with command-line overrides
# -------------------------------------------------------------------------------------------------------------


@dataclass
class ModelSettings:
    """The run's model: the settings as asked for (`requested`: `preset` and `YuyanConfig` fields; run.json records
    them and a resume must match them) and the `YuyanConfig` they resolve to, built once, here. The run's tokenizer
    then sets its vocabulary size and special ids on that same config (`adopt_tokenizer`)."""

    requested: dict[str, Any]
    config: YuyanConfig

    @classmethod
    def resolve(cls, requested: dict[str, Any]) -> ModelSettings:
        values = dict(requested)
        preset = values.pop("preset", None)
        config = YuyanConfig.from_preset(preset, **values) if preset is not None else YuyanConfig(**values)
        return cls(dict(requested), config)

    def adopt_tokenizer(self, tokenizer) -> YuyanConfig:
        """The config with the tokenizer's vocabulary size and special ids (bos falls back to eos)."""
        config = self.config
        config.vocab_size = len(tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
        config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.validate_token_ids()
        return config


def _read_config_file(config: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model values, training values) of `--config`: a preset name or a YAML file."""
    if config in PRESETS:
        return {"preset": config}, {}
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"--config {config!r} is neither a YAML file nor a preset; presets: {sorted(PRESETS)}.")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    unknown = set(loaded) - {"model", "training"}
    if unknown or not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected the sections 'model' and 'training', found {sorted(loaded)}.")
    return dict(loaded.get("model") or {}), dict(loaded.get("training") or {})


def resolve_config(
    config: str | None, overrides: dict[str, Any] | None = None, training: dict[str, Any] | None = None
) -> tuple[ModelSettings, PretrainArguments]:
    """(the model, training arguments) from a YAML file or a preset name, then overrides.

    The YAML file has a `model:` section (`preset:` and/or any `YuyanConfig` field) and a `training:` section
    (any `PretrainArguments` field). `overrides` are `model.FIELD` / `FIELD` = value pairs (`--set`); `training`
    holds the values of explicit command-line flags, which win over the file. Every setting is checked here, the
    model's by building its `YuyanConfig`.
    """
    model_values, training_values = _read_config_file(config) if config is not None else ({"preset": "tiny-hybrid"}, {})
    known_training = {f.name for f in fields(PretrainArguments)}
    for key, value in (overrides or {}).items():
        if key.startswith("model."):
            model_values[key[len("model.") :]] = value
        elif key.startswith("training.") or key in known_training:
            training_values[key.removeprefix("training.")] = value
        else:
            model_values[key] = value
    training_values.update({k: v for k, v in (training or {}).items() if v is not None})

    unknown = set(training_values) - known_training
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}; allowed: {sorted(known_training)}.")
    arguments = PretrainArguments(**training_values)
    arguments.validate()
    return ModelSettings.resolve(model_values), arguments


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`key=value` strings; values are parsed as YAML scalars (numbers, booleans, lists)."""
    overrides = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set hidden_size=128")
        overrides[key.strip()] = yaml.safe_load(raw)
    return overrides


# -------------------------------------------------------------------------------------------------------------
# Data order
# -------------------------------------------------------------------------------------------------------------


class EpochShuffleSampler(Sampler[int]):
    """A permutation of the blocks that depends only on (seed, epoch): after a resume, the same epoch yields the
    same order, so skipping the batches already seen continues exactly where the run stopped."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


def rng_neutral_iter(loader):
    """Iterate `loader` without touching the global RNG. A DataLoader draws a seed from it for every new
    iterator (lazily, at the first batch), and a resumed run starts one where the uninterrupted run did not:
    dropout would then see other random numbers, and the weights would drift apart."""
    state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def restore():
        torch.set_rng_state(state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)

    iterator = iter(loader)
    try:
        first = next(iterator)
    except StopIteration:
        restore()
        return
    restore()
    yield first
    yield from iterator


def collate_blocks(rows: list[dict]) -> dict[str, torch.Tensor]:
    ids = torch.stack([torch.as_tensor(row["input_ids"], dtype=torch.long) for row in rows])
    return {"input_ids": ids}


# -------------------------------------------------------------------------------------------------------------
# Helpers: checkpoints, throughput, evaluation
# -------------------------------------------------------------------------------------------------------------


def checkpoint_dirs(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a `.tmp` folder is a write that never finished)."""
    root = output / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).exists())


def measured_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large matmul on this device in the run's compute dtype: the denominator of MFU."""
    size = 2048 if device.type != "cpu" else 1024
    generator = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG (dropout's) untouched
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_flops_per_token(config: YuyanConfig, block_size: int) -> float:
    """Forward + backward FLOPs per token (PaLM's accounting): 6 per weight that takes part in a matmul (the LM
    head included, an untied input embedding, a lookup, not) plus the attention scores and weighted sums."""
    weights = config.estimated_num_parameters()
    if not config.tie_word_embeddings:
        weights -= config.vocab_size * config.hidden_size
    attention = 12 * config.num_attention_layers * config.num_attention_heads * config.head_dim * block_size
    return 6 * weights + attention


@torch.no_grad()
def evaluate_loss(model, dataloader, accelerator: Accelerator, max_batches: int | None) -> dict[str, float]:
    """Mean token loss over the validation blocks. Per-block losses are gathered with `gather_for_metrics`, so
    blocks that Accelerate repeats to even out the last batch across processes are not counted twice."""
    model.eval()
    losses = []
    for index, batch in enumerate(rng_neutral_iter(dataloader)):
        if max_batches is not None and index >= max_batches:
            break
        ids = batch["input_ids"]
        logits = model(input_ids=ids).logits.float()
        per_block = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(dim=1)
        losses.append(accelerator.gather_for_metrics(per_block))
    model.train()
    if not losses:
        raise ValueError("the validation set is empty: give more validation text or a larger --validation-fraction")
    loss = torch.cat(losses).mean().item()
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def new_schedule_plan(warmup_steps: int) -> dict:
    """A schedule whose length is not known yet: linear warm-up over `warmup_steps`, then the peak."""
    return {"warmup_steps": warmup_steps, "total_steps": None, "planned_at": 0, "final_warmup_steps": warmup_steps,
            "start_factor": 0.0, "fixed_by": None}


def schedule_factor(step: int, plan: dict, floor: float) -> float:
    """The learning-rate multiplier at optimizer step `step` (0-based) under `plan`.

    While the run's length is unknown (`total_steps` None: a time budget is being measured) the rate warms up
    linearly over `warmup_steps`. `fix_schedule` fixes the length at step `planned_at`; from there the rate goes
    linearly from where it was (`start_factor`) to the peak at `final_warmup_steps`, then down a cosine to
    `floor` x peak at `total_steps`; when the warm-up is already over, the cosine starts from the current rate.
    So the rate never jumps when a plan is fixed mid-run. With `planned_at == 0` this is the plain linear warm-up
    + cosine schedule. (Steps before `planned_at` were taken under the previous plan, which the plan replaces.)
    """
    total, planned_at = plan["total_steps"], plan["planned_at"]
    if total is None or step < planned_at:
        return min(1.0, (step + 1) / max(1, plan["warmup_steps"]))
    final_warmup, start = plan["final_warmup_steps"], plan["start_factor"]
    if step < final_warmup:
        return start + (1 - start) * (step - planned_at + 1) / (final_warmup - planned_at)
    top = 1.0 if final_warmup > planned_at else start
    progress = min(1.0, (step - final_warmup) / max(1, total - final_warmup))
    return floor + (top - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def fix_schedule(plan: dict, total_steps: int, step: int, fixed_by: str, floor: float) -> None:
    """Fix the run's length to `total_steps`, from optimizer step `step` on. The warm-up becomes at most a tenth of
    the run (short runs spend most of their steps decaying) and never ends before `step` (what is done stays done).

    A plan fixed after that tenth has passed (a short time budget on a slow machine: the step time is measured
    while the provisional warm-up, `warmup_steps` long, has barely begun) still takes the rate to the peak, at the
    new warm-up's pace from where it is, within half of the steps left; otherwise the whole run would train at the
    few percent of the peak reached while measuring."""
    total_steps = int(total_steps)
    start = schedule_factor(step - 1, plan, floor) if step > 0 else 0.0
    warmup = min(plan["warmup_steps"], max(1, total_steps // 10))
    catch_up = step + math.ceil((1 - start) * warmup)
    plan.update(
        total_steps=total_steps,
        planned_at=step,
        final_warmup_steps=max(step, min(max(warmup, catch_up), step + (total_steps - step) // 2)),
        start_factor=start,
        fixed_by=fixed_by,
    )


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: norms, biases and embeddings keep their scale."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim < 2 or "embed" in name or "norm" in name:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, args: PretrainArguments) -> torch.optim.Optimizer:
    if args.optimizer == "muon":
        return make_muon_optimizer(model, args)
    groups = parameter_groups(model, args.weight_decay)
    betas = (args.adam_beta1, args.adam_beta2)
    # Fused AdamW runs on CPU and CUDA in current torch; foreach is the fallback.
    try:
        return torch.optim.AdamW(groups, lr=args.learning_rate, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=args.learning_rate, betas=betas, foreach=True)


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, seen as one: one learning-rate schedule (its factor applies to
    every group), one state dict for checkpoints, one `step`. The groups are the inner optimizers' own dicts, so a
    scheduler setting `group["lr"]` sets it where the inner optimizer reads it."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        self.defaults = {}
        self.param_groups = [group for optimizer in optimizers for group in optimizer.param_groups]
        self.state = {}  # each inner optimizer keeps its own
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}
        self._optimizer_state_dict_pre_hooks, self._optimizer_state_dict_post_hooks = {}, {}
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = {}, {}
        self._zero_grad_profile_name = "Optimizer.zero_grad#CombinedOptimizer.zero_grad"

    def step(self, closure=None):
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"], strict=True):
            optimizer.load_state_dict(state)
        self.param_groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]


def newton_schulz_float32(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                          eps: float) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (torch.optim.Muon's coefficients and step count), in float32: the
    matrix whose singular values are pushed towards 1, with the singular vectors of `update`."""
    a, b, c = coefficients
    wide = update.size(0) <= update.size(1)
    x = update.float() if wide else update.float().T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


def muon_learning_rate(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix rate: "original" sqrt(max(1, rows/cols)), "match_rms_adamw"
    0.2 * sqrt(max(rows, cols)) (updates of AdamW's RMS)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


if hasattr(torch.optim, "Muon"):

    class CpuMuon(torch.optim.Muon):
        """torch.optim.Muon whose orthogonalisation runs in float32 for parameters on a CPU without native bfloat16
        (torch's runs in bfloat16). An AVX2-only CPU emulates bf16 matmuls: there the small-hybrid's Muon step took
        19.6 s against 7.6 s for its forward and backward, and 0.9 s in float32. Where bf16 is native (AVX-512 BF16,
        AMX) torch's own step is the faster one (0.16 s against 0.32 s on an AVX-512 BF16 CPU;
        bench/optimizer_step.py), and it runs. `float32` forces one path (None: decide by the CPU). Same
        hyperparameters, state and state dict either way; other devices use torch's step."""

        def __init__(self, params, *args, float32: bool | None = None, **kwargs):
            super().__init__(params, *args, **kwargs)
            self.float32 = not cpu_has_native_bfloat16() if float32 is None else float32

        @torch.no_grad()
        def step(self, closure=None):
            on_cpu = any(p.device.type == "cpu" for group in self.param_groups for p in group["params"])
            if not (on_cpu and self.float32):
                return super().step(closure)
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                params, grads, buffers = [], [], []
                self._init_group(group, params, grads, buffers)
                momentum, lr = group["momentum"], float(group["lr"])
                for param, grad, buffer in zip(params, grads, buffers):
                    buffer.lerp_(grad, 1 - momentum)
                    update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                    update = newton_schulz_float32(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                    param.mul_(1 - lr * group["weight_decay"])
                    param.add_(update.to(param.dtype),
                               alpha=-muon_learning_rate(lr, group["adjust_lr_fn"], param.shape))
            return loss


def make_muon_optimizer(model: torch.nn.Module, args: PretrainArguments) -> CombinedOptimizer:
    """Muon on the 2-D weights inside the stack (attention, MLP, LSTM matrices), AdamW on the rest: embeddings and
    LM head (lookups and a classifier, which Muon's orthogonalised updates do not suit), norms and biases. Muon's
    `match_rms_adamw` scaling gives its updates AdamW's size, so both share the learning rate and its schedule."""
    hidden, rest = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_hidden = parameter.ndim == 2 and "embed" not in name and "lm_head" not in name
        (hidden if is_hidden else rest).append((name, parameter))
    hidden_ids = {id(p) for _, p in hidden}
    groups = [
        {**group, "params": [p for p in group["params"] if id(p) not in hidden_ids]}
        for group in parameter_groups(model, args.weight_decay)
    ]
    groups = [group for group in groups if group["params"]]
    adamw = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), foreach=True)
    muon = CpuMuon([p for _, p in hidden], lr=args.learning_rate, weight_decay=args.weight_decay,
                   adjust_lr_fn="match_rms_adamw")
    return CombinedOptimizer([adamw, muon])


# -------------------------------------------------------------------------------------------------------------
# The run
# -------------------------------------------------------------------------------------------------------------


def prepare_output(output: Path, run: PretrainRun, args: PretrainArguments) -> Path | None:
    """Check the output folder before any work; return the checkpoint to resume from (or None)."""
    existing = output / RUN_FILE
    if args.resume:
        if not existing.exists():
            raise ValueError(f"--resume: {output} holds no run to resume ({RUN_FILE} missing).")
        previous = read_run(output)
        differs = "model" if previous.is_finetuning else previous.same_setup(run)
        if differs:
            raise ValueError(
                f"--resume: the {differs} settings differ from the run in {output}; resume with the same settings."
            )
        if args.resume == "latest":
            complete = checkpoint_dirs(output)
            if not complete:
                raise ValueError(f"--resume: {output / CHECKPOINTS} holds no complete checkpoint yet.")
            return complete[-1]
        checkpoint = Path(args.resume)
        if not (checkpoint / STATE_FILE).exists():
            raise ValueError(f"--resume {checkpoint}: not a complete checkpoint ({STATE_FILE} missing).")
        return checkpoint
    started_only = existing.exists() and not checkpoint_dirs(output) and not (output / "config.json").exists()
    if output.exists() and any(output.iterdir()):
        # A run that stopped before its first checkpoint holds nothing worth keeping: start it again.
        if existing.exists() and not args.overwrite and not started_only:
            raise ValueError(
                f"{output} holds another run: pass --resume to continue it, --overwrite to replace it, "
                "or choose another --output."
            )
        if not existing.exists() and not args.overwrite:
            raise ValueError(f"{output} is not empty and holds no Yuyan run: choose another --output.")
        shutil.rmtree(output)
    return None


def obtain_tokenizer(args: PretrainArguments, source: TextSource, vocab_size: int, output: Path,
                     accelerator: Accelerator):
    """The run's tokenizer: `--tokenizer`, or one trained on (up to 100 MB of) the training text and saved in
    OUTPUT/tokenizer (by the main process; the others wait and load it)."""
    from transformers import AutoTokenizer

    if args.tokenizer:
        if not (Path(args.tokenizer) / "tokenizer_config.json").exists():
            raise ValueError(f"--tokenizer {args.tokenizer}: not a tokenizer folder (no tokenizer_config.json).")
        return AutoTokenizer.from_pretrained(args.tokenizer)
    tokenizer_dir = output / "tokenizer"

    def train() -> None:
        if (tokenizer_dir / "tokenizer.json").exists():
            return
        from yuyan.tokenization import train_tokenizer

        accelerator.print(f"Training a byte-level BPE tokenizer ({vocab_size} tokens) on {source.description} ...")
        train_tokenizer(texts=source.texts(), vocab_size=vocab_size, output_dir=tokenizer_dir, max_bytes=100_000_000)

    on_main_process(accelerator, train)
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def data_sources(args: PretrainArguments) -> tuple[TextSource, TextSource | None]:
    """The training text and, when given apart, the validation text."""
    source = TextSource(
        files=args.data, dataset=args.dataset, dataset_config=args.dataset_config, split=args.split,
        text_column=args.text_column, streaming=args.streaming, txt_split=args.txt_split,
    )
    validation_source = None
    if args.validation_data:
        validation_source = TextSource(files=args.validation_data, text_column=args.text_column,
                                       streaming=args.streaming, txt_split=args.txt_split)
    elif args.dataset and args.validation_split:
        validation_source = TextSource(
            dataset=args.dataset, dataset_config=args.dataset_config, split=args.validation_split,
            text_column=args.text_column, streaming=args.streaming,
        )
    return source, validation_source


def new_run_record(args: PretrainArguments, model: ModelSettings, source: TextSource,
                   validation_source: TextSource | None) -> PretrainRun:
    """run.json: what a resume must match (model and data) and every training setting."""
    config = model.config
    if config.has_attention and args.block_size > config.max_position_embeddings:
        raise ValueError(
            f"block_size={args.block_size} is beyond the model's max_position_embeddings="
            f"{config.max_position_embeddings}: lower --block-size or raise model.max_position_embeddings."
        )
    validation = validation_source.description if validation_source else (
        f"every {max(2, round(1 / args.validation_fraction))}th document of the training data")
    data = {"train": source.description, "validation": validation, "block_size": args.block_size,
            "tokenizer": args.tokenizer, "seed": args.seed}
    if args.txt_split != "paragraph":  # recorded only when set, so that runs from before the option still resume
        data["txt_split"] = args.txt_split
    return PretrainRun(model=model.requested, data=data, training=asdict(args))


def make_accelerator(args: PretrainArguments, output: Path) -> Accelerator:
    # Launched as several processes (accelerate launch / torchrun) on a machine without GPUs: Accelerate only
    # sets up CPU data parallelism (gloo) when told `cpu=True`.
    cpu_only = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu_only,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
    )


def check_launch(accelerator: Accelerator) -> None:
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and (
        accelerator.distributed_type != DistributedType.FSDP
    ):
        # Accelerate promotes a launch to FSDP only when its processes run on GPUs (or other accelerators); on CPUs
        # the same launch becomes plain DDP, with a whole model per process, which is not what was asked for.
        raise ValueError(
            f"an FSDP launch ended up as {accelerator.distributed_type.value}: Accelerate {accelerate.__version__} "
            "runs FSDP only on GPUs (or other accelerators), not on CPU processes. On CPUs launch data-parallel "
            "with configs/accelerate/cpu-2-processes.yaml instead."
        )


def open_output(accelerator: Accelerator, output: Path, run: PretrainRun, args: PretrainArguments) -> Path | None:
    """Check (and on a new run, clear) the output folder and write run.json; the checkpoint to resume from."""

    def start_output() -> Path | None:
        checkpoint = prepare_output(output, run, args)
        output.mkdir(parents=True, exist_ok=True)
        if not checkpoint:
            run.write(output)
        return checkpoint

    resume_from = on_main_process(accelerator, start_output)
    if not accelerator.is_main_process and args.resume:
        resume_from = checkpoint_dirs(output)[-1] if args.resume == "latest" else Path(args.resume)
    output.mkdir(parents=True, exist_ok=True)
    return resume_from


def pack_blocks(args: PretrainArguments, accelerator: Accelerator, tokenizer, documents, validation_documents):
    """Training and validation blocks of `block_size` tokens (the validation share split off when no validation
    text was given)."""
    if validation_documents is not None:
        train_documents = documents
    else:
        train_documents, validation_documents = split_validation(documents, args.validation_fraction)
    train_blocks, validation_blocks = main_process_first(accelerator, lambda: (
        tokenize_and_pack(train_documents, tokenizer, args.block_size, args.num_proc),
        tokenize_and_pack(validation_documents, tokenizer, args.block_size, args.num_proc),
    ))
    if not args.streaming:
        if len(train_blocks) == 0:
            raise ValueError(
                f"the training data gives no complete block of {args.block_size} tokens: give more text or lower "
                "--block-size."
            )
        if len(validation_blocks) == 0:
            raise ValueError(
                f"the validation data gives no complete block of {args.block_size} tokens: give more validation text, "
                "raise --validation-fraction or lower --block-size."
            )
    return train_blocks, validation_blocks


def make_loaders(args: PretrainArguments, train_blocks, validation_blocks) -> tuple[DataLoader, DataLoader]:
    if args.streaming:
        train_loader = DataLoader(train_blocks.with_format("torch"), batch_size=args.batch_size,
                                  collate_fn=collate_blocks)
    else:
        sampler = EpochShuffleSampler(len(train_blocks), args.seed)
        train_loader = DataLoader(
            train_blocks, batch_size=args.batch_size, sampler=sampler, collate_fn=collate_blocks, drop_last=True
        )
    return train_loader, DataLoader(validation_blocks, batch_size=args.batch_size, collate_fn=collate_blocks)


def initial_state(args: PretrainArguments, steps_per_epoch: int | None, tokens_per_step: int) -> dict[str, Any]:
    """The run's state (checkpointed as trainer_state.json) with its schedule plan. Budgets known in steps from
    the start fix the plan now; one epoch when there is no budget at all. A time budget alone trains as many
    epochs as fit: its step count is fixed once the step time has been measured (`PretrainLoop.plan_time_budget`)."""
    step_budgets = {}
    if args.max_steps:
        step_budgets["max_steps"] = args.max_steps
    if args.max_tokens:
        step_budgets["max_tokens"] = math.ceil(args.max_tokens / tokens_per_step)
    if not step_budgets and not args.max_minutes:
        step_budgets["epoch"] = steps_per_epoch
    known_by, known_steps = min(step_budgets.items(), key=lambda item: item[1]) if step_budgets else (None, None)
    plan = new_schedule_plan(min(args.warmup_steps, max(1, known_steps // 10)) if known_steps else args.warmup_steps)
    if known_steps:
        fix_schedule(plan, known_steps, 0, known_by, args.min_learning_rate_ratio)
    # With a time budget the plan is provisional until the step time is measured; the step budget stays the
    # limit that later re-plans of the time budget keep to.
    plan["time_budget_pending"] = bool(args.max_minutes)
    plan["step_budget"] = [known_by, known_steps] if known_steps else None
    return {"step": 0, "epoch": 0, "batches_in_epoch": 0, "tokens_seen": 0, "train_seconds": 0.0,
            "loss_history": [], "eval_history": [], "time_history": [], "schedule": plan}


def pretrain(
    args: PretrainArguments, model: ModelSettings | dict[str, Any], accelerator: Accelerator | None = None,
    clock=time.perf_counter,
) -> dict[str, Any]:
    """Run (or resume) a pretraining run; returns the final metrics (metrics.json). See the module docstring for
    the layout. `model`: from `resolve_config`, or the model settings as a dict (`{"preset": ..., field: ...}`).

    `clock` (seconds, monotonic) measures the training time that `max_minutes` budgets; tests pass a fake one.
    """
    # Setup: every setting is checked before any data or model work; then data, output folder, tokenizer.
    output = Path(args.output)
    settings = model if isinstance(model, ModelSettings) else ModelSettings.resolve(model)
    source, validation_source = data_sources(args)
    run = new_run_record(args, settings, source, validation_source)
    accelerator = accelerator or make_accelerator(args, output)
    check_launch(accelerator)
    if args.mixed_precision == "bf16" and accelerator.device.type == "cpu" and not cpu_has_native_bfloat16():
        accelerator.print(
            "warning: --mixed-precision bf16 on a CPU without native bfloat16 (no AVX-512 / AMX; torch reports "
            f"{torch.backends.cpu.get_cpu_capability()}): its bf16 matmuls are emulated, about 20x slower than "
            "float32 (bench/optimizer_step.py). --mixed-precision no is the fast path here."
        )
    # The documents first: a missing column or an unreadable file is reported before the output is touched. Work
    # done by the main process alone (or first) goes through `on_main_process` / `main_process_first`, so that
    # its error stops every process instead of leaving them at a barrier.
    documents, validation_documents = main_process_first(
        accelerator, lambda: (load_documents(source),
                              load_documents(validation_source) if validation_source is not None else None)
    )
    resume_from = open_output(accelerator, output, run, args)
    tokenizer = obtain_tokenizer(args, source, settings.config.vocab_size, output, accelerator)
    config = settings.adopt_tokenizer(tokenizer)
    train_blocks, validation_blocks = pack_blocks(args, accelerator, tokenizer, documents, validation_documents)

    set_seed(args.seed)
    # Built after set_seed (the weights depend on the seed alone) and held by the loop only, which drops it at the end.
    loop = PretrainLoop(args, accelerator, YuyanForCausalLM(config), *make_loaders(args, train_blocks,
                                                                                   validation_blocks), output, clock)
    loop.resume(resume_from)
    # Fit, evaluate, save.
    stop_reason = loop.fit()
    metrics = loop.final_metrics(stop_reason, run).to_dict()
    loop.save(tokenizer, metrics, run)
    return metrics


class PretrainLoop:
    """The model, optimizer, schedule and data of one run, and the loop over them: `fit` reads top to bottom, one
    optimizer step at a time; what happens around a step (time-budget measurement, logging, evaluation, stopping,
    checkpoints) is one method each. `state` is what a checkpoint saves beside Accelerate's own state."""

    def __init__(self, args: PretrainArguments, accelerator: Accelerator, model: YuyanForCausalLM,
                 train_loader: DataLoader, validation_loader: DataLoader, output: Path, clock):
        self.args, self.accelerator, self.output, self.clock = args, accelerator, output, clock
        self.config = model.config
        optimizer = make_optimizer(model, args)
        self.model, self.optimizer, self.train_loader, self.validation_loader = accelerator.prepare(
            model, optimizer, train_loader, validation_loader
        )
        steps_per_epoch = None
        if not args.streaming:
            steps_per_epoch = len(self.train_loader) // args.gradient_accumulation_steps
            if steps_per_epoch == 0:
                raise ValueError(
                    f"one epoch has {len(train_loader.dataset)} blocks: fewer than one optimizer step of "
                    f"{args.batch_size} x {accelerator.num_processes} x {args.gradient_accumulation_steps}; "
                    "lower --batch-size or give more data."
                )
        self.tokens_per_step = (args.block_size * args.batch_size * args.gradient_accumulation_steps
                                * accelerator.num_processes)
        self.state = initial_state(args, steps_per_epoch, self.tokens_per_step)
        # The schedule reads the plan from `state`, which a resume replaces with the checkpoint's: the run goes on
        # with the step count fixed before the interruption, whatever the clock says now.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: schedule_factor(step, self.state["schedule"], args.min_learning_rate_ratio)
        )
        accelerator.register_for_checkpointing(self.scheduler)

    def resume(self, checkpoint: Path | None) -> None:
        """Load a checkpoint (when resuming), start the trackers and measure the device's peak for MFU."""
        args, accelerator = self.args, self.accelerator
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
            self.state.update(json.loads((checkpoint / STATE_FILE).read_text()))
            accelerator.print(f"Resumed from {checkpoint} at step {self.state['step']}.")
        if args.report_to != "none":
            accelerator.init_trackers("yuyan-pretrain", config={k: v for k, v in asdict(args).items()
                                                                 if isinstance(v, (int, float, str, bool))})
        compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision, torch.float32)
        if args.peak_tflops:
            self.peak = args.peak_tflops * 1e12
        else:
            # Under autocast some matmuls stay in float32 (every LSTM, on a CPU without a bf16 LSTM), and where bf16
            # is emulated float32 is the faster of the two: the peak is the better one, so MFU stays under 100%.
            dtypes = {compute_dtype, torch.float32}
            self.peak = max(measured_peak_flops(accelerator.device, dtype) for dtype in dtypes)
        self.flops_per_token = training_flops_per_token(self.config, args.block_size)

    def planned_total(self) -> float:
        total = self.state["schedule"]["total_steps"]
        return math.inf if total is None else total

    def fit(self) -> str:
        """Train until a budget (or the one epoch) is used up; returns why the run stopped."""
        args, accelerator, state, clock = self.args, self.accelerator, self.state, self.clock
        self.progress = tqdm(total=state["schedule"]["total_steps"], initial=state["step"], desc="Pretraining",
                             disable=not accelerator.is_main_process, dynamic_ncols=True)
        self.model.train()
        self.started = clock() - state["train_seconds"]
        self.window_start, self.window_tokens = clock(), 0
        # Step times for the time budget: the first steps of a process (allocation, warm-up of kernels) are left out.
        self.measured = {"skipped": 0, "steps": 0, "seconds": 0.0}
        self.step_started = clock()
        stop_reason = None
        self.last_loss = torch.zeros((), device=accelerator.device)
        while stop_reason is None and state["step"] < self.planned_total():
            self.train_loader.set_epoch(state["epoch"])
            loader = self.train_loader
            if state["batches_in_epoch"]:
                loader = accelerator.skip_first_batches(self.train_loader, state["batches_in_epoch"])
            for batch in rng_neutral_iter(loader):
                if not self.train_step(batch):
                    continue  # gradients are still accumulating
                stop_reason = self.after_step()
                if stop_reason:
                    break
                self.step_started = clock()
            else:
                if args.streaming and state["batches_in_epoch"] == 0:
                    raise ValueError("the training stream gave no complete batch.")
                state["epoch"] += 1
                state["batches_in_epoch"] = 0
        self.progress.close()
        return stop_reason or "epoch"

    def train_step(self, batch) -> bool:
        """Forward and backward on one micro-batch; True when it completed an optimizer step."""
        args, accelerator, model, optimizer = self.args, self.accelerator, self.model, self.optimizer
        with accelerator.accumulate(model):
            loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.state["batches_in_epoch"] += 1
        self.last_loss += loss.detach().float() / args.gradient_accumulation_steps
        if not accelerator.sync_gradients:
            return False
        self.scheduler.step()
        return True

    def after_step(self) -> str | None:
        """The bookkeeping of one optimizer step; the stop reason when the run ends with it."""
        args, accelerator, state = self.args, self.accelerator, self.state
        state["step"] += 1
        state["tokens_seen"] += self.tokens_per_step
        self.window_tokens += self.tokens_per_step
        step_loss = accelerator.reduce(self.last_loss, "mean").item()
        self.last_loss.zero_()
        state["loss_history"].append([state["step"], round(step_loss, 6)])
        now = self.clock()
        state["train_seconds"] = now - self.started
        self.progress.update(1)
        schedule = state["schedule"]
        if schedule.get("time_budget_pending"):
            self.measure_step(now)
        elif "timed_steps" in schedule:
            schedule["timed_steps"][0] += 1
            # Rounded, as in `time_budget_end`: a resumed run's clock starts elsewhere.
            schedule["timed_steps"][1] += round(now - self.step_started, 6)
            if state["step"] == schedule["next_replan_step"] and state["step"] < self.planned_total():
                self.replan_time_budget()
        if state["step"] % args.logging_steps == 0 or state["step"] == self.planned_total():
            self.log_step(step_loss)
        if state["step"] % args.eval_steps == 0 and state["step"] < self.planned_total():
            self.evaluate_periodically()
            # The evaluation's time counts against the budget, in this process and in the checkpoint a resumed
            # run starts from.
            state["train_seconds"] = self.clock() - self.started

        out_of_time = bool(args.max_minutes) and state["train_seconds"] >= args.max_minutes * 60
        if args.max_minutes and accelerator.num_processes > 1:
            # Each process has its own clock: the main one decides, so that all stop at the same step.
            out_of_time = bool(broadcast(torch.tensor([float(out_of_time)], device=accelerator.device)).item())
        stop_reason = None
        if state["step"] >= self.planned_total():
            stop_reason = state["schedule"]["fixed_by"]
        elif out_of_time:
            stop_reason = "max_minutes"
        if state["step"] % args.save_steps == 0 or stop_reason:
            self.save_checkpoint()
        return stop_reason

    def measure_step(self, now: float) -> None:
        """Time the step for the time budget; plan the budget once enough steps are timed."""
        args, measured = self.args, self.measured
        if measured["skipped"] < TIME_MEASURE_SKIP_STEPS:
            measured["skipped"] += 1
        else:
            measured["steps"] += 1
            measured["seconds"] += now - self.step_started
        enough_time = min(TIME_MEASURE_SECONDS, TIME_MEASURE_SHARE * args.max_minutes * 60)
        ready = measured["steps"] >= TIME_MEASURE_STEPS and measured["seconds"] >= enough_time
        if self.accelerator.num_processes > 1:  # all processes plan at the same step (the plan is collective)
            ready = bool(broadcast(torch.tensor([float(ready)], device=self.accelerator.device)).item())
        if ready:
            self.plan_time_budget(measured["seconds"] / max(1, measured["steps"]))

    def plan_time_budget(self, step_seconds: float) -> None:
        """Fix the run's step count from the measured step time: the steps that fit in what is left of the time
        budget, less the periodic evaluations they bring (timed on one validation batch now), or the step budget
        if that is smaller. Processes agree on the slowest one's times, so all fix the same count."""
        args, accelerator, state, clock = self.args, self.accelerator, self.state, self.clock
        eval_started = clock()
        evaluate_loss(self.model, self.validation_loader, accelerator, max_batches=1)
        eval_batch_seconds = clock() - eval_started
        try:
            eval_batches = len(self.validation_loader)
        except TypeError:  # a streamed validation set has no length
            eval_batches = args.eval_batches or 1
        if args.eval_batches:
            eval_batches = min(eval_batches, args.eval_batches)
        times = accelerator.gather(torch.tensor([step_seconds, eval_batch_seconds], device=accelerator.device))
        step_seconds, eval_batch_seconds = times.reshape(-1, 2).max(dim=0).values.tolist()
        seconds_per_step = step_seconds + eval_batch_seconds * eval_batches / args.eval_steps
        time_steps = self.time_budget_end(seconds_per_step)
        # The scheduler has already set the rate of the next step (index `step`): a new plan applies after it.
        # When the step budget ends first, its schedule (in force from the start) stays as it is.
        schedule = state["schedule"]
        if schedule["total_steps"] is None or time_steps < schedule["total_steps"]:
            fix_schedule(schedule, time_steps, state["step"] + 1, "max_minutes", args.min_learning_rate_ratio)
        schedule["time_budget_pending"] = False
        schedule["measured_step_seconds"] = round(step_seconds, 6)
        # Later re-plans time every training step from here on: [steps, seconds].
        schedule["timed_steps"] = [0, 0.0]
        schedule["evaluation_seconds_per_step"] = seconds_per_step - step_seconds
        steps_left = schedule["total_steps"] - state["step"]
        schedule["replan_every"] = max(TIME_MEASURE_STEPS, math.ceil(TIME_REPLAN_SHARE * steps_left))
        schedule["next_replan_step"] = state["step"] + schedule["replan_every"]
        schedule["replans"] = []
        self.progress.total = schedule["total_steps"]
        self.progress.refresh()
        self.progress.write(
            f"time budget: {step_seconds:.4f} s a step (measured over {self.measured['steps']} steps), "
            f"{eval_batch_seconds:.4f} s an evaluation batch: the run and its schedule end at step "
            f"{schedule['total_steps']} (set by {schedule['fixed_by']})."
        )

    def time_budget_end(self, seconds_per_step: float) -> int:
        """The step at which the time budget (TIME_BUDGET_USE of it) runs out, at `seconds_per_step` from now.
        train_seconds is rounded: a resumed run's clock starts elsewhere, and its float error must not move the
        end by one step."""
        left = TIME_BUDGET_USE * self.args.max_minutes * 60 - round(self.state["train_seconds"], 6)
        return self.state["step"] + max(0, math.floor(left / max(seconds_per_step, 1e-9)))

    def replan_time_budget(self) -> None:
        """Measure the step time again, over every training step since the first plan, and move the end of the run
        (and of its schedule, which decays from the current rate to the new end) to where the time budget now ends,
        when it moved by more than TIME_REPLAN_TOLERANCE; never past a step or token budget. The measurements and
        re-plans are kept in the checkpointed schedule, so a resumed run follows them."""
        args, accelerator, state = self.args, self.accelerator, self.state
        schedule = state["schedule"]
        schedule["next_replan_step"] = state["step"] + schedule["replan_every"]
        timed_steps, timed_seconds = schedule["timed_steps"]
        step_seconds = timed_seconds / max(1, timed_steps)
        seconds_per_step = step_seconds + schedule["evaluation_seconds_per_step"]
        # At least one more step: the scheduler has already set this one's successor.
        time_steps = max(state["step"] + 1, self.time_budget_end(seconds_per_step))
        # Processes agree on the slowest one's plan, so all end at the same step.
        time_steps = int(accelerator.gather(torch.tensor([time_steps], device=accelerator.device)).min().item())
        budget_name, budget_steps = schedule.get("step_budget") or (None, math.inf)
        total, fixed_by = (time_steps, "max_minutes") if time_steps < budget_steps else (budget_steps, budget_name)
        if abs(total - schedule["total_steps"]) <= TIME_REPLAN_TOLERANCE * schedule["total_steps"]:
            return
        fix_schedule(schedule, total, state["step"] + 1, fixed_by, args.min_learning_rate_ratio)
        schedule["replans"].append([state["step"], total])
        self.progress.total = total
        self.progress.refresh()
        self.progress.write(f"time budget: {step_seconds:.4f} s a step over the last {timed_steps} steps: the run "
                            f"and its schedule now end at step {total} (set by {fixed_by}).")

    def log_step(self, step_loss: float) -> None:
        state, accelerator = self.state, self.accelerator
        elapsed = self.clock() - self.window_start
        tokens_per_second = self.window_tokens / max(elapsed, 1e-9)
        metrics = {
            "train/loss": step_loss,
            "train/learning_rate": self.scheduler.get_last_lr()[0],
            "train/tokens_per_second": tokens_per_second,
            "train/mfu": tokens_per_second * self.flops_per_token / (self.peak * accelerator.num_processes),
            "train/tokens_seen": state["tokens_seen"],
        }
        self.progress.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_per_second:,.0f}",
                                  mfu=f"{metrics['train/mfu']:.0%}")
        accelerator.log(metrics, step=state["step"])
        state["time_history"].append([state["step"], round(state["train_seconds"], 3)])
        self.window_start, self.window_tokens = self.clock(), 0

    def evaluate_periodically(self) -> None:
        state = self.state
        result = evaluate_loss(self.model, self.validation_loader, self.accelerator, self.args.eval_batches)
        state["eval_history"].append([state["step"], round(result["loss"], 6)])
        self.accelerator.log({"eval/loss": result["loss"], "eval/perplexity": result["perplexity"]},
                             step=state["step"])
        self.progress.write(f"step {state['step']}: validation loss {result['loss']:.4f}, "
                            f"perplexity {result['perplexity']:.2f}")
        self.window_start = self.clock()

    def save_checkpoint(self) -> None:
        accelerator, state, root = self.accelerator, self.state, self.output / CHECKPOINTS
        final = root / f"step-{state['step']:07d}"
        temporary = root / f".step-{state['step']:07d}.tmp"
        on_main_process(accelerator, lambda: shutil.rmtree(temporary, ignore_errors=True))
        # Every process writes its own RNG state into the folder: it is complete only when all have finished.
        on_every_process(accelerator, accelerator.save_state, str(temporary))

        def publish() -> None:
            write_json_atomic(temporary / STATE_FILE, state)
            publish_folder(temporary, final)  # the checkpoint appears whole or not at all
            for old in checkpoint_dirs(self.output)[: -self.args.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)

        on_main_process(accelerator, publish)

    def final_metrics(self, stop_reason: str, run: PretrainRun) -> PretrainMetrics:
        """Evaluate on the whole validation set (a streamed one: `eval_batches`) and gather the run's numbers."""
        args, accelerator, state = self.args, self.accelerator, self.state
        final = evaluate_loss(self.model, self.validation_loader, accelerator,
                              None if not args.streaming else args.eval_batches)
        accelerator.log({"eval/loss": final["loss"], "eval/perplexity": final["perplexity"]}, step=state["step"])
        train_seconds = state["train_seconds"]
        return PretrainMetrics(
            validation_loss=final["loss"],
            validation_perplexity=final["perplexity"],
            steps=state["step"],
            tokens_seen=state["tokens_seen"],
            train_seconds=round(train_seconds, 2),
            tokens_per_second=state["tokens_seen"] / max(train_seconds, 1e-9),
            stop_reason=stop_reason,
            parameters=accelerator.unwrap_model(self.model).num_parameters(),
            layer_types=self.config.layer_types,
            processes=accelerator.num_processes,
            mixed_precision=args.mixed_precision,
            device=str(accelerator.device),
            hardware=platform.processor() or platform.machine(),
            loss_history=state["loss_history"],
            eval_history=state["eval_history"],
            time_history=state["time_history"],
            train_data=run.data["train"],
            validation_data=run.data["validation"],
        )

    def save(self, tokenizer, metrics: dict[str, Any], run: PretrainRun) -> None:
        """Write the final model folder, then end the run."""
        accelerator = self.accelerator
        # Every process takes part in collecting the weights (FSDP gathers its shards); the main process writes them.
        weights = accelerator.get_state_dict(self.model)
        on_main_process(accelerator, save_final, accelerator.unwrap_model(self.model), tokenizer, self.output,
                        metrics, run, weights)
        # The data-parallel wrapper goes before the process group does. Otherwise the group is destroyed when the
        # wrapper is, after `pretrain` returns, by a destructor that holds the GIL while it waits for gloo's worker
        # threads, one of which may need the GIL to free the last collective's tensors: a deadlock (seen in CI).
        # Destroyed by `end_training` instead, the group releases the GIL while it waits.
        self.model = self.optimizer = self.scheduler = self.train_loader = self.validation_loader = None
        accelerator.free_memory()
        accelerator.end_training()


def save_final(model, tokenizer, output: Path, metrics: dict | PretrainMetrics, run: dict | PretrainRun,
               state_dict: dict | None = None) -> None:
    """Model, tokenizer, metrics and card into the output folder: written beside it first, then moved in file by
    file with `os.replace`, so each file appears whole, metrics.json last (its presence means the run finished).
    `state_dict`: the full weights, when the model holds only a shard of them (FSDP)."""
    from yuyan.cards import write_model_card

    metrics = metrics_from_dict(metrics if isinstance(metrics, PretrainMetrics) else dict(metrics))
    with staging_dir(output, prefix=".final-") as staging:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(staging, state_dict=state_dict)
        tokenizer.save_pretrained(staging)
        metrics.write(staging)
        write_model_card(staging, metrics=metrics, run=run)
        move_into(staging, output, last=(METRICS_FILE,))


__all__ = ["ModelSettings", "PretrainArguments", "pretrain", "resolve_config", "parse_overrides"]

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

from yuyan.modeling import PRESETS, YuyanConfig, YuyanForCausalLM
from yuyan.training.data import TextSource, load_documents, split_validation, tokenize_and_pack
from yuyan.training.distributed import main_process_first, on_every_process, on_main_process

RUN_FILE = "run.json"
STATE_FILE = "trainer_state.json"
CHECKPOINTS = "checkpoints"
# A time budget fixes the run's step count from the measured step time: the first steps after a (re)start are
# left out (allocation, kernel warm-up), then at least TIME_MEASURE_STEPS steps and TIME_MEASURE_SECONDS (or
# TIME_MEASURE_SHARE of a short budget) are timed. The plan uses TIME_BUDGET_USE of the budget: checkpoint writes
# are not timed in advance, and the schedule should end before the clock does rather than be cut short by it.
TIME_MEASURE_SKIP_STEPS = 2
TIME_MEASURE_STEPS = 10
TIME_MEASURE_SECONDS = 5.0
TIME_MEASURE_SHARE = 0.02
TIME_BUDGET_USE = 0.98


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


def resolve_config(
    config: str | None, overrides: dict[str, Any] | None = None, training: dict[str, Any] | None = None
) -> tuple[dict[str, Any], PretrainArguments]:
    """(model config values, training arguments) from a YAML file or a preset name, then overrides.

    The YAML file has a `model:` section (`preset:` and/or any `YuyanConfig` field) and a `training:` section
    (any `PretrainArguments` field). `overrides` are `model.FIELD` / `FIELD` = value pairs (`--set`); `training`
    holds the values of explicit command-line flags, which win over the file.
    """
    model_values: dict[str, Any] = {}
    training_values: dict[str, Any] = {}
    if config is None:
        model_values = {"preset": "tiny-hybrid"}
    elif config in PRESETS:
        model_values = {"preset": config}
    else:
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
        model_values = dict(loaded.get("model") or {})
        training_values = dict(loaded.get("training") or {})

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
    return model_values, arguments


def build_model_config(model_values: dict[str, Any], tokenizer) -> YuyanConfig:
    """The YuyanConfig of the run: preset + fields, with the vocabulary and special ids of the tokenizer."""
    values = dict(model_values)
    preset = values.pop("preset", None)
    values.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return YuyanConfig.from_preset(preset, **values) if preset else YuyanConfig(**values)


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


def write_json_atomic(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)


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
    the run (short runs spend most of their steps decaying), and never ends before `step` (what is done stays
    done)."""
    start = schedule_factor(step - 1, plan, floor) if step > 0 else 0.0
    plan.update(
        total_steps=int(total_steps),
        planned_at=step,
        final_warmup_steps=max(step, min(plan["warmup_steps"], max(1, int(total_steps) // 10))),
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
    muon = torch.optim.Muon([p for _, p in hidden], lr=args.learning_rate, weight_decay=args.weight_decay,
                            adjust_lr_fn="match_rms_adamw")
    return CombinedOptimizer([adamw, muon])


# -------------------------------------------------------------------------------------------------------------
# The run
# -------------------------------------------------------------------------------------------------------------


def prepare_output(output: Path, run_record: dict, args: PretrainArguments) -> Path | None:
    """Check the output folder before any work; return the checkpoint to resume from (or None)."""
    existing = output / RUN_FILE
    if args.resume:
        if not existing.exists():
            raise ValueError(f"--resume: {output} holds no run to resume ({RUN_FILE} missing).")
        previous = json.loads(existing.read_text())
        for key in ("model", "data"):
            if previous.get(key) != run_record.get(key):
                raise ValueError(
                    f"--resume: the {key} settings differ from the run in {output}; resume with the same settings."
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


def pretrain(
    args: PretrainArguments, model_values: dict[str, Any], accelerator: Accelerator | None = None,
    clock=time.perf_counter,
) -> dict[str, Any]:
    """Run (or resume) a pretraining run; returns the final metrics. See the module docstring for the layout.

    `clock` (seconds, monotonic) measures the training time that `max_minutes` budgets; tests pass a fake one.
    """
    output = Path(args.output)
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

    # Everything that can be wrong with the settings is checked before any data or model work.
    preset = model_values.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {sorted(PRESETS)}.")
    probe = YuyanConfig.from_preset(preset, **{k: v for k, v in model_values.items() if k != "preset"}) if preset else (
        YuyanConfig(**model_values)
    )
    if probe.num_attention_layers and args.block_size > probe.max_position_embeddings:
        raise ValueError(
            f"block_size={args.block_size} is beyond the model's max_position_embeddings="
            f"{probe.max_position_embeddings}: lower --block-size or raise model.max_position_embeddings."
        )
    run_record = {
        "model": model_values,
        "data": {"train": source.description, "validation": validation_source.description if validation_source else
                 f"every {max(2, round(1 / args.validation_fraction))}th document of the training data",
                 "block_size": args.block_size, "tokenizer": args.tokenizer, "seed": args.seed},
        "training": asdict(args),
    }
    if args.txt_split != "paragraph":  # recorded only when set, so that runs from before the option still resume
        run_record["data"]["txt_split"] = args.txt_split

    # Launched as several processes (accelerate launch / torchrun) on a machine without GPUs: Accelerate only
    # sets up CPU data parallelism (gloo) when told `cpu=True`.
    cpu_only = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = accelerator or Accelerator(
        cpu=cpu_only,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
    )
    is_main = accelerator.is_main_process
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
    # The documents first: a missing column or an unreadable file is reported before the output is touched. Work
    # done by the main process alone (or first) goes through `on_main_process` / `main_process_first`, so that
    # its error stops every process instead of leaving them at a barrier.
    documents, validation_documents = main_process_first(
        accelerator, lambda: (load_documents(source),
                              load_documents(validation_source) if validation_source is not None else None)
    )

    def start_output() -> Path | None:
        checkpoint = prepare_output(output, run_record, args)
        output.mkdir(parents=True, exist_ok=True)
        if not checkpoint:
            write_json_atomic(output / RUN_FILE, run_record)
        return checkpoint

    resume_from = on_main_process(accelerator, start_output)
    if not is_main and args.resume:
        resume_from = checkpoint_dirs(output)[-1] if args.resume == "latest" else Path(args.resume)
    output.mkdir(parents=True, exist_ok=True)

    # Tokenizer (trained on the data when none is given), then the data pipeline.
    tokenizer = obtain_tokenizer(args, source, probe.vocab_size, output, accelerator)
    config = build_model_config(model_values, tokenizer)

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

    set_seed(args.seed)
    model = YuyanForCausalLM(config)
    optimizer = make_optimizer(model, args)

    if args.streaming:
        train_loader = DataLoader(train_blocks.with_format("torch"), batch_size=args.batch_size, collate_fn=collate_blocks)
        steps_per_epoch = None
    else:
        sampler = EpochShuffleSampler(len(train_blocks), args.seed)
        train_loader = DataLoader(
            train_blocks, batch_size=args.batch_size, sampler=sampler, collate_fn=collate_blocks, drop_last=True
        )
    validation_loader = DataLoader(validation_blocks, batch_size=args.batch_size, collate_fn=collate_blocks)
    model, optimizer, train_loader, validation_loader = accelerator.prepare(
        model, optimizer, train_loader, validation_loader
    )
    if not args.streaming:
        steps_per_epoch = len(train_loader) // args.gradient_accumulation_steps
        if steps_per_epoch == 0:
            raise ValueError(
                f"one epoch has {len(train_blocks)} blocks: fewer than one optimizer step of "
                f"{args.batch_size} x {accelerator.num_processes} x {args.gradient_accumulation_steps}; "
                "lower --batch-size or give more data."
            )

    tokens_per_step = args.block_size * args.batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    # Budgets known in steps from the start; one epoch when there is no budget at all. A time budget alone trains
    # as many epochs as fit: its step count is fixed once the step time has been measured (`plan_time_budget`).
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
    # With a time budget the plan is provisional until the step time is measured (`plan_time_budget`).
    plan["time_budget_pending"] = bool(args.max_minutes)
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "tokens_seen": 0, "train_seconds": 0.0,
             "loss_history": [], "eval_history": [], "time_history": [], "schedule": plan}
    # The schedule reads the plan from `state`, which a resume replaces with the checkpoint's: the run goes on
    # with the step count fixed before the interruption, whatever the clock says now.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(step, state["schedule"], args.min_learning_rate_ratio)
    )
    accelerator.register_for_checkpointing(scheduler)

    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state.update(json.loads((resume_from / STATE_FILE).read_text()))
        accelerator.print(f"Resumed from {resume_from} at step {state['step']}.")

    if args.report_to != "none":
        accelerator.init_trackers("yuyan-pretrain", config={k: v for k, v in asdict(args).items()
                                                             if isinstance(v, (int, float, str, bool))})

    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision, torch.float32)
    peak = (args.peak_tflops * 1e12) if args.peak_tflops else measured_peak_flops(accelerator.device, compute_dtype)
    flops_per_token = training_flops_per_token(config, args.block_size)

    def save_checkpoint() -> None:
        root = output / CHECKPOINTS
        final = root / f"step-{state['step']:07d}"
        temporary = root / f".step-{state['step']:07d}.tmp"
        on_main_process(accelerator, lambda: shutil.rmtree(temporary, ignore_errors=True))
        # Every process writes its own RNG state into the folder: it is complete only when all have finished.
        on_every_process(accelerator, accelerator.save_state, str(temporary))

        def publish() -> None:
            write_json_atomic(temporary / STATE_FILE, state)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(temporary, final)  # the checkpoint appears whole or not at all
            for old in checkpoint_dirs(output)[: -args.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)

        on_main_process(accelerator, publish)

    def planned_total() -> float:
        total = state["schedule"]["total_steps"]
        return math.inf if total is None else total

    def plan_time_budget(step_seconds: float) -> None:
        """Fix the run's step count from the measured step time: the steps that fit in what is left of the time
        budget, less the periodic evaluations they bring (timed on one validation batch now), or the step budget
        if that is smaller. Processes agree on the slowest one's times, so all fix the same count."""
        eval_started = clock()
        evaluate_loss(model, validation_loader, accelerator, max_batches=1)
        eval_batch_seconds = clock() - eval_started
        try:
            eval_batches = len(validation_loader)
        except TypeError:  # a streamed validation set has no length
            eval_batches = args.eval_batches or 1
        if args.eval_batches:
            eval_batches = min(eval_batches, args.eval_batches)
        times = accelerator.gather(torch.tensor([step_seconds, eval_batch_seconds], device=accelerator.device))
        step_seconds, eval_batch_seconds = times.reshape(-1, 2).max(dim=0).values.tolist()
        seconds_per_step = step_seconds + eval_batch_seconds * eval_batches / args.eval_steps
        left = TIME_BUDGET_USE * args.max_minutes * 60 - state["train_seconds"]
        time_steps = state["step"] + max(0, math.floor(left / seconds_per_step))
        # The scheduler has already set the rate of the next step (index `step`): a new plan applies after it.
        # When the step budget ends first, its schedule (in force from the start) stays as it is.
        schedule = state["schedule"]
        if schedule["total_steps"] is None or time_steps < schedule["total_steps"]:
            fix_schedule(schedule, time_steps, state["step"] + 1, "max_minutes", args.min_learning_rate_ratio)
        schedule["time_budget_pending"] = False
        state["schedule"]["measured_step_seconds"] = round(step_seconds, 6)
        progress.total = state["schedule"]["total_steps"]
        progress.refresh()
        progress.write(
            f"time budget: {step_seconds:.4f} s a step (measured over {measured['steps']} steps), "
            f"{eval_batch_seconds:.4f} s an evaluation batch: the run and its schedule end at step "
            f"{state['schedule']['total_steps']} (set by {state['schedule']['fixed_by']})."
        )

    progress = tqdm(total=state["schedule"]["total_steps"], initial=state["step"], desc="Pretraining",
                    disable=not is_main, dynamic_ncols=True)
    model.train()
    started = clock() - state["train_seconds"]
    window_start, window_tokens = clock(), 0
    # Step times for the time budget: the first steps of a process (allocation, warm-up of kernels) are left out.
    measured = {"skipped": 0, "steps": 0, "seconds": 0.0}
    step_started = clock()
    stop_reason = None
    last_loss = torch.zeros((), device=accelerator.device)
    while stop_reason is None and state["step"] < planned_total():
        train_loader.set_epoch(state["epoch"])
        loader = train_loader
        if state["batches_in_epoch"]:
            loader = accelerator.skip_first_batches(train_loader, state["batches_in_epoch"])
        for batch in rng_neutral_iter(loader):
            with accelerator.accumulate(model):
                loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state["batches_in_epoch"] += 1
            last_loss += loss.detach().float() / args.gradient_accumulation_steps
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state["step"] += 1
            state["tokens_seen"] += tokens_per_step
            window_tokens += tokens_per_step
            step_loss = accelerator.reduce(last_loss, "mean").item()
            last_loss.zero_()
            state["loss_history"].append([state["step"], round(step_loss, 6)])
            now = clock()
            state["train_seconds"] = now - started
            progress.update(1)
            if state["schedule"].get("time_budget_pending"):
                if measured["skipped"] < TIME_MEASURE_SKIP_STEPS:
                    measured["skipped"] += 1
                else:
                    measured["steps"] += 1
                    measured["seconds"] += now - step_started
                enough_time = min(TIME_MEASURE_SECONDS, TIME_MEASURE_SHARE * args.max_minutes * 60)
                ready = measured["steps"] >= TIME_MEASURE_STEPS and measured["seconds"] >= enough_time
                if accelerator.num_processes > 1:  # all processes plan at the same step (the plan is collective)
                    ready = bool(broadcast(torch.tensor([float(ready)], device=accelerator.device)).item())
                if ready:
                    plan_time_budget(measured["seconds"] / max(1, measured["steps"]))

            if state["step"] % args.logging_steps == 0 or state["step"] == planned_total():
                elapsed = clock() - window_start
                tokens_per_second = window_tokens / max(elapsed, 1e-9)
                metrics = {
                    "train/loss": step_loss,
                    "train/learning_rate": scheduler.get_last_lr()[0],
                    "train/tokens_per_second": tokens_per_second,
                    "train/mfu": tokens_per_second * flops_per_token / (peak * accelerator.num_processes),
                    "train/tokens_seen": state["tokens_seen"],
                }
                progress.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_per_second:,.0f}",
                                     mfu=f"{metrics['train/mfu']:.0%}")
                accelerator.log(metrics, step=state["step"])
                state["time_history"].append([state["step"], round(state["train_seconds"], 3)])
                window_start, window_tokens = clock(), 0
            if state["step"] % args.eval_steps == 0 and state["step"] < planned_total():
                result = evaluate_loss(model, validation_loader, accelerator, args.eval_batches)
                state["eval_history"].append([state["step"], round(result["loss"], 6)])
                accelerator.log({"eval/loss": result["loss"], "eval/perplexity": result["perplexity"]}, step=state["step"])
                progress.write(f"step {state['step']}: validation loss {result['loss']:.4f}, "
                               f"perplexity {result['perplexity']:.2f}")
                window_start = clock()

            out_of_time = bool(args.max_minutes) and state["train_seconds"] >= args.max_minutes * 60
            if args.max_minutes and accelerator.num_processes > 1:
                # Each process has its own clock: the main one decides, so that all stop at the same step.
                out_of_time = bool(broadcast(torch.tensor([float(out_of_time)], device=accelerator.device)).item())
            if state["step"] >= planned_total():
                stop_reason = state["schedule"]["fixed_by"]
            elif out_of_time:
                stop_reason = "max_minutes"
            if state["step"] % args.save_steps == 0 or stop_reason:
                save_checkpoint()
            if stop_reason:
                break
            step_started = clock()
        else:
            if args.streaming and state["batches_in_epoch"] == 0:
                raise ValueError("the training stream gave no complete batch.")
            state["epoch"] += 1
            state["batches_in_epoch"] = 0
    progress.close()

    final = evaluate_loss(model, validation_loader, accelerator, None if not args.streaming else args.eval_batches)
    train_seconds = state["train_seconds"]
    metrics = {
        "validation_loss": final["loss"],
        "validation_perplexity": final["perplexity"],
        "steps": state["step"],
        "tokens_seen": state["tokens_seen"],
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": state["tokens_seen"] / max(train_seconds, 1e-9),
        "stop_reason": stop_reason or "epoch",
        "parameters": accelerator.unwrap_model(model).num_parameters(),
        "layer_types": config.layer_types,
        "processes": accelerator.num_processes,
        "mixed_precision": args.mixed_precision,
        "device": str(accelerator.device),
        "hardware": platform.processor() or platform.machine(),
        "loss_history": state["loss_history"],
        "eval_history": state["eval_history"],
        "time_history": state["time_history"],
        "train_data": run_record["data"]["train"],
        "validation_data": run_record["data"]["validation"],
    }
    accelerator.log({"eval/loss": final["loss"], "eval/perplexity": final["perplexity"]}, step=state["step"])
    # Every process takes part in collecting the weights (FSDP gathers its shards); the main process writes them.
    weights = accelerator.get_state_dict(model)
    on_main_process(accelerator, save_final, accelerator.unwrap_model(model), tokenizer, output, metrics, run_record,
                    weights)
    # The data-parallel wrapper goes before the process group does. Otherwise the group is destroyed when the
    # wrapper is, after this function returns, by a destructor that holds the GIL while it waits for gloo's worker
    # threads, one of which may need the GIL to free the last collective's tensors: a deadlock (seen in CI).
    # Destroyed by `end_training` instead, the group releases the GIL while it waits.
    model = optimizer = scheduler = None
    accelerator.free_memory()
    accelerator.end_training()
    return metrics


def save_final(model, tokenizer, output: Path, metrics: dict, run_record: dict, state_dict: dict | None = None) -> None:
    """Model, tokenizer, metrics and card into the output folder: written beside it first, then moved in file by
    file with `os.replace`, so each file appears whole. `state_dict`: the full weights, when the model holds only
    a shard of them (FSDP)."""
    staging = output / ".final.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(staging, state_dict=state_dict)
    tokenizer.save_pretrained(staging)
    write_json_atomic(staging / "metrics.json", metrics)
    from yuyan.cards import write_model_card

    write_model_card(staging, metrics=metrics, run=run_record)
    for item in staging.iterdir():
        target = output / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()


__all__ = ["PretrainArguments", "pretrain", "resolve_config", "parse_overrides", "build_model_config"]

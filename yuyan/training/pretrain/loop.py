"""The pretraining loop: `PretrainLoop` holds one run's model, optimizer, schedule and data and trains them one
optimizer step at a time; around it, the data order that a resume repeats exactly, the output folder and its
checkpoints (what `--resume` continues from), the evaluation, and the final model folder (`save_final`).

Checkpoints are written to a temporary folder and renamed into place, so a kill at any moment leaves the last
complete one; `--resume` continues from it exactly: weights, optimizer, schedule, RNG and data position.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from yuyan.files import move_into, publish_folder, staging_dir, write_json_atomic
from yuyan.modeling import YuyanConfig, YuyanForCausalLM
from yuyan.modeling.modeling_yuyan import YuyanDecoderLayer
from yuyan.records import METRICS_FILE, RUN_FILE, PretrainMetrics, PretrainRun, metrics_from_dict, read_run
from yuyan.training.distributed import on_every_process, on_main_process
from yuyan.training.pretrain.arguments import PretrainArguments
from yuyan.training.pretrain.optimizers import make_optimizer
from yuyan.training.pretrain.schedule import (
    TIME_MEASURE_SECONDS,
    TIME_MEASURE_SHARE,
    TIME_MEASURE_SKIP_STEPS,
    TIME_MEASURE_STEPS,
    TIME_REPLAN_SHARE,
    TIME_REPLAN_TOLERANCE,
    fix_schedule,
    initial_state,
    schedule_factor,
    time_budget_end,
)

STATE_FILE = "trainer_state.json"
CHECKPOINTS = "checkpoints"


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


# -------------------------------------------------------------------------------------------------------------
# The output folder and its checkpoints
# -------------------------------------------------------------------------------------------------------------


def checkpoint_dirs(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a `.tmp` folder is a write that never finished)."""
    root = output / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).exists())


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


# -------------------------------------------------------------------------------------------------------------
# Throughput, evaluation
# -------------------------------------------------------------------------------------------------------------


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


# -------------------------------------------------------------------------------------------------------------
# The loop
# -------------------------------------------------------------------------------------------------------------


class PretrainLoop:
    """The model, optimizer, schedule and data of one run, and the loop over them: `fit` reads top to bottom, one
    optimizer step at a time; what happens around a step (time-budget measurement, logging, evaluation, stopping,
    checkpoints) is one method each. `state` is what a checkpoint saves beside Accelerate's own state."""

    def __init__(self, args: PretrainArguments, accelerator: Accelerator, model: YuyanForCausalLM,
                 train_loader: DataLoader, validation_loader: DataLoader, output: Path, clock,
                 dropout_by_passes: bool = False):
        self.args, self.accelerator, self.output, self.clock = args, accelerator, output, clock
        self.config = model.config
        # True when the model's hidden_dropout was not asked for: the run's planned passes choose it.
        self.dropout_by_passes = dropout_by_passes
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
        self.steps_per_epoch = steps_per_epoch
        self.state = initial_state(args, steps_per_epoch, self.tokens_per_step)
        if self.state["schedule"]["total_steps"] is not None:
            self.regularise_for_plan()
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
            if "regularisation" in self.state:  # chosen before the interruption: the run goes on with it
                self.set_hidden_dropout(self.state["regularisation"]["hidden_dropout"])
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
        time_steps = time_budget_end(state, args.max_minutes, seconds_per_step)
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
        self.regularise_for_plan()
        steps_left = schedule["total_steps"] - state["step"]
        schedule["replan_every"] = max(TIME_MEASURE_STEPS, math.ceil(TIME_REPLAN_SHARE * steps_left))
        schedule["next_replan_step"] = state["step"] + schedule["replan_every"]
        schedule["replans"] = []
        self.progress.total = schedule["total_steps"]
        self.progress.refresh()
        self.progress.write(
            f"time budget: {step_seconds:.4f} s a step (measured over {self.measured['steps']} steps), "
            f"{eval_batch_seconds:.4f} s an evaluation batch: the run and its schedule end at step "
            f"{schedule['total_steps']} (set by {schedule['fixed_by']}).{self.describe_regularisation()}"
        )

    def regularise_for_plan(self) -> None:
        """Choose the hidden dropout from the planned length, once it is fixed (from the start for a step or token
        budget; after the step time is measured for a time budget; later re-plans keep the choice): a run planned to
        read its training text more than `multi_pass_threshold` times memorises it without dropout, and trains with
        `multi_pass_dropout`; a shorter one trains without. Only when the model's hidden_dropout was not asked for,
        and not on streamed data (whose passes are unknown). Kept in the checkpointed state, so a resume follows it."""
        if not self.dropout_by_passes or self.steps_per_epoch is None:
            return
        passes = self.state["schedule"]["total_steps"] / self.steps_per_epoch
        dropout = self.args.multi_pass_dropout if passes > self.args.multi_pass_threshold else 0.0
        self.state["regularisation"] = {"planned_passes": round(passes, 3), "hidden_dropout": dropout}
        self.set_hidden_dropout(dropout)

    def describe_regularisation(self) -> str:
        chosen = self.state.get("regularisation")
        if chosen is None:
            return ""
        return (f" About {chosen['planned_passes']:.1f} passes over the training text: hidden dropout "
                f"{chosen['hidden_dropout']:g}.")

    def set_hidden_dropout(self, dropout: float) -> None:
        """The dropout on each layer's mixer and MLP output, in the model and in its config (so the saved model says
        what it was trained with)."""
        self.config.hidden_dropout = dropout
        for module in self.accelerator.unwrap_model(self.model).modules():
            if isinstance(module, YuyanDecoderLayer):
                module.dropout.p = dropout

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
        time_steps = max(state["step"] + 1, time_budget_end(state, args.max_minutes, seconds_per_step))
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
            regularisation=state.get("regularisation"),
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


__all__ = ["EpochShuffleSampler", "PretrainLoop", "checkpoint_dirs", "save_final"]

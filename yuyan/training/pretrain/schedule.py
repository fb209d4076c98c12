"""The learning-rate schedule and the budgets that set its length: a linear warm-up, then a cosine down to a floor,
over a length fixed by a step or token budget from the start, or by a time budget once the step time is measured
(and re-measured: `PretrainLoop` in `loop.py` does the timing). The plan is a dict kept in the run's state, so a
checkpoint holds it and a resumed run follows it."""

from __future__ import annotations

import math
from typing import Any

from yuyan.training.pretrain.arguments import PretrainArguments

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


def time_budget_end(state: dict[str, Any], max_minutes: float, seconds_per_step: float) -> int:
    """The step at which the time budget (TIME_BUDGET_USE of `max_minutes`) runs out, at `seconds_per_step` from the
    run's `state`. train_seconds is rounded: a resumed run's clock starts elsewhere, and its float error must not
    move the end by one step."""
    left = TIME_BUDGET_USE * max_minutes * 60 - round(state["train_seconds"], 6)
    return state["step"] + max(0, math.floor(left / max(seconds_per_step, 1e-9)))


__all__ = ["fix_schedule", "initial_state", "new_schedule_plan", "schedule_factor", "time_budget_end"]
